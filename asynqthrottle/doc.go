// Package asynqthrottle throttles asynq tasks across every worker server
// that shares a Redis: a task type (or any key of a task, such as a tenant
// in its payload) runs at most N times per interval, and a task that may
// not run yet goes back to its queue instead of failing.
//
// # Setup
//
// Two things are needed: the middleware on the ServeMux, and the Config
// hooks that make asynq treat a throttled task as "not yet" rather than as
// a failure.
//
//	package main
//
//	import (
//		"context"
//		"log"
//		"time"
//
//		"github.com/hibiken/asynq"
//		"github.com/redis/go-redis/v9"
//
//		"github.com/dthrottle/throttle"
//		"github.com/dthrottle/throttle/asynqthrottle"
//	)
//
//	func main() {
//		rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:6379"})
//
//		// At most 2 tasks per second of each type, across every server.
//		lim, err := throttle.NewKeyed(time.Second,
//			throttle.WithStore(throttle.NewRedisStore(rdb)), throttle.WithLimit(2))
//		if err != nil {
//			log.Fatal(err)
//		}
//
//		mux := asynq.NewServeMux()
//		mux.Use(asynqthrottle.Middleware(lim))
//		mux.HandleFunc("email:send", func(ctx context.Context, t *asynq.Task) error {
//			log.Printf("sending %s", t.Payload())
//			return nil
//		})
//
//		srv := asynq.NewServerFromRedisClient(rdb, asynqthrottle.Configure(asynq.Config{
//			Concurrency:              10,
//			DelayedTaskCheckInterval: time.Second,
//		}))
//		if err := srv.Run(mux); err != nil {
//			log.Fatal(err)
//		}
//	}
//
// Any Limiter works: *throttle.Keyed is the usual one. To throttle by
// something else than the type, pass WithKeyFunc (an empty key runs the
// task unthrottled). To throttle only some task types, wrap their handlers
// instead of using mux.Use: mux.Handle("email:send",
// asynqthrottle.Middleware(lim)(h)).
//
// Instead of Configure, the hooks can be set by hand:
// asynq.Config{IsFailure: asynqthrottle.IsFailure, RetryDelayFunc:
// asynqthrottle.RetryDelay}. Without them a throttled task counts as a
// failure, uses up a retry, and waits asynq's exponential back-off.
//
// # Behaviour
//
// For each task the middleware asks the Limiter with the task's key:
//
//   - admitted: the task runs;
//   - denied: the task does not run, and the handler returns a
//     *ThrottledError whose Delay is the limiter's retry-after plus a random
//     jitter below WithJitter's bound (1 s by default);
//   - the limiter's store failed (an error matching
//     throttle.ErrStoreUnavailable): if the limiter failed open (its
//     Decision says Allowed) the task runs; if it failed closed, the task
//     is handed back like a denied one, after WithStoreRetryDelay (1 s by
//     default) plus jitter, and the error also matches
//     throttle.ErrStoreUnavailable;
//   - any other error of the limiter (for example the task's context
//     ending) is returned as the handler's error, a failure.
//
// A *throttle.Keyed with throttle.WithConcurrency (a LeaseLimiter with a
// cap) is asked for a lease instead: the task runs holding it, and a task
// refused because every lease was held is denied with a retry-after of 0.
//
// With WithWait, a denied task whose retry-after fits in the wait sleeps in
// its handler and asks again instead of being handed back at once.
//
// # What asynq does with it (asynq v0.26.0)
//
// The following was verified in asynq v0.26.0's source:
//
//   - processor.handleFailedMessage, run for every non-nil handler error,
//     first calls Config.ErrorHandler, then archives the task when
//     msg.Retried >= msg.Retry (the task's MaxRetry) or the error is
//     asynq.SkipRetry, and only otherwise calls processor.retry with
//     Config.IsFailure(err). The retry count is thus checked before
//     IsFailure: a task enqueued with asynq.MaxRetry(0), or one that has
//     used all its retries on real failures, would be archived on its first
//     throttle. The middleware therefore never hands such a task back (it
//     reads the counts with asynq.GetRetryCount and asynq.GetMaxRetry):
//     it waits in its handler, holding its worker slot, and asks the
//     Limiter again after each retry-after until it is admitted or the
//     task's context ends (its Timeout or Deadline; asynq then fails the
//     task as for any handler that overruns).
//   - processor.retry asks Config.RetryDelayFunc(msg.Retried, err, task)
//     for the delay and calls rdb.Retry with isFailure =
//     Config.IsFailure(err). rdb.Retry increments Retried only when
//     isFailure is true, and its script increments the processed and failed
//     statistics only then; either way the task moves from active to the
//     retry set, with the error's text as its last error and the time as
//     its LastFailedAt (Inspector and asynqmon show a throttled task in the
//     "retry" state).
//   - rdb.Retry stores the due time as a Unix time in whole seconds
//     (truncated), and the forwarder (every Config.DelayedTaskCheckInterval,
//     5 s by default) moves tasks whose second has begun back to pending.
//     RetryDelay rounds the Delay up to that resolution, so a task is
//     never pending before its Delay; it runs up to about 1 s plus
//     DelayedTaskCheckInterval later. For intervals below a second this
//     caps the rate of re-queued tasks well below the limit; WithWait
//     recovers it.
//   - Config.ErrorHandler is called for throttled tasks too; Configure
//     wraps it so that it is not.
//   - On Server.Shutdown, a task still waiting in its handler is pushed
//     back to pending by processor.requeue once Config.ShutdownTimeout has
//     passed, which does not touch Retried either; its context is then
//     canceled, which ends the wait.
//
// The re-queued task keeps its ID, payload, queue, MaxRetry, Timeout,
// Deadline and Retention: it is the same task, run later. A task that
// runs keeps asynq's guarantee of at-least-once execution; the limit
// counts every admitted start, including a start whose run later fails
// and is retried by asynq.
package asynqthrottle
