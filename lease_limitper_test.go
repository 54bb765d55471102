package throttle

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dthrottle/throttle/internal/redistest"
	"github.com/dthrottle/throttle/internal/simevent"
)

// TestLeaseWindowsContract checks TakeLease with windows (WithConcurrency
// and WithLimitPer) on every Leaser: the cap and every window hold under
// concurrent callers, and a call refused by the cap or by any one window
// uses nothing of the others. Each check fails for a store that decides
// the cap and the windows in two steps: one that counts the windows before
// it looks at the cap uses up a start for a call the cap refuses; one that
// takes the lease first keeps a lease for a call a window refuses.
func TestLeaseWindowsContract(t *testing.T) {
	ctx := context.Background()
	for _, h := range leaseHarnesses(t) {
		t.Run(h.name, func(t *testing.T) {
			key := func(t *testing.T) string { return "leasewindows/" + t.Name() }
			t.Run("40 concurrent", func(t *testing.T) {
				// 5 per minute and 3 per hour, cap 4: the long window binds.
				req := Request{Interval: time.Minute, Limit: 5, Concurrency: 4, LeaseTTL: time.Minute,
					Windows: []Window{{Interval: time.Hour, Limit: 3}}}
				assert.Len(t, takeLeasesConcurrently(t, h.store, key(t)+"/window", req, 40), 3, "3 per hour, cap 4: admitted")
				// 3 per minute and 5 per hour, cap 4: the own window binds.
				req.Limit, req.Windows = 3, []Window{{Interval: time.Hour, Limit: 5}}
				assert.Len(t, takeLeasesConcurrently(t, h.store, key(t)+"/own", req, 40), 3, "3 per minute, cap 4: admitted")
				// 10 per minute and 20 per hour, cap 2: the cap binds.
				req.Limit, req.Concurrency, req.Windows = 10, 2, []Window{{Interval: time.Hour, Limit: 20}}
				assert.Len(t, takeLeasesConcurrently(t, h.store, key(t)+"/cap", req, 40), 2, "cap 2: admitted")
			})
			// In each case the first two starts fill the window named; a
			// third is refused by that window alone.
			for _, tc := range []struct {
				name string
				req  Request
			}{
				{"own window full", Request{Interval: time.Minute, Limit: 2, Windows: []Window{{Interval: time.Hour, Limit: 3}}}},
				{"long window full", Request{Interval: time.Minute, Limit: 3, Windows: []Window{{Interval: time.Hour, Limit: 2}}}},
				{"middle window full", Request{Interval: time.Minute, Limit: 3,
					Windows: []Window{{Interval: time.Hour, Limit: 2}, {Interval: 24 * time.Hour, Limit: 3}}}},
			} {
				t.Run(tc.name+"/a refusal uses nothing of the other", func(t *testing.T) {
					k := key(t)
					req := tc.req
					req.Concurrency, req.LeaseTTL = 1, time.Minute
					a := takeLease(t, h.store, k, req, "a")
					require.True(t, a.OK, "first: got %+v", a)
					b := takeLease(t, h.store, k, req, "b")
					assert.False(t, b.OK, "second with the lease held: got %+v", b)
					assert.True(t, b.Full, "second with the lease held: refused by the cap: got %+v", b)
					require.NoError(t, h.store.ReleaseLease(ctx, k, req, "a"))
					// The cap's refusal used no start of any window: the
					// second start is free in each.
					c := takeLease(t, h.store, k, req, "c")
					assert.True(t, c.OK, "after release: got %+v, want the second start of every window", c)
					require.NoError(t, h.store.ReleaseLease(ctx, k, req, "c"))
					// Now one window is full: it refuses, and the refused
					// call holds no lease.
					d := takeLease(t, h.store, k, req, "d")
					assert.False(t, d.OK, "third start: got %+v", d)
					assert.False(t, d.Full, "third start: refused by a window, not the cap: got %+v", d)
					assert.Greater(t, d.RetryAfter, 30*time.Second, "third start's RetryAfter: the full window's")
					held, err := h.store.RenewLease(ctx, k, req, "d")
					require.NoError(t, err)
					assert.False(t, held, "the lease of a call a window refused")
				})
			}
			t.Run("a booking is handed back in every window, and its lease released", func(t *testing.T) {
				k := key(t)
				req := Request{Interval: 200 * time.Millisecond, Limit: 1, Concurrency: 2, LeaseTTL: time.Minute,
					Windows: []Window{{Interval: time.Hour, Limit: 2}}}
				a := takeLease(t, h.store, k, req, "a")
				require.True(t, a.OK && a.Delay == 0, "first, now: got %+v", a)
				book := req
				book.MaxWait = time.Second
				b := takeLease(t, h.store, k, book, "b")
				require.True(t, b.OK && b.Delay > 0, "second, booked after the own window: got %+v", b)
				c := takeLease(t, h.store, k, book, "c")
				assert.False(t, c.OK, "third: the long window is full (a and b): got %+v", c)
				assert.False(t, c.Full, "third: refused by the long window before the cap: got %+v", c)
				require.NoError(t, h.store.Cancel(ctx, k, book, b))
				require.NoError(t, h.store.ReleaseLease(ctx, k, book, "b"))
				// b's start is back in both windows, and its lease.
				d := takeLease(t, h.store, k, book, "d")
				require.True(t, d.OK, "after the hand-back: got %+v", d)
				assert.Greater(t, d.Delay, time.Duration(0), "after the hand-back: booked after a in the own window")
				e := takeLease(t, h.store, k, book, "e")
				assert.False(t, e.OK, "after d: the long window is full again: got %+v", e)
			})
			if h.redis == nil {
				return
			}
			t.Run("a replayed take counts nothing twice", func(t *testing.T) {
				k := key(t)
				req := Request{Interval: time.Minute, Limit: 2, Concurrency: 2, LeaseTTL: time.Minute,
					Windows: []Window{{Interval: time.Hour, Limit: 2}}}
				a := takeLease(t, h.store, k, req, "a")
				require.True(t, a.OK, "first: got %+v", a)
				again := takeLease(t, h.store, k, req, "a")
				assert.True(t, again.OK && again.Delay == 0, "the same take run again (a lost reply): got %+v", again)
				b := takeLease(t, h.store, k, req, "b")
				assert.True(t, b.OK, "second start: the replay counted none: got %+v", b)
			})
		})
	}
}

// takeLease calls s.TakeLease and fails t on an error.
func takeLease(t *testing.T, s Leaser, key string, req Request, token string) Reservation {
	t.Helper()
	res, err := s.TakeLease(context.Background(), key, req, token)
	require.NoError(t, err, "TakeLease(%q, %+v, %q)", key, req, token)
	return res
}

// TestConcurrencyWithLimitPer runs Acquire on a throttle with a cap and two
// windows on every Leaser: a waiter for a lease wakes when one is released,
// a refusal by a window is throttled with its RetryAfter, and a wait cut
// short hands back its booking and its lease.
func TestConcurrencyWithLimitPer(t *testing.T) {
	for _, h := range leaseHarnesses(t) {
		t.Run(h.name, func(t *testing.T) {
			ctx := context.Background()
			opts := []Option{WithStore(h.store), WithLimit(10), WithLimitPer(3, time.Hour), WithConcurrency(1),
				WithLeaseTTL(time.Minute), WithDenyCache(false)}
			th, err := New("concwindows/"+t.Name(), time.Second, append(opts, WithWait(5*time.Second))...)
			require.NoError(t, err)
			l1, err := th.Acquire(ctx)
			require.NoError(t, err, "first Acquire")
			got := make(chan error, 1)
			go func() {
				l, err := th.Acquire(ctx)
				if err == nil {
					l.Release()
				}
				got <- err
			}()
			select {
			case err := <-got:
				t.Fatalf("second Acquire returned %v while the lease was held", err)
			case <-time.After(50 * time.Millisecond):
			}
			l1.Release()
			select {
			case err := <-got:
				require.NoError(t, err, "second Acquire, woken by the release")
			case <-time.After(5 * time.Second):
				t.Fatal("second Acquire did not return within 5 s of the release")
			}
			// Two starts of three in the hour are used. A third is
			// admitted; a fourth is refused by the long window.
			l3, err := th.Acquire(ctx)
			require.NoError(t, err, "third Acquire")
			l3.Release()
			nowait, err := New("concwindows/"+t.Name(), time.Second, opts...)
			require.NoError(t, err)
			_, err = nowait.Acquire(ctx)
			var te *ThrottledError
			require.ErrorAs(t, err, &te, "fourth Acquire, refused by the long window")
			assert.False(t, errors.Is(err, ErrAtCapacity), "fourth Acquire: not the cap: %v", err)
			assert.Greater(t, te.RetryAfter, 50*time.Minute, "fourth Acquire's RetryAfter: the long window's")
		})
	}
}

// TestConcurrencyWithLimitPerWaitCutShort: an Acquire whose booked start is
// cut short by its ctx hands back the start in every window and releases
// its lease, so that the next caller gets both.
func TestConcurrencyWithLimitPerWaitCutShort(t *testing.T) {
	for _, h := range leaseHarnesses(t) {
		if h.fake {
			continue // the booked start is slept on the real clock
		}
		t.Run(h.name, func(t *testing.T) {
			key := fmt.Sprint("concwindows-cut/", t.Name())
			th, err := New(key, 300*time.Millisecond, WithStore(h.store), WithLimitPer(2, time.Hour), WithConcurrency(2),
				WithLeaseTTL(time.Minute), WithWait(5*time.Second))
			require.NoError(t, err)
			l1, err := th.Acquire(context.Background())
			require.NoError(t, err, "first Acquire")
			defer l1.Release()
			ctx, cancel := context.WithCancel(context.Background())
			got := make(chan error, 1)
			go func() {
				l, err := th.Acquire(ctx)
				if err == nil {
					l.Release()
				}
				got <- err
			}()
			time.Sleep(50 * time.Millisecond) // the second Acquire is booked and sleeps
			cancel()
			select {
			case err := <-got:
				require.ErrorIs(t, err, context.Canceled, "second Acquire, cut short")
			case <-time.After(5 * time.Second):
				t.Fatal("second Acquire did not return within 5 s of its ctx")
			}
			// With the booking kept in the long window (2 per hour), or
			// its lease kept (cap 2, one held by l1), this would fail.
			l3, err := th.Acquire(context.Background())
			require.NoError(t, err, "third Acquire: the start and the lease handed back")
			l3.Release()
		})
	}
}

// TestCrossProcessConcurrencyWindows runs lease workers on one key with a
// cap of 2 and two windows, 3 per 50 ms and 12 per 500 ms, under continuous
// demand: the cap and the short window bind within each burst, the long
// window across bursts. The cap and every window must hold (0 provable
// violations), and the long window's capacity must mostly be used.
func TestCrossProcessConcurrencyWindows(t *testing.T) {
	if testing.Short() {
		t.Skip("cross-process test skipped in -short mode")
	}
	mr := miniredis.RunT(t)
	mr.ClockTTL(true)
	type server struct {
		name    string
		addr    string
		cluster []string
	}
	servers := []server{{name: "miniredis", addr: mr.Addr()}}
	if redistest.Available() || requireRedis() {
		servers = append(servers, server{name: "redis", addr: redistest.Start(t).Addr},
			server{name: "cluster", cluster: redistest.StartCluster(t, 3).Addrs})
	} else {
		t.Log("redis-server not found: cross-process test runs on miniredis only")
	}
	long := Window{Interval: 500 * time.Millisecond, Limit: 12}
	const workers = 3
	for _, srv := range servers {
		for _, wait := range []time.Duration{0, time.Second} {
			t.Run(srv.name+"/wait "+wait.String(), func(t *testing.T) {
				spec := leaseSpec{Addr: srv.addr, Cluster: srv.cluster, Key: "xleasewin:" + t.Name(),
					Concurrency: 2, Interval: 50 * time.Millisecond, Limit: 3, Windows: []Window{long}, Wait: wait,
					LeaseTTL: 2 * time.Second, Duration: 1500 * time.Millisecond, Goroutines: 3}
				calls := runLeaseWorkers(t, workers, spec)
				checkLeaseCalls(t, calls, spec, workers, 0)
				as := make([]simevent.Admission, len(calls))
				for i, c := range calls {
					as[i] = simevent.Admission{Asked: c.Asked, Started: c.Start}
				}
				r := simevent.Check(as, long.Interval, long.Limit, spec.Duration)
				assert.GreaterOrEqual(t, r.AdmittedRatio(), 0.5, "admitted/ideal of the long window")
				peak, _ := maxInFlight(calls, spec.Duration)
				assert.Equal(t, spec.Concurrency, peak, "the cap binds: calls in flight at one instant")
			})
		}
	}
}

// TestWindowsSurviveKeyExpiringMidScript: on miniredis in real time (as
// the simulator runs it) a window's hash can expire between the script's
// read and its write, the more so with the cap's calls in between
// (leasewindows.lua). The hash the write leaves must still be a window: a
// Take after it decides (it failed with "bad argument #1 to find" when the
// write left 'c' without 'h'), and it expires.
func TestWindowsSurviveKeyExpiringMidScript(t *testing.T) {
	const anchor = "if redis.call('HSET', key, unpack(fields)) > 0 or moved then"
	for _, lease := range []bool{false, true} {
		t.Run(fmt.Sprint("lease ", lease), func(t *testing.T) {
			mr, c, now := stoppedMiniredis(t)
			ctx := context.Background()
			s := NewRedisStore(c, WithKeyPrefix(""))
			req := Request{Interval: time.Second, Limit: 5, Windows: []Window{{Interval: time.Minute, Limit: 10}},
				Concurrency: 10, LeaseTTL: time.Minute}
			for range 2 {
				res, err := s.Take(ctx, "k", req)
				require.NoError(t, err)
				require.True(t, res.OK)
			}
			mr.SetTime(now.Add(100 * time.Millisecond))
			windows := "local function windows(KEYS, ARGV, gate)\n" +
				inject(t, multiSource, anchor, "redis.call('DEL', key)") + "\nend\n"
			keys := s.windowKeys("k", req)
			args := multiArgs("t", req, 0, "0")
			src := bucketSource + windows + "return windows(KEYS, ARGV)\n"
			if lease {
				keys = append(s.LeaseKeys("k"), keys...)
				args = append(args, "tok", req.Concurrency, millis(req.LeaseTTL))
				src = leaseSetSource + bucketSource + windows + leaseWindowsSource
			}
			v, err := redis.NewScript(src).Run(ctx, c, keys, args...).Int64Slice()
			require.NoError(t, err)
			assert.EqualValues(t, 1, v[0], "admitted")
			k := s.windowKeys("k", req)[0]
			assert.Positive(t, mr.TTL(k), "the windows' hash %s expires", k)
			res, err := s.Take(ctx, "k", req)
			require.NoError(t, err, "Take after a window vanished mid-script")
			assert.True(t, res.OK, "Take after a window vanished mid-script")
		})
	}
}

// TestConcurrencyWithLimitPerLargeLimit: with windows, a cap takes a limit
// above 64 (the windows are bucket windows whatever the limit), which a
// cap with one rate refuses.
func TestConcurrencyWithLimitPerLargeLimit(t *testing.T) {
	_, err := New("k", time.Second, WithLimit(1000), WithConcurrency(2))
	require.EqualError(t, err, "throttle: WithConcurrency needs a limit of at most 64, not 1000", "a cap with one rate of 1000")
	for _, h := range leaseHarnesses(t) {
		if !h.fake {
			continue
		}
		t.Run(h.name, func(t *testing.T) {
			th, err := New("large/"+t.Name(), time.Second, WithStore(h.store), WithLimit(1000), WithLimitPer(5000, time.Hour),
				WithConcurrency(2), WithLeaseTTL(time.Minute))
			require.NoError(t, err, "a cap with 1000 per second and 5000 per hour")
			l1, err := th.Acquire(context.Background())
			require.NoError(t, err, "first Acquire")
			l2, err := th.Acquire(context.Background())
			require.NoError(t, err, "second Acquire")
			_, err = th.Acquire(context.Background())
			assert.ErrorIs(t, err, ErrAtCapacity, "third Acquire, two leases held")
			l1.Release()
			l2.Release()
		})
	}
}
