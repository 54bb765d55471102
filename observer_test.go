package throttle

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// eventLog records the events of an observer, from any goroutine.
type eventLog struct {
	mu  sync.Mutex
	evs []Event
}

func (l *eventLog) observe(e Event) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.evs = append(l.evs, e)
}

// take returns the events recorded since the last take.
func (l *eventLog) take() []Event {
	l.mu.Lock()
	defer l.mu.Unlock()
	evs := l.evs
	l.evs = nil
	return evs
}

func kinds(evs []Event) []EventKind {
	out := make([]EventKind, len(evs))
	for i, e := range evs {
		out[i] = e.Kind
	}
	return out
}

func TestObserverSeesTheEndOfEachWait(t *testing.T) {
	var log eventLog
	// The store's clock stands still: the second Wait always books.
	m, _ := fakeMemory()
	th, err := New("k", 30*time.Millisecond, WithStore(m), WithObserver(log.observe))
	require.NoError(t, err)
	ctx := context.Background()

	require.NoError(t, th.Wait(ctx))
	assert.Equal(t, []EventKind{EventDecision}, kinds(log.take()), "a Wait admitted at once")

	require.NoError(t, th.Wait(ctx))
	evs := log.take()
	require.Equal(t, []EventKind{EventDecision, EventWaited}, kinds(evs), "a Wait that booked a start")
	assert.True(t, evs[0].Allowed, "the booking decision")
	assert.Positive(t, evs[0].Delay, "the booking decision's delay")
	assert.True(t, evs[1].Allowed, "a wait that reached its start")
	assert.GreaterOrEqual(t, evs[1].Delay, evs[0].Delay, "the time waited covers the booked delay")
	assert.NoError(t, evs[1].Err)

	// A wait cut short by its context: the observer of the booking
	// cancels it.
	cctx, cancel := context.WithCancel(ctx)
	var cutLog eventLog
	cut, err := New("k", time.Hour, WithObserver(func(e Event) {
		cutLog.observe(e)
		if e.Kind == EventDecision && e.Delay > 0 {
			cancel()
		}
	}))
	require.NoError(t, err)
	require.NoError(t, cut.Wait(ctx))
	cutLog.take()
	assert.ErrorIs(t, cut.Wait(cctx), context.Canceled)
	evs = cutLog.take()
	require.Equal(t, []EventKind{EventDecision, EventWaited}, kinds(evs), "a Wait cut short")
	assert.False(t, evs[1].Allowed, "a wait cut short did not reach its start")
	assert.ErrorIs(t, evs[1].Err, context.Canceled, "the end of a wait cut short")
	assert.Less(t, evs[1].Delay, time.Minute, "the time a cut-short wait waited")
}

func TestObserverSeesLeasesTakenAndReleased(t *testing.T) {
	var log eventLog
	th, err := New("k", 0, WithConcurrency(1), WithObserver(log.observe))
	require.NoError(t, err)
	ctx := context.Background()

	l, err := th.Acquire(ctx)
	require.NoError(t, err)
	evs := log.take()
	require.Equal(t, []EventKind{EventDecision, EventLeaseTaken}, kinds(evs), "Acquire")
	assert.True(t, evs[0].Allowed, "the lease decision")

	_, err = th.Acquire(ctx)
	assert.ErrorIs(t, err, ErrAtCapacity)
	evs = log.take()
	require.Equal(t, []EventKind{EventDecision}, kinds(evs), "Acquire refused by the cap")
	assert.False(t, evs[0].Allowed, "the refused lease decision")

	time.Sleep(2 * time.Millisecond)
	l.Release()
	l.Release()
	evs = log.take()
	require.Equal(t, []EventKind{EventLeaseReleased}, kinds(evs), "Release, twice")
	assert.GreaterOrEqual(t, evs[0].Held, 2*time.Millisecond, "how long the lease was held")

	// A lease granted without the store (fail open) is reported too.
	var openLog eventLog
	open, err := New("k", 0, WithConcurrency(1), WithStore(failingLeaser{}), WithFailOpen(),
		WithObserver(openLog.observe))
	require.NoError(t, err)
	l, err = open.Acquire(ctx)
	require.NoError(t, err)
	l.Release()
	evs = openLog.take()
	require.Equal(t, []EventKind{EventDecision, EventLeaseTaken, EventLeaseReleased}, kinds(evs), "a fail-open lease")
	assert.ErrorIs(t, evs[0].Err, ErrStoreUnavailable)
	assert.True(t, evs[0].Allowed, "the fail-open decision")
}

func TestObserverSeesHolds(t *testing.T) {
	var log eventLog
	th, err := New("k", time.Second, WithObserver(log.observe))
	require.NoError(t, err)
	ctx := context.Background()
	require.NoError(t, th.Hold(ctx, time.Minute))
	require.NoError(t, th.Hold(ctx, 0))
	evs := log.take()
	require.Equal(t, []EventKind{EventHold}, kinds(evs), "a hold, and a hold of 0 that does nothing")
	assert.Equal(t, time.Minute, evs[0].RetryAfter, "the hold's length")
	assert.Equal(t, "k", evs[0].Key)
	assert.NoError(t, evs[0].Err)

	down := errors.New("down")
	bad, err := New("k", time.Second, WithStore(failingHolder{failingStore{down}}), WithObserver(log.observe))
	require.NoError(t, err)
	assert.ErrorIs(t, bad.Hold(ctx, time.Minute), ErrStoreUnavailable)
	evs = log.take()
	require.Equal(t, []EventKind{EventHold}, kinds(evs), "a hold that failed")
	assert.ErrorIs(t, evs[0].Err, ErrStoreUnavailable, "the failed hold's event")
	assert.ErrorIs(t, evs[0].Err, down, "the failed hold's event")
}

func TestEventKindString(t *testing.T) {
	for k, want := range map[EventKind]string{EventDecision: "decision", EventWaited: "waited", EventHold: "hold",
		EventLeaseTaken: "lease taken", EventLeaseReleased: "lease released", 200: "unknown"} {
		assert.Equal(t, want, k.String(), "EventKind(%d)", k)
	}
}

// failingHolder is a Holder whose every call fails.
type failingHolder struct{ failingStore }

func (s failingHolder) Hold(context.Context, string, Request, time.Duration) error { return s.err }
func (s failingHolder) Held(context.Context, string) (time.Duration, error)        { return 0, s.err }
