package riverthrottle_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/riverqueue/river"
	"github.com/riverqueue/river/rivertype"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dthrottle/throttle"
	"github.com/dthrottle/throttle/riverthrottle"
	"github.com/dthrottle/throttle/throttletest"
)

// *throttle.Keyed is the usual Limiter.
var _ riverthrottle.Limiter = (*throttle.Keyed)(nil)

// answer is one scripted reply of fakeLimiter.Allow.
type answer struct {
	d   throttle.Decision
	err error
}

// fakeLimiter replies to Allow with its script in order, repeating the
// last answer, and records the keys it was asked for and the holds.
type fakeLimiter struct {
	mu      sync.Mutex
	script  []answer
	keys    []string
	holds   []time.Duration
	holdErr error
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

func (f *fakeLimiter) Concurrency() int { return 0 }

func (f *fakeLimiter) AcquireWithin(context.Context, string, time.Duration) (*throttle.Lease, error) {
	return nil, errors.New("fakeLimiter: no leases")
}

func (f *fakeLimiter) Hold(ctx context.Context, key string, d time.Duration) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.holds = append(f.holds, d)
	return f.holdErr
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

// inner is a job body that counts its runs and returns err.
type inner struct {
	mu   sync.Mutex
	runs int
	err  error
	ctxs []context.Context
}

func (h *inner) do(ctx context.Context) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.runs++
	h.ctxs = append(h.ctxs, ctx)
	return h.err
}

func (h *inner) count() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.runs
}

func job(kind string, args string) *rivertype.JobRow {
	return &rivertype.JobRow{ID: 1, Kind: kind, EncodedArgs: []byte(args), Attempt: 1, MaxAttempts: 3}
}

func work(t *testing.T, lim riverthrottle.Limiter, j *rivertype.JobRow, opts ...riverthrottle.Option) (*inner, error) {
	t.Helper()
	h := &inner{}
	err := riverthrottle.New(lim, opts...).Work(context.Background(), j, h.do)
	return h, err
}

// snoozeOf returns the snooze River would apply for err, and whether it
// would see one (the check River's job executor makes).
func snoozeOf(err error) (time.Duration, bool) {
	var se *river.JobSnoozeError
	if !errors.As(err, &se) {
		return 0, false
	}
	return se.Duration, true
}

func TestThrottledIsSnoozedWithJitter(t *testing.T) {
	const retryAfter = 300 * time.Millisecond
	const jitter = 200 * time.Millisecond
	seen := map[time.Duration]bool{}
	for range 50 {
		lim := &fakeLimiter{script: []answer{deny(retryAfter)}}
		h, err := work(t, lim, job("email", `{}`), riverthrottle.WithJitter(jitter))
		require.Error(t, err)
		assert.Zero(t, h.count(), "a throttled job must not run")
		assert.ErrorIs(t, err, throttle.ErrThrottled)
		assert.NotErrorIs(t, err, throttle.ErrStoreUnavailable)
		var te *riverthrottle.ThrottledError
		require.ErrorAs(t, err, &te)
		assert.Equal(t, "email", te.Key)
		assert.Equal(t, retryAfter, te.RetryAfter)
		assert.GreaterOrEqual(t, te.Delay, retryAfter)
		assert.Less(t, te.Delay, retryAfter+jitter)
		assert.Nil(t, te.Err)
		snooze, ok := snoozeOf(fmt.Errorf("wrapped by other middleware: %w", err))
		assert.True(t, ok, "River sees a snooze in %v", err)
		assert.Equal(t, te.Delay, snooze, "snooze duration")
		seen[te.Delay] = true
		assert.Equal(t, []string{"email"}, lim.keys)
	}
	assert.Greater(t, len(seen), 1, "the delay is jittered")
}

func TestNoJitter(t *testing.T) {
	lim := &fakeLimiter{script: []answer{deny(150 * time.Millisecond)}}
	_, err := work(t, lim, job("t", `{}`), riverthrottle.WithJitter(0))
	snooze, ok := snoozeOf(err)
	assert.True(t, ok)
	assert.Equal(t, 150*time.Millisecond, snooze)
	assert.Contains(t, err.Error(), `"t" throttled; snoozed for 150ms`)
}

func TestAllowedRuns(t *testing.T) {
	lim := &fakeLimiter{script: []answer{allow()}}
	h, err := work(t, lim, job("t", `{}`))
	require.NoError(t, err)
	assert.Equal(t, 1, h.count())

	// The job's own error comes back unchanged.
	boom := errors.New("boom")
	h = &inner{err: boom}
	err = riverthrottle.New(lim).Work(context.Background(), job("t", `{}`), h.do)
	assert.Same(t, boom, err)
	_, ok := snoozeOf(err)
	assert.False(t, ok, "a job's own error is not a snooze")
}

func TestStoreErrorFailClosedSnoozes(t *testing.T) {
	lim := &fakeLimiter{script: []answer{{d: throttle.Decision{}, err: storeDown}}}
	h, err := work(t, lim, job("t", `{}`),
		riverthrottle.WithStoreRetryDelay(2*time.Second), riverthrottle.WithJitter(100*time.Millisecond))
	assert.Zero(t, h.count())
	var te *riverthrottle.ThrottledError
	require.ErrorAs(t, err, &te)
	assert.ErrorIs(t, err, throttle.ErrThrottled)
	assert.ErrorIs(t, err, throttle.ErrStoreUnavailable)
	assert.Equal(t, 2*time.Second, te.RetryAfter)
	assert.GreaterOrEqual(t, te.Delay, 2*time.Second)
	assert.Less(t, te.Delay, 2100*time.Millisecond)
	assert.Same(t, storeDown, te.Err)
	snooze, ok := snoozeOf(err)
	assert.True(t, ok)
	assert.Equal(t, te.Delay, snooze)
	assert.Contains(t, err.Error(), "store unavailable")
}

func TestStoreErrorFailOpenRuns(t *testing.T) {
	lim := &fakeLimiter{script: []answer{{d: throttle.Decision{Allowed: true}, err: storeDown}}}
	h, err := work(t, lim, job("t", `{}`))
	require.NoError(t, err)
	assert.Equal(t, 1, h.count())
}

func TestStorePolicyOnKeyed(t *testing.T) {
	// The same cases on a real Keyed whose store fails.
	failing := func(t *testing.T, opts ...throttle.Option) *throttle.Keyed {
		st := throttletest.New(t)
		st.Fail(errors.New("down"))
		k, err := throttle.NewKeyed(time.Second, append(st.Options(), opts...)...)
		require.NoError(t, err)
		return k
	}
	h, err := work(t, failing(t), job("t", `{}`), riverthrottle.WithJitter(0))
	assert.Zero(t, h.count(), "fail closed")
	assert.ErrorIs(t, err, throttle.ErrStoreUnavailable)
	snooze, ok := snoozeOf(err)
	assert.True(t, ok)
	assert.Equal(t, riverthrottle.DefaultStoreRetryDelay, snooze)

	h, err = work(t, failing(t, throttle.WithFailOpen()), job("t", `{}`))
	require.NoError(t, err)
	assert.Equal(t, 1, h.count(), "fail open")

	// A fallback admits one per interval in this process, then denies
	// with its retry-after.
	lim := failing(t, throttle.WithFallback(1))
	h, err = work(t, lim, job("t", `{}`))
	require.NoError(t, err)
	assert.Equal(t, 1, h.count(), "admitted by the fallback")
	h, err = work(t, lim, job("t", `{}`), riverthrottle.WithJitter(0))
	assert.Zero(t, h.count(), "denied by the fallback")
	assert.ErrorIs(t, err, throttle.ErrStoreUnavailable)
	snooze, ok = snoozeOf(err)
	assert.True(t, ok)
	assert.Greater(t, snooze, 900*time.Millisecond, "the fallback's retry-after")
	assert.LessOrEqual(t, snooze, time.Second)
}

func TestOtherLimiterErrorIsReturned(t *testing.T) {
	bad := errors.New("bad key")
	lim := &fakeLimiter{script: []answer{{err: bad}}}
	h, err := work(t, lim, job("t", `{}`))
	assert.Same(t, bad, err)
	assert.Zero(t, h.count())
	_, ok := snoozeOf(err)
	assert.False(t, ok)
}

func TestKeyFunc(t *testing.T) {
	tenantKey := func(j *rivertype.JobRow) (string, error) {
		var a struct {
			Tenant string `json:"tenant"`
		}
		if err := json.Unmarshal(j.EncodedArgs, &a); err != nil {
			return "", err
		}
		if a.Tenant == "" {
			return "", nil
		}
		return j.Kind + ":" + a.Tenant, nil
	}
	opt := riverthrottle.WithKeyFunc(tenantKey)

	lim := &fakeLimiter{script: []answer{allow()}}
	h, err := work(t, lim, job("report", `{"tenant":"acme"}`), opt)
	require.NoError(t, err)
	assert.Equal(t, 1, h.count())
	assert.Equal(t, []string{"report:acme"}, lim.keys)

	// An empty key is not throttled: the limiter is not asked.
	lim = &fakeLimiter{script: []answer{deny(time.Second)}}
	h, err = work(t, lim, job("report", `{}`), opt)
	require.NoError(t, err)
	assert.Equal(t, 1, h.count())
	assert.Zero(t, lim.calls())

	// A key function error is the job's error.
	h, err = work(t, lim, job("report", `not json`), opt)
	require.Error(t, err)
	_, ok := snoozeOf(err)
	assert.False(t, ok)
	assert.Zero(t, h.count())
	assert.Zero(t, lim.calls())
}

func TestWaitInMiddleware(t *testing.T) {
	// Short retry-afters within the wait: the job waits and then runs.
	lim := &fakeLimiter{script: []answer{deny(5 * time.Millisecond), deny(0), allow()}}
	h, err := work(t, lim, job("t", `{}`), riverthrottle.WithWait(time.Second))
	require.NoError(t, err)
	assert.Equal(t, 1, h.count())
	assert.Equal(t, 3, lim.calls())

	// A retry-after beyond what is left of the wait: snoozed.
	lim = &fakeLimiter{script: []answer{deny(30 * time.Millisecond)}}
	h, err = work(t, lim, job("t", `{}`), riverthrottle.WithWait(100*time.Millisecond))
	_, ok := snoozeOf(err)
	assert.True(t, ok)
	assert.Zero(t, h.count())
	// 30 ms sleeps (plus jitter up to 16 ms) fit at most three times.
	assert.GreaterOrEqual(t, lim.calls(), 3)
	assert.LessOrEqual(t, lim.calls(), 4)

	// The wait ends with the job's context.
	ctx, cancel := context.WithCancel(context.Background())
	lim = &fakeLimiter{script: []answer{deny(20 * time.Millisecond)}}
	lim.onAllow = func() {
		if len(lim.keys) == 2 {
			cancel()
		}
	}
	h = &inner{}
	err = riverthrottle.New(lim, riverthrottle.WithWait(time.Hour)).Work(ctx, job("t", `{}`), h.do)
	assert.ErrorIs(t, err, context.Canceled)
	assert.Zero(t, h.count())
	assert.Equal(t, 2, lim.calls())
}

func TestHoldOff(t *testing.T) {
	limited := errors.New("429 Too Many Requests")
	lim := &fakeLimiter{script: []answer{allow()}}
	h := &inner{err: fmt.Errorf("calling the API: %w", riverthrottle.HoldOff(3*time.Second, limited))}
	err := riverthrottle.New(lim, riverthrottle.WithJitter(0)).Work(context.Background(), job("t", `{}`), h.do)
	assert.Equal(t, 1, h.count())
	assert.Equal(t, []time.Duration{3 * time.Second}, lim.holds, "the key is held")
	snooze, ok := snoozeOf(err)
	assert.True(t, ok, "the job is snoozed, not failed")
	assert.Equal(t, 3*time.Second, snooze)
	assert.ErrorIs(t, err, limited)
	var he *riverthrottle.HoldError
	require.ErrorAs(t, err, &he)
	assert.Equal(t, 3*time.Second, he.Duration)

	// A failed Hold still snoozes the job, and says so.
	lim = &fakeLimiter{script: []answer{allow()}, holdErr: storeDown}
	h = &inner{err: riverthrottle.HoldOff(time.Second, nil)}
	err = riverthrottle.New(lim).Work(context.Background(), job("t", `{}`), h.do)
	_, ok = snoozeOf(err)
	assert.True(t, ok)
	assert.ErrorIs(t, err, throttle.ErrStoreUnavailable)

	assert.Panics(t, func() { _ = riverthrottle.HoldOff(-1, nil) })
}

func TestHoldOffOnKeyed(t *testing.T) {
	// With a real Keyed, the hold denies the key's next jobs until it ends,
	// and only that key.
	st := throttletest.New(t)
	k, err := throttle.NewKeyed(time.Millisecond, st.Options()...)
	require.NoError(t, err)
	mw := riverthrottle.New(k, riverthrottle.WithJitter(0))
	held := &inner{err: riverthrottle.HoldOff(10*time.Second, nil)}
	_ = mw.Work(context.Background(), job("api", `{}`), held.do)
	st.Advance(5 * time.Second)

	h := &inner{}
	err = mw.Work(context.Background(), job("api", `{}`), h.do)
	assert.Zero(t, h.count(), "a job of the held key runs during the hold")
	snooze, ok := snoozeOf(err)
	assert.True(t, ok)
	assert.Equal(t, 5*time.Second, snooze, "snoozed until the hold ends")

	require.NoError(t, mw.Work(context.Background(), job("other", `{}`), h.do))
	assert.Equal(t, 1, h.count(), "another key is not held")

	st.Advance(5 * time.Second)
	require.NoError(t, mw.Work(context.Background(), job("api", `{}`), h.do))
	assert.Equal(t, 2, h.count(), "the held key runs after the hold")
}

func TestConcurrencyCap(t *testing.T) {
	// A capped Keyed: the job runs holding a lease, on the lease's
	// context, and the lease is released when the job returns.
	k, err := throttle.NewKeyed(0, throttle.WithConcurrency(1))
	require.NoError(t, err)
	mw := riverthrottle.New(k, riverthrottle.WithJitter(0), riverthrottle.WithCapacityDelay(300*time.Millisecond))

	release := make(chan struct{})
	running := make(chan context.Context)
	done := make(chan error)
	go func() {
		done <- mw.Work(context.Background(), job("t", `{}`), func(ctx context.Context) error {
			running <- ctx
			<-release
			return nil
		})
	}()
	leaseCtx := <-running

	// The cap is taken: a second job is snoozed by the capacity delay.
	h := &inner{}
	err = mw.Work(context.Background(), job("t", `{}`), h.do)
	assert.Zero(t, h.count(), "a job beyond the cap runs")
	assert.ErrorIs(t, err, throttle.ErrAtCapacity)
	assert.ErrorIs(t, err, throttle.ErrThrottled)
	snooze, ok := snoozeOf(err)
	assert.True(t, ok)
	assert.Equal(t, 300*time.Millisecond, snooze)

	close(release)
	require.NoError(t, <-done)
	assert.ErrorIs(t, context.Cause(leaseCtx), throttle.ErrLeaseReleased, "the job ran on its lease's context")

	// Released: the next job runs.
	require.NoError(t, mw.Work(context.Background(), job("t", `{}`), h.do))
	assert.Equal(t, 1, h.count())
	// ... and released its lease too, also when it fails.
	h.err = errors.New("boom")
	assert.ErrorIs(t, mw.Work(context.Background(), job("t", `{}`), h.do), h.err)
	assert.ErrorIs(t, mw.Work(context.Background(), job("t", `{}`), h.do), h.err)
	assert.Equal(t, 3, h.count())
}

func TestConcurrencyCapWaitsForRelease(t *testing.T) {
	// With WithWait, a job refused by the cap waits in the middleware for
	// a released lease rather than sleeping the capacity delay (here far
	// longer than the wait, so polling would snooze it at once).
	refused := make(chan struct{}, 1)
	k, err := throttle.NewKeyed(0, throttle.WithConcurrency(1), throttle.WithObserver(func(e throttle.Event) {
		if e.Kind == throttle.EventDecision && !e.Allowed {
			select {
			case refused <- struct{}{}:
			default:
			}
		}
	}))
	require.NoError(t, err)
	mw := riverthrottle.New(k, riverthrottle.WithJitter(0), riverthrottle.WithCapacityDelay(time.Hour),
		riverthrottle.WithWait(liveness))

	release := make(chan struct{})
	running := make(chan struct{})
	first := make(chan error)
	go func() {
		first <- mw.Work(context.Background(), job("t", `{}`), func(context.Context) error {
			close(running)
			<-release
			return nil
		})
	}()
	<-running

	h := &inner{}
	second := make(chan error)
	go func() { second <- mw.Work(context.Background(), job("t", `{}`), h.do) }()
	select {
	case <-refused:
	case err := <-second:
		t.Fatalf("the second job returned %v while the first held the lease", err)
	}
	close(release)
	require.NoError(t, <-first)
	require.NoError(t, <-second, "the waiting job runs once the lease is released")
	assert.Equal(t, 1, h.count())
}

func TestConcurrencyCapWithRate(t *testing.T) {
	// A cap and a rate: the rate's denial is snoozed by its retry-after.
	st := throttletest.New(t)
	k, err := throttle.NewKeyed(time.Second, append(st.Options(), throttle.WithConcurrency(2))...)
	require.NoError(t, err)
	mw := riverthrottle.New(k, riverthrottle.WithJitter(0))
	h := &inner{}
	require.NoError(t, mw.Work(context.Background(), job("t", `{}`), h.do))
	st.Advance(400 * time.Millisecond)
	err = mw.Work(context.Background(), job("t", `{}`), h.do)
	assert.Equal(t, 1, h.count())
	assert.ErrorIs(t, err, throttle.ErrThrottled)
	assert.NotErrorIs(t, err, throttle.ErrAtCapacity)
	snooze, ok := snoozeOf(err)
	assert.True(t, ok)
	assert.Equal(t, 600*time.Millisecond, snooze)

	// The store fails: fail closed snoozes by the store delay.
	st.Fail(errors.New("down"))
	st.Advance(time.Second)
	err = mw.Work(context.Background(), job("t", `{}`), h.do)
	assert.Equal(t, 1, h.count())
	assert.ErrorIs(t, err, throttle.ErrStoreUnavailable)
	snooze, _ = snoozeOf(err)
	assert.Equal(t, riverthrottle.DefaultStoreRetryDelay, snooze)
}

func TestNewPanicsOnBadOptions(t *testing.T) {
	lim := &fakeLimiter{script: []answer{allow()}}
	assert.PanicsWithValue(t, "riverthrottle: nil Limiter", func() { riverthrottle.New(nil) })
	assert.Panics(t, func() { riverthrottle.New(lim, riverthrottle.WithKeyFunc(nil)) })
	assert.Panics(t, func() { riverthrottle.New(lim, riverthrottle.WithJitter(-1)) })
	assert.Panics(t, func() { riverthrottle.New(lim, riverthrottle.WithStoreRetryDelay(-1)) })
	assert.Panics(t, func() { riverthrottle.New(lim, riverthrottle.WithCapacityDelay(-1)) })
	assert.Panics(t, func() { riverthrottle.New(lim, riverthrottle.WithWait(-1)) })
}

func TestHoldOffUnderCap(t *testing.T) {
	// With a rate and a cap, a hold holds off the next jobs as well.
	st := throttletest.New(t)
	k, err := throttle.NewKeyed(time.Millisecond, append(st.Options(), throttle.WithConcurrency(2))...)
	require.NoError(t, err)
	mw := riverthrottle.New(k, riverthrottle.WithJitter(0))
	held := &inner{err: riverthrottle.HoldOff(2*time.Second, nil)}
	_ = mw.Work(context.Background(), job("t", `{}`), held.do)
	st.Advance(time.Second)
	h := &inner{}
	err = mw.Work(context.Background(), job("t", `{}`), h.do)
	assert.Zero(t, h.count(), "a job of the held key runs during the hold")
	snooze, ok := snoozeOf(err)
	assert.True(t, ok)
	assert.Equal(t, time.Second, snooze, "snoozed until the hold ends")
	st.Advance(time.Second)
	require.NoError(t, mw.Work(context.Background(), job("t", `{}`), h.do))
	assert.Equal(t, 1, h.count(), "the job runs after the hold")

	// With only a cap there is no rate to hold: RedisStore refuses the
	// hold. The job is still snoozed, and the error says why.
	k, err = throttle.NewKeyed(0, append(st.Options(), throttle.WithConcurrency(2))...)
	require.NoError(t, err)
	held = &inner{err: riverthrottle.HoldOff(2*time.Second, nil)}
	err = riverthrottle.New(k, riverthrottle.WithJitter(0)).Work(context.Background(), job("t", `{}`), held.do)
	snooze, ok = snoozeOf(err)
	assert.True(t, ok)
	assert.Equal(t, 2*time.Second, snooze)
	assert.ErrorContains(t, err, "cannot hold")
}
