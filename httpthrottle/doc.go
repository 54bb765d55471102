// Package httpthrottle throttles outbound HTTP requests per host (or per
// key of your choice) for every process that shares a throttle store, and
// makes all of them back off when an upstream answers 429 or 503 with a
// Retry-After.
//
// Build a throttle.Keyed with the interval, limit and store the limit
// needs, then a Transport over it:
//
//	k, err := throttle.NewKeyed(time.Second,
//		throttle.WithStore(throttle.NewRedisStore(rdb)),
//		throttle.WithLimit(10)) // 10 requests per second per host, pool-wide
//	if err != nil { ... }
//	rt, err := httpthrottle.NewTransport(nil, k, httpthrottle.WithWait(5*time.Second))
//	if err != nil { ... }
//	client := &http.Client{Transport: rt}
//
// Without WithWait a throttled request is not sent, and client.Do returns
// an error matching throttle.ErrThrottled (a *throttle.ThrottledError with
// the retry-after, inside http.Client's *url.Error: use errors.Is or
// errors.As).
//
// After a response with a backoff status (429 and 503 by default) and a
// Retry-After, in delta-seconds or as an HTTP date (read against the
// response's Date), the Transport returns the response unchanged and calls
// Keyed.Hold: no process sharing the store sends a request with that key
// until then, and requests already waiting for a turn wait for the hold to
// end.
package httpthrottle
