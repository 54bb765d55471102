package throttle

import (
	"context"
	"fmt"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dthrottle/throttle/internal/redistest"
)

// TestRedisOutageAndRecovery stops the server mid-run and starts it again:
// calls stay bounded by the timeout while it is down, fail closed (or open
// with WithFailOpen), and succeed again once it is back, with no action.
func TestRedisOutageAndRecovery(t *testing.T) {
	srv := redistest.Start(t)
	c := srv.Client(t, func(o *redis.Options) { o.DialTimeout = 50 * time.Millisecond })
	const timeout = 100 * time.Millisecond
	closed, err := New("outage", time.Millisecond, WithStore(NewRedisStore(c)), WithTimeout(timeout))
	require.NoError(t, err)
	open, err := New("outage-open", time.Millisecond, WithStore(NewRedisStore(c)), WithTimeout(timeout), WithFailOpen())
	require.NoError(t, err)
	fallback, err := New("outage-fallback", time.Hour, WithStore(NewRedisStore(c)), WithTimeout(timeout), WithFallback(1))
	require.NoError(t, err)
	ctx := context.Background()

	d, err := closed.Allow(ctx)
	require.NoError(t, err, "Allow with the server up")
	require.True(t, d.Allowed)

	srv.Stop()
	for i := range 5 {
		for _, th := range []*Throttle{closed, open} {
			start := time.Now()
			d, err := th.Allow(ctx)
			elapsed := time.Since(start)
			assert.ErrorIs(t, err, ErrStoreUnavailable, "Allow %d on %q with the server down", i, th.key)
			assert.Equal(t, th == open, d.Allowed, "Allow %d on %q with the server down: decision", i, th.key)
			assert.Less(t, elapsed, time.Second, "Allow %d on %q with a %v timeout took %v", i, th.key, timeout, elapsed)
		}
		d, err := fallback.Allow(ctx)
		assert.ErrorIs(t, err, ErrStoreUnavailable, "Allow %d under the fallback", i)
		assert.Equal(t, i == 0, d.Allowed, "Allow %d under fallback limit 1 per hour", i)
	}

	srv.Restart(t)
	// The pool's connections died with the server; go-redis replaces them
	// by itself. Allow a few calls for that, then every call must succeed.
	recovered := false
	for range 20 {
		time.Sleep(5 * time.Millisecond)
		if _, err := closed.Allow(ctx); err == nil {
			recovered = true
			break
		}
	}
	require.True(t, recovered, "Allow never succeeded after the server came back")
	for i := range 5 {
		time.Sleep(2 * time.Millisecond)
		_, err := closed.Allow(ctx)
		assert.NoError(t, err, "Allow %d after recovery", i)
	}
}

// TestWaitSchedule has many goroutines wait for one key on a real Redis:
// each admitted call costs one store operation (no polling), and the starts
// follow the booked schedule. The spacing figures are logged, not asserted:
// the machine may be busy.
func TestWaitSchedule(t *testing.T) {
	srv := redistest.Start(t)
	const (
		waiters  = 8
		each     = 6
		interval = 20 * time.Millisecond
	)
	for _, limit := range []int{1, 2} {
		s := &countingStore{Store: NewRedisStore(srv.Client(t))}
		th, err := New(fmt.Sprint("wait-schedule-", limit), interval, WithStore(s), WithLimit(limit), WithWait(10*time.Second))
		require.NoError(t, err)
		var mu sync.Mutex
		var starts []time.Time
		var wg sync.WaitGroup
		for range waiters {
			wg.Go(func() {
				for range each {
					if err := th.Wait(context.Background()); err != nil {
						t.Error(err)
						return
					}
					now := time.Now()
					mu.Lock()
					starts = append(starts, now)
					mu.Unlock()
				}
			})
		}
		wg.Wait()
		n := waiters * each
		require.Len(t, starts, n)
		sort.Slice(starts, func(i, j int) bool { return starts[i].Before(starts[j]) })
		// Starts come in groups of limit, one interval apart.
		var devs []time.Duration
		for i := limit; i < n; i += limit {
			gap := starts[i].Sub(starts[i-limit])
			devs = append(devs, (gap - interval).Abs())
		}
		sort.Slice(devs, func(i, j int) bool { return devs[i] < devs[j] })
		t.Logf("limit %d: %d waiting calls, %d store operations (%.2f per call); |gap-interval| median %v, p90 %v, max %v",
			limit, n, s.takes.Load(), float64(s.takes.Load())/float64(n),
			devs[len(devs)/2], devs[len(devs)*9/10], devs[len(devs)-1])
		assert.LessOrEqual(t, int(s.takes.Load()), n, "store operations for %d waiting calls", n)
	}
}
