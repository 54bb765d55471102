package throttle

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dthrottle/throttle/internal/redistest"
)

// windowStore is a store with windows on a fake clock: bucket(per) is how
// late the store may admit under a window of length per (RedisStore's
// bucket windows count a start at the end of its bucket; MemoryStore is
// exact).
type windowStore struct {
	name    string
	store   Store
	advance func(time.Duration)
	bucket  func(per time.Duration) time.Duration
	client  *redis.Client // nil for the memory store
}

func windowStores(t *testing.T) []windowStore {
	mem, memAdvance := fakeMemory()
	mr, mrAdvance := fakeMiniredis(t)
	c := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	t.Cleanup(func() { _ = c.Close() })
	return []windowStore{
		{name: "memory", store: mem, advance: memAdvance, bucket: func(time.Duration) time.Duration { return 0 }},
		{name: "miniredis", store: NewRedisStore(c), advance: mrAdvance, client: c,
			bucket: func(per time.Duration) time.Duration { return time.Duration((micros(per)+159)/160) * time.Microsecond }},
	}
}

// TestLimitPerRefusalUsesNoOtherWindow is the case of issue 21: with 2
// starts per 200 ms and 3 per 2 s, the third call is refused by the short
// window; once that window has passed, one more call is still admitted,
// which fails if the refusal had used up the long window (as chained
// limiters do), and the call after it is refused by the long window.
func TestLimitPerRefusalUsesNoOtherWindow(t *testing.T) {
	for _, ws := range windowStores(t) {
		t.Run(ws.name, func(t *testing.T) {
			const short, long = 200 * time.Millisecond, 2 * time.Second
			th, err := New("issue21", short, WithLimit(2), WithLimitPer(3, long), WithStore(ws.store), WithDenyCache(false))
			require.NoError(t, err)
			ctx := context.Background()
			allow := func(want bool, what string) Decision {
				t.Helper()
				d, err := th.Allow(ctx)
				require.NoError(t, err, what)
				require.Equal(t, want, d.Allowed, what)
				return d
			}
			allow(true, "first call")
			allow(true, "second call")
			d := allow(false, "third call, refused by the short window")
			assert.GreaterOrEqual(t, d.RetryAfter, short, "third call's RetryAfter")
			assert.LessOrEqual(t, d.RetryAfter, short+ws.bucket(short), "third call's RetryAfter")
			elapsed := d.RetryAfter
			ws.advance(elapsed)
			allow(true, "fourth call, once the short window passed: the long window has room")
			d = allow(false, "fifth call, refused by the long window")
			assert.GreaterOrEqual(t, d.RetryAfter, long-elapsed, "fifth call's RetryAfter: the latest window's")
			assert.LessOrEqual(t, d.RetryAfter, long-elapsed+ws.bucket(long), "fifth call's RetryAfter")
			ws.advance(d.RetryAfter)
			allow(true, "sixth call, once the long window passed")
		})
	}
}

// TestLimitPerKeepsEveryWindow runs random schedules of Take (now, booked,
// and cancelled) under three windows on both stores, on fake clocks, and
// checks them against the exact sliding window of every window:
//   - no window ever holds more than its limit (checked over every start,
//     booked ones at their booked time, cancelled ones left out);
//   - a denial of a call that may not wait has, in some window, the limit
//     of starts (or of starts and handed-back bookings, which a store may
//     keep) from its length (plus one bucket on Redis) before it on;
//   - a denial's RetryAfter is exact: one microsecond earlier the store
//     still denies, and at it the store admits.
func TestLimitPerKeepsEveryWindow(t *testing.T) {
	windows := []Window{{Interval: time.Second, Limit: 10}, {Interval: 4 * time.Second, Limit: 24}}
	base := Request{Interval: 100 * time.Millisecond, Limit: 3, Windows: windows}
	all := append([]Window{{Interval: base.Interval, Limit: base.Limit}}, windows...)
	for _, ws := range windowStores(t) {
		for seed := range uint64(2) {
			t.Run(fmt.Sprintf("%s seed %d", ws.name, seed), func(t *testing.T) {
				ctx := context.Background()
				key := t.Name()
				rng := rand.New(rand.NewPCG(seed, 21))
				var now time.Duration
				// starts are the starts that happen; handed back are the
				// cancelled bookings, which a store may still count.
				var starts, handedBack []time.Duration
				advance := func(d time.Duration) { ws.advance(d); now += d }
				alone := make([]int, len(all)) // denials where only window i is full
				full := func() bool {
					var which []int
					for i, w := range all {
						n := 0
						for _, s := range append(slices.Clone(starts), handedBack...) {
							if s > now-w.Interval-ws.bucket(w.Interval) {
								n++
							}
						}
						if n >= w.Limit {
							which = append(which, i)
						}
					}
					if len(which) == 1 {
						alone[which[0]]++
					}
					return len(which) > 0
				}
				var last Reservation // the newest booking not cancelled, if any
				lastAt := -1
				admitted, denied, booked, cancelled, probed := 0, 0, 0, 0, 0
				for i := range 2500 {
					step := time.Duration(rng.Int64N(int64(40*time.Millisecond))) / time.Microsecond * time.Microsecond
					if rng.IntN(100) == 0 {
						step = time.Duration(rng.Int64N(int64(5*time.Second))) / time.Microsecond * time.Microsecond
					}
					advance(step)
					if lastAt >= 0 && rng.IntN(6) == 0 {
						// Hand back the newest booking, sometimes twice
						// (a replay): the start does not happen.
						for range 1 + rng.IntN(2) {
							require.NoError(t, ws.store.Cancel(ctx, key, base, last), "Cancel %d", i)
						}
						handedBack = append(handedBack, starts[lastAt])
						starts = slices.Delete(starts, lastAt, lastAt+1)
						lastAt = -1
						cancelled++
					}
					req := base
					if rng.IntN(4) == 0 {
						req.MaxWait = time.Duration(rng.Int64N(int64(500*time.Millisecond))) / time.Microsecond * time.Microsecond
					}
					res, err := ws.store.Take(ctx, key, req)
					require.NoError(t, err, "Take %d", i)
					if res.OK {
						require.LessOrEqual(t, res.Delay, req.MaxWait, "Take %d: delay", i)
						starts = append(starts, now+res.Delay)
						admitted++
						if res.Delay > 0 {
							last, lastAt = res, len(starts)-1
							booked++
						}
						continue
					}
					denied++
					if req.MaxWait > 0 {
						continue
					}
					require.True(t, full(), "Take %d at %v denied with no window full: %+v, starts %v", i, now, res, starts)
					require.Positive(t, res.RetryAfter, "Take %d: RetryAfter of a denial", i)
					if rng.IntN(3) != 0 || res.RetryAfter <= time.Microsecond {
						continue
					}
					probed++
					advance(res.RetryAfter - time.Microsecond)
					res2, err := ws.store.Take(ctx, key, base)
					require.NoError(t, err, "probe %d", i)
					require.False(t, res2.OK, "Take %d: admitted 1µs before the RetryAfter %v", i, res.RetryAfter)
					advance(time.Microsecond)
					res2, err = ws.store.Take(ctx, key, base)
					require.NoError(t, err, "probe %d", i)
					require.True(t, res2.OK, "Take %d: denied at the RetryAfter %v", i, res.RetryAfter)
					require.Zero(t, res2.Delay, "Take %d: delay at the RetryAfter", i)
					starts = append(starts, now)
					admitted++
				}
				sorted := slices.Clone(starts)
				slices.Sort(sorted)
				for _, w := range all {
					for i := 0; i+w.Limit < len(sorted); i++ {
						require.GreaterOrEqual(t, sorted[i+w.Limit]-sorted[i], w.Interval,
							"%d starts from %v within %v: more than %d per %v", w.Limit+1, sorted[i], w.Interval, w.Limit, w.Interval)
					}
				}
				t.Logf("%d admitted (%d booked, %d cancelled), %d denied (by one window alone: %v), %d RetryAfter probes", admitted, booked, cancelled, denied, alone, probed)
				for i, w := range all {
					assert.Positive(t, alone[i], "denials by %d per %v alone: every window binds in turn", w.Limit, w.Interval)
				}
				assert.Greater(t, admitted, 200, "admissions")
				assert.Greater(t, denied, 200, "denials")
				assert.Greater(t, booked, 20, "bookings")
				assert.Greater(t, cancelled, 5, "cancels")
				assert.Greater(t, probed, 20, "RetryAfter probes")
				if ws.client != nil {
					// One hash keeps every window: at most 643 fields each
					// (3 of its own and a ring of 640), and the hold.
					name := ws.store.(*RedisStore).windowKeys(key, base)[0]
					n, err := ws.client.HLen(ctx, name).Result()
					require.NoError(t, err)
					assert.LessOrEqual(t, n, int64(1+643*len(all)), "fields of %s", name)
				}
			})
		}
	}
}

// TestLimitPerCancelHandsBackOnlyItsBooking hands a booking back, replays
// the cancel, books again in its place and replays the first cancel once
// more: the replays change nothing, so the next booking goes after the
// long window's limit. The cancel must free the start in every window: if
// the long window kept it, the second booking would come 250 ms later.
func TestLimitPerCancelHandsBackOnlyItsBooking(t *testing.T) {
	mr, _ := fakeMiniredis(t)
	mc := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	t.Cleanup(func() { _ = mc.Close() })
	type server struct {
		name  string
		store Store
		real  bool // on the real clock, which moves between the calls
	}
	mem, _ := fakeMemory()
	servers := []server{{"memory", mem, false}, {"miniredis", NewRedisStore(mc), false}}
	if redistest.Available() || requireRedis() {
		servers = append(servers,
			server{"redis", NewRedisStore(redistest.Start(t).Client(t)), true},
			server{"cluster", NewRedisStore(redistest.StartCluster(t, 3).Client(t)), true})
	} else {
		t.Log("redis-server not found: runs on miniredis only")
	}
	for _, srv := range servers {
		t.Run(srv.name, func(t *testing.T) {
			s := srv.store
			ctx := context.Background()
			req := Request{Interval: 100 * time.Millisecond, Limit: 2, Windows: []Window{{Interval: 250 * time.Millisecond, Limit: 3}}}
			book := req
			book.MaxWait = 2 * time.Second
			// slack is how far the real clock moved since the first start
			// was asked for: the most a delay can be short of its place.
			began := time.Now()
			slack := func() time.Duration {
				if !srv.real {
					return 0
				}
				return time.Since(began)
			}
			for i := range 2 {
				res, err := s.Take(ctx, "replay", req)
				require.NoError(t, err)
				require.True(t, res.OK && res.Delay == 0, "start %d now", i)
			}
			first, err := s.Take(ctx, "replay", book)
			require.NoError(t, err)
			require.True(t, first.OK, "first booking")
			assert.InDelta(t, 100*time.Millisecond, first.Delay, float64(2*time.Millisecond+slack()), "first booking: after the short window")
			require.NoError(t, s.Cancel(ctx, "replay", book, first))
			require.NoError(t, s.Cancel(ctx, "replay", book, first), "replayed cancel")
			second, err := s.Take(ctx, "replay", book)
			require.NoError(t, err)
			require.True(t, second.OK, "second booking")
			assert.InDelta(t, first.Delay, second.Delay, float64(slack()), "second booking: in the place the first left, in every window")
			require.NoError(t, s.Cancel(ctx, "replay", book, first), "late replay of the first cancel")
			third, err := s.Take(ctx, "replay", book)
			require.NoError(t, err)
			require.True(t, third.OK, "third booking")
			assert.GreaterOrEqual(t, third.Delay, 250*time.Millisecond-slack(), "third booking: the long window holds 0, 0 and the second booking")
		})
	}
}

// TestLimitPerWaitHandsBackInEveryWindow: a Wait whose ctx ends hands its
// booking back in both windows. With 2 per 100 ms and 4 per 1 s, after
// two starts and a cancelled booking at 100 ms, two more calls are
// admitted at 100 ms (the short window did not keep the booking) and a
// fifth is refused by the long window (which did not keep it either: with
// it, the second of those calls would be refused).
func TestLimitPerWaitHandsBackInEveryWindow(t *testing.T) {
	for _, ws := range windowStores(t) {
		t.Run(ws.name, func(t *testing.T) {
			th, err := New("wait", 100*time.Millisecond, WithLimit(2), WithLimitPer(4, time.Second), WithStore(ws.store), WithDenyCache(false))
			require.NoError(t, err)
			ctx := context.Background()
			for i := range 2 {
				d, err := th.Allow(ctx)
				require.NoError(t, err)
				require.True(t, d.Allowed, "start %d", i)
			}
			// The fake clock stands still, so the booking's timer (real
			// time, 100 ms) outlasts the ctx.
			wctx, cancel := context.WithCancel(ctx)
			defer cancel()
			time.AfterFunc(20*time.Millisecond, cancel)
			require.ErrorIs(t, th.Wait(wctx), context.Canceled, "Wait whose ctx ends before its turn")
			ws.advance(100*time.Millisecond + ws.bucket(100*time.Millisecond))
			for i := range 2 {
				d, err := th.Allow(ctx)
				require.NoError(t, err)
				require.True(t, d.Allowed, "start %d after the short window", i)
			}
			d, err := th.Allow(ctx)
			require.NoError(t, err)
			assert.False(t, d.Allowed, "fifth start within the long window")
		})
	}
}

// TestLimitPerKeyedWait waits through a Keyed with two windows on the real
// clock: each key books its own starts in both windows, and no key slows
// another.
func TestLimitPerKeyedWait(t *testing.T) {
	const short, long = 50 * time.Millisecond, 300 * time.Millisecond
	k, err := NewKeyed(short, WithLimit(2), WithLimitPer(3, long))
	require.NoError(t, err)
	ctx := context.Background()
	type call struct{ asked, started time.Time }
	var mu sync.Mutex
	calls := map[string][]call{}
	var wg sync.WaitGroup
	for _, key := range []string{"a", "b"} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 4 {
				asked := time.Now()
				if !assert.NoError(t, k.Wait(ctx, key), "Wait %s", key) {
					return
				}
				mu.Lock()
				calls[key] = append(calls[key], call{asked, time.Now()})
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	for key, cs := range calls {
		require.Len(t, cs, 4, "calls of %s", key)
		// Starts 0 and 1 are admitted at once; 2 only after the short
		// window, 3 only after the long one (sound: start minus ask).
		assert.GreaterOrEqual(t, cs[2].started.Sub(cs[0].asked), short, "%s: third start after the short window", key)
		assert.GreaterOrEqual(t, cs[3].started.Sub(cs[0].asked), long, "%s: fourth start after the long window", key)
		assert.Less(t, cs[3].started.Sub(cs[0].asked), long+time.Second, "%s: fourth start within a generous bound", key)
	}
}

// TestLimitPerHoldAndResetCoverEveryWindow holds and resets a key with two
// windows on Redis (fake clock) and checks every window's key.
func TestLimitPerHoldAndResetCoverEveryWindow(t *testing.T) {
	mr, advance := fakeMiniredis(t)
	c := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	t.Cleanup(func() { _ = c.Close() })
	s := NewRedisStore(c)
	th, err := New("hr", 100*time.Millisecond, WithLimit(2), WithLimitPer(3, time.Second), WithStore(s), WithDenyCache(false))
	require.NoError(t, err)
	ctx := context.Background()
	allowed := func() bool {
		t.Helper()
		d, err := th.Allow(ctx)
		require.NoError(t, err)
		return d.Allowed
	}
	require.True(t, allowed())
	require.True(t, allowed())
	advance(102 * time.Millisecond)
	require.True(t, allowed(), "third start, after the short window")
	require.False(t, allowed(), "fourth start, within the long window")

	req := th.c.request(0)
	keys := s.KeysFor("hr", req)
	assert.Equal(t, []string{"throttle:{hr}:w:100000:2:1000000:3", "throttle:{hr}:hold"}, keys, "KeysFor")
	for _, name := range mr.Keys() {
		assert.Contains(t, keys, name, "a key written is among KeysFor")
	}
	require.NoError(t, th.Reset(ctx))
	assert.Empty(t, mr.Keys(), "keys after Reset")
	require.True(t, allowed(), "after Reset")
	require.True(t, allowed(), "after Reset: the long window was reset too")

	require.NoError(t, th.Hold(ctx, 500*time.Millisecond))
	h, err := c.HGet(ctx, keys[0], "hold").Result()
	require.NoError(t, err, "hold of %s", keys[0])
	assert.NotEmpty(t, h, "hold of %s", keys[0])
	held, err := th.Held(ctx)
	require.NoError(t, err)
	assert.InDelta(t, 500*time.Millisecond, held, float64(time.Millisecond), "Held")
	advance(200 * time.Millisecond)
	d, err := th.Allow(ctx)
	require.NoError(t, err)
	assert.False(t, d.Allowed, "during the hold, with room in both windows")
	assert.Equal(t, 300*time.Millisecond, d.RetryAfter, "RetryAfter during the hold")
	advance(300 * time.Millisecond)
	assert.True(t, allowed(), "after the hold")
}

// plainStore is a Store that does not say it keeps windows.
type plainStore struct{ Store }

func TestLimitPerOptions(t *testing.T) {
	th, err := New("k", time.Second, WithLimit(10), WithLimitPer(5, time.Second), WithLimitPer(100, time.Hour),
		WithLimitPer(50, time.Minute), WithLimitPer(70, time.Minute), WithLimitPer(20, 10*time.Second), WithLimitPer(90, time.Hour))
	require.NoError(t, err)
	assert.Equal(t, 5, th.c.cfg.limit, "a window of the interval's length tightens the limit")
	assert.Equal(t, []Window{{10 * time.Second, 20}, {time.Minute, 50}, {time.Hour, 90}}, th.c.cfg.windows,
		"windows of one length merged to the tightest, shortest first")
	assert.Nil(t, th.c.permits, "no leased permits with windows")

	_, err = NewKeyed(time.Second, WithLimitPer(0, time.Hour))
	require.EqualError(t, err, "throttle: WithLimitPer limit 0 is below 1", "NewKeyed")
	_, err = NewKeyed(time.Second, WithStore(plainStore{NewMemoryStore()}), WithLimitPer(1, time.Hour))
	require.ErrorContains(t, err, "is not a WindowStore", "NewKeyed on a store that does not keep windows")
	_, err = New("k", time.Second, WithStore(plainStore{NewMemoryStore()}))
	require.NoError(t, err, "a store that does not keep windows, without windows")

	// The options are copied, not shared: a throttle's windows do not move
	// when another is made from the same options.
	opts := []Option{WithLimitPer(3, time.Minute)}
	a, err := New("a", time.Second, opts...)
	require.NoError(t, err)
	b, err := New("b", time.Second, append(opts, WithLimitPer(2, time.Minute))...)
	require.NoError(t, err)
	assert.Equal(t, 3, a.c.cfg.windows[0].Limit, "a's window")
	assert.Equal(t, 2, b.c.cfg.windows[0].Limit, "b's window")
}

// TestLimitPerRingRefusalRetryAfter: a booking that a window's ring cannot
// hold yet is refused with a RetryAfter that is positive and exact, the
// time at which that window's current bucket lets the booking fit. With 1
// per 100 ms (buckets of 625 µs, at most 477 buckets ahead) and 1 per
// 300 ms (buckets of 1875 µs), a call 298.7 ms before the long window
// admits again is 478 short buckets ahead: refused for 575 µs.
func TestLimitPerRingRefusalRetryAfter(t *testing.T) {
	mr, advance := fakeMiniredis(t)
	c := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	t.Cleanup(func() { _ = c.Close() })
	s := NewRedisStore(c)
	ctx := context.Background()
	req := Request{Interval: 100 * time.Millisecond, Limit: 1, Windows: []Window{{Interval: 300 * time.Millisecond, Limit: 1}}}
	now, err := c.Time(ctx).Result()
	require.NoError(t, err)
	res, err := s.Take(ctx, "ring", req)
	require.NoError(t, err)
	require.True(t, res.OK, "first start")
	// The long window admits from the end of its bucket plus 161 buckets.
	n := now.UnixMicro()
	at := (n/1875 + 161) * 1875
	advance(time.Duration(at-298_700-n) * time.Microsecond)
	book := req
	book.MaxWait = time.Second
	res, err = s.Take(ctx, "ring", book)
	require.NoError(t, err)
	require.False(t, res.OK, "a booking 478 short buckets ahead")
	assert.Equal(t, 575*time.Microsecond, res.RetryAfter, "RetryAfter: when the short window's ring holds the booking")
	advance(res.RetryAfter - time.Microsecond)
	res, err = s.Take(ctx, "ring", book)
	require.NoError(t, err)
	require.False(t, res.OK, "1 µs before the RetryAfter")
	advance(time.Microsecond)
	res, err = s.Take(ctx, "ring", book)
	require.NoError(t, err)
	require.True(t, res.OK, "at the RetryAfter")
	assert.Equal(t, 298_125*time.Microsecond, res.Delay, "booked where the long window admits")
}

// TestLimitPerOneHashOneWrite: the windows of a throttle share one hash,
// so an admitted decision reads them with one HMGET (two when a head moves
// past a bucket that left its window) and writes them with one HSET and at
// most one PEXPIREAT, whatever the number of windows; a window whose
// newest start left it (the hash outlives it for a longer window) is read
// as empty without a walk.
func TestLimitPerOneHashOneWrite(t *testing.T) {
	srv := redistest.Start(t)
	c := srv.Client(t)
	s := NewRedisStore(c)
	ctx := context.Background()
	req := Request{Interval: 20 * time.Millisecond, Limit: 10, Windows: []Window{
		{Interval: time.Minute, Limit: 1000}, {Interval: time.Hour, Limit: 5000}}}
	stat := func() map[string]string {
		info, err := c.Info(ctx, "commandstats").Result()
		require.NoError(t, err)
		m := map[string]string{}
		for _, line := range strings.Split(info, "\n") {
			if name, rest, ok := strings.Cut(strings.TrimPrefix(strings.TrimSpace(line), "cmdstat_"), ":calls="); ok {
				m[name], _, _ = strings.Cut(rest, ",")
			}
		}
		return m
	}
	for i := range 6 {
		if i == 3 {
			// The short window's starts all leave it; the hash stays.
			time.Sleep(req.Interval + 2*time.Millisecond)
		}
		require.NoError(t, c.ConfigResetStat(ctx).Err())
		res, err := s.Take(ctx, "onehash", req)
		require.NoError(t, err)
		require.True(t, res.OK, "decision %d", i)
		st := stat()
		assert.Equal(t, "1", st["evalsha"], "decision %d: one script", i)
		assert.Equal(t, "1", st["hmget"], "decision %d: HMGET of every window's fields at once", i)
		assert.Equal(t, "1", st["hset"], "decision %d: one HSET for every window", i)
		assert.Contains(t, []string{"", "1"}, st["pexpireat"], "decision %d: at most one PEXPIREAT", i)
		assert.Empty(t, st["hget"], "decision %d: no walk", i)
		time.Sleep(time.Millisecond) // a new bucket of the short window
	}
	keys := s.KeysFor("onehash", req)
	require.Len(t, keys, 2)
	n, err := c.Exists(ctx, keys...).Result()
	require.NoError(t, err)
	assert.EqualValues(t, 1, n, "the windows' hash, and no hold record")
}
