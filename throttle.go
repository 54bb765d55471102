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
	// RedisStore and a limit up to 64, under a millisecond). 0 when Allowed.
	RetryAfter time.Duration
}

// Event describes one decision, or another step that Kind names, for the
// observer set with WithObserver.
type Event struct {
	// Kind says what the event reports; the zero value is EventDecision.
	Kind EventKind
	// Key is the key decided on.
	Key string
	// Allowed reports whether the call was admitted (now or after Delay).
	// For EventWaited, whether the call reached its booked start.
	Allowed bool
	// Delay is how long an admitted call had to wait for its booked start.
	// For EventWaited, how long it waited.
	Delay time.Duration
	// RetryAfter is, for a call not admitted, the store's retry-after.
	// For EventHold, the length of the hold.
	RetryAfter time.Duration
	// Cached reports whether the deny cache answered, without the store.
	Cached bool
	// Permit reports whether a leased permit answered, without the store
	// (see WithPermitBatch).
	Permit bool
	// Err is the store's failure, if any (then Allowed is the policy's
	// choice: false, or true with WithFailOpen).
	Err error
	// Latency is how long the decision (or the hold) took, store round
	// trip included.
	Latency time.Duration
	// Held is, for EventLeaseReleased, how long the lease was held.
	Held time.Duration
}

// A Throttle lets a call start at most limit times in any window of its
// interval, for every process that shares its store (see WithStore). Use
// Allow to decide and drop, or Wait to wait for a turn; Wrap and WrapErr do
// the same around a function. A Throttle is a Keyed bound to one key.
//
// A Throttle is safe for concurrent use by many goroutines. It starts no
// goroutine of its own.
type Throttle struct {
	c   *core
	key string
	e   entry
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
// New returns an error for an empty key, an interval below 1 ms (0 is
// allowed with WithConcurrency: a cap without a rate) or above MaxInterval,
// a limit below 1 or above MaxLimit (above 64 with WithConcurrency and no
// WithLimitPer), a nil store, a negative wait or timeout, a concurrency
// below 1, a lease TTL that is negative or below MinLeaseTTL, or windows of
// WithLimitPer that are out of range, too many, on a store that is not a
// WindowStore, or on a cap without a rate (an interval of 0).
func New(key string, interval time.Duration, opts ...Option) (*Throttle, error) {
	if key == "" {
		return nil, errEmptyKey
	}
	c, err := newCore(interval, opts)
	if err != nil {
		return nil, err
	}
	return &Throttle{c: c, key: key}, nil
}

// mustNew is New for Wrap and WrapErr: it panics with New's message.
func mustNew(key string, interval time.Duration, opts []Option) *Throttle {
	t, err := New(key, interval, opts...)
	if err != nil {
		panic(err.Error())
	}
	return t
}

// Allow decides whether one call may start now, and records the start if
// so. It never waits: use Wait for that. A call that is not admitted is a
// Decision with Allowed false and a nil error.
//
// Allow returns a non-nil error only when no decision was made: ctx's error
// if ctx ended first, or an error matching ErrStoreUnavailable when the store
// failed or did not answer within the timeout. For a store failure the
// Decision says what the policy chose: not allowed by default, allowed with
// WithFailOpen, and the process-local limit's decision with WithFallback.
//
// On a throttle with WithConcurrency, Allow returns an error and no
// decision: use Acquire, which holds a lease, or the Wrap functions.
func (t *Throttle) Allow(ctx context.Context) (Decision, error) {
	return t.c.allow(ctx, t.key, &t.e)
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
//
// On a throttle with WithConcurrency, Wait returns an error: use Acquire.
func (t *Throttle) Wait(ctx context.Context) error {
	return t.c.wait(ctx, t.key, &t.e, t.c.maxWait())
}

// Reset forgets the recorded starts and any hold of the throttle's key in
// its store, so the next call is admitted, and clears this throttle's deny
// cache. Other processes' deny caches still deny until their retry-after
// ends (see WithDenyCache). It returns ctx's error if ctx ended, an error
// matching ErrStoreUnavailable if the store failed, and an error if the
// store is not a Resetter.
func (t *Throttle) Reset(ctx context.Context) error {
	return t.c.reset(ctx, t.key, &t.e)
}

// Wrap returns a function that calls fn when the throttle admits the call
// and otherwise returns T's zero value without calling fn. The throttle is
// made by New(key, interval, opts...); Wrap panics with New's message when
// that fails, and when fn is nil.
//
// With WithWait the returned function waits for its turn (up to the wait)
// before it gives up. When the store fails, fn is not called (fail closed)
// unless WithFailOpen is set. Use WrapErr to learn why a call did not run.
// With WithConcurrency, fn runs holding a lease, released when fn returns
// or panics. A panic in fn reaches the caller unchanged.
func Wrap[T any](key string, interval time.Duration, fn func() T, opts ...Option) func() T {
	if fn == nil {
		panic("throttle: nil fn")
	}
	t := mustNew(key, interval, opts)
	if t.c.capped() {
		return func() T {
			l, err := t.c.acquire(context.Background(), t.key, &t.e, t.c.cfg.wait)
			if err != nil {
				var zero T
				return zero
			}
			defer l.Release()
			return fn()
		}
	}
	return func() T {
		if t.c.admit(context.Background(), t.key, &t.e) != nil {
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
// and never past ctx. With WithConcurrency, fn runs holding a lease,
// released when fn returns or panics; the ctx given to fn ends when the
// lease is lost (its cause is then ErrLeaseLost), and a call refused by the
// cap returns an error matching ErrAtCapacity too. A panic in fn reaches
// the caller unchanged.
func WrapErr[T any](key string, interval time.Duration, fn func(context.Context) (T, error), opts ...Option) func(context.Context) (T, error) {
	if fn == nil {
		panic("throttle: nil fn")
	}
	t := mustNew(key, interval, opts)
	if t.c.capped() {
		return func(ctx context.Context) (T, error) {
			return runLeased(ctx, t.c, t.key, &t.e, fn)
		}
	}
	return func(ctx context.Context) (T, error) {
		if err := t.c.admit(ctx, t.key, &t.e); err != nil {
			var zero T
			return zero, err
		}
		return fn(ctx)
	}
}

var errEmptyKey = errors.New("throttle: empty key")

// core is what a Throttle and a Keyed share: the interval, the options and
// the store, and the decision logic over them. The local state of each key
// (its deny cache) is an entry that the caller passes in.
type core struct {
	interval  time.Duration
	cfg       config
	local     bool          // the store never blocks: no timeout needed
	fallback  *MemoryStore  // decides while the store cannot (WithFallback)
	epoch     time.Time     // origin of now
	deadlines *deadlines    // bounds each store decision by the timeout
	clock     Clock         // the store's clock, if it has one; nil otherwise
	permits   *permitPolicy // leased permits; nil when the core has none
}

// entry is the local state of one key: its deny cache. Until deniedUntil
// (ns since the core's epoch, on the clock of now) the store is known to
// deny a start.
type entry struct {
	deniedUntil atomic.Int64
	permits     atomic.Pointer[permitPool] // nil unless the core batches
}

func newCore(interval time.Duration, opts []Option) (*core, error) {
	cfg := defaultConfig()
	for _, o := range opts {
		if o != nil {
			o.apply(&cfg)
		}
	}
	if err := validate(interval, &cfg); err != nil {
		return nil, err
	}
	if cfg.store == nil {
		cfg.store = NewMemoryStore()
	}
	_, local := cfg.store.(localStore)
	c := &core{interval: interval, cfg: cfg, local: local, epoch: time.Now(), deadlines: deadlinesFor(cfg.timeout)}
	if clk, ok := cfg.store.(Clock); ok {
		c.clock = clk
		c.epoch = clk.Now()
	}
	if cfg.fallback > 0 {
		c.fallback = NewMemoryStore()
	}
	c.permits = newPermitPolicy(interval, &cfg, local)
	return c, nil
}

// maxWait is how long Wait may wait: WithWait's, or without limit.
func (c *core) maxWait() time.Duration {
	if c.cfg.wait == 0 {
		return durationMax
	}
	return c.cfg.wait
}

func (c *core) allow(ctx context.Context, key string, e *entry) (Decision, error) {
	if c.capped() {
		return Decision{}, ErrLeaseRequired
	}
	res, _, err := c.take(ctx, key, e, 0)
	if err != nil {
		// res is the fallback's decision, or empty.
		return Decision{Allowed: c.degraded(key, res, err) == nil, RetryAfter: res.RetryAfter}, err
	}
	if !res.OK {
		return Decision{RetryAfter: res.RetryAfter}, nil
	}
	return Decision{Allowed: true}, nil
}

// admit decides one call for the wrappers: nil when fn may run.
func (c *core) admit(ctx context.Context, key string, e *entry) error {
	if c.cfg.wait > 0 {
		return c.wait(ctx, key, e, c.cfg.wait)
	}
	res, _, err := c.take(ctx, key, e, 0)
	if err != nil {
		return c.degraded(key, res, err)
	}
	if !res.OK {
		return &ThrottledError{Key: key, RetryAfter: res.RetryAfter}
	}
	return nil
}

// degraded applies the store-failure policy to a failed decision: nil when
// the call may run anyway (WithFailOpen, or admitted by the fallback).
func (c *core) degraded(key string, res Reservation, err error) error {
	if !isStoreError(err) {
		return err
	}
	if c.fallback != nil {
		if res.OK {
			return nil
		}
		return errors.Join(&ThrottledError{Key: key, RetryAfter: res.RetryAfter}, err)
	}
	if c.cfg.failOpen {
		return nil
	}
	return err
}

// wait books a start at most maxWait (and ctx's deadline) away and sleeps
// until it.
func (c *core) wait(ctx context.Context, key string, e *entry, maxWait time.Duration) error {
	if c.capped() {
		return ErrLeaseRequired
	}
	if deadline, ok := ctx.Deadline(); ok {
		maxWait = min(maxWait, max(time.Until(deadline), 0))
	}
	store := c.cfg.store
	res, learnt, err := c.take(ctx, key, e, maxWait)
	if err != nil {
		if err := c.degraded(key, res, err); err != nil || c.fallback == nil {
			return err
		}
		store = c.fallback // the fallback booked the start
	}
	if !res.OK {
		return &ThrottledError{Key: key, RetryAfter: res.RetryAfter}
	}
	if res.Delay <= 0 {
		return nil
	}
	return c.sleepUntilStart(ctx, store, key, e, res, learnt)
}

// sleepUntilStart sleeps until the start that store booked with res (Delay
// ahead) and returns nil then. A start that comes after ctx's deadline (the
// round trip used up the time left) is handed back at once and reported as
// throttled; a sleep that ctx cuts short hands it back and returns ctx's
// error. learnt is what the booking taught the deny cache, taken back with
// it.
func (c *core) sleepUntilStart(ctx context.Context, store Store, key string, e *entry, res Reservation, learnt raised) error {
	since := time.Now()
	if deadline, ok := ctx.Deadline(); ok && time.Until(deadline) < res.Delay {
		c.cancel(ctx, store, key, e, res, learnt)
		c.waited(key, since, false, nil)
		return &ThrottledError{Key: key, RetryAfter: res.Delay}
	}
	timer := time.NewTimer(res.Delay)
	select {
	case <-timer.C:
		c.waited(key, since, true, nil)
		return nil
	case <-ctx.Done():
		timer.Stop()
		c.cancel(ctx, store, key, e, res, learnt)
		c.waited(key, since, false, ctx.Err())
		return ctx.Err()
	}
}

// cancel hands a booking back to store, on a context that outlives ctx,
// and takes back what the booking taught the deny cache (learnt), unless
// something raised the cache since.
func (c *core) cancel(ctx context.Context, store Store, key string, e *entry, res Reservation, learnt raised) {
	if learnt.to != 0 {
		e.deniedUntil.CompareAndSwap(learnt.to, learnt.from)
	}
	cctx, stop := context.WithTimeout(context.WithoutCancel(ctx), c.cfg.timeout)
	defer stop()
	// A failed hand-back leaves the start booked, which only costs capacity.
	_ = store.Cancel(cctx, key, c.request(res.Delay), res)
}

func (c *core) reset(ctx context.Context, key string, e *entry) error {
	r, ok := c.cfg.store.(Resetter)
	if !ok {
		return errors.New("throttle: store cannot reset keys: it is not a Resetter")
	}
	if e != nil {
		e.deniedUntil.Store(0)
		e.dropPermits(0)
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	cctx, cancel := context.WithTimeout(ctx, c.cfg.timeout)
	defer cancel()
	if err := r.Reset(cctx, key, c.request(0)); err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return &StoreError{Key: key, Err: err}
	}
	return nil
}

func (c *core) request(maxWait time.Duration) Request {
	return Request{Interval: c.interval, Limit: c.cfg.limit, MaxWait: maxWait, Windows: c.cfg.windows}
}

// now returns the time of the deny cache, in ns since c.epoch: the
// monotonic clock, or the store's clock if it has one.
func (c *core) now() int64 {
	if c.clock != nil {
		return int64(c.clock.Now().Sub(c.epoch))
	}
	return int64(time.Since(c.epoch))
}

// start returns the time at which a decision begins, for its observed
// latency: begin when now is the monotonic clock, which already read it.
func (c *core) start(begin int64) time.Time {
	if c.clock != nil {
		return time.Now()
	}
	return c.epoch.Add(time.Duration(begin))
}

// raise raises e's deny cache to until (ns since the epoch); it never
// lowers it. It returns the value before and whether it raised it.
func (e *entry) raise(until int64) (before int64, raised bool) {
	for {
		old := e.deniedUntil.Load()
		if old >= until {
			return old, false
		}
		if e.deniedUntil.CompareAndSwap(old, until) {
			return old, true
		}
	}
}

// take asks the deny cache, then the store, for one start of key at most
// maxWait away, and returns what a booking raised the deny cache to and
// from (see learn). Its errors are ctx's or a *StoreError.
func (c *core) take(ctx context.Context, key string, e *entry, maxWait time.Duration) (Reservation, raised, error) {
	if c.permits != nil && e.spendPermit() {
		// A leased permit: no clock is read but the spend's own.
		res := Reservation{OK: true}
		if c.cfg.observer != nil {
			c.observeEvent(key, res, false, true, nil, time.Now())
		}
		return res, raised{}, nil
	}
	var begin int64
	var start time.Time // for the observer
	if c.cfg.denyCache || c.cfg.observer != nil {
		begin = c.now()
	}
	if c.cfg.observer != nil {
		start = c.start(begin)
	}
	if c.cfg.denyCache {
		if until := e.deniedUntil.Load(); until > begin && time.Duration(until-begin) > maxWait {
			res := Reservation{RetryAfter: time.Duration(until - begin)}
			if c.cfg.observer != nil {
				c.observe(key, res, true, nil, start)
			}
			return res, raised{}, nil
		}
	}
	if err := ctx.Err(); err != nil {
		return Reservation{}, raised{}, err
	}
	var res Reservation
	var learnt raised
	var err error
	switch {
	case c.local:
		res, err = c.cfg.store.Take(ctx, key, c.request(maxWait))
	case c.permits != nil && maxWait == 0:
		cctx, cancel := c.deadlines.bound(ctx)
		res, err = c.takePermit(cctx, key, e, c.request(0))
		cancel()
	default:
		cctx, cancel := c.deadlines.bound(ctx)
		res, err = c.cfg.store.Take(cctx, key, c.request(maxWait))
		cancel()
	}
	if err == nil && c.cfg.denyCache {
		learnt = c.learn(e, res, begin)
	}
	if err != nil {
		res = Reservation{}
		if ctx.Err() != nil {
			err = ctx.Err()
		} else {
			err = &StoreError{Key: key, Err: err}
			if c.fallback != nil {
				res, _ = c.fallback.Take(ctx, key, Request{Interval: c.interval, Limit: c.cfg.fallback, MaxWait: maxWait})
			}
		}
	}
	if c.cfg.observer != nil {
		c.observe(key, res, false, err, start)
	}
	return res, learnt, err
}

// raised is what a booking raised a deny cache to, and from, so that
// cancel can take it back; zero when it raised nothing.
type raised struct {
	to, from int64
}

// learn raises the deny cache after an answer of the store to a call that
// began at begin. The store decided at some time after begin, so the key
// stays closed at least until begin plus what it said. For a booking it
// returns what it raised, for cancel.
func (c *core) learn(e *entry, res Reservation, begin int64) raised {
	switch {
	case !res.OK && res.RetryAfter > 0:
		e.raise(begin + int64(res.RetryAfter))
	case res.OK && c.cfg.limit == 1:
		until := begin + int64(res.Delay+c.interval)
		if before, ok := e.raise(until); ok && res.Delay > 0 {
			return raised{to: until, from: before}
		}
	}
	return raised{}
}

func (c *core) observe(key string, res Reservation, cached bool, err error, start time.Time) {
	c.observeEvent(key, res, cached, false, err, start)
}

func (c *core) observeEvent(key string, res Reservation, cached, permit bool, err error, start time.Time) {
	c.cfg.observer(Event{
		Key:        key,
		Allowed:    res.OK || (err != nil && c.degraded(key, res, err) == nil),
		Delay:      res.Delay,
		RetryAfter: res.RetryAfter,
		Cached:     cached,
		Permit:     permit,
		Err:        err,
		Latency:    time.Since(start),
	})
}

func isStoreError(err error) bool {
	var se *StoreError
	return errors.As(err, &se)
}
