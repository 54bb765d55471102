package throttle

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/dthrottle/throttle/internal/redistest"
)

// leakWait is how long checkLeaks waits for the goroutines started during a
// test to end. The ones the library abandons at a timeout (clients without
// ContextTimeoutEnabled) end at go-redis's ReadTimeout; the tests set it to
// 300 ms, so this bound is generous even on a busy machine.
const leakWait = 10 * time.Second

// checkLeaks makes the test fail if a goroutine started after this call is
// still running leakWait after the test and its cleanups ended. Call it
// first in a test that is not parallel (other tests' goroutines would count),
// so that it runs after every cleanup registered later: stopped servers,
// closed clients and proxies.
func checkLeaks(t *testing.T) {
	t.Helper()
	ignore := goleak.IgnoreCurrent()
	t.Cleanup(func() {
		if err := findLeaks(leakWait, ignore); err != nil {
			t.Errorf("goroutines started by %s still run %v after it ended: %v", t.Name(), leakWait, err)
		}
	})
}

// findLeaks returns goleak's report if goroutines other than the ignored
// ones are still running after wait, or nil as soon as there are none.
func findLeaks(wait time.Duration, opts ...goleak.Option) error {
	opts = append(opts, goleak.IgnoreTopFunction(redistest.PermanentGoroutine))
	deadline := time.Now().Add(wait)
	for {
		err := goleak.Find(opts...)
		if err == nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestLeakCheckCatchesLeaks shows that findLeaks reports a goroutine that
// outlives its wait, and accepts it once it ends.
func TestLeakCheckCatchesLeaks(t *testing.T) {
	ignore := goleak.IgnoreCurrent()
	release := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		<-release
	}()
	assert.Error(t, findLeaks(100*time.Millisecond, ignore), "a goroutine blocked on a channel")
	close(release)
	wg.Wait()
	assert.NoError(t, findLeaks(time.Second, ignore), "after the goroutine ended")
}

// faultClientKinds are the two ways go-redis treats a context deadline: with
// ContextTimeoutEnabled it stops at the deadline; without it the store runs
// each call in a goroutine that the caller leaves at the timeout and that
// ends at the client's ReadTimeout (300 ms here).
var faultClientKinds = []struct {
	name string
	opts func(*redis.Options)
}{
	{"ContextTimeoutEnabled", func(o *redis.Options) {
		o.ContextTimeoutEnabled = true
		o.DialTimeout = 300 * time.Millisecond
	}},
	{"no ContextTimeoutEnabled", func(o *redis.Options) {
		o.ContextTimeoutEnabled = false
		o.DialTimeout = 300 * time.Millisecond
		o.ReadTimeout = 300 * time.Millisecond
		o.WriteTimeout = 300 * time.Millisecond
	}},
}

// faultThrottles returns throttles on s for every kind of store call: limit
// 1 (SET NX), limit 3 (script), and limit 1 and 2 waiting (booking scripts),
// each with the given timeout and extra options.
func faultThrottles(t *testing.T, s Store, prefix string, interval, timeout time.Duration, opts ...Option) []*Throttle {
	t.Helper()
	specs := []struct {
		limit int
		wait  time.Duration
	}{{1, 0}, {3, 0}, {1, time.Second}, {2, time.Second}}
	var ths []*Throttle
	for _, sp := range specs {
		o := append([]Option{WithStore(s), WithLimit(sp.limit), WithWait(sp.wait), WithTimeout(timeout)}, opts...)
		th, err := New(fmt.Sprintf("%s/limit%d/wait%v", prefix, sp.limit, sp.wait), interval, o...)
		require.NoError(t, err)
		ths = append(ths, th)
	}
	return ths
}

// decide makes one decision on th the way Wrap does: Wait for a throttle
// with a wait, Allow otherwise. It reports whether the call may run.
func faultDecide(ctx context.Context, th *Throttle) (bool, error) {
	if th.c.cfg.wait > 0 {
		err := th.Wait(ctx)
		return err == nil, err
	}
	d, err := th.Allow(ctx)
	return d.Allowed, err
}

// TestOutageWithoutContextTimeouts stops the server mid-run under a client
// without ContextTimeoutEnabled (the existing outage test uses one with it):
// every kind of decision stays bounded by the timeout and fails closed,
// decisions recover once the server is back, and the goroutines the store
// abandoned at the timeout all end.
func TestOutageWithoutContextTimeouts(t *testing.T) {
	checkLeaks(t)
	srv := redistest.Start(t)
	for _, kind := range faultClientKinds {
		t.Run(kind.name, func(t *testing.T) {
			c := srv.Client(t, kind.opts)
			const timeout = 100 * time.Millisecond
			ths := faultThrottles(t, NewRedisStore(c), "outage/"+kind.name, time.Millisecond, timeout)
			ctx := context.Background()
			for _, th := range ths {
				_, err := faultDecide(ctx, th)
				require.NoError(t, err, "%q with the server up", th.key)
			}

			srv.Kill()
			var slowest time.Duration
			for i := range 2 {
				for _, th := range ths {
					start := time.Now()
					ok, err := faultDecide(ctx, th)
					elapsed := time.Since(start)
					slowest = max(slowest, elapsed)
					assert.ErrorIs(t, err, ErrStoreUnavailable, "call %d on %q with the server down", i, th.key)
					assert.False(t, ok, "call %d on %q with the server down: admitted (want fail closed)", i, th.key)
					assert.Less(t, elapsed, time.Second, "call %d on %q with a %v timeout took %v", i, th.key, timeout, elapsed)
				}
			}

			srv.Restart(t)
			var recovery time.Duration
			for _, th := range ths {
				recovery = max(recovery, faultWaitRecovered(t, ctx, th, 5*time.Second))
			}
			t.Logf("server down: slowest decision %v (timeout %v); after the restart every kind of decision succeeded within %v",
				slowest, timeout, recovery)
		})
	}
}

// waitRecovered fails the test unless a decision on th succeeds within
// limit (polling every 10 ms), and returns how long that took.
func faultWaitRecovered(t *testing.T, ctx context.Context, th *Throttle, limit time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	var err error
	for time.Since(start) < limit {
		if _, err = faultDecide(ctx, th); err == nil {
			return time.Since(start)
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Errorf("%q: no decision succeeded within %v after the fault ended; last error: %v", th.key, limit, err)
	return limit
}
