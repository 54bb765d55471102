package httpthrottle

import (
	"net/http"
	"slices"
	"time"
)

// An Option configures a Transport. Options are made only by the With
// functions of this package; when one is given twice, the last one wins.
type Option interface {
	apply(*config)
}

type optionFunc func(*config)

func (f optionFunc) apply(c *config) { f(c) }

type config struct {
	keyFunc  func(*http.Request) string
	prefix   string
	wait     time.Duration
	maxRetry time.Duration
	defRetry time.Duration
	statuses []int
}

func defaultConfig() config {
	return config{
		keyFunc:  HostKey,
		prefix:   "http:",
		maxRetry: time.Hour,
		statuses: []int{http.StatusTooManyRequests, http.StatusServiceUnavailable},
	}
}

// WithKeyFunc throttles each request under the key f returns for it: the
// requests with one key share one limit and one backoff. f is called once
// per request, from many goroutines at once, and must not read the body.
// A request for which f returns "" is sent unthrottled. A nil f is an
// error. Default: HostKey.
func WithKeyFunc(f func(*http.Request) string) Option {
	return optionFunc(func(c *config) { c.keyFunc = f })
}

// WithKeyPrefix sets the prefix of the Keyed's keys: a request with key k
// is throttled under prefix + k. Transports that share a store share the
// limits of the keys they have in common, so give them the same prefix to
// share, or different ones to keep apart. Default: "http:".
func WithKeyPrefix(prefix string) Option {
	return optionFunc(func(c *config) { c.prefix = prefix })
}

// WithWait makes a throttled request wait for its turn, up to max and
// never past the request's context (which carries http.Client's Timeout),
// instead of being dropped. The Keyed's own throttle.WithWait, if set,
// caps the wait further, except under a cap (throttle.WithConcurrency),
// where max alone bounds the wait for a lease and a turn. A negative max,
// or one above
// throttle.MaxInterval, is an error. Default: 0, drop.
func WithWait(max time.Duration) Option {
	return optionFunc(func(c *config) { c.wait = max })
}

// WithMaxRetryAfter caps the hold that one response sets, so that a wrong
// or hostile Retry-After cannot stop the requests for long. A negative d,
// or one above throttle.MaxInterval, is an error; 0 means the default.
// Default: 1 hour.
func WithMaxRetryAfter(d time.Duration) Option {
	return optionFunc(func(c *config) { c.maxRetry = d })
}

// WithDefaultRetryAfter sets the hold after a response with a backoff
// status and no readable Retry-After (many APIs answer 429 without one).
// A Retry-After of 0, or a date that has passed, still sets no hold. The
// maximum (WithMaxRetryAfter) caps d too. A negative d, or one above
// throttle.MaxInterval, is an error. Default: 0, no hold.
func WithDefaultRetryAfter(d time.Duration) Option {
	return optionFunc(func(c *config) { c.defRetry = d })
}

// WithBackoffStatuses sets the response statuses whose Retry-After holds
// off the key. With no codes, the Transport sets no holds. A code outside
// 100 to 599 is an error. Default: 429 and 503.
func WithBackoffStatuses(codes ...int) Option {
	return optionFunc(func(c *config) { c.statuses = slices.Clone(codes) })
}
