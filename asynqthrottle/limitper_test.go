package asynqthrottle_test

import (
	"context"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dthrottle/throttle"
	"github.com/dthrottle/throttle/asynqthrottle"
)

// short is the short window of the tests below, on the real clock: long
// enough that the calls before it ends are made within it on a busy
// machine.
const short = 2 * time.Second

// TestTwoWindows runs tasks of one type under 2 per short and 3 per hour
// (throttle.WithLimitPer) on a MemoryStore: the third task is re-queued
// until the short window ends, the fourth runs once it has,
// and the fifth is re-queued until the hour ends, with the long window's
// retry-after, and none of them is a failure.
func TestTwoWindows(t *testing.T) {
	k, err := throttle.NewKeyed(short, throttle.WithLimit(2), throttle.WithLimitPer(3, time.Hour))
	require.NoError(t, err)
	h := &countingHandler{}
	mw := asynqthrottle.Middleware(k, asynqthrottle.WithJitter(0))(h)
	process := func() error { return mw.ProcessTask(context.Background(), asynq.NewTask("report", nil)) }
	require.NoError(t, process(), "first task")
	require.NoError(t, process(), "second task")
	var te *asynqthrottle.ThrottledError
	require.ErrorAs(t, process(), &te, "third task: the short window")
	assert.False(t, asynqthrottle.IsFailure(te), "a throttled task is not a failure")
	assert.LessOrEqual(t, te.RetryAfter, short, "third task's retry-after: the short window's")
	time.Sleep(te.RetryAfter)
	require.NoError(t, process(), "fourth task, once the short window ended")
	require.ErrorAs(t, process(), &te, "fifth task: the long window")
	assert.Greater(t, te.RetryAfter, 50*time.Minute, "fifth task's retry-after: the long window's")
	assert.GreaterOrEqual(t, te.Delay, te.RetryAfter, "fifth task: re-queued for the long window's retry-after")
	assert.Equal(t, 3, h.count(), "tasks run")
}

// TestCappedTwoWindows runs tasks under a cap of 1 and two windows, 2 per
// short and 3 per hour, on a MemoryStore: a task refused by the cap is
// re-queued without using a start of either window, so that once the lease
// is released the next two tasks still run; a task refused by a window
// takes no lease.
func TestCappedTwoWindows(t *testing.T) {
	k, err := throttle.NewKeyed(short, throttle.WithLimit(2), throttle.WithLimitPer(3, time.Hour),
		throttle.WithConcurrency(1), throttle.WithLeaseTTL(time.Hour))
	require.NoError(t, err)
	mw := asynqthrottle.Middleware(k, asynqthrottle.WithJitter(0))
	h := &blockingHandler{started: make(chan struct{}, 1), release: make(chan struct{})}
	first := make(chan error, 1)
	go func() { first <- mw(h).ProcessTask(context.Background(), asynq.NewTask("t", nil)) }()
	waitStarted(t, h, first)

	other := &countingHandler{}
	process := func() error { return mw(other).ProcessTask(context.Background(), asynq.NewTask("t", nil)) }
	err = process()
	var te *asynqthrottle.ThrottledError
	require.ErrorAs(t, err, &te, "second task, with the lease held")
	assert.Zero(t, te.RetryAfter, "second task: refused by the cap, which has no retry-after")
	assert.False(t, asynqthrottle.IsFailure(err), "a task refused by the cap is not a failure")

	close(h.release)
	require.NoError(t, <-first)
	require.NoError(t, process(), "second task after the release: the cap's refusal used no start")
	err = process()
	require.ErrorAs(t, err, &te, "third task within the short window")
	assert.Greater(t, te.RetryAfter, time.Duration(0), "third task: refused by the short window, with its retry-after")
	time.Sleep(te.RetryAfter)
	require.NoError(t, process(), "third task once the short window ended: the window's refusal took no lease")
	err = process()
	require.ErrorAs(t, err, &te, "fourth task within the hour")
	assert.Greater(t, te.RetryAfter, 50*time.Minute, "fourth task's retry-after: the long window's")
	assert.Equal(t, 2, other.count(), "tasks run by the other handler")
}
