package throttle

import (
	"context"
	"testing"
	"time"

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
