package otelthrottle_test

import (
	"context"
	"strconv"
	"testing"
	"time"

	sdkmetric "go.opentelemetry.io/otel/sdk/metric"

	"github.com/dthrottle/throttle"
	"github.com/dthrottle/throttle/otelthrottle"
)

// The benchmarks measure what the metrics add to a decision on the memory
// store, each without metrics ("off"), with them ("on": an SDK meter
// provider with a ManualReader) and with the keys as attributes ("keys").

// modes are the three ways a benchmark runs.
var modes = []struct {
	name string
	opts func(b *testing.B) []throttle.Option
}{
	{"off", func(*testing.B) []throttle.Option { return nil }},
	{"on", func(b *testing.B) []throttle.Option { return []throttle.Option{metricsOption(b)} }},
	{"keys", func(b *testing.B) []throttle.Option {
		return []throttle.Option{metricsOption(b, otelthrottle.WithKeys())}
	}},
}

// BenchmarkAdmitted measures an admitted decision of a Keyed: limit 1 per
// ms, keys in turn, so that every call is admitted.
func BenchmarkAdmitted(b *testing.B) {
	ctx := context.Background()
	const keys = 1 << 15 // a key comes back after 32k calls: more than 1 ms
	names := make([]string, keys)
	for i := range names {
		names[i] = "k" + strconv.Itoa(i)
	}
	for _, m := range modes {
		b.Run(m.name, func(b *testing.B) {
			k, err := throttle.NewKeyed(time.Millisecond, m.opts(b)...)
			if err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				d, err := k.Allow(ctx, names[i%keys])
				if err != nil || !d.Allowed {
					b.Fatalf("call %d not admitted: %+v, %v", i, d, err)
				}
				i++
			}
		})
	}
}

// BenchmarkDeniedByCache measures a denial from the deny cache of a
// Throttle.
func BenchmarkDeniedByCache(b *testing.B) {
	ctx := context.Background()
	for _, m := range modes {
		b.Run(m.name, func(b *testing.B) {
			th, err := throttle.New("k", time.Hour, m.opts(b)...)
			if err != nil {
				b.Fatal(err)
			}
			_, _ = th.Allow(ctx) // admitted; the key is now closed for an hour
			b.ReportAllocs()
			for b.Loop() {
				if d, _ := th.Allow(ctx); d.Allowed {
					b.Fatal("admitted")
				}
			}
		})
	}
}

// metricsOption returns WithMetrics on an SDK meter provider of its own,
// shut down at the end of b.
func metricsOption(b *testing.B, opts ...otelthrottle.Option) throttle.Option {
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(sdkmetric.NewManualReader()))
	b.Cleanup(func() { _ = mp.Shutdown(context.Background()) })
	return otelthrottle.WithMetrics("bench", append(opts, otelthrottle.WithMeterProvider(mp))...)
}
