package throttle

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dthrottle/throttle/internal/faultproxy"
)

// TestLeaseFaults runs callers of a cap of 2 (with and without a rate, with
// a second window of WithLimitPer, with and without waiting) through a link whose latency changes every 50 ms,
// that loses every 7th reply and drops every connection every 200 ms: at
// most 2 calls are ever in flight (a lost reply can cost a lease until its
// TTL, never add one), and once the link heals, calls are admitted again.
func TestLeaseFaults(t *testing.T) {
	checkLeaks(t)
	p := faultproxy.Start(t, faultBackend(t))
	c := proxyClient(t, p)
	store := NewRedisStore(c, WithKeyPrefix("leasefault:"))
	const k, ttl = 2, 300 * time.Millisecond
	window := []Option{WithLimitPer(20, 400*time.Millisecond)}
	specs := []struct {
		interval time.Duration
		wait     time.Duration
		opts     []Option // WithLimitPer's windows, if any
	}{{0, 0, nil}, {0, 500 * time.Millisecond, nil}, {40 * time.Millisecond, 0, nil}, {40 * time.Millisecond, 500 * time.Millisecond, nil},
		{40 * time.Millisecond, 0, window}, {40 * time.Millisecond, 500 * time.Millisecond, window}}
	key := func(i int) string {
		return fmt.Sprintf("fault/%v/%v/%d", specs[i].interval, specs[i].wait, len(specs[i].opts))
	}
	type result struct {
		f                   inFlight
		throttled, failures atomic.Int64
		other               atomic.Int64
	}
	results := make([]*result, len(specs))
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for i, sp := range specs {
		results[i] = &result{}
		r := results[i]
		for range 4 { // each caller with its own function, like a process
			call := WrapErr(key(i), sp.interval, func(ctx context.Context) (int, error) {
				r.f.enter()
				defer r.f.leave()
				time.Sleep(time.Duration(2+rand.IntN(10)) * time.Millisecond)
				return 0, nil
			}, append([]Option{WithStore(store), WithConcurrency(k), WithLeaseTTL(ttl), WithWait(sp.wait), WithTimeout(time.Second)}, sp.opts...)...)
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					select {
					case <-stop:
						return
					default:
					}
					_, err := call(context.Background())
					switch {
					case err == nil:
					case errors.Is(err, ErrThrottled):
						r.throttled.Add(1)
						time.Sleep(time.Millisecond)
					case errors.Is(err, ErrStoreUnavailable):
						r.failures.Add(1)
						time.Sleep(time.Millisecond)
					default:
						r.other.Add(1)
					}
				}
			}()
		}
	}
	p.SetReplyLoss(7)
	for i, end := 0, time.Now().Add(1500*time.Millisecond); time.Now().Before(end); i++ {
		p.SetLatency(time.Duration(rand.Int64N(int64(20*time.Millisecond))), time.Duration(rand.Int64N(int64(20*time.Millisecond))))
		if i%4 == 3 {
			p.Drop()
		}
		time.Sleep(50 * time.Millisecond)
	}
	p.SetReplyLoss(0)
	p.SetLatency(0, 0)
	close(stop)
	wg.Wait()
	stats := p.Stats()
	for i, sp := range specs {
		r := results[i]
		t.Logf("cap %d, interval %v, wait %v, windows %d: %d runs, peak in flight %d, %d throttled, %d store failures",
			k, sp.interval, sp.wait, len(sp.opts), r.f.runs.Load(), r.f.peak.Load(), r.throttled.Load(), r.failures.Load())
		assert.LessOrEqual(t, r.f.peak.Load(), int64(k), "peak in flight, interval %v wait %v", sp.interval, sp.wait)
		assert.Zero(t, r.other.Load(), "errors other than throttled or store unavailable")
	}
	t.Logf("the proxy lost %d replies and dropped %d connections", stats.LostReplies, stats.Dropped)
	assert.Positive(t, stats.LostReplies, "replies the proxy lost")

	// Healed: leases lost with their replies expire within the TTL, and
	// each key admits k calls at once again.
	for i, sp := range specs {
		th, err := New(key(i), sp.interval, append([]Option{WithStore(store), WithConcurrency(k), WithLeaseTTL(ttl),
			WithWait(5 * time.Second), WithTimeout(time.Second)}, sp.opts...)...)
		require.NoError(t, err)
		var leases []*Lease
		for range k {
			var l *Lease
			var err error
			for range 5 { // a few store failures while go-redis replaces lost connections
				if l, err = th.Acquire(context.Background()); !errors.Is(err, ErrStoreUnavailable) {
					break
				}
			}
			if assert.NoError(t, err, "Acquire after the link healed, interval %v wait %v", sp.interval, sp.wait) {
				leases = append(leases, l)
			}
		}
		for _, l := range leases {
			l.Release()
		}
	}
}
