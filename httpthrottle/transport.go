package httpthrottle

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/dthrottle/throttle"
)

// sleptThreshold is how long a Wait must take for a Transport to assume
// that it slept for a booked turn, and to check for a hold set meanwhile.
const sleptThreshold = time.Millisecond

// Transport is an http.RoundTripper that sends a request through its base
// only when a throttle.Keyed admits the request's key: requests with one
// key start at most the Keyed's limit per interval, in every process that
// shares the Keyed's store. When the upstream answers with a backoff
// status and a Retry-After, the key is held off for that long in every
// such process.
//
// With a Keyed that has a cap (throttle.WithConcurrency), a request holds
// one of the key's leases from before it is sent until its response body is
// closed or read to its end, or until the base fails: at most the cap of
// requests with one key are in flight in every such process. The request
// is sent with the lease's context, so it ends if the lease is lost.
//
// A Transport keeps no state per key: the Keyed's state follows the keys
// in use. It is safe for concurrent use and starts no goroutine.
type Transport struct {
	base     http.RoundTripper
	k        *throttle.Keyed
	keyFunc  func(*http.Request) string
	prefix   string
	wait     time.Duration
	maxRetry time.Duration
	defRetry time.Duration
	statuses []int
}

// NewTransport returns a Transport that sends requests through base (nil
// means http.DefaultTransport), throttled by k: k's interval, limit, store
// and store-failure policy apply to every key.
//
// NewTransport returns an error for a nil k, a nil key function, a wait,
// maximum or default Retry-After that is negative or above
// throttle.MaxInterval, and a backoff status that is not an HTTP status.
func NewTransport(base http.RoundTripper, k *throttle.Keyed, opts ...Option) (*Transport, error) {
	cfg := defaultConfig()
	for _, o := range opts {
		if o != nil {
			o.apply(&cfg)
		}
	}
	if err := validate(k, &cfg); err != nil {
		return nil, err
	}
	if base == nil {
		base = http.DefaultTransport
	}
	return &Transport{
		base:     base,
		k:        k,
		keyFunc:  cfg.keyFunc,
		prefix:   cfg.prefix,
		wait:     cfg.wait,
		maxRetry: cfg.maxRetry,
		defRetry: cfg.defRetry,
		statuses: cfg.statuses,
	}, nil
}

// validate reports the first problem with k and c, or nil; it sets the
// defaults that a zero option stands for.
func validate(k *throttle.Keyed, c *config) error {
	switch {
	case k == nil:
		return errors.New("httpthrottle: nil Keyed")
	case c.keyFunc == nil:
		return errors.New("httpthrottle: nil key func")
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{{"wait", c.wait}, {"max retry-after", c.maxRetry}, {"default retry-after", c.defRetry}} {
		switch {
		case d.v < 0:
			return fmt.Errorf("httpthrottle: negative %s %v", d.name, d.v)
		case d.v > throttle.MaxInterval:
			return fmt.Errorf("httpthrottle: %s %v is above %v", d.name, d.v, throttle.MaxInterval)
		}
	}
	if c.maxRetry == 0 {
		c.maxRetry = time.Hour
	}
	for _, code := range c.statuses {
		if code < 100 || code > 599 {
			return fmt.Errorf("httpthrottle: backoff status %d is not an HTTP status", code)
		}
	}
	return nil
}

// HostKey is the default key of a request: the host of its URL in lower
// case, with the port, which defaults to 443 for https and 80 for http
// ("api.example.com:443").
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

// RoundTrip implements http.RoundTripper. It sends req when the Keyed
// admits its key, at once or, with WithWait, at its turn. A request whose
// key is "" is sent unthrottled.
//
// A request that is not sent has its body closed, and RoundTrip returns a
// *throttle.ThrottledError when the limit (or a hold) did not admit it in
// time, the context's error when the request's context ended, or an error
// matching throttle.ErrStoreUnavailable when the store failed and the
// Keyed's policy did not admit it (matching throttle.ErrThrottled too when
// its fallback limit denied it). Under a cap, a request refused because
// every lease was held in time is throttled too: its error also matches
// throttle.ErrAtCapacity. The base's response and error are returned
// unchanged (under a cap, the response's body releases the lease); after a
// backoff status the hold is set first.
//
// A request that waited for a turn and finds on waking that a hold began
// meanwhile waits for the hold to end and takes a new turn, within the
// same wait.
func (t *Transport) RoundTrip(req *http.Request) (*http.Response, error) {
	key := t.keyFunc(req)
	if key == "" {
		return t.base.RoundTrip(req)
	}
	key = t.prefix + key
	var lease *throttle.Lease
	var err error
	if t.k.Concurrency() > 0 {
		lease, err = t.acquire(req.Context(), key)
	} else {
		err = t.admit(req.Context(), key)
	}
	if err != nil {
		if req.Body != nil {
			_ = req.Body.Close()
		}
		return nil, err
	}
	if lease != nil {
		// A lost lease (see throttle.Lease) ends the request: another
		// process may hold the place by then.
		req = req.WithContext(lease.Context())
	}
	resp, err := t.base.RoundTrip(req)
	if err != nil {
		if lease != nil {
			lease.Release()
		}
		return resp, err
	}
	if d := t.retryAfter(resp); d > 0 {
		// The response has arrived: hold off even if the caller's context
		// ends now. Hold is bounded by the Keyed's timeout; if the store
		// fails, this process still holds off, and the caller gets the
		// response all the same.
		_ = t.k.Hold(context.WithoutCancel(req.Context()), key, d)
	}
	if lease != nil {
		if resp.Body == nil {
			lease.Release()
		} else {
			resp.Body = &leasedBody{ReadCloser: resp.Body, lease: lease}
		}
	}
	return resp, nil
}

// acquire takes a lease of key for a request, under the Keyed's cap and
// rate: at once, or with WithWait within the wait. As admit does, a request
// that waited and finds a hold begun meanwhile gives its lease back, waits
// for the hold to end and asks again, within the same wait.
func (t *Transport) acquire(ctx context.Context, key string) (*throttle.Lease, error) {
	if t.wait == 0 {
		return t.k.AcquireWithin(ctx, key, 0)
	}
	deadline := time.Now().Add(t.wait)
	for {
		begin := time.Now()
		l, err := t.k.AcquireWithin(ctx, key, max(time.Until(deadline), 0))
		if err != nil || time.Since(begin) < sleptThreshold {
			return l, err
		}
		hold, err := t.k.Held(ctx, key)
		if err != nil || hold <= 0 {
			return l, nil
		}
		l.Release()
		if hold > time.Until(deadline) {
			return nil, &throttle.ThrottledError{Key: key, RetryAfter: hold}
		}
		timer := time.NewTimer(hold)
		select {
		case <-ctx.Done():
			timer.Stop()
			return nil, ctx.Err()
		case <-timer.C:
		}
	}
}

// leasedBody is the body of a response whose request holds a lease: the
// lease is released when the body is closed, or read to its end (or to an
// error), whichever comes first.
type leasedBody struct {
	io.ReadCloser
	lease *throttle.Lease
}

func (b *leasedBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err != nil {
		b.lease.Release()
	}
	return n, err
}

func (b *leasedBody) Close() error {
	err := b.ReadCloser.Close()
	b.lease.Release()
	return err
}

// CloseIdleConnections closes the idle connections of the base transport,
// if it can. http.Client.CloseIdleConnections calls it.
func (t *Transport) CloseIdleConnections() {
	if c, ok := t.base.(interface{ CloseIdleConnections() }); ok {
		c.CloseIdleConnections()
	}
}

// admit returns nil when a request with key may be sent now.
func (t *Transport) admit(ctx context.Context, key string) error {
	if t.wait == 0 {
		d, err := t.k.Allow(ctx, key)
		switch {
		case d.Allowed:
			return nil
		case err == nil:
			return &throttle.ThrottledError{Key: key, RetryAfter: d.RetryAfter}
		case d.RetryAfter > 0 && errors.Is(err, throttle.ErrStoreUnavailable):
			// The Keyed's fallback limit decided, and denied.
			return errors.Join(&throttle.ThrottledError{Key: key, RetryAfter: d.RetryAfter}, err)
		default:
			return err
		}
	}
	wctx, cancel := context.WithDeadline(ctx, time.Now().Add(t.wait))
	defer cancel()
	for {
		begin := time.Now()
		if err := t.k.Wait(wctx, key); err != nil {
			if ctx.Err() == nil && wctx.Err() != nil && errors.Is(err, context.DeadlineExceeded) &&
				!errors.Is(err, throttle.ErrStoreUnavailable) {
				// The Transport's own wait (wctx), not the request's
				// context, ran out before Wait asked the store (after a
				// hold, say): the request is throttled.
				return &throttle.ThrottledError{Key: key}
			}
			return err
		}
		if time.Since(begin) < sleptThreshold {
			return nil
		}
		// The turn was booked some time ago: a hold may have begun since.
		hold, err := t.k.Held(ctx, key)
		if err != nil || hold <= 0 {
			// No hold, or the store cannot tell: the turn stands.
			return nil
		}
		if deadline, _ := wctx.Deadline(); hold > time.Until(deadline) {
			return &throttle.ThrottledError{Key: key, RetryAfter: hold}
		}
		timer := time.NewTimer(hold)
		select {
		case <-ctx.Done():
			timer.Stop()
			return ctx.Err()
		case <-timer.C:
		}
	}
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
// throttle.MaxInterval for a longer delay. ok is false for a value that is
// neither (an empty one included).
func parseRetryAfter(v string, now time.Time) (d time.Duration, ok bool) {
	v = strings.TrimSpace(v)
	n, err := strconv.ParseUint(v, 10, 64)
	switch {
	case err == nil && n > uint64(throttle.MaxInterval/time.Second):
		return throttle.MaxInterval, true
	case err == nil:
		return time.Duration(n) * time.Second, true
	case errors.Is(err, strconv.ErrRange) && allDigits(v):
		return throttle.MaxInterval, true
	}
	date, err := http.ParseTime(v)
	if err != nil {
		return 0, false
	}
	return min(max(date.Sub(now), 0), throttle.MaxInterval), true
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
