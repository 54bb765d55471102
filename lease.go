package throttle

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"sync"
	"time"
)

// ErrLeaseLost is the cause (see context.Cause) of a lease's context that
// ended because the lease was lost: a renewal found it expired or gone, or
// the store could not renew it before it would have expired.
var ErrLeaseLost = errors.New("throttle: lease lost")

// ErrLeaseReleased is the cause of a lease's context that ended because
// the lease was released.
var ErrLeaseReleased = errors.New("throttle: lease released")

// ErrAtCapacity is matched (with errors.Is) by the error of a call refused
// because WithConcurrency's k calls were in flight. The error also matches
// ErrThrottled, and errors.As finds its *ThrottledError, whose RetryAfter is
// 0: a lease may be released at any moment, and a holder that renews may
// keep one for as long as it runs, so no honest retry-after exists. Use
// WithWait to wait for a lease instead.
var ErrAtCapacity = errors.New("throttle: at capacity")

// ErrLeaseRequired is matched (with errors.Is) by the error that Allow and
// Wait return on a throttle with WithConcurrency, which decides only with
// Acquire or the Wrap functions. An adapter that takes any Keyed can test
// for it and use Acquire instead; Allow returns it without asking the store.
var ErrLeaseRequired = errors.New("throttle: Allow and Wait cannot hold a lease under WithConcurrency: use Acquire or the Wrap functions")

// capacityError reports a call refused by the concurrency cap.
type capacityError struct {
	te *ThrottledError
	k  int
}

func (e *capacityError) Error() string {
	return fmt.Sprintf("throttle: %q at capacity: %d calls in flight", e.te.Key, e.k)
}

func (e *capacityError) Is(target error) bool { return target == ErrAtCapacity }

func (e *capacityError) Unwrap() error { return e.te }

// A Lease is one of the k places of a throttle with WithConcurrency, held
// from Acquire until Release. While it is held it is renewed in the
// background every third of the lease TTL, by a timer whose goroutine runs
// only during a renewal; Release stops it. If a renewal finds the lease
// lost (expired or gone), or the store fails to renew it until it would
// have expired, Context ends with the cause ErrLeaseLost: the work it
// guards should stop, since another caller may hold the place by then.
//
// A Lease is safe for concurrent use. Release must be called once the work
// is done (more calls do nothing); a lease never released ends only at its
// TTL after the process stops renewing it.
type Lease struct {
	c      *core
	store  Leaser // nil for a lease granted without a store (WithFailOpen)
	key    string
	token  string
	req    Request
	ctx    context.Context
	cancel context.CancelCauseFunc

	mu       sync.Mutex
	timer    *time.Timer
	expires  time.Time // when the lease expires at the earliest, unless renewed
	released bool
	renewing sync.WaitGroup
	once     sync.Once
	taken    time.Time // when it was made, for the observer
}

// Context returns a context that ends when the lease is released or lost
// (see ErrLeaseLost), or when the context given to Acquire ends.
func (l *Lease) Context() context.Context { return l.ctx }

// Done returns a channel that is closed when Context ends.
func (l *Lease) Done() <-chan struct{} { return l.ctx.Done() }

// Release gives the lease back, so another caller may take it at once, and
// stops its renewals. It waits for a renewal in progress, then makes one
// store call bounded by the throttle's timeout; a failed release costs the
// lease only until its TTL runs out. Calling Release again does nothing.
func (l *Lease) Release() {
	l.once.Do(func() {
		l.mu.Lock()
		l.released = true
		if l.timer != nil {
			l.timer.Stop()
		}
		l.mu.Unlock()
		l.renewing.Wait()
		l.cancel(ErrLeaseReleased)
		if l.c.cfg.observer != nil {
			l.c.cfg.observer(Event{Kind: EventLeaseReleased, Key: l.key, Held: time.Since(l.taken)})
		}
		if l.store == nil {
			return
		}
		ctx, cancel := context.WithTimeout(context.WithoutCancel(l.ctx), l.c.cfg.timeout)
		defer cancel()
		_ = l.store.ReleaseLease(ctx, l.key, l.req, l.token)
	})
}

// renewEvery is the time between renewals of a lease of ttl.
func renewEvery(ttl time.Duration) time.Duration { return max(ttl/3, time.Millisecond) }

// start arms the renewal timer of a lease taken when its decision began at
// begin, held until at least begin + delay + the TTL.
func (l *Lease) start(begin time.Time, delay time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.expires = begin.Add(delay + l.req.LeaseTTL)
	l.timer = time.AfterFunc(delay+renewEvery(l.req.LeaseTTL), l.renew)
}

// renew renews the lease once, from the timer, and arms the next renewal.
func (l *Lease) renew() {
	l.mu.Lock()
	if l.released {
		l.mu.Unlock()
		return
	}
	l.renewing.Add(1)
	l.mu.Unlock()
	defer l.renewing.Done()

	begin := time.Now()
	timeout := min(l.c.cfg.timeout, renewEvery(l.req.LeaseTTL))
	ctx, cancel := context.WithTimeout(context.WithoutCancel(l.ctx), timeout)
	held, err := l.store.RenewLease(ctx, l.key, l.req, l.token)
	cancel()

	l.mu.Lock()
	defer l.mu.Unlock()
	switch {
	case err == nil && held:
		l.expires = begin.Add(l.req.LeaseTTL)
	case err == nil || !time.Now().Before(l.expires):
		// Gone, or it may have expired while the store failed.
		l.cancel(ErrLeaseLost)
		return
	}
	if l.released {
		return
	}
	next := renewEvery(l.req.LeaseTTL)
	if err != nil {
		// Try again before the lease would expire; at that time, give up.
		next = min(next, max(time.Until(l.expires), 0))
	}
	l.timer.Reset(next)
}

// newToken returns a random lease token.
func newToken() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// capped reports whether the throttle has a concurrency cap.
func (c *core) capped() bool { return c.cfg.concurrencySet }

func (c *core) leaseRequest(maxWait time.Duration) Request {
	return Request{Interval: c.interval, Limit: c.cfg.limit, MaxWait: maxWait,
		Concurrency: c.cfg.concurrency, LeaseTTL: c.cfg.leaseTTL, Windows: c.cfg.windows}
}

// Acquire takes one of the k leases of the throttle's key (WithConcurrency),
// and a start under its rate if it has one, in one atomic store decision.
// The caller must call the Lease's Release when its work is done, and
// should stop the work when the Lease's Done closes; most callers should
// use Wrap or WrapErr, which do both.
//
// Without WithWait, Acquire does not wait: it returns an error matching
// ErrThrottled when the rate or the cap refuses the call (ErrAtCapacity
// too for the cap). With WithWait it waits for its turn under the rate and
// for a released lease, up to the wait and never past ctx; a waiter is
// woken by a release without polling (see RedisStore.AwaitLease). It
// returns ctx's error when ctx ends first, an error matching ErrThrottled
// at once (holding nothing) when the start the store booked comes after
// ctx's deadline, as Wait does, and an error matching
// ErrStoreUnavailable when the store failed: WithFailOpen returns a Lease
// that holds no place instead, and WithFallback one from the process-local
// cap and limit. Acquire returns an error on a throttle without
// WithConcurrency, and when the store is not a Leaser.
func (t *Throttle) Acquire(ctx context.Context) (*Lease, error) {
	return t.c.acquire(ctx, t.key, &t.e, t.c.cfg.wait)
}

// Acquire takes one of the k leases of key, as Throttle.Acquire does. An
// empty key is an error.
func (k *Keyed) Acquire(ctx context.Context, key string) (*Lease, error) {
	if key == "" {
		return nil, errEmptyKey
	}
	return k.c.acquire(ctx, key, k.entry(key), k.c.cfg.wait)
}

// AcquireWithin takes one of the k leases of key as Acquire does, but
// waits for its turn and for a lease up to max (0: not at all), and never
// past ctx, in place of the wait set with WithWait. It is for adapters with
// a wait of their own, such as package httpthrottle's Transport. An empty
// key and a negative max are errors.
func (k *Keyed) AcquireWithin(ctx context.Context, key string, max time.Duration) (*Lease, error) {
	switch {
	case key == "":
		return nil, errEmptyKey
	case max < 0:
		return nil, fmt.Errorf("throttle: negative wait %v", max)
	}
	return k.c.acquire(ctx, key, k.entry(key), min(max, MaxInterval))
}

// Concurrency returns the cap set with WithConcurrency, or 0 when there is
// none. With a cap, a call must hold a lease (Acquire) and Allow and Wait
// return an error; without one, Acquire returns an error.
func (k *Keyed) Concurrency() int {
	if !k.c.capped() {
		return 0
	}
	return k.c.cfg.concurrency
}

// acquire takes a lease of key and a start under the rate, waiting up to
// maxWait for them.
func (c *core) acquire(ctx context.Context, key string, e *entry, maxWait time.Duration) (*Lease, error) {
	if !c.capped() {
		return nil, errors.New("throttle: Acquire needs WithConcurrency")
	}
	store, ok := c.cfg.store.(Leaser)
	if !ok {
		return nil, fmt.Errorf("throttle: store %T cannot keep leases: it is not a Leaser", c.cfg.store)
	}
	deadline := time.Now().Add(maxWait)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	for {
		remaining := max(time.Until(deadline), 0)
		if maxWait == 0 {
			remaining = 0
		}
		begin := time.Now()
		token := newToken()
		res, learnt, err := c.takeLease(ctx, store, key, e, remaining, token)
		if err != nil {
			return c.leaseFailed(ctx, key, err)
		}
		if res.OK {
			return c.granted(ctx, store, key, e, token, res, learnt, begin)
		}
		if !res.Full {
			return nil, &ThrottledError{Key: key, RetryAfter: res.RetryAfter}
		}
		if remaining <= 0 {
			return nil, &capacityError{te: &ThrottledError{Key: key}, k: c.cfg.concurrency}
		}
		// Every lease is held: sleep until one is released or the
		// earliest may expire (its holder may have died), then ask again.
		d := min(remaining, res.RetryAfter+time.Millisecond)
		if err := store.AwaitLease(ctx, key, c.leaseRequest(0), d); err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			return c.leaseFailed(ctx, key, &StoreError{Key: key, Err: err})
		}
		if err := ctx.Err(); err != nil {
			return nil, err
		}
	}
}

// takeLease asks the deny cache, then the store, for a lease and a start
// of key at most maxWait away, and returns what a booking raised the deny
// cache to and from (see learn). Its errors are ctx's or a *StoreError.
func (c *core) takeLease(ctx context.Context, store Leaser, key string, e *entry, maxWait time.Duration, token string) (Reservation, raised, error) {
	var begin int64
	rate := c.interval > 0 && c.cfg.denyCache
	if rate {
		begin = c.now()
		if until := e.deniedUntil.Load(); until > begin && time.Duration(until-begin) > maxWait {
			return Reservation{RetryAfter: time.Duration(until - begin)}, raised{}, nil
		}
	}
	if err := ctx.Err(); err != nil {
		return Reservation{}, raised{}, err
	}
	var learnt raised
	start := time.Now()
	cctx, cancel := context.WithTimeout(ctx, c.cfg.timeout)
	res, err := store.TakeLease(cctx, key, c.leaseRequest(maxWait), token)
	cancel()
	if err != nil {
		res = Reservation{}
		if ctx.Err() != nil {
			err = ctx.Err()
		} else {
			err = &StoreError{Key: key, Err: err}
		}
	} else if rate && !res.Full {
		learnt = c.learn(e, res, begin)
	}
	if c.cfg.observer != nil {
		c.observe(key, res, false, err, start)
	}
	return res, learnt, err
}

// leaseFailed applies the store-failure policy to a failed acquire.
func (c *core) leaseFailed(ctx context.Context, key string, err error) (*Lease, error) {
	if !isStoreError(err) {
		return nil, err
	}
	if c.fallback != nil {
		req := c.leaseRequest(0)
		req.Limit, req.Concurrency = c.cfg.fallback, min(c.cfg.fallback, c.cfg.concurrency)
		req.Windows = nil // the fallback limits per interval only
		begin := time.Now()
		token := newToken()
		res, _ := c.fallback.TakeLease(ctx, key, req, token)
		if !res.OK {
			return nil, errors.Join(&ThrottledError{Key: key, RetryAfter: res.RetryAfter}, err)
		}
		l := c.newLease(ctx, c.fallback, key, token, req)
		l.start(begin, 0)
		return l, nil
	}
	if c.cfg.failOpen {
		return c.newLease(ctx, nil, key, "", Request{}), nil
	}
	return nil, err
}

// granted returns the lease token that store granted with res, after
// sleeping until the booked start, if any. A booked start that comes after
// ctx's deadline, and a wait cut short, hand back the booking and release
// the lease; the first is throttled, as in wait.
func (c *core) granted(ctx context.Context, store Leaser, key string, e *entry, token string, res Reservation, learnt raised, begin time.Time) (*Lease, error) {
	l := c.newLease(ctx, store, key, token, c.leaseRequest(0))
	l.start(begin, res.Delay)
	if res.Delay <= 0 {
		return l, nil
	}
	if err := c.sleepUntilStart(ctx, store, key, e, res, learnt); err != nil {
		l.Release()
		return nil, err
	}
	return l, nil
}

func (c *core) newLease(ctx context.Context, store Leaser, key, token string, req Request) *Lease {
	lctx, cancel := context.WithCancelCause(ctx)
	l := &Lease{c: c, store: store, key: key, token: token, req: req, ctx: lctx, cancel: cancel}
	if c.cfg.observer != nil {
		l.taken = time.Now()
		c.cfg.observer(Event{Kind: EventLeaseTaken, Key: key})
	}
	return l
}

// runLeased runs fn holding a lease of key, and releases it when fn returns
// or panics. fn's context ends when the lease is lost.
func runLeased[T any](ctx context.Context, c *core, key string, e *entry, fn func(context.Context) (T, error)) (T, error) {
	l, err := c.acquire(ctx, key, e, c.cfg.wait)
	if err != nil {
		var zero T
		return zero, err
	}
	defer l.Release()
	return fn(l.Context())
}
