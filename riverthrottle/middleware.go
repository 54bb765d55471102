package riverthrottle

import (
	"context"
	"errors"
	"math/rand/v2"
	"time"

	"github.com/riverqueue/river"
	"github.com/riverqueue/river/rivertype"

	"github.com/dthrottle/throttle"
)

// Limiter decides whether one job of a key may run now. *throttle.Keyed
// satisfies it, and is the usual one; a Limiter that wraps a Keyed (to
// observe its decisions, say) must pass every method through.
//
//   - Allow must record the start when it admits. It returns
//     (Decision{Allowed: false, RetryAfter: d}, nil) for a job the limit
//     denies, and an error matching throttle.ErrStoreUnavailable when its
//     store failed (the Decision then carries the limiter's fail policy:
//     Allowed true to fail open).
//   - Concurrency returns the limiter's cap (throttle.WithConcurrency), or
//     0 for none. With a cap, AcquireWithin is used instead of Allow: it
//     takes a lease that the job holds while it runs, waiting up to max
//     for it, as throttle.Keyed.AcquireWithin documents.
//   - Hold holds off a key in every process that shares the store (see
//     HoldOff).
//
// Any other error of the Limiter (for example the job context's error) is
// returned to River as the job's error.
type Limiter interface {
	Allow(ctx context.Context, key string) (throttle.Decision, error)
	Concurrency() int
	AcquireWithin(ctx context.Context, key string, max time.Duration) (*throttle.Lease, error)
	Hold(ctx context.Context, key string, d time.Duration) error
}

// KeyFunc returns the throttle key of a job. It gets the job's row as
// River has it before it decodes the job's arguments: its Kind, its
// EncodedArgs (JSON) and its Metadata (JSON); see the package documentation
// for the cost of decoding them. An empty key runs the job without asking
// the limiter; an error is returned to River as the job's error (a failed
// attempt, retried by River's rules).
type KeyFunc func(job *rivertype.JobRow) (string, error)

// KindKey is the default KeyFunc: the job's kind.
func KindKey(job *rivertype.JobRow) (string, error) { return job.Kind, nil }

const (
	// DefaultJitter is the default bound of the random delay added to the
	// snooze of a throttled job (see WithJitter).
	DefaultJitter = time.Second
	// DefaultStoreRetryDelay is the default snooze of a job that was not
	// run because the limiter's store failed and the limiter failed closed
	// (see WithStoreRetryDelay).
	DefaultStoreRetryDelay = time.Second
	// DefaultCapacityDelay is the default snooze of a job refused by the
	// limiter's concurrency cap (see WithCapacityDelay).
	DefaultCapacityDelay = time.Second
	// minWaitSleep is the shortest sleep between two decisions while a job
	// waits in the middleware, so that a retry-after of 0 does not spin.
	minWaitSleep = time.Millisecond
)

// An Option configures New.
type Option func(*config)

type config struct {
	key           KeyFunc
	jitter        time.Duration
	storeDelay    time.Duration
	capacityDelay time.Duration
	wait          time.Duration
}

// WithKeyFunc sets how a job's throttle key is found. The default is
// KindKey. Jobs whose key is empty are not throttled.
func WithKeyFunc(f KeyFunc) Option {
	return func(c *config) { c.key = f }
}

// WithJitter sets the bound of the random delay, uniform in [0, max), that
// is added to the snooze of a throttled job, so that jobs throttled
// together do not come back together. The default is DefaultJitter; 0
// adds none. For intervals well below a second, a jitter about the size of
// the interval keeps more jobs ready when the next start is free.
func WithJitter(max time.Duration) Option {
	return func(c *config) { c.jitter = max }
}

// WithStoreRetryDelay sets how long a job is snoozed when the limiter's
// store failed and the limiter failed closed. The default is
// DefaultStoreRetryDelay. Jitter is added as for a throttled job.
func WithStoreRetryDelay(d time.Duration) Option {
	return func(c *config) { c.storeDelay = d }
}

// WithCapacityDelay sets how long a job is snoozed when the limiter's
// concurrency cap refused it (every lease held). A lease may be released
// at any moment, so no store can say when the next one frees: the job is
// simply asked again after d. The default is DefaultCapacityDelay. Jitter
// is added as for a throttled job.
func WithCapacityDelay(d time.Duration) Option {
	return func(c *config) { c.capacityDelay = d }
}

// WithWait lets a throttled job wait in the middleware, holding its River
// worker slot, for up to max in total before it is snoozed: while the
// retry-after (or the capacity or store delay) fits in what is left of
// max, the middleware sleeps for it (plus a little jitter) and asks the
// limiter again; under a concurrency cap it waits for a lease to be
// released (woken without polling) for what is left of max, and the
// Keyed's own WithWait does not apply. The wait is not bounded by the
// job's timeout, which River applies only after the middleware (see the
// package documentation); it ends with the job's context, when the client
// stops. The default is 0: every throttled job is snoozed at once.
func WithWait(max time.Duration) Option {
	return func(c *config) { c.wait = max }
}

// Middleware is a River worker middleware (rivertype.WorkerMiddleware) that
// runs a job only when its Limiter admits the job's key, and snoozes it
// otherwise. Make one with New. A Middleware is safe for concurrent use by
// every worker of a client, and by several clients.
type Middleware struct {
	river.MiddlewareDefaults

	lim Limiter
	cfg config
}

var _ rivertype.WorkerMiddleware = (*Middleware)(nil)

// New returns a Middleware that throttles jobs on lim, by kind unless
// WithKeyFunc says otherwise. Add it to river.Config.Middleware for every
// job of a client, or return it from a worker's Middleware method for the
// jobs of that worker only.
//
// A job that lim does not admit is not run: Work returns a *ThrottledError,
// which River takes as river.JobSnooze(Delay), so the job is scheduled
// again after the limiter's retry-after plus jitter without using up an
// attempt. See the package documentation for each case.
//
// New panics if lim is nil, if the KeyFunc is nil, or if a duration option
// is negative.
func New(lim Limiter, opts ...Option) *Middleware {
	if lim == nil {
		panic("riverthrottle: nil Limiter")
	}
	c := config{key: KindKey, jitter: DefaultJitter, storeDelay: DefaultStoreRetryDelay, capacityDelay: DefaultCapacityDelay}
	for _, o := range opts {
		if o != nil {
			o(&c)
		}
	}
	switch {
	case c.key == nil:
		panic("riverthrottle: nil KeyFunc")
	case c.jitter < 0:
		panic("riverthrottle: negative jitter")
	case c.storeDelay < 0:
		panic("riverthrottle: negative store retry delay")
	case c.capacityDelay < 0:
		panic("riverthrottle: negative capacity delay")
	case c.wait < 0:
		panic("riverthrottle: negative wait")
	}
	return &Middleware{lim: lim, cfg: c}
}

// Work implements rivertype.WorkerMiddleware. It finds the job's key, asks
// the limiter, and then runs the job with doInner, or returns a
// *ThrottledError that River takes as a snooze. A job under a concurrency
// cap runs on its lease's context, which ends if the lease is lost, and
// releases the lease when doInner returns. When doInner returns an error
// made by HoldOff, Work holds off the job's key and snoozes the job.
func (m *Middleware) Work(ctx context.Context, job *rivertype.JobRow, doInner func(context.Context) error) error {
	key, err := m.cfg.key(job)
	if err != nil {
		return err
	}
	if key == "" {
		return doInner(ctx)
	}
	capped := m.lim.Concurrency() > 0
	var waited time.Duration
	for {
		var v verdict
		var err error
		if capped {
			begin := time.Now()
			v, err = m.acquire(ctx, key, max(m.cfg.wait-waited, 0))
			waited += time.Since(begin)
		} else {
			v, err = m.decide(ctx, key)
		}
		if err != nil {
			return err
		}
		if v.run {
			return m.run(ctx, key, v.lease, doInner)
		}
		sleep := max(v.retryAfter, minWaitSleep) + randDuration(min(m.cfg.jitter, v.retryAfter/2+time.Millisecond))
		if m.cfg.wait > 0 && waited+sleep <= m.cfg.wait {
			if err := sleepCtx(ctx, sleep); err != nil {
				return err
			}
			waited += sleep
			continue
		}
		return &ThrottledError{Key: key, RetryAfter: v.retryAfter, Delay: v.retryAfter + randDuration(m.cfg.jitter), Err: v.cause}
	}
}

// verdict is one decision of the limiter for a job.
type verdict struct {
	run        bool
	lease      *throttle.Lease // held while the job runs; nil without a cap
	retryAfter time.Duration   // when not run: how long until asking again
	cause      error           // when not run: the store's or the cap's error, or nil
}

// decide asks the limiter once. Its error is one to return to River as the
// job's error.
func (m *Middleware) decide(ctx context.Context, key string) (verdict, error) {
	d, err := m.lim.Allow(ctx, key)
	switch {
	case err == nil && d.Allowed:
		return verdict{run: true}, nil
	case err == nil:
		return verdict{retryAfter: max(d.RetryAfter, 0)}, nil
	case !errors.Is(err, throttle.ErrStoreUnavailable):
		return verdict{}, err
	case d.Allowed:
		// The limiter failed open.
		return verdict{run: true}, nil
	case errors.Is(err, throttle.ErrThrottled):
		// A process-local fallback (throttle.WithFallback) denied it.
		return verdict{retryAfter: max(d.RetryAfter, 0), cause: err}, nil
	default:
		return verdict{retryAfter: m.cfg.storeDelay, cause: err}, nil
	}
}

// acquire asks a limiter with a concurrency cap for a lease, waiting up to
// wait for it.
func (m *Middleware) acquire(ctx context.Context, key string, wait time.Duration) (verdict, error) {
	l, err := m.lim.AcquireWithin(ctx, key, wait)
	var te *throttle.ThrottledError
	switch {
	case err == nil:
		// Admitted, or failed open (a lease that holds no place).
		return verdict{run: true, lease: l}, nil
	case errors.Is(err, throttle.ErrAtCapacity):
		return verdict{retryAfter: m.cfg.capacityDelay, cause: err}, nil
	case errors.As(err, &te) && errors.Is(err, throttle.ErrStoreUnavailable):
		// A process-local fallback denied it.
		return verdict{retryAfter: max(te.RetryAfter, 0), cause: err}, nil
	case te != nil:
		return verdict{retryAfter: max(te.RetryAfter, 0)}, nil
	case errors.Is(err, throttle.ErrStoreUnavailable):
		return verdict{retryAfter: m.cfg.storeDelay, cause: err}, nil
	default:
		return verdict{}, err
	}
}

// run runs the admitted job, on its lease's context if it holds one, and
// acts on a HoldOff from it.
func (m *Middleware) run(ctx context.Context, key string, lease *throttle.Lease, doInner func(context.Context) error) error {
	var err error
	if lease != nil {
		func() {
			defer lease.Release()
			err = doInner(lease.Context())
		}()
	} else {
		err = doInner(ctx)
	}
	var he *HoldError
	if !errors.As(err, &he) {
		return err
	}
	// A hold is set even if the job's context has ended: it protects the
	// resource, not this job.
	hctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), holdTimeout)
	defer cancel()
	if herr := m.lim.Hold(hctx, key, he.Duration); herr != nil {
		err = errors.Join(err, herr)
	}
	return &ThrottledError{Key: key, RetryAfter: he.Duration, Delay: he.Duration + randDuration(m.cfg.jitter), Err: err}
}

// holdTimeout bounds the Hold call after a HoldOff; the limiter's own
// timeout bounds its store call well within it.
const holdTimeout = 5 * time.Second

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
