package riverthrottle

import (
	"fmt"
	"time"

	"github.com/riverqueue/river/rivertype"

	"github.com/dthrottle/throttle"
)

// ThrottledError is what the middleware returns to River for a job it did
// not run, or ran into a HoldOff: the limiter denied it, its concurrency
// cap refused it, its store failed while the limiter failed closed, or the
// job asked to hold off its key. It is always returned as a pointer.
//
// River sees it as a snooze: errors.As finds in it a
// *rivertype.JobSnoozeError for Delay, the error river.JobSnooze returns,
// so River schedules the job again Delay from now, without using up an
// attempt and without recording an error. errors.Is(err,
// throttle.ErrThrottled) reports true for it; Err, when set, is in its
// chain too (so errors.Is(err, throttle.ErrStoreUnavailable) or
// errors.Is(err, throttle.ErrAtCapacity) tells why).
type ThrottledError struct {
	// Key is the throttle key the job was judged by.
	Key string
	// RetryAfter is the limiter's retry-after for a denied job, the
	// capacity delay (WithCapacityDelay) for a job the cap refused, the
	// store retry delay (WithStoreRetryDelay) after a store failure, or
	// the HoldError's Duration.
	RetryAfter time.Duration
	// Delay is RetryAfter plus a random jitter (WithJitter): how long the
	// job is snoozed.
	Delay time.Duration
	// Err is why the job was not run when the limit alone did not say so:
	// the limiter's error after a store failure (matching
	// throttle.ErrStoreUnavailable) or a refusal by the cap (matching
	// throttle.ErrAtCapacity), or the job's *HoldError (joined with Hold's
	// error if that failed). It is nil for a job the limit denied.
	Err error
}

// Error implements error.
func (e *ThrottledError) Error() string {
	if e.Err != nil {
		return fmt.Sprintf("riverthrottle: %q not run (%v); snoozed for %v", e.Key, e.Err, e.Delay)
	}
	return fmt.Sprintf("riverthrottle: %q throttled; snoozed for %v", e.Key, e.Delay)
}

// Is reports whether target is throttle.ErrThrottled.
func (e *ThrottledError) Is(target error) bool { return target == throttle.ErrThrottled }

// Unwrap returns the snooze that River acts on, and Err if set.
func (e *ThrottledError) Unwrap() []error {
	snooze := &rivertype.JobSnoozeError{Duration: max(e.Delay, 0)}
	if e.Err == nil {
		return []error{snooze}
	}
	return []error{snooze, e.Err}
}

// HoldError is what HoldOff returns: a job's request to hold off its key.
// It is always used as a pointer.
type HoldError struct {
	// Duration is how long no job of the key may start, in any process.
	Duration time.Duration
	// Err is the job's own error, such as the 429 response that asked to
	// back off; it may be nil.
	Err error
}

// Error implements error.
func (e *HoldError) Error() string {
	if e.Err != nil {
		return fmt.Sprintf("riverthrottle: hold off for %v: %v", e.Duration, e.Err)
	}
	return fmt.Sprintf("riverthrottle: hold off for %v", e.Duration)
}

// Unwrap returns the job's own error.
func (e *HoldError) Unwrap() error { return e.Err }

// HoldOff returns an error that a worker returns (directly or wrapped with
// %w) when the limited resource asks every caller to back off for d, such
// as an API that answered 429 Too Many Requests with a Retry-After. The
// middleware then holds off the job's key for d with the Limiter's Hold, so
// that no job of that key starts in any process that shares the store
// until d has passed (each is snoozed until then instead), and snoozes
// this job for d plus jitter, without using up an attempt. cause, which
// may be nil, is kept in the error's chain.
//
// A hold needs a rate: on a Keyed with only a concurrency cap (an interval
// of 0) the store has nothing to hold (RedisStore refuses it), so only
// this job is snoozed, and the snooze's error carries Hold's error.
//
// HoldOff panics if d is negative. Outside the middleware (a worker
// without it), River sees an ordinary error.
func HoldOff(d time.Duration, cause error) error {
	if d < 0 {
		panic("riverthrottle: negative hold")
	}
	return &HoldError{Duration: d, Err: cause}
}
