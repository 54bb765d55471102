package throttle

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dthrottle/throttle/internal/redistest"
)

var (
	_ Holder = (*RedisStore)(nil)
	_ Holder = (*MemoryStore)(nil)
)

func block(t *testing.T, h harness, key string, req Request, d time.Duration) {
	t.Helper()
	b, ok := h.store.(Holder)
	require.True(t, ok, "%s: store %T does not implement Holder", h.name, h.store)
	require.NoError(t, b.Hold(context.Background(), key, req, d), "%s: Block(%q, %+v, %v)", h.name, key, req, d)
}

func blocked(t *testing.T, h harness, key string) time.Duration {
	t.Helper()
	d, err := h.store.(Holder).Held(context.Background(), key)
	require.NoError(t, err, "%s: Blocked(%q)", h.name, key)
	return d
}

// blockContract is the contract of the stores' Block, run on every harness
// of the Store contract.
var blockContract = []contractCase{
	{name: "hold denies for d then admits", run: func(t *testing.T, h harness, key string) {
		for _, limit := range []int{1, 3} {
			req := Request{Interval: 10 * time.Second, Limit: limit}
			d := 3 * time.Second
			if !h.fake {
				d = 300 * time.Millisecond
			}
			k := fmt.Sprintf("%s/%d", key, limit)
			block(t, h, k, req, d)
			approx(t, h, blocked(t, h, k), d, fmt.Sprintf("limit %d: Blocked after Block(%v)", limit, d))
			res := take(t, h, k, req)
			assert.False(t, res.OK, "limit %d: Take after Block(%v): got %+v, want denied", limit, d, res)
			approx(t, h, res.RetryAfter, d, fmt.Sprintf("limit %d: RetryAfter after Block(%v)", limit, d))
			h.advance(d)
			for i := range limit {
				res = take(t, h, k, req)
				assert.True(t, res.OK, "limit %d: Take %d once the hold of %v passed: got %+v, want admitted", limit, i+1, d, res)
			}
			assert.False(t, take(t, h, k, req).OK, "limit %d: Take beyond the limit after the hold", limit)
			assert.Zero(t, blocked(t, h, k), "limit %d: Blocked after the hold", limit)
		}
	}},
	{name: "hold with a limit above the script's batch", run: func(t *testing.T, h harness, key string) {
		req := Request{Interval: 10 * time.Second, Limit: 2500}
		d := 300 * time.Millisecond
		block(t, h, key, req, d)
		res := take(t, h, key, req)
		assert.False(t, res.OK, "limit 2500: Take after Block(%v): got %+v, want denied", d, res)
		approx(t, h, res.RetryAfter, d, "limit 2500: RetryAfter after Block")
		h.advance(d)
		res = take(t, h, key, req)
		assert.True(t, res.OK, "limit 2500: Take after the hold: got %+v", res)
	}},
	{name: "hold books waiting calls after it", run: func(t *testing.T, h harness, key string) {
		for _, limit := range []int{1, 2} {
			req := Request{Interval: 10 * time.Second, Limit: limit, MaxWait: time.Minute}
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
	{name: "hold is exact: earlier starts keep their window", fakeOnly: true, run: func(t *testing.T, h harness, key string) {
		// One start at 0 of limit 3 per 10s, then a hold of 3s: from 3s
		// two more starts fit, and the next one at 10s.
		req := Request{Interval: 10 * time.Second, Limit: 3}
		require.True(t, take(t, h, key, req).OK, "first Take")
		block(t, h, key, req, 3*time.Second)
		h.advance(3*time.Second - time.Millisecond)
		res := take(t, h, key, req)
		assert.False(t, res.OK, "Take 1ms before the hold ends: got %+v", res)
		assert.Equal(t, time.Millisecond, res.RetryAfter, "RetryAfter 1ms before the hold ends")
		h.advance(time.Millisecond)
		assert.True(t, take(t, h, key, req).OK, "Take when the hold ends")
		assert.True(t, take(t, h, key, req).OK, "second Take when the hold ends")
		res = take(t, h, key, req)
		assert.False(t, res.OK, "fourth start within 10s of the first: got %+v", res)
		assert.Equal(t, 7*time.Second, res.RetryAfter, "RetryAfter: until the first start leaves the window")
	}},
	{name: "hold never shortens a longer one", run: func(t *testing.T, h harness, key string) {
		for _, limit := range []int{1, 3} {
			req := Request{Interval: 10 * time.Second, Limit: limit}
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
	{name: "cancel cannot end a hold early", run: func(t *testing.T, h harness, key string) {
		for _, limit := range []int{1, 3} {
			req := Request{Interval: 10 * time.Second, Limit: limit, MaxWait: time.Minute}
			k := fmt.Sprintf("%s/%d", key, limit)
			// A full window now and a full slot booked at 10s.
			var bookings []Reservation
			for range 2 * limit {
				res := take(t, h, k, req)
				require.True(t, res.OK, "limit %d: filling: got %+v", limit, res)
				bookings = append(bookings, res)
			}
			block(t, h, k, req, 15*time.Second)
			// Hand back every booking, newest first.
			for i := len(bookings) - 1; i >= limit; i-- {
				require.NoError(t, h.store.Cancel(context.Background(), k, req, bookings[i]))
			}
			res := take(t, h, k, Request{Interval: req.Interval, Limit: limit})
			assert.False(t, res.OK, "limit %d: Take after the bookings were handed back: got %+v", limit, res)
			// At least the hold; at most what the bookings held (Redis
			// with limit 1 no longer lets them be handed back).
			slack := time.Duration(0)
			if !h.fake {
				slack = time.Second
			}
			assert.GreaterOrEqual(t, res.RetryAfter, 15*time.Second-slack, "limit %d: RetryAfter after Block(15s) and the cancels", limit)
			assert.LessOrEqual(t, res.RetryAfter, 20*time.Second+h.tick, "limit %d: RetryAfter after Block(15s) and the cancels", limit)
		}
	}},
	{name: "hold keys expire", run: func(t *testing.T, h harness, key string) {
		if h.ttl == nil {
			t.Skip("no TTL to observe on " + h.name)
		}
		for _, limit := range []int{1, 3} {
			req := Request{Interval: 100 * time.Millisecond, Limit: limit}
			d := 250 * time.Millisecond
			k := fmt.Sprintf("%s/%d", key, limit)
			blocked := time.Now()
			block(t, h, k, req, d)
			ttl := h.ttl(k, limit)
			// On a real clock the hold may already have ended on a busy
			// machine; while it cannot have, the keys must be there.
			if time.Since(blocked) < d {
				assert.Positive(t, ttl, "limit %d: TTL of %q after Hold(%v)", limit, k, d)
			}
			assert.LessOrEqual(t, ttl, d, "limit %d: TTL of %q after Hold(%v)", limit, k, d)
			h.advance(d + time.Millisecond)
			assert.Negative(t, h.ttl(k, limit), "limit %d: keys of %q after the hold", limit, k)
		}
	}},
	{name: "hold after starts keeps the key until the newest leaves", run: func(t *testing.T, h harness, key string) {
		if h.ttl == nil {
			t.Skip("no TTL to observe on " + h.name)
		}
		req := Request{Interval: 300 * time.Millisecond, Limit: 3, MaxWait: time.Second}
		start := time.Now()
		take(t, h, key, req)
		take(t, h, key, req)
		take(t, h, key, req)
		booked := take(t, h, key, req) // at 300ms, so the key lives 600ms
		require.True(t, booked.OK)
		block(t, h, key, req, 100*time.Millisecond)
		ttl := h.ttl(key, req.Limit)
		// The booking starts at least 300ms after start, so the key lives
		// at least until start+600ms, far past the 100ms hold (on a fake
		// clock: exactly 600ms). Expiries are whole milliseconds.
		assert.GreaterOrEqual(t, ttl, 600*time.Millisecond-time.Since(start)-time.Millisecond, "TTL after a short Block behind a booking")
		assert.LessOrEqual(t, ttl, 600*time.Millisecond+h.tick, "TTL after a short Block behind a booking")
	}},
}

func TestHoldContract(t *testing.T) { runContract(t, blockContract, "block/") }

// TestHoldSharedByThrottles checks that a Block in one throttle holds off
// another throttle (another process) that shares the store, and that the
// throttle that blocked answers from its deny cache.
func TestHoldSharedByThrottles(t *testing.T) {
	mr := miniredis.RunT(t)
	mr.ClockTTL(true)
	var events []Event
	newThrottle := func(opts ...Option) *Throttle {
		c := redis.NewClient(&redis.Options{Addr: mr.Addr(), ContextTimeoutEnabled: true})
		t.Cleanup(func() { _ = c.Close() })
		th, err := New("shared", time.Millisecond, append([]Option{WithStore(NewRedisStore(c))}, opts...)...)
		require.NoError(t, err)
		return th
	}
	a := newThrottle(WithObserver(func(e Event) { events = append(events, e) }))
	b := newThrottle()
	ctx := context.Background()

	require.NoError(t, a.Hold(ctx, time.Minute))
	d, err := a.Allow(ctx)
	require.NoError(t, err)
	assert.False(t, d.Allowed, "Allow in the throttle that blocked: got %+v", d)
	assert.InDelta(t, float64(time.Minute), float64(d.RetryAfter), float64(time.Second), "RetryAfter in the throttle that blocked")
	require.Len(t, events, 2, "events: the hold, then the decision")
	assert.Equal(t, EventHold, events[0].Kind, "first event")
	assert.Equal(t, time.Minute, events[0].RetryAfter, "the hold event's length")
	assert.NoError(t, events[0].Err, "the hold event's error")
	assert.Equal(t, EventDecision, events[1].Kind, "second event")
	assert.True(t, events[1].Cached, "the throttle that blocked answers from its deny cache")

	d, err = b.Allow(ctx)
	require.NoError(t, err)
	assert.False(t, d.Allowed, "Allow in another throttle on the same key and store: got %+v", d)
	assert.InDelta(t, float64(time.Minute), float64(d.RetryAfter), float64(time.Second), "RetryAfter in another throttle")

	r, err := b.Held(ctx)
	require.NoError(t, err)
	assert.InDelta(t, float64(time.Minute), float64(r), float64(time.Second), "Blocked in another throttle")

	// A shorter Block changes nothing.
	require.NoError(t, b.Hold(ctx, time.Second))
	d, err = b.Allow(ctx)
	require.NoError(t, err)
	assert.Greater(t, d.RetryAfter, 58*time.Second, "RetryAfter after a shorter Block")
}

func TestHoldArguments(t *testing.T) {
	th, err := New("args", time.Second)
	require.NoError(t, err)
	ctx := context.Background()
	assert.EqualError(t, th.Hold(ctx, -time.Second), "throttle: negative hold -1s")
	assert.ErrorContains(t, th.Hold(ctx, MaxInterval+1), "is above")
	require.NoError(t, th.Hold(ctx, 0))
	d, err := th.Allow(ctx)
	require.NoError(t, err)
	assert.True(t, d.Allowed, "Allow after Block(0): got %+v", d)
}

func TestHoldUnsupportedStore(t *testing.T) {
	mr := miniredis.RunT(t)
	c := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	t.Cleanup(func() { _ = c.Close() })
	th, err := New("racy", time.Second, WithStore(racyStore{c: c}))
	require.NoError(t, err)
	err = th.Hold(context.Background(), time.Second)
	assert.EqualError(t, err, "throttle: store throttle.racyStore cannot hold keys: it is not a Holder")
	_, err = th.Held(context.Background())
	assert.Error(t, err, "Blocked on a store that cannot block")
	// This process holds off all the same.
	d, err := th.Allow(context.Background())
	require.NoError(t, err)
	assert.False(t, d.Allowed, "Allow after a Block the store could not keep: got %+v", d)
}

func TestHoldStoreFailure(t *testing.T) {
	mr := miniredis.RunT(t)
	c := redis.NewClient(&redis.Options{Addr: mr.Addr(), ContextTimeoutEnabled: true, MaxRetries: -1})
	t.Cleanup(func() { _ = c.Close() })
	th, err := New("down", time.Second, WithStore(NewRedisStore(c)), WithFallback(1))
	require.NoError(t, err)
	mr.Close()
	err = th.Hold(context.Background(), time.Minute)
	assert.ErrorIs(t, err, ErrStoreUnavailable, "Block with Redis down")
	_, err = th.Held(context.Background())
	assert.ErrorIs(t, err, ErrStoreUnavailable, "Blocked with Redis down")
	// The fallback holds off too, beyond this throttle's deny cache.
	r, err := th.c.fallback.Held(context.Background(), th.key)
	require.NoError(t, err)
	assert.Greater(t, r, 59*time.Second, "fallback hold")
}

func TestMemoryStoreBlockSweeps(t *testing.T) {
	m, advance := fakeMemory()
	req := Request{Interval: time.Second, Limit: 2}
	for i := range 1000 {
		require.NoError(t, m.Hold(context.Background(), fmt.Sprint("k", i), req, 500*time.Millisecond))
		advance(10 * time.Millisecond)
	}
	// Each Block holds two keys for a second at most.
	assert.LessOrEqual(t, m.len(), 2*2*101+minSweep, "keys held after 1000 short holds")
}

func TestResetEndsAHold(t *testing.T) {
	mr, _ := fakeMiniredis(t)
	c := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	t.Cleanup(func() { _ = c.Close() })
	for _, s := range []Store{NewMemoryStore(), NewRedisStore(c)} {
		for _, limit := range []int{1, 3} {
			th, err := New(fmt.Sprint("reset-hold-", limit), time.Second, WithStore(s), WithLimit(limit))
			require.NoError(t, err)
			ctx := context.Background()
			require.NoError(t, th.Hold(ctx, time.Hour))
			d, err := th.Held(ctx)
			require.NoError(t, err)
			assert.Positive(t, d, "%T limit %d: Blocked after Block", s, limit)
			require.NoError(t, th.Reset(ctx))
			d, err = th.Held(ctx)
			require.NoError(t, err)
			assert.Zero(t, d, "%T limit %d: Blocked after Reset", s, limit)
			dec, err := th.Allow(ctx)
			require.NoError(t, err)
			assert.True(t, dec.Allowed, "%T limit %d: Allow after Reset of a hold", s, limit)
		}
	}
}

// TestHoldRecordEndsWithTheWindowsHold holds a limit above 64 on
// redis-server and takes until a start is admitted: by then the hold has
// ended, so Held, asked after that admission, must report none. A record
// that outlasts the window's own hold would make a caller that reads Held
// (the HTTP transport does) sleep and book again for nothing.
func TestHoldRecordEndsWithTheWindowsHold(t *testing.T) {
	c := redistest.Start(t).Client(t)
	s := NewRedisStore(c)
	ctx := context.Background()
	req := Request{Interval: time.Second, Limit: 100}
	for i := range 30 {
		key := fmt.Sprintf("held-%d", i)
		d := 2*time.Millisecond + time.Duration(i)*97*time.Microsecond
		require.NoError(t, s.Hold(ctx, key, req, d))
		deadline := time.Now().Add(time.Second)
		for {
			res, err := s.Take(ctx, key, req)
			require.NoError(t, err)
			if res.OK {
				break
			}
			require.True(t, time.Now().Before(deadline), "hold of %v still denies after 1 s", d)
		}
		h, err := s.Held(ctx, key)
		require.NoError(t, err)
		require.Zero(t, h, "Held after a start was admitted (hold %v)", d)
	}
}
