package asynqthrottle

import (
	"fmt"
	"time"

	"github.com/dthrottle/throttle"
)

// ThrottledError is what the middleware returns to asynq for a task that it
// did not run: the limiter denied it, or the limiter's store failed and the
// limiter failed closed. It is always returned as a pointer.
//
// errors.Is(err, throttle.ErrThrottled) reports true for it, and, when the
// store failed, errors.Is(err, throttle.ErrStoreUnavailable) reports true as
// well (Unwrap returns the store's error). IsFailure and RetryDelay (or a
// Config prepared by Configure) recognise it with errors.As, also when other
// middleware wrapped it with %w.
type ThrottledError struct {
	// Key is the throttle key the task was judged by.
	Key string
	// RetryAfter is the limiter's retry-after for a denied task, or the
	// store retry delay (WithStoreRetryDelay) after a store failure.
	RetryAfter time.Duration
	// Delay is RetryAfter plus a random jitter: how long from the decision
	// until the task should be queued again. RetryDelay rounds it up to
	// asynq's resolution of whole seconds.
	Delay time.Duration
	// Err is, when the limiter's store failed and it failed closed, the
	// limiter's error (matching throttle.ErrStoreUnavailable); nil for a
	// task the limit denied.
	Err error
}

// Error implements error.
func (e *ThrottledError) Error() string {
	if e.Err != nil {
		return fmt.Sprintf("asynqthrottle: %q not run, limiter unavailable (%v); re-queued to run in %v", e.Key, e.Err, e.Delay)
	}
	return fmt.Sprintf("asynqthrottle: %q throttled; re-queued to run in %v", e.Key, e.Delay)
}

// Is reports whether target is throttle.ErrThrottled.
func (e *ThrottledError) Is(target error) bool { return target == throttle.ErrThrottled }

// Unwrap returns the limiter's error after a store failure, or nil.
func (e *ThrottledError) Unwrap() error { return e.Err }
