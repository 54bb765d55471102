package throttle

import (
	"errors"
	"fmt"
	"time"
)

// ErrThrottled is matched (with errors.Is) by every error that reports a
// call the limit did not admit. The concrete error is a *ThrottledError,
// which also carries the retry-after.
var ErrThrottled = errors.New("throttle: throttled")

// ErrStoreUnavailable is matched (with errors.Is) by every error that reports
// a decision the store could not make: the store was unreachable, too slow
// for the timeout set with WithTimeout, or answered with an error. The
// concrete error is a *StoreError.
var ErrStoreUnavailable = errors.New("throttle: store unavailable")

// ThrottledError reports a call that the limit did not admit. It is always
// returned as a pointer, and errors.Is(err, ErrThrottled) reports true for it.
type ThrottledError struct {
	// Key is the throttle's key, as given to New, Wrap or WrapErr.
	Key string
	// RetryAfter is how long, from the decision, until the store expects
	// to admit the next call. It is a hint: other callers may take that
	// slot first.
	RetryAfter time.Duration
}

// Error implements error.
func (e *ThrottledError) Error() string {
	return fmt.Sprintf("throttle: %q throttled, retry after %v", e.Key, e.RetryAfter)
}

// Is reports whether target is ErrThrottled.
func (e *ThrottledError) Is(target error) bool { return target == ErrThrottled }

// StoreError reports a decision the store could not make. It is always
// returned as a pointer, and errors.Is(err, ErrStoreUnavailable) reports true
// for it. Unwrap returns the store's own error (for example a go-redis error
// or context.DeadlineExceeded when the timeout ran out), for logging.
type StoreError struct {
	// Key is the throttle's key, as given to New, Wrap or WrapErr.
	Key string
	// Err is the store's error.
	Err error
}

// Error implements error.
func (e *StoreError) Error() string {
	return fmt.Sprintf("throttle: store unavailable for %q: %v", e.Key, e.Err)
}

// Is reports whether target is ErrStoreUnavailable.
func (e *StoreError) Is(target error) bool { return target == ErrStoreUnavailable }

// Unwrap returns the store's error.
func (e *StoreError) Unwrap() error { return e.Err }
