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
