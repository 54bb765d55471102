package asynqthrottle_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dthrottle/throttle"
	"github.com/dthrottle/throttle/asynqthrottle"
)

// *throttle.Keyed is the usual Limiter.
var _ asynqthrottle.Limiter = (*throttle.Keyed)(nil)

// answer is one scripted reply of fakeLimiter.
type answer struct {
	d   throttle.Decision
	err error
}

// fakeLimiter replies with its script in order, repeating the last answer,
// and records the keys it was asked for.
type fakeLimiter struct {
	mu      sync.Mutex
	script  []answer
	keys    []string
	onAllow func()
}

func (f *fakeLimiter) Allow(ctx context.Context, key string) (throttle.Decision, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.keys = append(f.keys, key)
	if f.onAllow != nil {
		f.onAllow()
	}
	a := f.script[0]
	if len(f.script) > 1 {
		f.script = f.script[1:]
	}
	return a.d, a.err
}

func (f *fakeLimiter) calls() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.keys)
}

func deny(retryAfter time.Duration) answer {
	return answer{d: throttle.Decision{RetryAfter: retryAfter}}
}

func allow() answer { return answer{d: throttle.Decision{Allowed: true}} }

// storeDown is a store failure as the root package reports it.
var storeDown = &throttle.StoreError{Key: "k", Err: errors.New("connection refused")}

// countingHandler counts its runs and returns err.
type countingHandler struct {
	mu   sync.Mutex
	runs int
	err  error
}

func (h *countingHandler) ProcessTask(context.Context, *asynq.Task) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.runs++
	return h.err
}

func (h *countingHandler) count() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.runs
}

func run(t *testing.T, lim asynqthrottle.Limiter, task *asynq.Task, opts ...asynqthrottle.Option) (*countingHandler, error) {
	t.Helper()
	h := &countingHandler{}
	err := asynqthrottle.Middleware(lim, opts...)(h).ProcessTask(context.Background(), task)
	return h, err
}

func TestThrottledIsRequeuedWithJitter(t *testing.T) {
	const retryAfter = 300 * time.Millisecond
	const jitter = 200 * time.Millisecond
	seen := map[time.Duration]bool{}
	for range 50 {
		lim := &fakeLimiter{script: []answer{deny(retryAfter)}}
		h, err := run(t, lim, asynq.NewTask("email", nil), asynqthrottle.WithJitter(jitter))
		require.Error(t, err)
		assert.Zero(t, h.count(), "a throttled task must not run")
		assert.ErrorIs(t, err, throttle.ErrThrottled)
		assert.NotErrorIs(t, err, throttle.ErrStoreUnavailable)
		var te *asynqthrottle.ThrottledError
		require.ErrorAs(t, err, &te)
		assert.Equal(t, "email", te.Key)
		assert.Equal(t, retryAfter, te.RetryAfter)
		assert.GreaterOrEqual(t, te.Delay, retryAfter)
		assert.Less(t, te.Delay, retryAfter+jitter)
		assert.Nil(t, te.Err)
		assert.False(t, asynqthrottle.IsFailure(err))
		assert.False(t, asynqthrottle.IsFailure(fmt.Errorf("wrapped: %w", err)))
		seen[te.Delay] = true
		assert.Equal(t, []string{"email"}, lim.keys)
	}
	assert.Greater(t, len(seen), 1, "the delay is jittered")
}

func TestNoJitter(t *testing.T) {
	lim := &fakeLimiter{script: []answer{deny(150 * time.Millisecond)}}
	_, err := run(t, lim, asynq.NewTask("t", nil), asynqthrottle.WithJitter(0))
	var te *asynqthrottle.ThrottledError
	require.ErrorAs(t, err, &te)
	assert.Equal(t, 150*time.Millisecond, te.Delay)
}

func TestAllowedRuns(t *testing.T) {
	lim := &fakeLimiter{script: []answer{allow()}}
	h, err := run(t, lim, asynq.NewTask("t", nil))
	require.NoError(t, err)
	assert.Equal(t, 1, h.count())

	// The handler's own error comes back unchanged and is a failure.
	boom := errors.New("boom")
	h = &countingHandler{err: boom}
	err = asynqthrottle.Middleware(lim)(h).ProcessTask(context.Background(), asynq.NewTask("t", nil))
	assert.Same(t, boom, err)
	assert.True(t, asynqthrottle.IsFailure(err))
}

func TestStoreErrorFailClosedRequeues(t *testing.T) {
	lim := &fakeLimiter{script: []answer{{d: throttle.Decision{}, err: storeDown}}}
	h, err := run(t, lim, asynq.NewTask("t", nil),
		asynqthrottle.WithStoreRetryDelay(2*time.Second), asynqthrottle.WithJitter(100*time.Millisecond))
	assert.Zero(t, h.count())
	var te *asynqthrottle.ThrottledError
	require.ErrorAs(t, err, &te)
	assert.ErrorIs(t, err, throttle.ErrThrottled)
	assert.ErrorIs(t, err, throttle.ErrStoreUnavailable)
	assert.Equal(t, 2*time.Second, te.RetryAfter)
	assert.GreaterOrEqual(t, te.Delay, 2*time.Second)
	assert.Less(t, te.Delay, 2100*time.Millisecond)
	assert.Same(t, storeDown, te.Err)
	assert.False(t, asynqthrottle.IsFailure(err))
	assert.Contains(t, err.Error(), "limiter unavailable")
}

func TestStoreErrorFailOpenRuns(t *testing.T) {
	lim := &fakeLimiter{script: []answer{{d: throttle.Decision{Allowed: true}, err: storeDown}}}
	h, err := run(t, lim, asynq.NewTask("t", nil))
	require.NoError(t, err)
	assert.Equal(t, 1, h.count())
}

func TestOtherLimiterErrorIsReturned(t *testing.T) {
	bad := errors.New("bad key")
	lim := &fakeLimiter{script: []answer{{err: bad}}}
	h, err := run(t, lim, asynq.NewTask("t", nil))
	assert.Same(t, bad, err)
	assert.Zero(t, h.count())
	assert.True(t, asynqthrottle.IsFailure(err))
}

func TestKeyFunc(t *testing.T) {
	tenantKey := func(task *asynq.Task) (string, error) {
		var p struct {
			Tenant string `json:"tenant"`
		}
		if err := json.Unmarshal(task.Payload(), &p); err != nil {
			return "", err
		}
		if p.Tenant == "" {
			return "", nil
		}
		return task.Type() + ":" + p.Tenant, nil
	}
	opt := asynqthrottle.WithKeyFunc(tenantKey)

	lim := &fakeLimiter{script: []answer{allow()}}
	h, err := run(t, lim, asynq.NewTask("report", []byte(`{"tenant":"acme"}`)), opt)
	require.NoError(t, err)
	assert.Equal(t, 1, h.count())
	assert.Equal(t, []string{"report:acme"}, lim.keys)

	// An empty key is not throttled: the limiter is not asked.
	lim = &fakeLimiter{script: []answer{deny(time.Second)}}
	h, err = run(t, lim, asynq.NewTask("report", []byte(`{}`)), opt)
	require.NoError(t, err)
	assert.Equal(t, 1, h.count())
	assert.Zero(t, lim.calls())

	// A key function error is the handler's error.
	h, err = run(t, lim, asynq.NewTask("report", []byte(`not json`)), opt)
	require.Error(t, err)
	assert.True(t, asynqthrottle.IsFailure(err))
	assert.Zero(t, h.count())
	assert.Zero(t, lim.calls())
}

func TestWaitInHandler(t *testing.T) {
	// Short retry-afters within the wait: the task waits and then runs.
	lim := &fakeLimiter{script: []answer{deny(5 * time.Millisecond), deny(0), allow()}}
	h, err := run(t, lim, asynq.NewTask("t", nil), asynqthrottle.WithWait(time.Second))
	require.NoError(t, err)
	assert.Equal(t, 1, h.count())
	assert.Equal(t, 3, lim.calls())

	// A retry-after beyond what is left of the wait: re-queued.
	lim = &fakeLimiter{script: []answer{deny(30 * time.Millisecond)}}
	h, err = run(t, lim, asynq.NewTask("t", nil), asynqthrottle.WithWait(100*time.Millisecond))
	var te *asynqthrottle.ThrottledError
	require.ErrorAs(t, err, &te)
	assert.Zero(t, h.count())
	// 30 ms sleeps (plus jitter up to 16 ms) fit at most three times.
	assert.GreaterOrEqual(t, lim.calls(), 3)
	assert.LessOrEqual(t, lim.calls(), 4)
}

func TestExhaustedTaskWaitsInsteadOfFailing(t *testing.T) {
	// asynq archives a task whose handler fails when Retried >= MaxRetry,
	// whatever IsFailure says; such a task must wait for its turn.
	defer asynqthrottle.SetRetryState(func(context.Context) (int, int, bool) { return 0, 0, true })()

	lim := &fakeLimiter{script: []answer{deny(10 * time.Millisecond), {err: storeDown}, deny(5 * time.Millisecond), allow()}}
	h, err := run(t, lim, asynq.NewTask("t", nil), asynqthrottle.WithStoreRetryDelay(10*time.Millisecond))
	require.NoError(t, err)
	assert.Equal(t, 1, h.count())
	assert.Equal(t, 4, lim.calls())

	// It gives up only when its context ends.
	ctx, cancel := context.WithCancel(context.Background())
	lim = &fakeLimiter{script: []answer{deny(20 * time.Millisecond)}}
	lim.onAllow = func() {
		if len(lim.keys) == 3 {
			cancel()
		}
	}
	h2 := &countingHandler{}
	err = asynqthrottle.Middleware(lim)(h2).ProcessTask(ctx, asynq.NewTask("t", nil))
	assert.ErrorIs(t, err, context.Canceled)
	assert.Zero(t, h2.count())
	assert.Equal(t, 3, lim.calls())
}

func TestNotExhaustedTaskIsRequeued(t *testing.T) {
	defer asynqthrottle.SetRetryState(func(context.Context) (int, int, bool) { return 2, 3, true })()
	lim := &fakeLimiter{script: []answer{deny(time.Minute)}}
	_, err := run(t, lim, asynq.NewTask("t", nil))
	assert.ErrorIs(t, err, throttle.ErrThrottled)
	assert.Equal(t, 1, lim.calls())
}

func TestRetryDelay(t *testing.T) {
	task := asynq.NewTask("t", nil)
	for _, delay := range []time.Duration{0, 200 * time.Millisecond, 1500 * time.Millisecond, 7 * time.Second} {
		err := fmt.Errorf("wrapped: %w", &asynqthrottle.ThrottledError{Key: "t", Delay: delay})
		before := time.Now()
		d := asynqthrottle.RetryDelay(3, err, task)
		after := time.Now()
		// asynq adds d to its own later time.Now; the sum is in a whole
		// second at or after the Delay.
		score := time.Unix(after.Add(d).Unix(), 0) // what rdb.Retry stores
		assert.False(t, score.Before(before.Add(delay)), "due %v before delay %v", score, delay)
		assert.LessOrEqual(t, d, delay+time.Second)
	}
	// Other errors: asynq's default back-off (at least 15 s).
	assert.GreaterOrEqual(t, asynqthrottle.RetryDelay(0, errors.New("x"), task), 15*time.Second)
}

func TestRoundUp(t *testing.T) {
	base := time.Unix(100, 0)
	cases := []struct {
		now   time.Time
		d     time.Duration
		wantS int64
	}{
		{base, 0, 100},
		{base, time.Millisecond, 101},
		{base.Add(300 * time.Millisecond), 200 * time.Millisecond, 101},
		{base.Add(900 * time.Millisecond), 200 * time.Millisecond, 102},
		{base.Add(900 * time.Millisecond), 100 * time.Millisecond, 101},
		{base, -time.Second, 100},
	}
	for _, c := range cases {
		got := c.now.Add(asynqthrottle.RoundUp(c.now, c.d))
		assert.Equal(t, time.Unix(c.wantS, 0), got, "now %v d %v", c.now, c.d)
	}
}

func TestConfigure(t *testing.T) {
	throttled := fmt.Errorf("wrapped: %w", &asynqthrottle.ThrottledError{Key: "t", Delay: 2 * time.Second})
	other := errors.New("other")
	task := asynq.NewTask("t", nil)

	// Defaults when the Config has no hooks.
	cfg := asynqthrottle.Configure(asynq.Config{Concurrency: 7})
	assert.Equal(t, 7, cfg.Concurrency)
	assert.False(t, cfg.IsFailure(throttled))
	assert.True(t, cfg.IsFailure(other))
	d := cfg.RetryDelayFunc(0, throttled, task)
	assert.GreaterOrEqual(t, d, 2*time.Second)
	assert.LessOrEqual(t, d, 3*time.Second)
	assert.GreaterOrEqual(t, cfg.RetryDelayFunc(0, other, task), 15*time.Second)
	assert.Nil(t, cfg.ErrorHandler)

	// The Config's own hooks are kept for other errors.
	var handled []error
	cfg = asynqthrottle.Configure(asynq.Config{
		IsFailure:      func(err error) bool { return !errors.Is(err, other) },
		RetryDelayFunc: func(int, error, *asynq.Task) time.Duration { return 42 * time.Second },
		ErrorHandler: asynq.ErrorHandlerFunc(func(_ context.Context, _ *asynq.Task, err error) {
			handled = append(handled, err)
		}),
	})
	assert.False(t, cfg.IsFailure(throttled))
	assert.False(t, cfg.IsFailure(other))
	assert.True(t, cfg.IsFailure(errors.New("x")))
	assert.LessOrEqual(t, cfg.RetryDelayFunc(0, throttled, task), 3*time.Second)
	assert.Equal(t, 42*time.Second, cfg.RetryDelayFunc(0, other, task))
	cfg.ErrorHandler.HandleError(context.Background(), task, throttled)
	cfg.ErrorHandler.HandleError(context.Background(), task, other)
	assert.Equal(t, []error{other}, handled)
}

func TestMiddlewarePanicsOnBadOptions(t *testing.T) {
	lim := &fakeLimiter{script: []answer{allow()}}
	assert.PanicsWithValue(t, "asynqthrottle: nil Limiter", func() { asynqthrottle.Middleware(nil) })
	assert.Panics(t, func() { asynqthrottle.Middleware(lim, asynqthrottle.WithKeyFunc(nil)) })
	assert.Panics(t, func() { asynqthrottle.Middleware(lim, asynqthrottle.WithJitter(-1)) })
	assert.Panics(t, func() { asynqthrottle.Middleware(lim, asynqthrottle.WithStoreRetryDelay(-1)) })
	assert.Panics(t, func() { asynqthrottle.Middleware(lim, asynqthrottle.WithWait(-1)) })
}
