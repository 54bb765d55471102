// Package riverthrottle throttles River jobs across every client and
// process that works one PostgreSQL database: a job kind (or any key of a
// job, such as a tenant in its arguments) runs at most N times per
// interval, or at most k at once, and a job that may not run yet is
// snoozed instead of failing, without using up an attempt.
//
// The limit is kept by a *throttle.Keyed on a throttle.RedisStore (River
// itself has no rate limit): every process that throttles the same jobs
// must share that Redis, and build its Keyed with the same interval and
// options.
//
// # Setup
//
//	rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:6379"})
//	// At most 10 jobs per minute of each kind, across every process.
//	lim, err := throttle.NewKeyed(time.Minute,
//		throttle.WithStore(throttle.NewRedisStore(rdb)), throttle.WithLimit(10))
//	if err != nil {
//		log.Fatal(err)
//	}
//	client, err := river.NewClient(riverpgxv5.New(pool), &river.Config{
//		Queues:     map[string]river.QueueConfig{river.QueueDefault: {MaxWorkers: 10}},
//		Workers:    workers,
//		Middleware: []rivertype.Middleware{riverthrottle.New(lim)},
//	})
//
// In river.Config.Middleware the middleware sees every job of the client;
// to throttle only the jobs of one worker, return it from that worker's
// Middleware method instead. River runs a worker's own middleware outside
// (before) the client's, so middleware in river.Config.Middleware does not
// see the jobs that a per-worker throttle snoozes. To throttle by something else than the kind,
// pass WithKeyFunc (an empty key runs the job unthrottled). Two limits (a
// kind and a tenant, say) can be two middlewares, one per Keyed; a start
// that the outer one admits is then used up even when the inner one
// snoozes the job.
//
// # Behaviour
//
// For each job the middleware finds the key and asks the Limiter:
//
//   - admitted: the job runs. On a Keyed with throttle.WithConcurrency it
//     runs holding a lease (Keyed.AcquireWithin), on the lease's context,
//     which ends if the lease is lost; the lease is released when the job
//     returns or panics.
//   - denied by the rate, with retry-after d: the job does not run; Work
//     returns a *ThrottledError, which River takes as river.JobSnooze(d +
//     jitter), jitter below WithJitter's bound (1 s by default).
//   - refused by the concurrency cap: snoozed for WithCapacityDelay (1 s by
//     default) plus jitter. A lease may be released at any moment, so there
//     is no better estimate; the error matches throttle.ErrAtCapacity.
//   - the limiter's store failed (an error matching
//     throttle.ErrStoreUnavailable): the throttle's policy decides. Failing
//     closed (the default) the job is snoozed for WithStoreRetryDelay (1 s
//     by default) plus jitter, and the error says why; with
//     throttle.WithFailOpen the job runs; with throttle.WithFallback the
//     process-local limit decides.
//   - any other error of the limiter (such as the job's context ending) is
//     returned as the job's error.
//
// With WithWait, a denied job whose retry-after fits in the wait sleeps in
// the middleware and asks again instead of being snoozed at once; under a
// cap it waits for a released lease, for what is left of the wait. The
// Keyed's own WithWait does not apply: the middleware's wait replaces it.
//
// # Holding off after a 429
//
// A worker whose API answers 429 Too Many Requests returns
// HoldOff(retryAfter, err). The middleware then calls the Limiter's Hold,
// which holds off the job's key in the store: every job of that key, in
// every process, is snoozed until the hold ends, rather than each one
// calling the API to be refused in turn. The job itself is snoozed for the
// hold plus jitter: it runs again, without using up an attempt.
//
// # What River does with it (River v0.51)
//
// The following was checked in River v0.51.2's source, and the first point
// in this package's tests on PostgreSQL:
//
//   - A snooze does not use an attempt. River increments a job's Attempt
//     when it fetches the job; for a *rivertype.JobSnoozeError (found with
//     errors.As, so wrapping is fine) the job executor writes the job back
//     with Attempt - 1, schedules it Duration from now, records no error,
//     and counts the snooze in the job's metadata ("snoozes"). A job
//     throttled 20 times completes with MaxAttempts 3, Attempt 1 and 20
//     snoozes (TestSnoozeKeepsAttempts). A snooze never discards a job, and
//     River's error handler is not called for it.
//   - Middleware runs before River decodes the job's arguments and before
//     the job's timeout starts (JobTimeout or the worker's Timeout): the
//     executor unmarshals the arguments and sets the timeout in the
//     innermost function of the chain. A KeyFunc therefore gets the
//     *rivertype.JobRow, with the arguments as JSON (EncodedArgs) and the
//     metadata as JSON. Decoding EncodedArgs to find a key costs one JSON
//     decode per job and per try, throttled tries included, on top of
//     River's own decode when the job runs: decode into a small struct with
//     only the field you need, or put the key in the job's metadata at
//     insert time.
//   - Because the timeout starts only inside the middleware, a wait in the
//     middleware (WithWait, or a Keyed with throttle.WithWait under a cap)
//     is not bounded by the job timeout; it holds a worker slot and ends
//     with the job's context, when the client stops. That is why the
//     default is to snooze and not to wait.
//   - A short snooze does not go through River's scheduler: a job snoozed
//     for less than the scheduler interval (5 s) is made available at once
//     with its scheduled time in the future, and a producer fetches it at
//     its next fetch once that time has passed (fetches come about every
//     FetchPollInterval, 1 s by default, and sooner when jobs are
//     inserted or finish). River writes the snooze, like a completion,
//     through its batch completer, which under light load flushes every
//     250 ms. So a snoozed job comes back up to about 0.25 s plus
//     FetchPollInterval after its retry-after: little for limits of a few
//     per second and slower, but for intervals below a second snoozes
//     alone leave part of the limit unused. WithWait
//     recovers it (in this package's cross-process test, 1 job per 100 ms
//     ran at 91 to 96% of the limit with a 500 ms wait, and 42 to 77%
//     without); a shorter FetchPollInterval helps too.
//   - Each snooze is a write to the job's row, so a job throttled n times
//     costs n extra updates: size the jitter and the number of jobs kept
//     available accordingly.
//
// A job that runs keeps River's guarantee of at-least-once execution; the
// limit counts every admitted start, including a start whose run later
// fails and is retried by River.
package riverthrottle
