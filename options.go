package throttle

import (
	"errors"
	"fmt"
	"math"
	"reflect"
	"time"
)

// DefaultTimeout bounds each store decision when WithTimeout is not given.
const DefaultTimeout = 250 * time.Millisecond

// MaxLimit is the largest limit WithLimit accepts.
const MaxLimit = 1 << 30

// MaxInterval is the longest interval New accepts (about 10 years). Longer
// intervals would overflow the stores' microsecond arithmetic.
const MaxInterval = 10 * 365 * 24 * time.Hour

// An Option configures a Throttle. Options are made only by the With
// functions of this package; when one is given twice, the last one wins
// (except WithLimitPer, which adds a window each time).
type Option interface {
	apply(*config)
}

type optionFunc func(*config)

func (f optionFunc) apply(c *config) { f(c) }

type config struct {
	store     Store
	storeSet  bool
	limit     int
	wait      time.Duration
	failOpen  bool
	fallback  int
	timeout   time.Duration
	denyCache bool
	observer  func(Event)
	// concurrency is the cap of WithConcurrency; 0 when not set.
	concurrency    int
	concurrencySet bool
	leaseTTL       time.Duration
	// permitBatch is WithPermitBatch's n; 0 when not set.
	permitBatch int
	// windows are WithLimitPer's, merged by validate (see mergeWindows).
	windows []Window
}

// defaultConfig returns the configuration that the options modify.
func defaultConfig() config {
	return config{
		limit:     1,
		timeout:   DefaultTimeout,
		denyCache: true,
		leaseTTL:  DefaultLeaseTTL,
	}
}

// WithStore makes the throttle keep its state in s, which decides for every
// process that shares it (use NewRedisStore for a limit across processes).
// A nil s is an error. Default: a MemoryStore private to the throttle, which
// limits only the calls made through that one throttle in this process.
func WithStore(s Store) Option {
	return optionFunc(func(c *config) { c.store, c.storeSet = s, true })
}

// WithLimit allows n starts in any window of the interval (a sliding window,
// exact: never more than n starts in any half-open window of that length).
// n must be between 1 and MaxLimit. Default: 1.
func WithLimit(n int) Option {
	return optionFunc(func(c *config) { c.limit = n })
}

// WithWait makes a call that is not admitted at once wait for its turn, up
// to max and never past its context, instead of being dropped. A waiting call
// books the next free start in the store and sleeps until it, without
// polling. A negative max is an error; 0 means do not wait. Default: 0 (drop).
func WithWait(max time.Duration) Option {
	return optionFunc(func(c *config) { c.wait = max })
}

// WithFailOpen makes the throttle admit calls when the store cannot decide
// (unreachable, slower than the timeout, or failing). Without it the throttle
// fails closed: such calls are not admitted, and fn does not run.
// Default: fail closed.
func WithFailOpen() Option {
	return optionFunc(func(c *config) { c.failOpen = true })
}

// WithFallback makes the throttle fall back to a process-local limit while
// the store cannot decide: each process then admits at most n starts per
// interval on its own, so an outage of the store degrades the limit instead
// of stopping every call (fail closed) or letting all through (WithFailOpen).
// Set n to this process's share of the limit, such as the limit divided by
// the number of processes (at least 1). A call the fallback does not admit
// returns an error that matches both ErrThrottled and ErrStoreUnavailable.
// WithFallback takes precedence over WithFailOpen. A negative n is an
// error; 0 means no fallback. Default: 0.
func WithFallback(n int) Option {
	return optionFunc(func(c *config) { c.fallback = n })
}

// WithTimeout bounds each store decision to d, whatever the store's own
// timeouts are. When d runs out the decision counts as a store failure (see
// WithFailOpen). A negative d is an error; 0 means the default.
// Default: DefaultTimeout (250 ms).
func WithTimeout(d time.Duration) Option {
	return optionFunc(func(c *config) { c.timeout = d })
}

// WithDenyCache turns the local deny cache on or off. With it on, once the
// store has denied a call with a retry-after r (or, with limit 1, admitted a
// call), the throttle answers "throttled" for the rest of r without asking
// the store. It never admits a call by itself.
//
// Turn the cache off when another process may Reset the key and the next
// call must see that at once; with it on, a Reset elsewhere is seen at most
// r later. Default: on.
func WithDenyCache(on bool) Option {
	return optionFunc(func(c *config) { c.denyCache = on })
}

// WithObserver calls fn after every decision, in the goroutine that asked
// for it, and after the other steps that EventKind names (the end of a
// wait, a hold, a lease taken or released), in the goroutine that took
// them: fn may run in many goroutines at once. fn must be fast and must not
// block; it must not call the throttle. Package otelthrottle turns the
// events into OpenTelemetry metrics. Default: none (no cost).
func WithObserver(fn func(Event)) Option {
	return optionFunc(func(c *config) { c.observer = fn })
}

// WithConcurrency lets at most k executions of fn be in flight at any
// instant, across every process that shares the store: a call holds one of
// k leases from before fn starts until it returns (see Lease). With a rate
// too, a call needs a start under the rate and a free lease, decided in one
// atomic step, so a call refused by one uses nothing of the other. With
// windows of WithLimitPer, the lease and a start in every window are
// decided in that one step: a call refused by the cap or by any window uses
// nothing of the others, and a booked start holds its lease while it
// waits. With it, an interval of 0 means no rate, only the cap (and then
// no WithLimitPer); with an interval, the limit must be at most 64, unless
// the throttle has windows of WithLimitPer. A throttle with a cap decides
// with Acquire or the Wrap functions; its Allow and Wait return an error.
// k must be at least 1. Default: no cap.
func WithConcurrency(k int) Option {
	return optionFunc(func(c *config) { c.concurrency, c.concurrencySet = k, true })
}

// WithLeaseTTL sets how long a lease (see WithConcurrency) outlives a
// holder that stopped renewing it, on the store's clock: a process that
// dies holding a lease frees it d after its last renewal, never before.
// While fn runs, its lease is renewed every d/3. d is at least
// MinLeaseTTL; a negative d is an error; 0 means the default.
// Default: DefaultLeaseTTL (10 s).
func WithLeaseTTL(d time.Duration) Option {
	return optionFunc(func(c *config) { c.leaseTTL = d })
}

// WithPermitBatch sets the most leased permits that one store round trip
// may take for a key, and n = 1 turns leased permits off.
//
// With a limit above 64 on a RedisStore, a process that calls a key often
// asks the store for several starts at once and spends them locally, each
// at most once, within interval/64 (at least 4 ms) of sending the request;
// the store counts each as a start at any time in that span, so the limit
// stays exact across every process. The batch follows this process's own
// demand for the key (1, an ordinary decision, while it is low) and the
// store grants at most half of what is free, so one process cannot take
// the whole window. The cost is about 1/64 of the capacity (4 ms of each
// interval, if more), plus permits not spent in time. Limits up to 64,
// intervals below 64 ms, the memory store, throttletest.Store and throttles
// with WithConcurrency or WithLimitPer never batch. A call that waits (WithWait, Wait)
// spends a permit when one is at hand and otherwise books as usual. Hold
// and Reset stop this process's permits at once, and other processes'
// within the validity. n must not be negative; 0 means the default.
// Default: at most limit/8 per round trip.
func WithPermitBatch(n int) Option {
	return optionFunc(func(c *config) { c.permitBatch = n })
}

// DefaultLeaseTTL is the lease TTL when WithLeaseTTL is not given.
const DefaultLeaseTTL = 10 * time.Second

// MinLeaseTTL is the shortest lease TTL WithLeaseTTL accepts: a lease is
// renewed every third of its TTL, which must leave room for a round trip.
const MinLeaseTTL = 10 * time.Millisecond

// maxLeaseLimit is the largest limit that a rate combined with a cap may
// have: the rate is kept in slot keys (see RedisStore).
const maxLeaseLimit = 64

// validate reports the first problem with interval and c, or nil.
func validate(interval time.Duration, c *config) error {
	switch {
	case c.concurrencySet && c.concurrency < 1:
		return fmt.Errorf("throttle: concurrency %d is below 1", c.concurrency)
	case c.concurrency > MaxLimit:
		return fmt.Errorf("throttle: concurrency %d is above %d", c.concurrency, MaxLimit)
	case c.leaseTTL < 0:
		return fmt.Errorf("throttle: negative lease TTL %v", c.leaseTTL)
	case c.leaseTTL > 0 && c.leaseTTL < MinLeaseTTL:
		return fmt.Errorf("throttle: lease TTL %v is below %v", c.leaseTTL, MinLeaseTTL)
	case c.leaseTTL > MaxInterval:
		return fmt.Errorf("throttle: lease TTL %v is above %v", c.leaseTTL, MaxInterval)
	case c.concurrencySet && c.limit > maxLeaseLimit && interval > 0 && len(c.windows) == 0:
		return fmt.Errorf("throttle: WithConcurrency needs a limit of at most %d, not %d", maxLeaseLimit, c.limit)
	case interval < time.Millisecond && (interval != 0 || !c.concurrencySet):
		// An interval of 0 is a pure cap, allowed with WithConcurrency.
		return fmt.Errorf("throttle: interval %v is below 1ms", interval)
	case interval > MaxInterval:
		return fmt.Errorf("throttle: interval %v is above %v", interval, MaxInterval)
	case c.limit < 1:
		return fmt.Errorf("throttle: limit %d is below 1", c.limit)
	case c.limit > MaxLimit:
		return fmt.Errorf("throttle: limit %d is above %d", c.limit, MaxLimit)
	case c.storeSet && isNil(c.store):
		return errors.New("throttle: nil store")
	case c.wait < 0:
		return fmt.Errorf("throttle: negative wait %v", c.wait)
	case c.wait > MaxInterval:
		return fmt.Errorf("throttle: wait %v is above %v", c.wait, MaxInterval)
	case c.fallback < 0:
		return fmt.Errorf("throttle: negative fallback limit %d", c.fallback)
	case c.fallback > MaxLimit:
		return fmt.Errorf("throttle: fallback limit %d is above %d", c.fallback, MaxLimit)
	case c.timeout < 0:
		return fmt.Errorf("throttle: negative timeout %v", c.timeout)
	case c.permitBatch < 0:
		return fmt.Errorf("throttle: negative permit batch %d", c.permitBatch)
	}
	if err := mergeWindows(interval, c); err != nil {
		return err
	}
	if c.concurrencySet && c.limit > maxLeaseLimit && interval > 0 && len(c.windows) == 0 {
		// Every WithLimitPer merged into the interval's own limit.
		return fmt.Errorf("throttle: WithConcurrency needs a limit of at most %d, not %d", maxLeaseLimit, c.limit)
	}
	if c.timeout == 0 {
		c.timeout = DefaultTimeout
	}
	if c.leaseTTL == 0 {
		c.leaseTTL = DefaultLeaseTTL
	}
	return nil
}

// isNil reports whether s is nil, including a typed nil (such as a nil
// pointer to any Store implementation).
func isNil(s Store) bool {
	if s == nil {
		return true
	}
	switch v := reflect.ValueOf(s); v.Kind() {
	case reflect.Pointer, reflect.Map, reflect.Slice, reflect.Func, reflect.Chan, reflect.Interface:
		return v.IsNil()
	}
	return false
}

// durationMax is the longest wait expressible to the stores.
const durationMax = time.Duration(math.MaxInt64)
