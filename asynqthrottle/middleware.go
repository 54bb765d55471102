package asynqthrottle

import (
	"context"
	"errors"
	"math/rand/v2"
	"time"

	"github.com/hibiken/asynq"

	"github.com/dthrottle/throttle"
)

// Limiter decides whether one task of a key may run now. Allow must record
// the start when it admits, and must be safe for concurrent use.
//
// Allow returns (Decision{Allowed: false, RetryAfter: d}, nil) for a task
// the limit denies, and an error matching throttle.ErrStoreUnavailable when
// its store failed; the Decision then carries the limiter's fail policy
// (Allowed true to fail open). Any other error (for example the task
// context's error) is returned to asynq as the handler's error.
//
// *throttle.Keyed satisfies Limiter. A Limiter that is also a LeaseLimiter
// with a cap, such as a *throttle.Keyed made with throttle.WithConcurrency,
// runs each task holding a lease instead (see Middleware).
type Limiter interface {
	Allow(ctx context.Context, key string) (throttle.Decision, error)
}

// A LeaseLimiter is a Limiter that can cap the tasks of a key in flight, as
// *throttle.Keyed does with throttle.WithConcurrency. When Concurrency
// returns more than 0, the middleware calls AcquireWithin instead of Allow,
// and runs the task holding the lease it returns.
type LeaseLimiter interface {
	Limiter
	// Concurrency returns the cap, or 0 for none.
	Concurrency() int
	// AcquireWithin takes one of the key's leases (and a start under the
	// rate, if any), waiting up to max for them, as
	// throttle.Keyed.AcquireWithin does.
	AcquireWithin(ctx context.Context, key string, max time.Duration) (*throttle.Lease, error)
}

// KeyFunc returns the throttle key of a task. An empty key runs the task
// without asking the limiter; an error is returned to asynq as the
// handler's error (a failure, retried by asynq's rules).
type KeyFunc func(t *asynq.Task) (string, error)

// TypeKey is the default KeyFunc: the task's type.
func TypeKey(t *asynq.Task) (string, error) { return t.Type(), nil }

const (
	// DefaultJitter is the default bound of the random delay added to a
	// re-queued task's retry-after (see WithJitter). asynq keeps retry
	// times in whole seconds, so a smaller jitter would rarely separate
	// tasks that were throttled together.
	DefaultJitter = time.Second
	// DefaultStoreRetryDelay is the default delay before a task is run
	// again after the limiter's store failed closed (see
	// WithStoreRetryDelay).
	DefaultStoreRetryDelay = time.Second
	// minHoldSleep is the shortest sleep between two decisions while a
	// task waits in the handler, so that a retry-after of 0 does not spin.
	minHoldSleep = time.Millisecond
)

// Option configures Middleware.
type Option func(*config)

type config struct {
	key        KeyFunc
	jitter     time.Duration
	storeDelay time.Duration
	wait       time.Duration
}

// WithKeyFunc sets how a task's throttle key is found; the default is
// TypeKey. Tasks whose key is empty are not throttled.
func WithKeyFunc(f KeyFunc) Option {
	return func(c *config) { c.key = f }
}

// WithJitter sets the bound of the random delay, uniform in [0, max), that
// is added to the retry-after of a re-queued task so that tasks throttled
// together do not come back together. The default is DefaultJitter; 0
// adds none.
func WithJitter(max time.Duration) Option {
	return func(c *config) { c.jitter = max }
}

// WithStoreRetryDelay sets how long a task waits before it is tried again
// when the limiter's store failed and the limiter failed closed. The
// default is DefaultStoreRetryDelay. Jitter is added as for a throttled
// task.
func WithStoreRetryDelay(d time.Duration) Option {
	return func(c *config) { c.storeDelay = d }
}

// WithWait lets a throttled task wait in its handler, holding its worker
// slot, for up to max in total instead of going back to the queue at
// once: while the retry-after fits in what is left of max, the middleware
// sleeps for it (plus a little jitter) and asks the limiter again. This
// gives sub-second intervals their full rate, which asynq's whole-second
// retry times cannot. The default is 0: every throttled task is re-queued,
// except tasks asynq would archive (see the package documentation).
func WithWait(max time.Duration) Option {
	return func(c *config) { c.wait = max }
}

// Middleware returns asynq middleware that runs a task only when lim
// admits its key (by default its type; see WithKeyFunc). A task that is
// not admitted is not run: the handler returns a *ThrottledError, and the
// asynq.Config hooks IsFailure and RetryDelay (or Configure) put the task
// back in the queue after the error's Delay without counting a failure or
// using up a retry. A task whose retries are used up (Retried >= MaxRetry,
// for example every task enqueued with asynq.MaxRetry(0)) cannot be
// re-queued that way, since asynq archives it on any error: it waits in
// its handler for its turn instead, as long as its context allows.
//
// When lim is a LeaseLimiter with a cap (a *throttle.Keyed made with
// throttle.WithConcurrency), a task runs holding one of its key's leases,
// from before the handler starts until it returns, with the lease's
// context, which ends if the lease is lost. A task refused because every
// lease was held is throttled like one the rate denied: re-queued, or with
// WithWait waiting in its handler for a release (woken without polling).
//
// Use it for every task with mux.Use(Middleware(lim)), or for one handler
// with mux.Handle(pattern, Middleware(lim)(h)).
//
// Middleware panics if lim is nil or a duration option is negative.
func Middleware(lim Limiter, opts ...Option) asynq.MiddlewareFunc {
	if lim == nil {
		panic("asynqthrottle: nil Limiter")
	}
	c := config{key: TypeKey, jitter: DefaultJitter, storeDelay: DefaultStoreRetryDelay}
	for _, o := range opts {
		if o != nil {
			o(&c)
		}
	}
	switch {
	case c.key == nil:
		panic("asynqthrottle: nil KeyFunc")
	case c.jitter < 0:
		panic("asynqthrottle: negative jitter")
	case c.storeDelay < 0:
		panic("asynqthrottle: negative store retry delay")
	case c.wait < 0:
		panic("asynqthrottle: negative wait")
	}
	return func(next asynq.Handler) asynq.Handler {
		return asynq.HandlerFunc(func(ctx context.Context, t *asynq.Task) error {
			return c.process(ctx, lim, next, t)
		})
	}
}

// retryState returns the task's retry count and maximum from its context;
// ok is false outside an asynq handler. Tests replace it.
var retryState = func(ctx context.Context) (retried, max int, ok bool) {
	retried, ok1 := asynq.GetRetryCount(ctx)
	max, ok2 := asynq.GetMaxRetry(ctx)
	return retried, max, ok1 && ok2
}

// exhausted reports whether asynq would archive the task if its handler
// returned an error: processor.handleFailedMessage archives when
// Retried >= MaxRetry before it consults Config.IsFailure.
func exhausted(ctx context.Context) bool {
	retried, max, ok := retryState(ctx)
	return ok && retried >= max
}

func (c *config) process(ctx context.Context, lim Limiter, next asynq.Handler, t *asynq.Task) error {
	key, err := c.key(t)
	if err != nil {
		return err
	}
	if key == "" {
		return next.ProcessTask(ctx, t)
	}
	hold := exhausted(ctx)
	leases, _ := lim.(LeaseLimiter)
	if leases != nil && leases.Concurrency() <= 0 {
		leases = nil
	}
	var waited time.Duration
	for {
		var d throttle.Decision
		var err error
		if leases != nil {
			wait := max(c.wait-waited, 0)
			if hold {
				wait = throttle.MaxInterval
			}
			begin := time.Now()
			var l *throttle.Lease
			l, d, err = acquire(ctx, leases, key, wait)
			waited += time.Since(begin)
			if l != nil {
				defer l.Release()
				return next.ProcessTask(l.Context(), t)
			}
		} else {
			d, err = lim.Allow(ctx, key)
		}
		if err != nil && !errors.Is(err, throttle.ErrStoreUnavailable) {
			return err
		}
		if d.Allowed {
			// Admitted, or the limiter failed open.
			return next.ProcessTask(ctx, t)
		}
		retryAfter := max(d.RetryAfter, 0)
		if err != nil {
			retryAfter = c.storeDelay
		}
		sleep := max(retryAfter, minHoldSleep) + randDuration(min(c.jitter, retryAfter/2+time.Millisecond))
		if hold || waited+sleep <= c.wait {
			if err := sleepCtx(ctx, sleep); err != nil {
				return err
			}
			waited += sleep
			continue
		}
		return &ThrottledError{Key: key, RetryAfter: retryAfter, Delay: retryAfter + randDuration(c.jitter), Err: err}
	}
}

// acquire takes a lease of key from lim, waiting up to wait, and returns it;
// or, when it was refused, the Decision that Allow would have given: not
// allowed, with the retry-after of a refusal (0 for the cap's), and the
// error that matches throttle.ErrStoreUnavailable for a store failure.
// Other errors (the context's) are returned as they are.
func acquire(ctx context.Context, lim LeaseLimiter, key string, wait time.Duration) (*throttle.Lease, throttle.Decision, error) {
	l, err := lim.AcquireWithin(ctx, key, wait)
	if err == nil {
		return l, throttle.Decision{}, nil
	}
	var te *throttle.ThrottledError
	switch {
	case errors.Is(err, throttle.ErrStoreUnavailable):
		return nil, throttle.Decision{}, err
	case errors.As(err, &te):
		return nil, throttle.Decision{RetryAfter: te.RetryAfter}, nil
	}
	return nil, throttle.Decision{}, err
}

// randDuration returns a random duration in [0, n), or 0 if n <= 0.
func randDuration(n time.Duration) time.Duration {
	if n <= 0 {
		return 0
	}
	return rand.N(n)
}

// sleepCtx sleeps for d, or returns ctx's error if ctx ends first.
func sleepCtx(ctx context.Context, d time.Duration) error {
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-timer.C:
		return nil
	}
}
