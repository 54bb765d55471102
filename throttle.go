package throttle

import (
	"context"
	"errors"
	"sync/atomic"
	"time"
)

// Decision is the answer to one Allow.
type Decision struct {
	// Allowed reports whether the call may start now.
	Allowed bool
	// RetryAfter is, when not Allowed, how long until the store may admit
	// the next call: it denies every call before then. It can be 0 for a
	// denial when that is less than the store's resolution away (with
	// RedisStore and limit 1, under a millisecond). 0 when Allowed.
	RetryAfter time.Duration
	// Remaining is, when Allowed, how many more calls the store would admit
	// at once (0 for limit 1); 0 when not Allowed.
	Remaining int
}

// Event describes one decision, for the observer set with WithObserver.
type Event struct {
	// Key is the throttle's key.
	Key string
	// Allowed reports whether the call was admitted (now or after Delay).
	Allowed bool
	// Delay is how long an admitted call had to wait for its booked start.
	Delay time.Duration
	// RetryAfter is, for a call not admitted, the store's retry-after.
	RetryAfter time.Duration
	// Cached reports whether the deny cache answered, without the store.
	Cached bool
	// Err is the store's failure, if any (then Allowed is the policy's
	// choice: false, or true with WithFailOpen).
	Err error
	// Latency is how long the decision took, store round trip included.
	Latency time.Duration
}

// A Throttle lets a call start at most limit times in any window of its
// interval, for every process that shares its store (see WithStore). Use
// Allow to decide and drop, or Wait to wait for a turn; Wrap and WrapErr do
// the same around a function.
//
// A Throttle is safe for concurrent use by many goroutines. It starts no
// goroutine of its own.
type Throttle struct {
	key      string
	interval time.Duration
	cfg      config
	local    bool         // the store never blocks: no timeout needed
	fallback *MemoryStore // decides while the store cannot (WithFallback)
	epoch    time.Time    // origin of now
	clock    Clock        // the store's clock, if it has one; nil otherwise
	// deniedUntil is the deny cache: until this time (ns since epoch, on
	// the clock of now) the store is known to deny a start.
	deniedUntil atomic.Int64
}

// New returns a Throttle for key that admits at most one call (or the limit
// set with WithLimit) per interval. The interval is at least 1 ms; Redis
// keeps it in whole milliseconds, rounded up.
//
// Without WithStore the throttle keeps its state in memory and limits only
// the calls made through it in this process. Give every process the same
// key, interval and limit, and a WithStore(NewRedisStore(...)), to limit
// them all together.
//
// New returns an error for an empty key, an interval below 1 ms or above
// MaxInterval, a limit below 1 or above MaxLimit, a nil store, or a negative
// wait or timeout.
func New(key string, interval time.Duration, opts ...Option) (*Throttle, error) {
	cfg := defaultConfig()
	for _, o := range opts {
		if o != nil {
			o.apply(&cfg)
		}
	}
	if err := validate(key, interval, &cfg); err != nil {
		return nil, err
	}
	if cfg.store == nil {
		cfg.store = NewMemoryStore()
	}
	_, local := cfg.store.(localStore)
	t := &Throttle{key: key, interval: interval, cfg: cfg, local: local, epoch: time.Now()}
	if c, ok := cfg.store.(Clock); ok {
		t.clock = c
		t.epoch = c.Now()
	}
	if cfg.fallback > 0 {
		t.fallback = NewMemoryStore()
	}
	return t, nil
}

// mustNew is New for Wrap and WrapErr: it panics with New's message.
func mustNew(key string, interval time.Duration, opts []Option) *Throttle {
	t, err := New(key, interval, opts...)
	if err != nil {
		panic(err.Error())
	}
	return t
}

// Key returns the throttle's key.
func (t *Throttle) Key() string { return t.key }

// Interval returns the throttle's interval.
func (t *Throttle) Interval() time.Duration { return t.interval }

// Limit returns the number of starts allowed per interval.
func (t *Throttle) Limit() int { return t.cfg.limit }

// Allow decides whether one call may start now, and records the start if
// so. It never waits: use Wait for that. A call that is not admitted is a
// Decision with Allowed false and a nil error.
//
// Allow returns a non-nil error only when no decision was made: ctx's error
// if ctx ended first, or an error matching ErrStoreUnavailable when the store
// failed or did not answer within the timeout. For a store failure the
// Decision says what the policy chose: not allowed by default, allowed with
// WithFailOpen, and the process-local limit's decision with WithFallback.
func (t *Throttle) Allow(ctx context.Context) (Decision, error) {
	res, err := t.take(ctx, 0)
	if err != nil {
		// res is the fallback's decision, or empty.
		return Decision{Allowed: t.degraded(res, err) == nil, RetryAfter: res.RetryAfter, Remaining: res.Remaining}, err
	}
	if !res.OK {
		return Decision{RetryAfter: res.RetryAfter}, nil
	}
	return Decision{Allowed: true, Remaining: res.Remaining}, nil
}

// Wait blocks until the call may start, and returns nil then. It books the
// earliest free start in the store and sleeps until it, so it does not poll.
// It waits at most the duration set with WithWait (without it, as long as
// ctx allows) and never past ctx's deadline.
//
// Wait returns a *ThrottledError (matching ErrThrottled) at once when the
// earliest free start is further away than it may wait, ctx's error when ctx
// ends first (the booked start is then handed back when no later one was
// booked after it), and an error matching ErrStoreUnavailable when the store
// failed. When the store failed, WithFailOpen makes it return nil, and
// WithFallback makes it wait for a turn under the process-local limit.
func (t *Throttle) Wait(ctx context.Context) error {
	maxWait := t.cfg.wait
	if maxWait == 0 {
		maxWait = durationMax
	}
	return t.wait(ctx, maxWait)
}

// Reset forgets the recorded starts of the throttle's key in its store, so
// the next call is admitted, and clears this throttle's deny cache. Other
// processes' deny caches still deny until their retry-after ends (see
// WithDenyCache). It returns an error if the store fails or cannot reset.
func (t *Throttle) Reset(ctx context.Context) error {
	r, ok := t.cfg.store.(resetter)
	if !ok {
		return errors.New("throttle: store cannot reset keys")
	}
	t.deniedUntil.Store(0)
	cctx, cancel := context.WithTimeout(ctx, t.cfg.timeout)
	defer cancel()
	if err := r.Reset(cctx, t.key); err != nil {
		return &StoreError{Key: t.key, Err: err}
	}
	return nil
}

// admit decides one call for Wrap and WrapErr: nil when fn may run.
func (t *Throttle) admit(ctx context.Context) error {
	if t.cfg.wait > 0 {
		return t.wait(ctx, t.cfg.wait)
	}
	res, err := t.take(ctx, 0)
	if err != nil {
		return t.degraded(res, err)
	}
	if !res.OK {
		return &ThrottledError{Key: t.key, RetryAfter: res.RetryAfter}
	}
	return nil
}

// degraded applies the store-failure policy to a failed decision: nil when
// the call may run anyway (WithFailOpen, or admitted by the fallback).
func (t *Throttle) degraded(res Reservation, err error) error {
	if !isStoreError(err) {
		return err
	}
	if t.fallback != nil {
		if res.OK {
			return nil
		}
		return errors.Join(&ThrottledError{Key: t.key, RetryAfter: res.RetryAfter}, err)
	}
	if t.cfg.failOpen {
		return nil
	}
	return err
}

// wait books a start at most maxWait (and ctx's deadline) away and sleeps
// until it.
func (t *Throttle) wait(ctx context.Context, maxWait time.Duration) error {
	if deadline, ok := ctx.Deadline(); ok {
		maxWait = min(maxWait, max(time.Until(deadline), 0))
	}
	store := t.cfg.store
	res, err := t.take(ctx, maxWait)
	if err != nil {
		if err := t.degraded(res, err); err != nil || t.fallback == nil {
			return err
		}
		store = t.fallback // the fallback booked the start
	}
	if !res.OK {
		return &ThrottledError{Key: t.key, RetryAfter: res.RetryAfter}
	}
	if res.Delay <= 0 {
		return nil
	}
	timer := time.NewTimer(res.Delay)
	select {
	case <-timer.C:
		return nil
	case <-ctx.Done():
		timer.Stop()
		t.cancel(ctx, store, res)
		return ctx.Err()
	}
}

// cancel hands a booking back to store, on a context that outlives ctx.
func (t *Throttle) cancel(ctx context.Context, store Store, res Reservation) {
	t.deniedUntil.Store(0)
	cctx, stop := context.WithTimeout(context.WithoutCancel(ctx), t.cfg.timeout)
	defer stop()
	// A failed hand-back leaves the start booked, which only costs capacity.
	_ = store.Cancel(cctx, t.key, t.request(res.Delay), res)
}

func (t *Throttle) request(maxWait time.Duration) Request {
	return Request{Interval: t.interval, Limit: t.cfg.limit, MaxWait: maxWait}
}

// now returns the time of the deny cache, in ns since t.epoch: the
// monotonic clock, or the store's clock if it has one.
func (t *Throttle) now() int64 {
	if t.clock != nil {
		return int64(t.clock.Now().Sub(t.epoch))
	}
	return int64(time.Since(t.epoch))
}

// start returns the time at which a decision begins, for its observed
// latency: begin when now is the monotonic clock, which already read it.
func (t *Throttle) start(begin int64) time.Time {
	if t.clock != nil {
		return time.Now()
	}
	return t.epoch.Add(time.Duration(begin))
}

// denyUntil raises the deny cache to until (ns since t.epoch); it never
// lowers it.
func (t *Throttle) denyUntil(until int64) {
	for {
		old := t.deniedUntil.Load()
		if old >= until || t.deniedUntil.CompareAndSwap(old, until) {
			return
		}
	}
}

// take asks the deny cache, then the store, for one start at most maxWait
// away. Its errors are ctx's or a *StoreError.
func (t *Throttle) take(ctx context.Context, maxWait time.Duration) (Reservation, error) {
	var begin int64
	var start time.Time // for the observer
	if t.cfg.denyCache || t.cfg.observer != nil {
		begin = t.now()
	}
	if t.cfg.observer != nil {
		start = t.start(begin)
	}
	if t.cfg.denyCache {
		if res, ok := t.cached(begin, maxWait); ok {
			if t.cfg.observer != nil {
				t.observe(res, true, nil, start)
			}
			return res, nil
		}
	}
	if err := ctx.Err(); err != nil {
		return Reservation{}, err
	}
	var res Reservation
	var err error
	if t.local {
		res, err = t.ask(ctx, begin, maxWait)
	} else {
		cctx, cancel := context.WithTimeout(ctx, t.cfg.timeout)
		res, err = t.ask(cctx, begin, maxWait)
		cancel()
	}
	if err != nil {
		res = Reservation{}
		if ctx.Err() != nil {
			err = ctx.Err()
		} else {
			err = &StoreError{Key: t.key, Err: err}
			if t.fallback != nil {
				res, _ = t.fallback.Take(ctx, t.key, Request{Interval: t.interval, Limit: t.cfg.fallback, MaxWait: maxWait})
			}
		}
	}
	if t.cfg.observer != nil {
		t.observe(res, false, err, start)
	}
	return res, err
}

// cached is the deny cache's answer at now (ns since t.epoch) to a call
// that may wait maxWait: a denial while the store is known to deny every
// start up to maxWait away.
func (t *Throttle) cached(now int64, maxWait time.Duration) (Reservation, bool) {
	if until := t.deniedUntil.Load(); until > now && time.Duration(until-now) > maxWait {
		return Reservation{RetryAfter: time.Duration(until - now)}, true
	}
	return Reservation{}, false
}

// ask asks the store for a start, and feeds its answer to the deny cache.
// begin is a time (ns since t.epoch) before the call.
func (t *Throttle) ask(ctx context.Context, begin int64, maxWait time.Duration) (Reservation, error) {
	res, err := t.cfg.store.Take(ctx, t.key, t.request(maxWait))
	if err == nil && t.cfg.denyCache {
		t.learn(res, begin)
	}
	return res, err
}

// learn raises the deny cache after an answer of the store to a call that
// began at begin. The store decided at some time after begin, so the key
// stays closed at least until begin plus what it said.
func (t *Throttle) learn(res Reservation, begin int64) {
	switch {
	case !res.OK && res.RetryAfter > 0:
		t.denyUntil(begin + int64(res.RetryAfter))
	case res.OK && t.cfg.limit == 1:
		t.denyUntil(begin + int64(res.Delay+t.interval))
	}
}

func (t *Throttle) observe(res Reservation, cached bool, err error, start time.Time) {
	e := Event{
		Key:        t.key,
		Allowed:    res.OK || (err != nil && t.degraded(res, err) == nil),
		Delay:      res.Delay,
		RetryAfter: res.RetryAfter,
		Cached:     cached,
		Err:        err,
		Latency:    time.Since(start),
	}
	t.cfg.observer(e)
}

func isStoreError(err error) bool {
	var se *StoreError
	return errors.As(err, &se)
}

// Wrap returns a function that calls fn when the throttle admits the call
// and otherwise returns T's zero value without calling fn. The throttle is
// made by New(key, interval, opts...); Wrap panics with New's message when
// that fails, and when fn is nil.
//
// With WithWait the returned function waits for its turn (up to the wait)
// before it gives up. When the store fails, fn is not called (fail closed)
// unless WithFailOpen is set. Use WrapErr to learn why a call did not run.
// A panic in fn reaches the caller unchanged.
func Wrap[T any](key string, interval time.Duration, fn func() T, opts ...Option) func() T {
	if fn == nil {
		panic("throttle: nil fn")
	}
	t := mustNew(key, interval, opts)
	return func() T {
		if t.admit(context.Background()) != nil {
			var zero T
			return zero
		}
		return fn()
	}
}

// WrapErr returns a function that calls fn when the throttle admits the
// call, and returns fn's results. Otherwise it returns T's zero value and an
// error: a *ThrottledError (matching ErrThrottled, with the retry-after), an
// error matching ErrStoreUnavailable when the store failed (unless
// WithFailOpen is set, which calls fn instead, or WithFallback, which
// decides with a process-local limit), or ctx's error. The throttle
// is made by New(key, interval, opts...); WrapErr panics with New's message
// when that fails, and when fn is nil.
//
// With WithWait the returned function waits for its turn, up to the wait
// and never past ctx. A panic in fn reaches the caller unchanged.
func WrapErr[T any](key string, interval time.Duration, fn func(context.Context) (T, error), opts ...Option) func(context.Context) (T, error) {
	if fn == nil {
		panic("throttle: nil fn")
	}
	t := mustNew(key, interval, opts)
	return func(ctx context.Context) (T, error) {
		if err := t.admit(ctx); err != nil {
			var zero T
			return zero, err
		}
		return fn(ctx)
	}
}
