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

// blockingHandler runs until release is closed, telling started when it
// starts, and checks that its context is the lease's.
type blockingHandler struct {
	started chan struct{}
	release chan struct{}
}

func (h *blockingHandler) ProcessTask(ctx context.Context, _ *asynq.Task) error {
	h.started <- struct{}{}
	select {
	case <-h.release:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// waitStarted waits until h starts, and fails the test if the middleware
// returned (with the error sent to done) first.
func waitStarted(t *testing.T, h *blockingHandler, done <-chan error) {
	t.Helper()
	select {
	case <-h.started:
	case err := <-done:
		t.Fatalf("the first task did not run: %v", err)
	case <-time.After(5 * time.Second):
		t.Fatal("the first task did not start within 5 s")
	}
}

// TestCappedKeyedRunsTasksHoldingALease (issue 19, item 10): with a capped
// Keyed (throttle.WithConcurrency), a task runs holding one of its key's
// leases; a task refused by the cap is re-queued like a throttled task, not
// counted as a failure. Before, every task failed with the Keyed's "lease
// required" error, which asynq counted as a failure on every attempt.
func TestCappedKeyedRunsTasksHoldingALease(t *testing.T) {
	k, err := throttle.NewKeyed(0, throttle.WithStore(throttle.NewMemoryStore()), throttle.WithConcurrency(1))
	require.NoError(t, err)
	mw := asynqthrottle.Middleware(k, asynqthrottle.WithJitter(0))
	h := &blockingHandler{started: make(chan struct{}, 1), release: make(chan struct{})}
	first := make(chan error, 1)
	go func() { first <- mw(h).ProcessTask(context.Background(), asynq.NewTask("t", nil)) }()
	waitStarted(t, h, first)

	// The first task holds the lease: the second is re-queued.
	other := &countingHandler{}
	err = mw(other).ProcessTask(context.Background(), asynq.NewTask("t", nil))
	var te *asynqthrottle.ThrottledError
	require.ErrorAs(t, err, &te, "a task refused by the cap")
	assert.ErrorIs(t, err, throttle.ErrThrottled)
	assert.NotErrorIs(t, err, throttle.ErrStoreUnavailable)
	assert.False(t, asynqthrottle.IsFailure(err), "a task refused by the cap is not a failure")
	assert.Zero(t, other.count(), "a task refused by the cap does not run")

	// Tasks of another key are not held back.
	h2 := &countingHandler{}
	require.NoError(t, mw(h2).ProcessTask(context.Background(), asynq.NewTask("u", nil)))
	assert.Equal(t, 1, h2.count())

	// Once the first task returns, its lease is released.
	close(h.release)
	require.NoError(t, <-first)
	require.NoError(t, mw(other).ProcessTask(context.Background(), asynq.NewTask("t", nil)))
	assert.Equal(t, 1, other.count())
}

// TestCappedKeyedWaitsForALease: with WithWait, a task refused by the cap
// waits in its handler for a lease (woken by the release), and a task that
// asynq would archive waits as long as its context allows.
func TestCappedKeyedWaitsForALease(t *testing.T) {
	for _, exhausted := range []bool{false, true} {
		k, err := throttle.NewKeyed(0, throttle.WithStore(throttle.NewMemoryStore()), throttle.WithConcurrency(1))
		require.NoError(t, err)
		opts := []asynqthrottle.Option{asynqthrottle.WithWait(10 * time.Second)}
		if exhausted {
			restore := asynqthrottle.SetRetryState(func(context.Context) (int, int, bool) { return 0, 0, true })
			opts = nil
			defer restore()
		}
		mw := asynqthrottle.Middleware(k, opts...)
		h := &blockingHandler{started: make(chan struct{}, 1), release: make(chan struct{})}
		first := make(chan error, 1)
		go func() { first <- mw(h).ProcessTask(context.Background(), asynq.NewTask("t", nil)) }()
		waitStarted(t, h, first)
		second := make(chan error, 1)
		other := &countingHandler{}
		go func() { second <- mw(other).ProcessTask(context.Background(), asynq.NewTask("t", nil)) }()
		time.Sleep(20 * time.Millisecond)
		assert.Zero(t, other.count(), "exhausted %v: the second task waits while the first holds the lease", exhausted)
		close(h.release)
		require.NoError(t, <-first)
		select {
		case err := <-second:
			require.NoError(t, err, "exhausted %v: the second task after the release", exhausted)
		case <-time.After(5 * time.Second):
			t.Fatalf("exhausted %v: the second task did not run 5 s after the release", exhausted)
		}
		assert.Equal(t, 1, other.count())
	}
}
