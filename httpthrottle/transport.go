package throttle

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// DefaultMaxRetryAfter is the longest hold a Transport sets for one
// Retry-After, unless WithMaxRetryAfter sets another.
const DefaultMaxRetryAfter = time.Hour

// DefaultTransportKeyPrefix is the prefix of the throttle keys of a
// Transport, unless WithTransportKeyPrefix sets another.
const DefaultTransportKeyPrefix = "http:"

// sleptThreshold is how long a Wait must take for a Transport to assume
// that it slept for a booked turn, and to check for a hold set meanwhile.
const sleptThreshold = time.Millisecond

// Transport is an http.RoundTripper that throttles the requests it sends
// through base: for each request it picks a key (by default the host, see
// HostKey, or the key function set with WithKeyFunc) and admits the request
// through a Throttle of that key, so that requests with one key start at
// most once (or the limit set with WithLimit) per interval. With a
// RedisStore (WithThrottleOptions(WithStore(...))) the limit holds for
// every process that shares the Redis server; without one it holds only
// for the requests sent through this Transport.
//
// By default a throttled request is not sent, and RoundTrip returns a
// *ThrottledError, matching ErrThrottled, which carries the retry-after;
// http.Client wraps it in a *url.Error, so use errors.Is or errors.As. With
// WithWait among the throttle options the request waits for its turn
// instead, up to that wait and never past the request's context (which
// carries http.Client's Timeout).
//
// Shared backoff: when the upstream answers with one of the backoff
// statuses (429 Too Many Requests and 503 Service Unavailable by default,
// see WithBackoffStatuses) and a Retry-After header, RoundTrip calls Block
// on the request's Throttle before it returns the response, unchanged, to
// the caller. Then no process that shares the store sends a request with
// that key until Retry-After has passed, except the requests that were
// already admitted (in flight) when the response arrived. See NewTransport
// for how the header is read. Responses with a Retry-After but another
// status change nothing, and so do backoff statuses without a Retry-After
// that can be read, unless WithDefaultRetryAfter sets a hold for them.
//
// A Transport keeps one Throttle per key for as long as it lives, so its
// key function should return a bounded set of keys (hosts, tokens,
// endpoints), not a new key per request. A Transport is safe for concurrent
// use by many goroutines; it starts no goroutine of its own.
type Transport struct {
	base      http.RoundTripper
	interval  time.Duration
	opts      []Option
	keyFunc   func(*http.Request) string
	prefix    string
	maxRetry  time.Duration
	defRetry  time.Duration
	statuses  []int
	wait      time.Duration // the throttles' WithWait; 0 drops
	throttles sync.Map      // key → *Throttle
}

// A TransportOption configures a Transport. TransportOptions are made only
// by the functions of this package that return one; when one is given
// twice, the last one wins, except WithThrottleOptions, whose options add
// up.
type TransportOption interface {
	applyTransport(*transportConfig)
}

type transportOptionFunc func(*transportConfig)

func (f transportOptionFunc) applyTransport(c *transportConfig) { f(c) }

type transportConfig struct {
	keyFunc  func(*http.Request) string
	prefix   string
	opts     []Option
	maxRetry time.Duration
	defRetry time.Duration
	statuses []int
}

// WithKeyFunc makes the Transport throttle each request under the key f
// returns for it: all requests with the same key share one limit (and one
// backoff). Use it for limits per API token, per endpoint, or per account.
// f is called once per request, from many goroutines at once; it must not
// read the request's body. A request for which f returns "" is sent
// without throttling. A nil f is an error. Default: HostKey.
func WithKeyFunc(f func(*http.Request) string) TransportOption {
	return transportOptionFunc(func(c *transportConfig) { c.keyFunc = f })
}

// WithTransportKeyPrefix sets the prefix of the Transport's throttle keys:
// a request with key k is throttled under the throttle key prefix + k (in a
// RedisStore, under the store's own prefix too). Transports that must share
// limits must use the same prefix. Default: DefaultTransportKeyPrefix
// ("http:").
func WithTransportKeyPrefix(prefix string) TransportOption {
	return transportOptionFunc(func(c *transportConfig) { c.prefix = prefix })
}

// WithThrottleOptions sets the options of the Transport's throttles, one
// per key, such as WithStore (to share the limits across processes),
// WithLimit, WithWait (to wait for a turn instead of dropping the request),
// WithTimeout and WithFailOpen. The options of several WithThrottleOptions
// all apply, in order. Default: none, that is one request per interval per
// key, dropped when throttled, in a MemoryStore shared by the Transport's
// throttles.
func WithThrottleOptions(opts ...Option) TransportOption {
	return transportOptionFunc(func(c *transportConfig) { c.opts = append(c.opts, opts...) })
}

// WithMaxRetryAfter caps the hold that one Retry-After header sets, so that
// a wrong or hostile header cannot stop the requests for long. A negative d,
// or one above MaxInterval, is an error; 0 means the default. Default:
// DefaultMaxRetryAfter (1 hour).
func WithMaxRetryAfter(d time.Duration) TransportOption {
	return transportOptionFunc(func(c *transportConfig) { c.maxRetry = d })
}

// WithDefaultRetryAfter sets the hold after a response with a backoff
// status (see WithBackoffStatuses) that has no Retry-After header, or one
// that is neither delta-seconds nor an HTTP date: every process sharing the
// key holds off for d, as if the header said d. Many APIs answer 429
// without the header. A Retry-After of 0, or a date that has passed, still
// sets no hold; the maximum (see WithMaxRetryAfter) caps d too. A negative
// d, or one above MaxInterval, is an error. Default: 0, no hold.
func WithDefaultRetryAfter(d time.Duration) TransportOption {
	return transportOptionFunc(func(c *transportConfig) { c.defRetry = d })
}

// WithBackoffStatuses sets the response statuses whose Retry-After header
// holds off every process sharing the key (see Transport). With no codes,
// the Transport ignores Retry-After. A code outside 100 to 599 is an error.
// Default: 429 (Too Many Requests) and 503 (Service Unavailable).
func WithBackoffStatuses(codes ...int) TransportOption {
	return transportOptionFunc(func(c *transportConfig) { c.statuses = slices.Clone(codes) })
}

// NewTransport returns a Transport that sends requests through base (a nil
// base means http.DefaultTransport), throttled to one per interval per key,
// or the limit set with WithLimit among the throttle options (see
// WithThrottleOptions). Use it as the Transport of an http.Client:
//
//	rt, err := throttle.NewTransport(nil, time.Second,
//		throttle.WithThrottleOptions(throttle.WithStore(store), throttle.WithLimit(10)))
//	client := &http.Client{Transport: rt}
//
// Retry-After holds off the key, for every process sharing the store, for
// the header's delay: delta-seconds, or an HTTP date minus the response's
// Date header (the server's own clock; the local clock when the response
// has no valid Date). A date in the past or a zero delay sets no hold. A
// missing header, or one that is neither, sets the hold of
// WithDefaultRetryAfter, by default none. A delay above the maximum (see
// WithMaxRetryAfter) is cut to it.
//
// NewTransport returns an error for an interval or throttle option that New
// rejects, a nil key function, a negative maximum or default Retry-After,
// and a backoff status that is not an HTTP status.
func NewTransport(base http.RoundTripper, interval time.Duration, opts ...TransportOption) (*Transport, error) {
	cfg := transportConfig{
		keyFunc:  HostKey,
		prefix:   DefaultTransportKeyPrefix,
		statuses: []int{http.StatusTooManyRequests, http.StatusServiceUnavailable},
	}
	for _, o := range opts {
		if o != nil {
			o.applyTransport(&cfg)
		}
	}
	switch {
	case cfg.keyFunc == nil:
		return nil, errors.New("throttle: nil key func")
	case cfg.maxRetry < 0:
		return nil, fmt.Errorf("throttle: negative max retry-after %v", cfg.maxRetry)
	case cfg.maxRetry > MaxInterval:
		return nil, fmt.Errorf("throttle: max retry-after %v is above %v", cfg.maxRetry, MaxInterval)
	case cfg.maxRetry == 0:
		cfg.maxRetry = DefaultMaxRetryAfter
	}
	switch {
	case cfg.defRetry < 0:
		return nil, fmt.Errorf("throttle: negative default retry-after %v", cfg.defRetry)
	case cfg.defRetry > MaxInterval:
		return nil, fmt.Errorf("throttle: default retry-after %v is above %v", cfg.defRetry, MaxInterval)
	}
	for _, code := range cfg.statuses {
		if code < 100 || code > 599 {
			return nil, fmt.Errorf("throttle: backoff status %d is not an HTTP status", code)
		}
	}
	if base == nil {
		base = http.DefaultTransport
	}
	// One MemoryStore for every key, unless the options name a store.
	topts := append([]Option{WithStore(NewMemoryStore())}, cfg.opts...)
	// Check the options once, here, rather than at the first request.
	probe, err := New(cfg.prefix+"transport", interval, topts...)
	if err != nil {
		return nil, err
	}
	return &Transport{
		base:     base,
		interval: interval,
		opts:     topts,
		keyFunc:  cfg.keyFunc,
		prefix:   cfg.prefix,
		maxRetry: cfg.maxRetry,
		defRetry: cfg.defRetry,
		statuses: cfg.statuses,
		wait:     probe.cfg.wait,
	}, nil
}

// HostKey returns the key that a Transport uses for req by default: the
// host of its URL in lower case, with the port, which defaults to 443 for
// https and 80 for http ("api.example.com:443"). So every request to one
// host and port shares one limit.
func HostKey(req *http.Request) string {
	host := req.Host
	scheme := ""
	if req.URL != nil {
		scheme = strings.ToLower(req.URL.Scheme)
		if req.URL.Host != "" {
			host = req.URL.Host
		}
	}
	host = strings.ToLower(host)
	if h, port, err := net.SplitHostPort(host); err == nil {
		return net.JoinHostPort(h, port)
	}
	var port string
	switch scheme {
	case "https":
		port = "443"
	case "http":
		port = "80"
	default:
		return host
	}
	return net.JoinHostPort(strings.TrimSuffix(strings.TrimPrefix(host, "["), "]"), port)
}

// RoundTrip implements http.RoundTripper. It sends req through the base
// transport if the request's Throttle admits it, now or (with WithWait)
// after waiting for its turn.
//
// Otherwise it does not send req, closes its body and returns a nil
// response with a *ThrottledError (matching ErrThrottled) when the limit did
// not admit the request in time, the context's error when the request's
// context ended while it waited, or an error matching ErrStoreUnavailable
// when the store failed (unless WithFailOpen or WithFallback is among the
// throttle options). The base transport's response and error are returned
// unchanged; after a response with a backoff status and a Retry-After (or
// WithDefaultRetryAfter), the hold is set (see Throttle.Block) before
// RoundTrip returns.
//
// A waiting request whose turn was booked before another request got a
// Retry-After does not take that turn when it comes: it waits until the
// hold ends and takes a new turn, within the same wait.
func (t *Transport) RoundTrip(req *http.Request) (*http.Response, error) {
	key := t.keyFunc(req)
	if key == "" {
		return t.base.RoundTrip(req)
	}
	th, err := t.throttle(key)
	if err == nil {
		err = t.admit(req.Context(), th)
	}
	if err != nil {
		if req.Body != nil {
			_ = req.Body.Close()
		}
		return nil, err
	}
	resp, err := t.base.RoundTrip(req)
	if err != nil {
		return resp, err
	}
	if d := t.retryAfter(resp); d > 0 {
		// The response has arrived: hold off even if the caller's context
		// ends now. Block has its own timeout; if the store fails, this
		// process still holds off (the deny cache), and the caller gets
		// the response all the same.
		_ = th.Block(context.WithoutCancel(req.Context()), d)
	}
	return resp, nil
}

// CloseIdleConnections closes the idle connections of the base transport,
// if it can. http.Client.CloseIdleConnections calls it.
func (t *Transport) CloseIdleConnections() {
	if c, ok := t.base.(interface{ CloseIdleConnections() }); ok {
		c.CloseIdleConnections()
	}
}

// throttle returns the Throttle of key, made on first use.
func (t *Transport) throttle(key string) (*Throttle, error) {
	if v, ok := t.throttles.Load(key); ok {
		return v.(*Throttle), nil
	}
	th, err := New(t.prefix+key, t.interval, t.opts...)
	if err != nil {
		return nil, err
	}
	v, _ := t.throttles.LoadOrStore(key, th)
	return v.(*Throttle), nil
}

// admit returns nil when a request of th may be sent now. A request that
// slept for a turn booked before a hold began waits for the hold to end,
// then for a new turn.
func (t *Transport) admit(ctx context.Context, th *Throttle) error {
	start := time.Now()
	if err := th.admit(ctx); err != nil || t.wait == 0 {
		return err
	}
	for slept := time.Since(start); slept >= sleptThreshold; {
		hold, err := th.Blocked(ctx)
		if err != nil || hold <= 0 {
			// No hold, or the store cannot tell: the turn stands.
			return nil
		}
		left := t.wait - time.Since(start)
		if deadline, ok := ctx.Deadline(); ok {
			left = min(left, time.Until(deadline))
		}
		if hold > left {
			return &ThrottledError{Key: th.key, RetryAfter: hold}
		}
		timer := time.NewTimer(hold)
		select {
		case <-ctx.Done():
			timer.Stop()
			return ctx.Err()
		case <-timer.C:
		}
		again := time.Now()
		if err := th.wait(ctx, max(t.wait-time.Since(start), 0)); err != nil {
			return err
		}
		slept = time.Since(again)
	}
	return nil
}

// retryAfter returns the hold that resp asks for when its status is a
// backoff status: its Retry-After, or the default when it has none that
// can be read, capped; 0 for none.
func (t *Transport) retryAfter(resp *http.Response) time.Duration {
	if !slices.Contains(t.statuses, resp.StatusCode) {
		return 0
	}
	now := time.Now()
	if date, err := http.ParseTime(resp.Header.Get("Date")); err == nil {
		now = date
	}
	d, ok := parseRetryAfter(resp.Header.Get("Retry-After"), now)
	if !ok {
		d = t.defRetry
	}
	return min(d, t.maxRetry)
}

// parseRetryAfter returns the delay of a Retry-After header value v:
// delta-seconds, or an HTTP date minus now; 0 for a date before now, and
// MaxInterval for a longer delay. ok is false for a value that is neither
// (an empty one included).
func parseRetryAfter(v string, now time.Time) (d time.Duration, ok bool) {
	v = strings.TrimSpace(v)
	n, err := strconv.ParseUint(v, 10, 64)
	switch {
	case err == nil && n > uint64(MaxInterval/time.Second):
		return MaxInterval, true
	case err == nil:
		return time.Duration(n) * time.Second, true
	case errors.Is(err, strconv.ErrRange) && allDigits(v):
		return MaxInterval, true
	}
	date, err := http.ParseTime(v)
	if err != nil {
		return 0, false
	}
	return min(max(date.Sub(now), 0), MaxInterval), true
}

// allDigits reports whether v is one or more ASCII digits.
func allDigits(v string) bool {
	for i := 0; i < len(v); i++ {
		if v[i] < '0' || v[i] > '9' {
			return false
		}
	}
	return v != ""
}
