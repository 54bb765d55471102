package throttle

import (
	"context"
	"errors"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dthrottle/throttle/internal/redistest"
)

// leaseStores returns the stores the throttle-level lease tests run on, in
// real time: a MemoryStore, a RedisStore on miniredis (expiring keys on the
// real clock) and, when available, on a real redis-server. The Redis
// entries come with their client.
func leaseStores(t *testing.T) []struct {
	name   string
	store  Store
	client redis.UniversalClient
} {
	mr := miniredis.RunT(t)
	mr.ClockTTL(true)
	mc := redis.NewClient(&redis.Options{Addr: mr.Addr(), ContextTimeoutEnabled: true})
	t.Cleanup(func() { _ = mc.Close() })
	out := []struct {
		name   string
		store  Store
		client redis.UniversalClient
	}{
		{"memory", NewMemoryStore(), nil},
		{"miniredis", NewRedisStore(mc), mc},
	}
	if redistest.Available() || requireRedis() {
		rc := redistest.Start(t).Client(t)
		out = append(out, struct {
			name   string
			store  Store
			client redis.UniversalClient
		}{"redis", NewRedisStore(rc), rc})
	}
	return out
}

// inFlight counts the calls of fn running at once and keeps the peak.
type inFlight struct {
	now, peak, runs atomic.Int64
}

func (f *inFlight) enter() {
	f.runs.Add(1)
	n := f.now.Add(1)
	for {
		p := f.peak.Load()
		if n <= p || f.peak.CompareAndSwap(p, n) {
			return
		}
	}
}

func (f *inFlight) leave() { f.now.Add(-1) }

func TestWrapConcurrencyCap(t *testing.T) {
	for _, s := range leaseStores(t) {
		for _, wait := range []time.Duration{0, 5 * time.Second} {
			name := s.name + "/drop"
			if wait > 0 {
				name = s.name + "/wait"
			}
			t.Run(name, func(t *testing.T) {
				const k, goroutines = 3, 10
				var f inFlight
				call := WrapErr("wrapcap/"+t.Name(), 0, func(ctx context.Context) (int, error) {
					f.enter()
					defer f.leave()
					time.Sleep(time.Duration(2+rand.IntN(8)) * time.Millisecond)
					return 1, ctx.Err()
				}, WithStore(s.store), WithConcurrency(k), WithWait(wait), WithTimeout(time.Second))
				var wg sync.WaitGroup
				var throttled, other atomic.Int64
				for range goroutines {
					wg.Add(1)
					go func() {
						defer wg.Done()
						for range 15 {
							_, err := call(context.Background())
							switch {
							case err == nil:
							case errors.Is(err, ErrAtCapacity) && errors.Is(err, ErrThrottled):
								throttled.Add(1)
								time.Sleep(time.Millisecond)
							default:
								other.Add(1)
							}
						}
					}()
				}
				wg.Wait()
				t.Logf("runs %d, throttled %d, peak in flight %d", f.runs.Load(), throttled.Load(), f.peak.Load())
				assert.LessOrEqual(t, f.peak.Load(), int64(k), "peak calls in flight")
				assert.Zero(t, other.Load(), "errors other than ErrAtCapacity")
				if wait > 0 {
					assert.Equal(t, int64(goroutines*15), f.runs.Load(), "every waiting call ran")
				} else {
					assert.Positive(t, f.runs.Load(), "runs")
				}
			})
		}
	}
}

func TestLeaseReleasedOnPanic(t *testing.T) {
	for _, s := range leaseStores(t) {
		t.Run(s.name, func(t *testing.T) {
			var runs int
			call := Wrap("panic/"+t.Name(), 0, func() int {
				runs++
				panic("boom")
			}, WithStore(s.store), WithConcurrency(1))
			for range 3 {
				assert.PanicsWithValue(t, "boom", func() { call() }, "the panic reaches the caller")
			}
			assert.Equal(t, 3, runs, "each call ran: the lease was released after each panic")
		})
	}
}

// TestLeaseRenewal runs fn for three lease TTLs: nobody else gets in, and
// fn's context stays alive. Then a lease deleted from Redis cancels fn's
// context with ErrLeaseLost.
func TestLeaseRenewal(t *testing.T) {
	checkLeaks(t)
	const ttl = 150 * time.Millisecond
	for _, s := range leaseStores(t) {
		t.Run(s.name, func(t *testing.T) {
			key := "renew/" + t.Name()
			th, err := New(key, 0, WithStore(s.store), WithConcurrency(1), WithLeaseTTL(ttl))
			require.NoError(t, err)
			ctx := context.Background()
			l, err := th.Acquire(ctx)
			require.NoError(t, err)
			end := time.Now().Add(3 * ttl)
			var others int
			for time.Now().Before(end) {
				if o, err := th.Acquire(ctx); err == nil {
					others++
					o.Release()
				} else {
					assert.ErrorIs(t, err, ErrAtCapacity)
				}
				time.Sleep(10 * time.Millisecond)
			}
			assert.Zero(t, others, "leases granted to others while the holder renews")
			assert.NoError(t, l.Context().Err(), "the holder's context after 3 TTLs")
			l.Release()
			l.Release()
			assert.ErrorIs(t, context.Cause(l.Context()), ErrLeaseReleased)
			o, err := th.Acquire(ctx)
			require.NoError(t, err, "Acquire after Release")
			o.Release()

			if s.client == nil {
				return
			}
			// A lost lease cancels fn's context.
			lost := make(chan error, 1)
			call := WrapErr(key, 0, func(ctx context.Context) (int, error) {
				require.NoError(t, s.client.Del(context.Background(), s.store.(*RedisStore).name(key, leasesSuffix)).Err())
				select {
				case <-ctx.Done():
					lost <- context.Cause(ctx)
				case <-time.After(20 * ttl):
					lost <- nil
				}
				return 0, nil
			}, WithStore(s.store), WithConcurrency(1), WithLeaseTTL(ttl))
			_, err = call(ctx)
			require.NoError(t, err)
			assert.ErrorIs(t, <-lost, ErrLeaseLost, "cause of fn's context after its lease was deleted")
		})
	}
}

// TestLeaseWaitWokenByRelease: a waiter gets the lease right after the
// holder releases it, long before the holder's lease would expire.
func TestLeaseWaitWokenByRelease(t *testing.T) {
	for _, s := range leaseStores(t) {
		t.Run(s.name, func(t *testing.T) {
			key := "wake/" + t.Name()
			opts := []Option{WithStore(s.store), WithConcurrency(1), WithLeaseTTL(time.Minute), WithWait(30 * time.Second)}
			holder, err := New(key, 0, opts...)
			require.NoError(t, err)
			l, err := holder.Acquire(context.Background())
			require.NoError(t, err)
			released := make(chan time.Time, 1)
			go func() {
				time.Sleep(100 * time.Millisecond)
				released <- time.Now()
				l.Release()
			}()
			waiter, err := New(key, 0, opts...)
			require.NoError(t, err)
			w, err := waiter.Acquire(context.Background())
			got := time.Now()
			require.NoError(t, err)
			w.Release()
			lag := got.Sub(<-released)
			t.Logf("admitted %v after the release", lag)
			assert.Less(t, lag, 10*time.Second, "wait after the release (lease TTL 1m)")
		})
	}
}

// TestLeaseWaitCutShort: a waiter whose context ends returns ctx's error
// and leaves no lease behind.
func TestLeaseWaitCutShort(t *testing.T) {
	for _, s := range leaseStores(t) {
		t.Run(s.name, func(t *testing.T) {
			key := "cut/" + t.Name()
			th, err := New(key, time.Second, WithStore(s.store), WithConcurrency(2), WithWait(time.Minute))
			require.NoError(t, err)
			l, err := th.Acquire(context.Background())
			require.NoError(t, err)
			// The rate books the next start a second ahead; the wait ends first.
			ctx, cancel := context.WithCancel(context.Background())
			stop := time.AfterFunc(100*time.Millisecond, cancel)
			defer stop.Stop()
			_, err = th.Acquire(ctx)
			assert.ErrorIs(t, err, context.Canceled)
			capOnly, err := New(key, 0, WithStore(s.store), WithConcurrency(2))
			require.NoError(t, err)
			o, err := capOnly.Acquire(context.Background())
			require.NoError(t, err, "the cut-short wait left its lease")
			o.Release()
			l.Release()
		})
	}
}

// failingLeaser is a Leaser whose every call fails.
type failingLeaser struct{}

var errFailing = errors.New("store down")

func (failingLeaser) Take(context.Context, string, Request) (Reservation, error) {
	return Reservation{}, errFailing
}
func (failingLeaser) Cancel(context.Context, string, Request, Reservation) error { return errFailing }
func (failingLeaser) TakeLease(context.Context, string, Request, string) (Reservation, error) {
	return Reservation{}, errFailing
}
func (failingLeaser) RenewLease(context.Context, string, Request, string) (bool, error) {
	return false, errFailing
}
func (failingLeaser) ReleaseLease(context.Context, string, Request, string) error { return errFailing }
func (failingLeaser) AwaitLease(context.Context, string, Request, time.Duration) error {
	return errFailing
}

func TestLeaseStoreFailurePolicy(t *testing.T) {
	ctx := context.Background()
	fn := func(ctx context.Context) (int, error) { return 1, ctx.Err() }
	closed := WrapErr("fail", 0, fn, WithStore(failingLeaser{}), WithConcurrency(1))
	_, err := closed(ctx)
	assert.ErrorIs(t, err, ErrStoreUnavailable, "fail closed")
	assert.ErrorIs(t, err, errFailing)

	open := WrapErr("fail", 0, fn, WithStore(failingLeaser{}), WithConcurrency(1), WithFailOpen())
	v, err := open(ctx)
	assert.NoError(t, err, "fail open")
	assert.Equal(t, 1, v)

	th, err := New("fail", 0, WithStore(failingLeaser{}), WithConcurrency(3), WithFallback(1))
	require.NoError(t, err)
	l, err := th.Acquire(ctx)
	require.NoError(t, err, "the fallback's one lease")
	_, err = th.Acquire(ctx)
	assert.ErrorIs(t, err, ErrThrottled, "the fallback's cap of 1")
	assert.ErrorIs(t, err, ErrStoreUnavailable)
	l.Release()
	l, err = th.Acquire(ctx)
	require.NoError(t, err, "the fallback's lease after a release")
	l.Release()
}
