package throttle

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestDeadlinesBoundEveryDecision(t *testing.T) {
	const timeout = 80 * time.Millisecond
	d := newDeadlines(timeout)

	// A ctx that is never cancelled: the decisions of one tick share a
	// context whose deadline is at least the timeout away.
	before := time.Now()
	a, cancelA := d.bound(context.Background())
	defer cancelA()
	b, cancelB := d.bound(context.Background())
	defer cancelB()
	da, ok := a.Deadline()
	require.True(t, ok, "shared context has a deadline")
	assert.False(t, da.Before(before.Add(timeout)), "shared deadline %v is at least the timeout after the call", da.Sub(before))
	assert.LessOrEqual(t, da.Sub(time.Now()), timeout+d.tick, "shared deadline is at most timeout + tick away")
	if time.Since(before) < d.tick {
		assert.True(t, a == b, "two decisions within one tick share the context")
	}
	select {
	case <-a.Done():
	case <-time.After(time.Second):
		t.Fatal("the shared context did not end within 1s of an 80ms timeout")
	}
	c, cancelC := d.bound(context.Background())
	defer cancelC()
	assert.True(t, a != c, "a new context after the old one ended")
	assert.NoError(t, c.Err(), "the new shared context is live")

	// A ctx that ends before the timeout is used as it is.
	short, cancelShort := context.WithTimeout(context.Background(), timeout/2)
	defer cancelShort()
	got, stop := d.bound(short)
	stop()
	assert.True(t, short == got, "a ctx ending before the timeout is used as it is")

	// A cancellable ctx without a deadline gets one, and its cancellation.
	parent, cancelParent := context.WithCancel(context.Background())
	got, stop = d.bound(parent)
	defer stop()
	dl, ok := got.Deadline()
	require.True(t, ok, "derived context has a deadline")
	assert.LessOrEqual(t, time.Until(dl), timeout, "derived deadline")
	cancelParent()
	assert.ErrorIs(t, got.Err(), context.Canceled, "derived context after its parent is cancelled")
}

// TestDeadlinesBoundSharedContexts makes decisions on a never-cancelled
// ctx for a second with an hour's timeout: however long the timeout, at
// most maxShared+2 shared contexts are alive at once (each lives timeout
// plus one tick, and one is made per tick at most).
func TestDeadlinesBoundSharedContexts(t *testing.T) {
	d := newDeadlines(time.Hour)
	seen := map[context.Context]bool{}
	for end := time.Now().Add(time.Second); time.Now().Before(end); time.Sleep(time.Millisecond) {
		ctx, cancel := d.bound(context.Background())
		seen[ctx] = true
		cancel()
	}
	live := 0
	for ctx := range seen {
		if ctx.Err() == nil {
			live++
		}
	}
	assert.LessOrEqual(t, live, maxShared+2, "shared contexts alive after a second of decisions with a 1h timeout (%d made)", len(seen))
}

type deadlineTestKey struct{}

// TestDeadlinesKeepValues bounds decisions on contexts that are never
// cancelled but carry values (WithValue, WithoutCancel): the context the
// store gets has the caller's values and a deadline at most the timeout
// (plus a tick) away. Only context.Background and context.TODO share a
// context.
func TestDeadlinesKeepValues(t *testing.T) {
	const timeout = 80 * time.Millisecond
	d := newDeadlines(timeout)
	parent, cancelParent := context.WithCancel(context.WithValue(context.Background(), deadlineTestKey{}, "span"))
	defer cancelParent()
	for name, ctx := range map[string]context.Context{
		"WithValue":     context.WithValue(context.Background(), deadlineTestKey{}, "span"),
		"WithoutCancel": context.WithoutCancel(parent),
	} {
		got, stop := d.bound(ctx)
		assert.Equal(t, "span", got.Value(deadlineTestKey{}), "%s: the value reaches the store", name)
		dl, ok := got.Deadline()
		if assert.True(t, ok, "%s: bounded", name) {
			assert.LessOrEqual(t, time.Until(dl), timeout+d.tick, "%s: deadline", name)
		}
		stop()
	}
	for name, ctx := range map[string]context.Context{"Background": context.Background(), "TODO": context.TODO()} {
		a, stopA := d.bound(ctx)
		b, stopB := d.bound(ctx)
		_, ok := a.Deadline()
		assert.True(t, ok, "%s: bounded", name)
		if a != b {
			// A tick may have ended between the two; the next two share.
			c, stopC := d.bound(ctx)
			assert.True(t, b == c, "%s: decisions within one tick share a context", name)
			stopC()
		}
		stopA()
		stopB()
	}
}

// valueHook records, for every command, the deadlineTestKey value of the
// context that go-redis hands to its hooks.
type valueHook struct {
	mu   sync.Mutex
	seen []any
}

func (h *valueHook) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h *valueHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		h.mu.Lock()
		h.seen = append(h.seen, ctx.Value(deadlineTestKey{}))
		h.mu.Unlock()
		return next(ctx, cmd)
	}
}

func (h *valueHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

// TestContextValuesReachHooks decides on a ctx that carries a value but is
// never cancelled (as a trace span put on context.Background is): every
// command that go-redis runs for the decision (SET NX, the slots script,
// a booking) sees the value in its hooks, with and without
// ContextTimeoutEnabled.
func TestContextValuesReachHooks(t *testing.T) {
	mr := miniredis.RunT(t)
	for _, cte := range []bool{true, false} {
		t.Run(fmt.Sprintf("ContextTimeoutEnabled=%v", cte), func(t *testing.T) {
			c := redis.NewClient(&redis.Options{Addr: mr.Addr(), ContextTimeoutEnabled: cte})
			t.Cleanup(func() { _ = c.Close() })
			h := &valueHook{}
			c.AddHook(h)
			store := NewRedisStore(c, WithKeyPrefix(fmt.Sprintf("values%v:", cte)))
			ctx := context.WithValue(context.Background(), deadlineTestKey{}, "span")
			for _, ctx := range []context.Context{ctx, context.WithoutCancel(ctx)} {
				for _, limit := range []int{1, 3} {
					th, err := New(fmt.Sprintf("values/%d", limit), time.Hour, WithStore(store), WithLimit(limit), WithDenyCache(false))
					require.NoError(t, err)
					for range limit + 1 { // the last one is denied: a script
						_, err := th.Allow(ctx)
						require.NoError(t, err, "Allow")
					}
					require.NoError(t, th.Reset(ctx), "Reset")
				}
				w, err := New("values/wait", 50*time.Millisecond, WithStore(store), WithWait(time.Second))
				require.NoError(t, err)
				require.NoError(t, w.Wait(ctx), "first Wait")
				require.NoError(t, w.Wait(ctx), "booked Wait")
			}
			h.mu.Lock()
			defer h.mu.Unlock()
			require.NotEmpty(t, h.seen, "commands seen by the hook")
			lost := 0
			for _, v := range h.seen {
				if v != "span" {
					lost++
				}
			}
			assert.Zero(t, lost, "commands of %d whose hook did not see the ctx's value", len(h.seen))
		})
	}
}
