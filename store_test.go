package throttle

import (
	"context"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dthrottle/throttle/internal/redistest"
)

// harness is one Store under test with a way to move its clock.
type harness struct {
	name  string
	store Store
	// fake reports whether the store's clock moves only with advance, so
	// decisions happen at exact times.
	fake bool
	// advance moves the store's clock forward by d (fake) or sleeps at
	// least d (real).
	advance func(d time.Duration)
	// ttl returns the longest remaining expiry among the Redis keys of
	// the throttle key under limit (its slots or list, and its hold
	// record), or a negative duration when none exists (Redis stores
	// only).
	ttl func(key string, limit int) time.Duration
	// tick is how much later than the exact sliding window a booking may
	// start: Redis keeps a key through its expiry millisecond, so a slot
	// booked after a start (or a hold) is free from 1 ms after its expiry.
	// Chains of bookings add up, so the contract allows a few ticks.
	tick time.Duration
}

// fakeMemory returns a MemoryStore on a fake clock and the function that
// moves it.
func fakeMemory() (*MemoryStore, func(time.Duration)) {
	m := NewMemoryStore()
	var mu sync.Mutex
	var now int64 = 1 // not 0: a start at 0 must still count
	m.clock = func() int64 { mu.Lock(); defer mu.Unlock(); return now }
	return m, func(d time.Duration) { mu.Lock(); now += int64(d); mu.Unlock() }
}

// fakeMiniredis starts a miniredis whose TIME and TTLs both move only with
// the returned function.
func fakeMiniredis(tb testing.TB) (*miniredis.Miniredis, func(time.Duration)) {
	tb.Helper()
	m := miniredis.RunT(tb)
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	m.SetTime(now)
	var mu sync.Mutex
	return m, func(d time.Duration) {
		mu.Lock()
		defer mu.Unlock()
		now = now.Add(d)
		m.SetTime(now)
		m.FastForward(d)
	}
}

func redisTTL(tb testing.TB, c redis.UniversalClient, s *RedisStore) func(string, int) time.Duration {
	return func(key string, limit int) time.Duration {
		longest := time.Duration(-1)
		for _, name := range s.Keys(key, limit) {
			d, err := c.PTTL(context.Background(), name).Result()
			require.NoError(tb, err, "PTTL %q", name)
			longest = max(longest, d)
		}
		return longest
	}
}

// harnesses returns every store the contract runs on: MemoryStore and
// RedisStore on miniredis with fake clocks, and RedisStore on a real
// redis-server and on a 3-master Redis Cluster (skipped, or failed with
// THROTTLE_REQUIRE_REDIS=1, when the binaries are missing).
func harnesses(t *testing.T) []harness {
	mem, memAdvance := fakeMemory()
	mr, mrAdvance := fakeMiniredis(t)
	mc := redis.NewClient(&redis.Options{Addr: mr.Addr(), ContextTimeoutEnabled: true})
	t.Cleanup(func() { _ = mc.Close() })
	ms := NewRedisStore(mc)
	hs := []harness{
		{name: "memory", store: mem, fake: true, advance: memAdvance},
		{name: "miniredis", store: ms, fake: true, advance: mrAdvance, ttl: redisTTL(t, mc, ms), tick: redisTick},
	}
	if redistest.Available() || requireRedis() {
		srv := redistest.Start(t)
		rc := srv.Client(t)
		rs := NewRedisStore(rc, WithKeyPrefix("contract:"))
		hs = append(hs, harness{name: "redis", store: rs, advance: sleep, ttl: redisTTL(t, rc, rs), tick: redisTick})
		// The same server through go-redis auto-pipelining: commands of
		// concurrent callers share round trips, and a queued command's
		// context is not honoured (the store bounds the wait itself).
		ap, err := rc.AutoPipeline()
		require.NoError(t, err, "AutoPipeline")
		t.Cleanup(func() { _ = ap.Close() })
		as := NewRedisStore(ap, WithKeyPrefix("contract-ap:"))
		hs = append(hs, harness{name: "redis-autopipeline", store: as, advance: sleep, ttl: redisTTL(t, rc, as), tick: redisTick})
		cc := redistest.StartCluster(t, 3).Client(t)
		cs := NewRedisStore(cc, WithKeyPrefix("contract:"))
		hs = append(hs, harness{name: "cluster", store: cs, advance: sleep, ttl: redisTTL(t, cc, cs), tick: redisTick})
	} else {
		t.Log("redis-server not found: the contract runs on MemoryStore and miniredis only")
	}
	return hs
}

// redisTick is the harness tick of the Redis stores: up to 3 chained
// bookings of 1 ms each.
const redisTick = 3 * time.Millisecond

func requireRedis() bool { return os.Getenv("THROTTLE_REQUIRE_REDIS") == "1" }

func sleep(d time.Duration) { time.Sleep(d + 2*time.Millisecond) }

// contractCase is one rule of the Store contract. Cases that need exact
// times run on fake clocks only; the cross-process tests cover real time.
type contractCase struct {
	name     string
	fakeOnly bool
	run      func(t *testing.T, h harness, key string)
}

func take(t *testing.T, h harness, key string, req Request) Reservation {
	t.Helper()
	res, err := h.store.Take(context.Background(), key, req)
	require.NoError(t, err, "%s: Take(%q, %+v)", h.name, key, req)
	return res
}

// approx asserts want <= got <= want+h.tick on a fake clock, and
// want-1s < got <= want+h.tick on a real one, where time passes between the
// calls.
func approx(t *testing.T, h harness, got, want time.Duration, msg string) {
	t.Helper()
	if h.fake {
		assert.GreaterOrEqual(t, got, want, msg)
		assert.LessOrEqual(t, got, want+h.tick, msg)
		return
	}
	assert.LessOrEqual(t, got, want+h.tick, msg)
	assert.Greater(t, got, want-time.Second, msg)
}

var contract = []contractCase{
	{name: "limit1/deny then admit after interval", run: func(t *testing.T, h harness, key string) {
		req := Request{Interval: 3 * time.Second, Limit: 1}
		if !h.fake {
			req.Interval = 300 * time.Millisecond
		}
		first := take(t, h, key, req)
		assert.True(t, first.OK, "first Take: got %+v, want admitted", first)
		assert.Zero(t, first.Delay, "first Take delay")
		second := take(t, h, key, req)
		assert.False(t, second.OK, "second Take within the interval: got %+v, want denied", second)
		approx(t, h, second.RetryAfter, req.Interval, "second Take RetryAfter")
		h.advance(req.Interval / 2)
		third := take(t, h, key, req)
		assert.False(t, third.OK, "Take after half the interval: got %+v, want denied", third)
		approx(t, h, third.RetryAfter, req.Interval/2, "Take after half the interval: RetryAfter")
		h.advance(req.Interval / 2)
		fourth := take(t, h, key, req)
		assert.True(t, fourth.OK, "Take one interval after the first: got %+v, want admitted", fourth)
	}},
	{name: "limitN/N admitted then denied", run: func(t *testing.T, h harness, key string) {
		req := Request{Interval: 10 * time.Second, Limit: 4}
		for i := range 4 {
			res := take(t, h, key, req)
			require.True(t, res.OK, "Take %d of 4: got %+v, want admitted", i+1, res)
		}
		res := take(t, h, key, req)
		assert.False(t, res.OK, "Take 5 of limit 4: got %+v, want denied", res)
		approx(t, h, res.RetryAfter, req.Interval, "Take 5 RetryAfter")
	}},
	{name: "limitN/sliding window is exact", fakeOnly: true, run: func(t *testing.T, h harness, key string) {
		const I = 100 * time.Millisecond
		req := Request{Interval: I, Limit: 3}
		// Starts at 0, 40, 80; the window (t-100, t] holds three until 100.
		for i := range 3 {
			require.True(t, take(t, h, key, req).OK, "Take at %v", time.Duration(i)*40*time.Millisecond)
			if i < 2 {
				h.advance(40 * time.Millisecond)
			}
		}
		h.advance(19 * time.Millisecond) // 99
		res := take(t, h, key, req)
		assert.False(t, res.OK, "Take at 99ms with starts at 0, 40, 80: got %+v, want denied", res)
		assert.Equal(t, time.Millisecond, res.RetryAfter, "RetryAfter at 99ms")
		h.advance(time.Millisecond) // 100: the start at 0 left the half-open window
		assert.True(t, take(t, h, key, req).OK, "Take at 100ms: want admitted")
		res = take(t, h, key, req)
		assert.False(t, res.OK, "second Take at 100ms (starts 40, 80, 100): got %+v, want denied", res)
		assert.Equal(t, 40*time.Millisecond, res.RetryAfter, "RetryAfter at 100ms")
		h.advance(40 * time.Millisecond)
		assert.True(t, take(t, h, key, req).OK, "Take at 140ms: want admitted")
	}},
	{name: "wait/books successive slots", run: func(t *testing.T, h harness, key string) {
		for _, limit := range []int{1, 2} {
			req := Request{Interval: 10 * time.Second, Limit: limit, MaxWait: 25 * time.Second}
			k := fmt.Sprintf("%s/%d", key, limit)
			var delays []time.Duration
			for range 3 * limit {
				res := take(t, h, k, req)
				require.True(t, res.OK, "booking Take, limit %d: got %+v, want admitted", limit, res)
				delays = append(delays, res.Delay)
			}
			for i, d := range delays {
				want := time.Duration(i/limit) * req.Interval
				if want == 0 {
					assert.Zero(t, d, "limit %d booking %d: delay", limit, i)
				} else {
					approx(t, h, d, want, fmt.Sprintf("limit %d booking %d: delay", limit, i))
				}
			}
			res := take(t, h, k, req)
			assert.False(t, res.OK, "booking 30s ahead with MaxWait 25s, limit %d: got %+v, want denied", limit, res)
			approx(t, h, res.RetryAfter, 3*req.Interval, "RetryAfter of a booking beyond MaxWait")
			// A drop-mode Take cannot jump the queue of bookings.
			drop := take(t, h, k, Request{Interval: req.Interval, Limit: limit})
			assert.False(t, drop.OK, "drop Take behind bookings, limit %d: got %+v, want denied", limit, drop)
		}
	}},
	{name: "wait/cancel hands back the newest booking", run: func(t *testing.T, h harness, key string) {
		for _, limit := range []int{1, 3} {
			req := Request{Interval: 10 * time.Second, Limit: limit, MaxWait: time.Minute}
			k := fmt.Sprintf("%s/%d", key, limit)
			for range limit {
				require.True(t, take(t, h, k, req).OK, "filling limit %d", limit)
			}
			// a is the last booking of the first interval, b the first of
			// the next one.
			var a Reservation
			for range limit {
				a = take(t, h, k, req)
				require.True(t, a.OK, "booking: got %+v", a)
			}
			b := take(t, h, k, req)
			require.True(t, b.OK, "booking: got %+v", b)
			require.Greater(t, b.Delay, a.Delay, "limit %d: b in the interval after a's", limit)
			// Cancelling a may or may not hand it back (a store need only
			// hand back the newest booking); cancelling b hands b back.
			require.NoError(t, h.store.Cancel(context.Background(), k, req, a))
			require.NoError(t, h.store.Cancel(context.Background(), k, req, b))
			c := take(t, h, k, req)
			require.True(t, c.OK, "booking after cancel: got %+v", c)
			assert.LessOrEqual(t, c.Delay, b.Delay+h.tick, "limit %d: booking after cancelling the newest: got %v, b had %v", limit, c.Delay, b.Delay)
			assert.Greater(t, c.Delay, a.Delay-time.Second, "limit %d: booking after cancel: got %v, a had %v", limit, c.Delay, a.Delay)
		}
	}},
	{name: "wait/a cancel run twice hands back nothing else", run: func(t *testing.T, h harness, key string) {
		// go-redis runs a script again when its reply is lost, so a Cancel
		// may run twice; here a booking of the same slot and start comes
		// in between. The second run must not hand that one back.
		for _, limit := range []int{1, 3} {
			req := Request{Interval: 10 * time.Second, Limit: limit, MaxWait: time.Minute}
			k := fmt.Sprintf("%s/%d", key, limit)
			for range limit {
				require.True(t, take(t, h, k, req).OK, "filling limit %d", limit)
			}
			// The first interval's bookings: limit-1 of them, then b.
			for range limit - 1 {
				require.True(t, take(t, h, k, req).OK, "booking, limit %d", limit)
			}
			b := take(t, h, k, req)
			require.True(t, b.OK, "booking b: got %+v", b)
			require.NoError(t, h.store.Cancel(context.Background(), k, req, b))
			c := take(t, h, k, req)
			require.True(t, c.OK, "booking c after b was handed back: got %+v", c)
			approx(t, h, c.Delay, b.Delay, fmt.Sprintf("limit %d: c takes b's place", limit))
			require.NoError(t, h.store.Cancel(context.Background(), k, req, b), "b's cancel again")
			// c still holds its place, so the next booking is an interval
			// later; had the second cancel handed c back, d would take c's
			// place and limit+1 starts would fall in one window.
			d := take(t, h, k, req)
			require.True(t, d.OK, "booking d: got %+v", d)
			assert.Greater(t, d.Delay, c.Delay+req.Interval/2, "limit %d: d after a second cancel of b: got %v, c has %v", limit, d.Delay, c.Delay)
		}
	}},
	{name: "cancel after full window keeps older starts", fakeOnly: true, run: func(t *testing.T, h harness, key string) {
		// Starts at 0 and 10 fill limit 2; a booking at 100 is cancelled;
		// at 50 the window still holds both starts.
		req := Request{Interval: 100 * time.Millisecond, Limit: 2, MaxWait: time.Second}
		require.True(t, take(t, h, key, req).OK)
		h.advance(10 * time.Millisecond)
		require.True(t, take(t, h, key, req).OK)
		b := take(t, h, key, req)
		require.True(t, b.OK)
		approx(t, h, b.Delay, 90*time.Millisecond, "booking delay")
		require.NoError(t, h.store.Cancel(context.Background(), key, req, b))
		h.advance(40 * time.Millisecond)
		res := take(t, h, key, Request{Interval: req.Interval, Limit: 2})
		assert.False(t, res.OK, "Take at 50ms with starts at 0 and 10: got %+v, want denied", res)
	}},
	{name: "keys are independent and binary-safe", run: func(t *testing.T, h harness, key string) {
		req := Request{Interval: 10 * time.Second, Limit: 1}
		for _, k := range []string{key + "a", key + "b", key + "\x00\xff{tag}\r\n", key + strings.Repeat("x", 4096)} {
			assert.True(t, take(t, h, k, req).OK, "first Take of %q", k)
		}
		assert.False(t, take(t, h, key+"a", req).OK, "second Take of %q", key+"a")
	}},
	{name: "keys expire", run: func(t *testing.T, h harness, key string) {
		if h.ttl == nil {
			t.Skip("no TTL to observe on " + h.name)
		}
		for _, limit := range []int{1, 3} {
			for _, wait := range []time.Duration{0, time.Second} {
				req := Request{Interval: 200 * time.Millisecond, Limit: limit, MaxWait: wait}
				k := fmt.Sprintf("%s/%d/%v", key, limit, wait)
				take(t, h, k, req)
				take(t, h, k, req)
				ttl := h.ttl(k, limit)
				assert.Positive(t, ttl, "limit %d wait %v: TTL after two Takes", limit, wait)
				bound := req.Interval
				if wait > 0 && limit == 1 {
					bound = 2 * req.Interval
				}
				bound += h.tick
				assert.LessOrEqual(t, ttl, bound, "limit %d wait %v: TTL", limit, wait)
				h.advance(bound + time.Millisecond)
				assert.Negative(t, h.ttl(k, limit), "limit %d wait %v: key after its interval", limit, wait)
			}
		}
	}},
	{name: "concurrent takes admit exactly the limit", run: func(t *testing.T, h harness, key string) {
		for _, limit := range []int{1, 5} {
			req := Request{Interval: 10 * time.Second, Limit: limit}
			got := admitConcurrently(t, h.store, fmt.Sprintf("%s/%d", key, limit), req, 40)
			assert.Equal(t, limit, got, "40 concurrent Takes with limit %d: admitted", limit)
		}
	}},
}

// admitConcurrently starts n Takes at once and returns how many were
// admitted.
func admitConcurrently(t *testing.T, s Store, key string, req Request, n int) int {
	t.Helper()
	var (
		wg      sync.WaitGroup
		mu      sync.Mutex
		admit   int
		errs    []error
		release = make(chan struct{})
	)
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-release
			res, err := s.Take(context.Background(), key, req)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs = append(errs, err)
			} else if res.OK {
				admit++
			}
		}()
	}
	close(release)
	wg.Wait()
	require.Empty(t, errs, "Take errors")
	return admit
}

func TestStoreContract(t *testing.T) { runContract(t, contract, "contract/") }

// runContract runs every case on every harness, each on keys of its own
// under prefix.
func runContract(t *testing.T, cases []contractCase, prefix string) {
	for _, h := range harnesses(t) {
		t.Run(h.name, func(t *testing.T) {
			for _, c := range cases {
				if c.fakeOnly && !h.fake {
					continue
				}
				t.Run(c.name, func(t *testing.T) {
					c.run(t, h, prefix+t.Name())
				})
			}
		})
	}
}

// racyStore decides limit 1 with EXISTS, then SET: the non-atomic design
// the contract must reject. reads holds every Take between its read and
// its write until all callers have read, the interleaving that such a
// store cannot survive.
type racyStore struct {
	c     *redis.Client
	reads *sync.WaitGroup
}

func (s racyStore) Take(ctx context.Context, key string, req Request) (Reservation, error) {
	n, err := s.c.Exists(ctx, key).Result()
	s.reads.Done()
	s.reads.Wait()
	if err != nil || n > 0 {
		return Reservation{RetryAfter: req.Interval}, err
	}
	return Reservation{OK: true}, s.c.Set(ctx, key, "1", req.Interval).Err()
}

func (s racyStore) Cancel(context.Context, string, Request, Reservation) error { return nil }

// TestAtomicityCheckCatchesRacyStore shows that the concurrent check above
// fails for a store that reads and then writes: the contract would catch a
// loss of atomicity in RedisStore or MemoryStore.
func TestAtomicityCheckCatchesRacyStore(t *testing.T) {
	mr := miniredis.RunT(t)
	c := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	t.Cleanup(func() { _ = c.Close() })
	const n = 20
	var reads sync.WaitGroup
	reads.Add(n)
	got := admitConcurrently(t, racyStore{c: c, reads: &reads}, "racy", Request{Interval: time.Minute, Limit: 1}, n)
	assert.Greater(t, got, 1, "a read-then-write store under %d concurrent Takes admitted %d, want more than 1", n, got)
}

func TestMemoryStoreSweepsExpiredKeys(t *testing.T) {
	m, advance := fakeMemory()
	req := Request{Interval: time.Second, Limit: 1}
	for i := range 1000 {
		_, err := m.Take(context.Background(), fmt.Sprint("k", i), req)
		require.NoError(t, err)
		advance(10 * time.Millisecond)
	}
	// Keys live one second and one is added every 10 ms: about 100 are
	// live at a time, and sweeping keeps the map within twice that.
	assert.LessOrEqual(t, m.len(), 2*101+minSweep, "keys held after 1000 short-lived keys")
	advance(2 * time.Second)
	_, err := m.Take(context.Background(), "last", req)
	require.NoError(t, err)
	for i := range minSweep * 4 {
		_, err := m.Take(context.Background(), fmt.Sprint("again", i), req)
		require.NoError(t, err)
	}
	assert.LessOrEqual(t, m.len(), minSweep*4+1+minSweep, "keys held after all old keys expired")
}

func TestRedisStoreReset(t *testing.T) {
	mr, _ := fakeMiniredis(t)
	c := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	t.Cleanup(func() { _ = c.Close() })
	s := NewRedisStore(c, WithKeyPrefix("p:"))
	req := Request{Interval: time.Hour, Limit: 1}
	ctx := context.Background()
	res, err := s.Take(ctx, "k", req)
	require.NoError(t, err)
	require.True(t, res.OK)
	assert.True(t, mr.Exists("p:{k}"), "key p:{k} written under the prefix")
	require.NoError(t, s.Reset(ctx, "k", req))
	assert.False(t, mr.Exists("p:{k}"), "key after Reset")
	res, err = s.Take(ctx, "k", req)
	require.NoError(t, err)
	assert.True(t, res.OK, "Take after Reset")
}

func TestRedisStoreScriptCacheLoss(t *testing.T) {
	mr, _ := fakeMiniredis(t)
	c := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	t.Cleanup(func() { _ = c.Close() })
	s := NewRedisStore(c)
	req := Request{Interval: time.Hour, Limit: 2}
	ctx := context.Background()
	res, err := s.Take(ctx, "k", req)
	require.NoError(t, err)
	require.True(t, res.OK)
	require.NoError(t, c.ScriptFlush(ctx).Err())
	res, err = s.Take(ctx, "k", req)
	require.NoError(t, err, "Take after SCRIPT FLUSH")
	assert.True(t, res.OK, "second of limit 2 after SCRIPT FLUSH")
}
