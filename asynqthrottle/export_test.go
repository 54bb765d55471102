package asynqthrottle

import (
	"context"
	"time"
)

// SetRetryState replaces how the middleware reads a task's retry count and
// maximum (asynq's handler context cannot be made outside asynq) until the
// returned function restores it.
func SetRetryState(f func(ctx context.Context) (retried, max int, ok bool)) (restore func()) {
	old := retryState
	retryState = f
	return func() { retryState = old }
}

// RoundUp exposes roundUp.
func RoundUp(now time.Time, d time.Duration) time.Duration { return roundUp(now, d) }
