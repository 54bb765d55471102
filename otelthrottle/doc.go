// Package otelthrottle records the decisions, waits, holds and leases of
// dthrottle throttles as OpenTelemetry metrics, from the throttle's
// observer hook (throttle.WithObserver) alone.
//
// One option turns it on, with a name for the throttle:
//
//	th, err := throttle.New("github:search", time.Second,
//		throttle.WithStore(throttle.NewRedisStore(rdb)),
//		otelthrottle.WithMetrics("github-search", otelthrottle.WithMeterProvider(mp)))
//
// Without WithMeterProvider the instruments come from the global provider
// (otel.GetMeterProvider). To see the events yourself too, make a Metrics
// with New and call its Observe from your own observer: WithMetrics is a
// throttle.WithObserver, and a throttle has one observer.
//
// # Instruments
//
// No OpenTelemetry semantic convention for rate limiters exists yet; the
// instruments follow the closest stable model, ASP.NET Core's
// aspnetcore.rate_limiting.* metrics, where they fit. Every measurement
// carries dthrottle.name, the name given to New or WithMetrics, and the
// attributes of WithAttributes.
//
//	dthrottle.decisions          counter, {decision}
//	    Decisions of the throttle, by outcome and by what answered.
//	    Attributes dthrottle.outcome, dthrottle.source, and error.type
//	    when the store failed or the call's context ended.
//	dthrottle.decision.duration  histogram, s
//	    How long each decision that asked the store took, round trip
//	    included; the attributes of dthrottle.decisions. The deny cache
//	    and leased permits answer in well under a microsecond and are
//	    not timed.
//	dthrottle.wait.duration      histogram, s
//	    How long calls that booked a start ahead (throttle.WithWait,
//	    Wait) waited for it; dthrottle.outcome, and error.type when the
//	    wait was cut short. Like aspnetcore.rate_limiting.request.time_in_queue.
//	dthrottle.waiting            up-down counter, {call}
//	    Calls waiting for a start booked ahead. Like
//	    aspnetcore.rate_limiting.queued_requests.
//	dthrottle.holds              counter, {hold}
//	    Holds set with Hold (httpthrottle sets one on a 429 or 503 with
//	    Retry-After); error.type when the hold did not reach the store.
//	dthrottle.leases.active      up-down counter, {lease}
//	    Leases of the concurrency cap (throttle.WithConcurrency) held in
//	    this process. Like aspnetcore.rate_limiting.active_request_leases.
//	dthrottle.lease.duration     histogram, s
//	    How long the leases were held, from Acquire to Release. Like
//	    aspnetcore.rate_limiting.request_lease.duration.
//
// The attribute values of a decision:
//
//	dthrottle.outcome  dthrottle.source  error.type         what happened
//	allowed            store             -                  the store admitted the call (now, or booked ahead)
//	allowed            permit            -                  a leased permit admitted it, without the store (throttle.WithPermitBatch)
//	throttled          store             -                  the store refused it (the limit, or the cap)
//	throttled          deny_cache        -                  the deny cache refused it, without the store
//	allowed            store             store_unavailable  the store failed; WithFailOpen or WithFallback admitted it
//	error              store             store_unavailable  the store failed; the call did not run (fail closed, or WithFallback refused it)
//	error              store             canceled           the call's context ended before a decision
//
// A booked start counts as allowed when it is booked; its wait then ends in
// dthrottle.wait.duration with dthrottle.outcome allowed (it reached its
// start), throttled (the time left could not cover the delay, and the call
// returned throttled) or error with error.type canceled (its context ended).
// An Acquire that waits for a free lease (WithConcurrency with WithWait)
// asks the store again each time a lease may have come free: each of its
// attempts is a decision, throttled until one is allowed, and that time is
// not in dthrottle.wait.duration.
//
// # The degraded signal
//
// A store that fails shows as decisions with error.type store_unavailable:
// dthrottle.outcome allowed while the throttle fails open (or its fallback
// admits), error while it fails closed. An alert on their rate, by
// dthrottle.name, tells that the throttles decide without their store.
//
// # Cardinality
//
// The attributes are safe by default: the name is one per throttle, and the
// other values are the few listed above. The key of each call is not an
// attribute: the keys of a throttle.Keyed are an open set. WithKeys adds
// it; read its warning first.
//
// # Cost
//
// A measurement uses attribute sets made once by New, so recording an
// event allocates nothing of its own (with WithKeys it does). The cost is
// the SDK's: with go.opentelemetry.io/otel/sdk/metric, a few hundred
// nanoseconds per decision, which is several times the cost of a denial
// from the deny cache without metrics, and small beside a Redis round
// trip. BenchmarkAdmitted and BenchmarkDeniedByCache in this package
// measure the admitted decision and the denial from the deny cache with
// and without metrics;
// docs/benchmarks.md has the figures.
package otelthrottle
