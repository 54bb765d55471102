package otelthrottle_test

import (
	"context"
	"fmt"
	"log"
	"slices"
	"time"

	sdkmetric "go.opentelemetry.io/otel/sdk/metric"

	"github.com/dthrottle/throttle"
	"github.com/dthrottle/throttle/otelthrottle"
)

// The instruments a throttle reports, read with a ManualReader after a few
// calls: one admitted and two throttled (by the deny cache, and by the
// store for another throttle on the key), a hold, two calls that wait for
// their turn (the first is admitted at once, the second books a start and
// waits for it), and a lease taken and released. A histogram shows the
// count of its measurements.
func Example() {
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	defer mp.Shutdown(context.Background())
	metrics := otelthrottle.WithMetrics("search-api", otelthrottle.WithMeterProvider(mp))

	ctx := context.Background()
	store := throttle.NewMemoryStore()
	a, err := throttle.New("search", time.Hour, throttle.WithStore(store), metrics)
	if err != nil {
		log.Fatal(err)
	}
	b, _ := throttle.New("search", time.Hour, throttle.WithStore(store), metrics)
	_, _ = a.Allow(ctx) // admitted
	_, _ = a.Allow(ctx) // throttled by a's deny cache
	_, _ = b.Allow(ctx) // throttled by the store
	_ = a.Hold(ctx, time.Minute)

	w, _ := throttle.New("search:page", 250*time.Millisecond, throttle.WithWait(time.Second), metrics)
	_ = w.Wait(ctx) // admitted
	_ = w.Wait(ctx) // books a start about 250 ms ahead and waits for it

	capped, _ := throttle.New("search:export", 0, throttle.WithConcurrency(2), metrics)
	lease, err := capped.Acquire(ctx)
	if err == nil {
		lease.Release()
	}

	got, err := collect(reader)
	if err != nil {
		log.Fatal(err)
	}
	names := make([]string, 0, len(got))
	for name := range got {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		in := got[name]
		fmt.Printf("%s (%s): %s\n", name, in.unit, in.description)
		series := make([]string, 0, len(in.points))
		for s := range in.points {
			series = append(series, s)
		}
		slices.Sort(series)
		for _, s := range series {
			fmt.Printf("    %s: %d\n", s, in.points[s])
		}
	}
	// Output:
	// dthrottle.decision.duration (s): How long each decision took, store round trip included.
	//     dthrottle.name=search-api,dthrottle.outcome=allowed,dthrottle.source=store: 4
	//     dthrottle.name=search-api,dthrottle.outcome=throttled,dthrottle.source=store: 1
	// dthrottle.decisions ({decision}): Decisions of the throttle, by outcome and by what answered.
	//     dthrottle.name=search-api,dthrottle.outcome=allowed,dthrottle.source=store: 4
	//     dthrottle.name=search-api,dthrottle.outcome=throttled,dthrottle.source=deny_cache: 1
	//     dthrottle.name=search-api,dthrottle.outcome=throttled,dthrottle.source=store: 1
	// dthrottle.holds ({hold}): Holds set on the throttle (such as after a 429 Too Many Requests).
	//     dthrottle.name=search-api: 1
	// dthrottle.lease.duration (s): How long leases of the concurrency cap were held.
	//     dthrottle.name=search-api: 1
	// dthrottle.leases.active ({lease}): Leases of the concurrency cap held in this process.
	//     dthrottle.name=search-api: 0
	// dthrottle.wait.duration (s): How long calls that booked a start ahead waited for it, by outcome.
	//     dthrottle.name=search-api,dthrottle.outcome=allowed: 1
	// dthrottle.waiting ({call}): Calls waiting for a start booked ahead.
	//     dthrottle.name=search-api: 0
}
