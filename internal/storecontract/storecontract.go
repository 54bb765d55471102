// Package storecontract is the contract of a throttle.Store, written once
// and run on every store: the root module's MemoryStore and RedisStore on
// miniredis, redis-server and Cluster, and the RedisStores of the client
// sub-modules (rueidisthrottle, valkeythrottle). Run calls every case on
// every harness, each on keys of its own.
package storecontract

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	throttle "github.com/dthrottle/throttle"
)

// Harness is one Store under test with a way to move its clock.
type Harness struct {
	Name  string
	Store throttle.Store
	// Fake reports whether the store's clock moves only with Advance, so
	// decisions happen at exact times.
	Fake bool
	// Advance moves the store's clock forward by d (Fake) or sleeps at
	// least d (real).
	Advance func(d time.Duration)
	// TTL returns the longest remaining expiry among the Redis keys of
	// the throttle key under limit (its slots or list, and its hold
	// record), or a negative duration when none exists (Redis stores
	// only; nil skips the cases that need it).
	TTL func(key string, limit int) time.Duration
	// Tick is how much later than the exact sliding window a booking may
	// start: Redis keeps a key through its expiry millisecond, so a slot
	// booked after a start (or a hold) is free from 1 ms after its expiry.
	// Chains of bookings add up, so the contract allows a few ticks.
	Tick time.Duration
}

// RedisTick is the Tick of the Redis stores: up to 3 chained bookings of
// 1 ms each.
const RedisTick = 3 * time.Millisecond

// Sleep is the Advance of a store on a real clock.
func Sleep(d time.Duration) { time.Sleep(d + 2*time.Millisecond) }

// RedisTTL returns the TTL of a Harness for the RedisStore s, given pttl,
// which returns the PTTL of one Redis key (negative when missing).
func RedisTTL(tb testing.TB, s *throttle.RedisStore, pttl func(ctx context.Context, name string) (time.Duration, error)) func(string, int) time.Duration {
	return func(key string, limit int) time.Duration {
		longest := time.Duration(-1)
		for _, name := range s.Keys(key, limit) {
			d, err := pttl(context.Background(), name)
			require.NoError(tb, err, "PTTL %q", name)
			longest = max(longest, d)
		}
		return longest
	}
}

// Run runs every case on every harness, each on keys of its own under
// prefix.
func Run(t *testing.T, hs []Harness, cases []Case, prefix string) {
	for _, h := range hs {
		t.Run(h.Name, func(t *testing.T) {
			for _, c := range cases {
				if c.FakeOnly && !h.Fake {
					continue
				}
				t.Run(c.Name, func(t *testing.T) {
					c.Run(t, h, prefix+t.Name())
				})
			}
		})
	}
}

// Case is one rule of the Store contract. Cases that need exact
// times run on fake clocks only; the cross-process tests cover real time.
type Case struct {
	Name     string
	FakeOnly bool
	Run      func(t *testing.T, h Harness, key string)
}

func take(t *testing.T, h Harness, key string, req throttle.Request) throttle.Reservation {
	t.Helper()
	res, err := h.Store.Take(context.Background(), key, req)
	require.NoError(t, err, "%s: Take(%q, %+v)", h.Name, key, req)
	return res
}

// approx asserts want <= got <= want+h.Tick on a fake clock, and
// want-1s < got <= want+h.Tick on a real one, where time passes between the
// calls.
func approx(t *testing.T, h Harness, got, want time.Duration, msg string) {
	t.Helper()
	if h.Fake {
		assert.GreaterOrEqual(t, got, want, msg)
		assert.LessOrEqual(t, got, want+h.Tick, msg)
		return
	}
	assert.LessOrEqual(t, got, want+h.Tick, msg)
	assert.Greater(t, got, want-time.Second, msg)
}

// Cases is the contract of a Store.
var Cases = []Case{
	{Name: "limit1/deny then admit after interval", Run: func(t *testing.T, h Harness, key string) {
		req := throttle.Request{Interval: 3 * time.Second, Limit: 1}
		if !h.Fake {
			req.Interval = 300 * time.Millisecond
		}
		first := take(t, h, key, req)
		assert.True(t, first.OK, "first Take: got %+v, want admitted", first)
		assert.Zero(t, first.Delay, "first Take delay")
		second := take(t, h, key, req)
		assert.False(t, second.OK, "second Take within the interval: got %+v, want denied", second)
		approx(t, h, second.RetryAfter, req.Interval, "second Take RetryAfter")
		h.Advance(req.Interval / 2)
		third := take(t, h, key, req)
		assert.False(t, third.OK, "Take after half the interval: got %+v, want denied", third)
		approx(t, h, third.RetryAfter, req.Interval/2, "Take after half the interval: RetryAfter")
		h.Advance(req.Interval / 2)
		fourth := take(t, h, key, req)
		assert.True(t, fourth.OK, "Take one interval after the first: got %+v, want admitted", fourth)
	}},
	{Name: "limitN/N admitted then denied", Run: func(t *testing.T, h Harness, key string) {
		req := throttle.Request{Interval: 10 * time.Second, Limit: 4}
		for i := range 4 {
			res := take(t, h, key, req)
			require.True(t, res.OK, "Take %d of 4: got %+v, want admitted", i+1, res)
		}
		res := take(t, h, key, req)
		assert.False(t, res.OK, "Take 5 of limit 4: got %+v, want denied", res)
		approx(t, h, res.RetryAfter, req.Interval, "Take 5 RetryAfter")
	}},
	{Name: "limitN/sliding window is exact", FakeOnly: true, Run: func(t *testing.T, h Harness, key string) {
		const I = 100 * time.Millisecond
		req := throttle.Request{Interval: I, Limit: 3}
		// Starts at 0, 40, 80; the window (t-100, t] holds three until 100.
		for i := range 3 {
			require.True(t, take(t, h, key, req).OK, "Take at %v", time.Duration(i)*40*time.Millisecond)
			if i < 2 {
				h.Advance(40 * time.Millisecond)
			}
		}
		h.Advance(19 * time.Millisecond) // 99
		res := take(t, h, key, req)
		assert.False(t, res.OK, "Take at 99ms with starts at 0, 40, 80: got %+v, want denied", res)
		assert.Equal(t, time.Millisecond, res.RetryAfter, "RetryAfter at 99ms")
		h.Advance(time.Millisecond) // 100: the start at 0 left the half-open window
		assert.True(t, take(t, h, key, req).OK, "Take at 100ms: want admitted")
		res = take(t, h, key, req)
		assert.False(t, res.OK, "second Take at 100ms (starts 40, 80, 100): got %+v, want denied", res)
		assert.Equal(t, 40*time.Millisecond, res.RetryAfter, "RetryAfter at 100ms")
		h.Advance(40 * time.Millisecond)
		assert.True(t, take(t, h, key, req).OK, "Take at 140ms: want admitted")
	}},
	{Name: "wait/books successive slots", Run: func(t *testing.T, h Harness, key string) {
		for _, limit := range []int{1, 2} {
			req := throttle.Request{Interval: 10 * time.Second, Limit: limit, MaxWait: 25 * time.Second}
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
			drop := take(t, h, k, throttle.Request{Interval: req.Interval, Limit: limit})
			assert.False(t, drop.OK, "drop Take behind bookings, limit %d: got %+v, want denied", limit, drop)
		}
	}},
	{Name: "wait/cancel hands back the newest booking", Run: func(t *testing.T, h Harness, key string) {
		for _, limit := range []int{1, 3} {
			req := throttle.Request{Interval: 10 * time.Second, Limit: limit, MaxWait: time.Minute}
			k := fmt.Sprintf("%s/%d", key, limit)
			for range limit {
				require.True(t, take(t, h, k, req).OK, "filling limit %d", limit)
			}
			// a is the last booking of the first interval, b the first of
			// the next one.
			var a throttle.Reservation
			for range limit {
				a = take(t, h, k, req)
				require.True(t, a.OK, "booking: got %+v", a)
			}
			b := take(t, h, k, req)
			require.True(t, b.OK, "booking: got %+v", b)
			require.Greater(t, b.Delay, a.Delay, "limit %d: b in the interval after a's", limit)
			// Cancelling a may or may not hand it back (a store need only
			// hand back the newest booking); cancelling b hands b back.
			require.NoError(t, h.Store.Cancel(context.Background(), k, req, a))
			require.NoError(t, h.Store.Cancel(context.Background(), k, req, b))
			c := take(t, h, k, req)
			require.True(t, c.OK, "booking after cancel: got %+v", c)
			assert.LessOrEqual(t, c.Delay, b.Delay+h.Tick, "limit %d: booking after cancelling the newest: got %v, b had %v", limit, c.Delay, b.Delay)
			assert.Greater(t, c.Delay, a.Delay-time.Second, "limit %d: booking after cancel: got %v, a had %v", limit, c.Delay, a.Delay)
		}
	}},
	{Name: "wait/a cancel run twice hands back nothing else", Run: func(t *testing.T, h Harness, key string) {
		// go-redis runs a script again when its reply is lost, so a Cancel
		// may run twice; here a booking of the same slot and start comes
		// in between. The second run must not hand that one back.
		for _, limit := range []int{1, 3} {
			req := throttle.Request{Interval: 10 * time.Second, Limit: limit, MaxWait: time.Minute}
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
			require.NoError(t, h.Store.Cancel(context.Background(), k, req, b))
			c := take(t, h, k, req)
			require.True(t, c.OK, "booking c after b was handed back: got %+v", c)
			approx(t, h, c.Delay, b.Delay, fmt.Sprintf("limit %d: c takes b's place", limit))
			require.NoError(t, h.Store.Cancel(context.Background(), k, req, b), "b's cancel again")
			// c still holds its place, so the next booking is an interval
			// later; had the second cancel handed c back, d would take c's
			// place and limit+1 starts would fall in one window.
			d := take(t, h, k, req)
			require.True(t, d.OK, "booking d: got %+v", d)
			assert.Greater(t, d.Delay, c.Delay+req.Interval/2, "limit %d: d after a second cancel of b: got %v, c has %v", limit, d.Delay, c.Delay)
		}
	}},
	{Name: "cancel after full window keeps older starts", FakeOnly: true, Run: func(t *testing.T, h Harness, key string) {
		// Starts at 0 and 10 fill limit 2; a booking at 100 is cancelled;
		// at 50 the window still holds both starts.
		req := throttle.Request{Interval: 100 * time.Millisecond, Limit: 2, MaxWait: time.Second}
		require.True(t, take(t, h, key, req).OK)
		h.Advance(10 * time.Millisecond)
		require.True(t, take(t, h, key, req).OK)
		b := take(t, h, key, req)
		require.True(t, b.OK)
		approx(t, h, b.Delay, 90*time.Millisecond, "booking delay")
		require.NoError(t, h.Store.Cancel(context.Background(), key, req, b))
		h.Advance(40 * time.Millisecond)
		res := take(t, h, key, throttle.Request{Interval: req.Interval, Limit: 2})
		assert.False(t, res.OK, "Take at 50ms with starts at 0 and 10: got %+v, want denied", res)
	}},
	{Name: "keys are independent and binary-safe", Run: func(t *testing.T, h Harness, key string) {
		req := throttle.Request{Interval: 10 * time.Second, Limit: 1}
		for _, k := range []string{key + "a", key + "b", key + "\x00\xff{tag}\r\n", key + strings.Repeat("x", 4096)} {
			assert.True(t, take(t, h, k, req).OK, "first Take of %q", k)
		}
		assert.False(t, take(t, h, key+"a", req).OK, "second Take of %q", key+"a")
	}},
	{Name: "keys expire", Run: func(t *testing.T, h Harness, key string) {
		if h.TTL == nil {
			t.Skip("no TTL to observe on " + h.Name)
		}
		for _, limit := range []int{1, 3} {
			for _, wait := range []time.Duration{0, time.Second} {
				req := throttle.Request{Interval: 200 * time.Millisecond, Limit: limit, MaxWait: wait}
				k := fmt.Sprintf("%s/%d/%v", key, limit, wait)
				take(t, h, k, req)
				take(t, h, k, req)
				ttl := h.TTL(k, limit)
				assert.Positive(t, ttl, "limit %d wait %v: TTL after two Takes", limit, wait)
				bound := req.Interval
				if wait > 0 && limit == 1 {
					bound = 2 * req.Interval
				}
				bound += h.Tick
				assert.LessOrEqual(t, ttl, bound, "limit %d wait %v: TTL", limit, wait)
				h.Advance(bound + time.Millisecond)
				assert.Negative(t, h.TTL(k, limit), "limit %d wait %v: key after its interval", limit, wait)
			}
		}
	}},
	{Name: "concurrent takes admit exactly the limit", Run: func(t *testing.T, h Harness, key string) {
		for _, limit := range []int{1, 5} {
			req := throttle.Request{Interval: 10 * time.Second, Limit: limit}
			got := AdmitConcurrently(t, h.Store, fmt.Sprintf("%s/%d", key, limit), req, 40)
			assert.Equal(t, limit, got, "40 concurrent Takes with limit %d: admitted", limit)
		}
	}},
}

// AdmitConcurrently starts n Takes at once and returns how many were
// admitted.
func AdmitConcurrently(t *testing.T, s throttle.Store, key string, req throttle.Request, n int) int {
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

func block(t *testing.T, h Harness, key string, req throttle.Request, d time.Duration) {
	t.Helper()
	b, ok := h.Store.(throttle.Holder)
	require.True(t, ok, "%s: store %T does not implement Holder", h.Name, h.Store)
	require.NoError(t, b.Hold(context.Background(), key, req, d), "%s: Block(%q, %+v, %v)", h.Name, key, req, d)
}

func blocked(t *testing.T, h Harness, key string) time.Duration {
	t.Helper()
	d, err := h.Store.(throttle.Holder).Held(context.Background(), key)
	require.NoError(t, err, "%s: Blocked(%q)", h.Name, key)
	return d
}

// HoldCases is the contract of a Store that is a throttle.Holder (Hold
// and Held).
var HoldCases = []Case{
	{Name: "hold denies for d then admits", Run: func(t *testing.T, h Harness, key string) {
		for _, limit := range []int{1, 3} {
			req := throttle.Request{Interval: 10 * time.Second, Limit: limit}
			d := 3 * time.Second
			if !h.Fake {
				d = 300 * time.Millisecond
			}
			k := fmt.Sprintf("%s/%d", key, limit)
			block(t, h, k, req, d)
			approx(t, h, blocked(t, h, k), d, fmt.Sprintf("limit %d: Blocked after Block(%v)", limit, d))
			res := take(t, h, k, req)
			assert.False(t, res.OK, "limit %d: Take after Block(%v): got %+v, want denied", limit, d, res)
			approx(t, h, res.RetryAfter, d, fmt.Sprintf("limit %d: RetryAfter after Block(%v)", limit, d))
			h.Advance(d)
			for i := range limit {
				res = take(t, h, k, req)
				assert.True(t, res.OK, "limit %d: Take %d once the hold of %v passed: got %+v, want admitted", limit, i+1, d, res)
			}
			assert.False(t, take(t, h, k, req).OK, "limit %d: Take beyond the limit after the hold", limit)
			assert.Zero(t, blocked(t, h, k), "limit %d: Blocked after the hold", limit)
		}
	}},
	{Name: "hold with a limit above the script's batch", Run: func(t *testing.T, h Harness, key string) {
		req := throttle.Request{Interval: 10 * time.Second, Limit: 2500}
		d := 300 * time.Millisecond
		block(t, h, key, req, d)
		res := take(t, h, key, req)
		assert.False(t, res.OK, "limit 2500: Take after Block(%v): got %+v, want denied", d, res)
		approx(t, h, res.RetryAfter, d, "limit 2500: RetryAfter after Block")
		h.Advance(d)
		res = take(t, h, key, req)
		assert.True(t, res.OK, "limit 2500: Take after the hold: got %+v", res)
	}},
	{Name: "hold books waiting calls after it", Run: func(t *testing.T, h Harness, key string) {
		for _, limit := range []int{1, 2} {
			req := throttle.Request{Interval: 10 * time.Second, Limit: limit, MaxWait: time.Minute}
			k := fmt.Sprintf("%s/%d", key, limit)
			block(t, h, k, req, 5*time.Second)
			for i := range limit {
				res := take(t, h, k, req)
				require.True(t, res.OK, "limit %d: booking %d after Block(5s): got %+v", limit, i, res)
				approx(t, h, res.Delay, 5*time.Second, fmt.Sprintf("limit %d: booking %d delay", limit, i))
			}
			res := take(t, h, k, req)
			require.True(t, res.OK, "limit %d: booking past the first slot: got %+v", limit, res)
			approx(t, h, res.Delay, 15*time.Second, fmt.Sprintf("limit %d: booking after a full slot: delay", limit))
		}
	}},
	{Name: "hold is exact: earlier starts keep their window", FakeOnly: true, Run: func(t *testing.T, h Harness, key string) {
		// One start at 0 of limit 3 per 10s, then a hold of 3s: from 3s
		// two more starts fit, and the next one at 10s.
		req := throttle.Request{Interval: 10 * time.Second, Limit: 3}
		require.True(t, take(t, h, key, req).OK, "first Take")
		block(t, h, key, req, 3*time.Second)
		h.Advance(3*time.Second - time.Millisecond)
		res := take(t, h, key, req)
		assert.False(t, res.OK, "Take 1ms before the hold ends: got %+v", res)
		assert.Equal(t, time.Millisecond, res.RetryAfter, "RetryAfter 1ms before the hold ends")
		h.Advance(time.Millisecond)
		assert.True(t, take(t, h, key, req).OK, "Take when the hold ends")
		assert.True(t, take(t, h, key, req).OK, "second Take when the hold ends")
		res = take(t, h, key, req)
		assert.False(t, res.OK, "fourth start within 10s of the first: got %+v", res)
		assert.Equal(t, 7*time.Second, res.RetryAfter, "RetryAfter: until the first start leaves the window")
	}},
	{Name: "hold never shortens a longer one", Run: func(t *testing.T, h Harness, key string) {
		for _, limit := range []int{1, 3} {
			req := throttle.Request{Interval: 10 * time.Second, Limit: limit}
			k := fmt.Sprintf("%s/%d", key, limit)
			for range limit {
				require.True(t, take(t, h, k, req).OK, "limit %d: filling the window", limit)
			}
			block(t, h, k, req, 3*time.Second)
			res := take(t, h, k, req)
			assert.False(t, res.OK, "limit %d: Take after a shorter Block: got %+v", limit, res)
			approx(t, h, res.RetryAfter, req.Interval, fmt.Sprintf("limit %d: a Block of 3s within a full 10s window: RetryAfter", limit))
			block(t, h, k, req, 20*time.Second)
			block(t, h, k, req, 5*time.Second)
			res = take(t, h, k, req)
			assert.False(t, res.OK, "limit %d: Take after Block(20s), Block(5s): got %+v", limit, res)
			approx(t, h, res.RetryAfter, 20*time.Second, fmt.Sprintf("limit %d: RetryAfter after Block(20s) then Block(5s)", limit))
			approx(t, h, blocked(t, h, k), 20*time.Second, fmt.Sprintf("limit %d: Blocked after Block(20s) then Block(5s)", limit))
		}
	}},
	{Name: "cancel cannot end a hold early", Run: func(t *testing.T, h Harness, key string) {
		for _, limit := range []int{1, 3} {
			req := throttle.Request{Interval: 10 * time.Second, Limit: limit, MaxWait: time.Minute}
			k := fmt.Sprintf("%s/%d", key, limit)
			// A full window now and a full slot booked at 10s.
			var bookings []throttle.Reservation
			for range 2 * limit {
				res := take(t, h, k, req)
				require.True(t, res.OK, "limit %d: filling: got %+v", limit, res)
				bookings = append(bookings, res)
			}
			block(t, h, k, req, 15*time.Second)
			// Hand back every booking, newest first.
			for i := len(bookings) - 1; i >= limit; i-- {
				require.NoError(t, h.Store.Cancel(context.Background(), k, req, bookings[i]))
			}
			res := take(t, h, k, throttle.Request{Interval: req.Interval, Limit: limit})
			assert.False(t, res.OK, "limit %d: Take after the bookings were handed back: got %+v", limit, res)
			// At least the hold; at most what the bookings held (Redis
			// with limit 1 no longer lets them be handed back).
			slack := time.Duration(0)
			if !h.Fake {
				slack = time.Second
			}
			assert.GreaterOrEqual(t, res.RetryAfter, 15*time.Second-slack, "limit %d: RetryAfter after Block(15s) and the cancels", limit)
			assert.LessOrEqual(t, res.RetryAfter, 20*time.Second+h.Tick, "limit %d: RetryAfter after Block(15s) and the cancels", limit)
		}
	}},
	{Name: "hold keys expire", Run: func(t *testing.T, h Harness, key string) {
		if h.TTL == nil {
			t.Skip("no TTL to observe on " + h.Name)
		}
		for _, limit := range []int{1, 3} {
			req := throttle.Request{Interval: 100 * time.Millisecond, Limit: limit}
			d := 250 * time.Millisecond
			k := fmt.Sprintf("%s/%d", key, limit)
			blocked := time.Now()
			block(t, h, k, req, d)
			ttl := h.TTL(k, limit)
			// On a real clock the hold may already have ended on a busy
			// machine; while it cannot have, the keys must be there.
			if time.Since(blocked) < d {
				assert.Positive(t, ttl, "limit %d: TTL of %q after Hold(%v)", limit, k, d)
			}
			assert.LessOrEqual(t, ttl, d, "limit %d: TTL of %q after Hold(%v)", limit, k, d)
			h.Advance(d + time.Millisecond)
			assert.Negative(t, h.TTL(k, limit), "limit %d: keys of %q after the hold", limit, k)
		}
	}},
	{Name: "hold after starts keeps the key until the newest leaves", Run: func(t *testing.T, h Harness, key string) {
		if h.TTL == nil {
			t.Skip("no TTL to observe on " + h.Name)
		}
		req := throttle.Request{Interval: 300 * time.Millisecond, Limit: 3, MaxWait: time.Second}
		start := time.Now()
		take(t, h, key, req)
		take(t, h, key, req)
		take(t, h, key, req)
		booked := take(t, h, key, req) // at 300ms, so the key lives 600ms
		require.True(t, booked.OK)
		block(t, h, key, req, 100*time.Millisecond)
		ttl := h.TTL(key, req.Limit)
		// The booking starts at least 300ms after start, so the key lives
		// at least until start+600ms, far past the 100ms hold (on a fake
		// clock: exactly 600ms). Expiries are whole milliseconds.
		assert.GreaterOrEqual(t, ttl, 600*time.Millisecond-time.Since(start)-time.Millisecond, "TTL after a short Block behind a booking")
		assert.LessOrEqual(t, ttl, 600*time.Millisecond+h.Tick, "TTL after a short Block behind a booking")
	}},
}
