package asynqthrottle

import (
	"context"
	"errors"
	"time"

	"github.com/hibiken/asynq"
)

// retryResolution is the resolution of asynq's retry times: rdb.Retry
// stores the time a task is due again as a Unix time in whole seconds
// (truncated), and the forwarder moves it back to pending once that
// second has begun.
const retryResolution = time.Second

// throttled returns the *ThrottledError in err's chain, or nil.
func throttled(err error) *ThrottledError {
	var te *ThrottledError
	if errors.As(err, &te) {
		return te
	}
	return nil
}

// IsFailure is an asynq.Config.IsFailure that reports false for a
// *ThrottledError (anywhere in err's chain) and true for any other non-nil
// error, as asynq's default does. asynq does not increment a task's Retried
// count, nor its processed and failed statistics, for an error that is not
// a failure. Configure installs it in front of a Config's own IsFailure.
func IsFailure(err error) bool {
	return err != nil && throttled(err) == nil
}

// RetryDelay is an asynq.Config.RetryDelayFunc that re-queues a task the
// middleware did not run after the *ThrottledError's Delay, rounded up so
// that asynq's whole-second retry time is not earlier; for any other error
// it returns asynq.DefaultRetryDelayFunc's delay. Configure installs it in
// front of a Config's own RetryDelayFunc.
func RetryDelay(n int, err error, t *asynq.Task) time.Duration {
	if te := throttled(err); te != nil {
		return roundUp(time.Now(), te.Delay)
	}
	return asynq.DefaultRetryDelayFunc(n, err, t)
}

// roundUp returns the delay from now to the first whole second at or after
// now+d. asynq adds the delay to its own, slightly later, time.Now and
// truncates the sum to seconds, which then still gives that second.
func roundUp(now time.Time, d time.Duration) time.Duration {
	at := now.Add(max(d, 0))
	due := at.Truncate(retryResolution)
	if due.Before(at) {
		due = due.Add(retryResolution)
	}
	return due.Sub(now)
}

// Configure returns cfg with the hooks the middleware needs:
//
//   - IsFailure reports false for a *ThrottledError, and otherwise asks
//     cfg.IsFailure (asynq's default: any non-nil error is a failure);
//   - RetryDelayFunc returns RetryDelay's delay for a *ThrottledError, and
//     otherwise asks cfg.RetryDelayFunc (asynq.DefaultRetryDelayFunc if
//     nil);
//   - ErrorHandler, if cfg has one, is not called for a *ThrottledError.
//
// Everything else in cfg is kept. asynq moves re-queued tasks back to their
// queue every DelayedTaskCheckInterval (5 s by default); a shorter interval
// such as 1 s brings throttled tasks back closer to their retry-after.
func Configure(cfg asynq.Config) asynq.Config {
	isFailure := cfg.IsFailure
	if isFailure == nil {
		isFailure = func(err error) bool { return err != nil }
	}
	cfg.IsFailure = func(err error) bool {
		if throttled(err) != nil {
			return false
		}
		return isFailure(err)
	}
	delay := cfg.RetryDelayFunc
	if delay == nil {
		delay = asynq.DefaultRetryDelayFunc
	}
	cfg.RetryDelayFunc = func(n int, err error, t *asynq.Task) time.Duration {
		if te := throttled(err); te != nil {
			return roundUp(time.Now(), te.Delay)
		}
		return delay(n, err, t)
	}
	if h := cfg.ErrorHandler; h != nil {
		cfg.ErrorHandler = asynq.ErrorHandlerFunc(func(ctx context.Context, t *asynq.Task, err error) {
			if throttled(err) == nil {
				h.HandleError(ctx, t, err)
			}
		})
	}
	return cfg
}
