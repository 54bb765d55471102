package otelthrottle_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/dthrottle/throttle/otelthrottle"
)

// instrument is what a reader reports of one instrument: its unit and
// description, and per attribute set (see series) the value of a sum or
// the count of a histogram, with the histogram's sum in seconds.
type instrument struct {
	unit, description string
	points            map[string]int64
	sums              map[string]float64
}

// collect reads every instrument of the otelthrottle scope from r.
func collect(r *sdkmetric.ManualReader) (map[string]instrument, error) {
	var rm metricdata.ResourceMetrics
	if err := r.Collect(context.Background(), &rm); err != nil {
		return nil, err
	}
	out := map[string]instrument{}
	for _, sm := range rm.ScopeMetrics {
		if sm.Scope.Name != otelthrottle.ScopeName {
			continue
		}
		for _, m := range sm.Metrics {
			in := instrument{unit: m.Unit, description: m.Description, points: map[string]int64{}, sums: map[string]float64{}}
			switch d := m.Data.(type) {
			case metricdata.Sum[int64]:
				for _, p := range d.DataPoints {
					in.points[series(p.Attributes.ToSlice())] = p.Value
				}
			case metricdata.Histogram[float64]:
				for _, p := range d.DataPoints {
					s := series(p.Attributes.ToSlice())
					in.points[s] = int64(p.Count)
					in.sums[s] = p.Sum
				}
			default:
				return nil, fmt.Errorf("%s: unexpected aggregation %T", m.Name, m.Data)
			}
			out[m.Name] = in
		}
	}
	return out, nil
}

// series names a set of attributes as "k=v,k=v", sorted by key.
func series(kvs []attribute.KeyValue) string {
	parts := make([]string, 0, len(kvs))
	for _, kv := range kvs {
		parts = append(parts, string(kv.Key)+"="+kv.Value.Emit())
	}
	slices.Sort(parts)
	return strings.Join(parts, ",")
}

// points returns the values of every instrument of got, by instrument.
func points(got map[string]instrument) map[string]map[string]int64 {
	out := map[string]map[string]int64{}
	for name, in := range got {
		out[name] = in.points
	}
	return out
}

// newProvider returns an SDK meter provider read by a ManualReader, shut
// down at the end of t.
func newProvider(t *testing.T) (*sdkmetric.ManualReader, *sdkmetric.MeterProvider) {
	t.Helper()
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	t.Cleanup(func() { _ = mp.Shutdown(context.Background()) })
	return reader, mp
}

func mustCollect(t *testing.T, r *sdkmetric.ManualReader) map[string]instrument {
	t.Helper()
	got, err := collect(r)
	require.NoError(t, err, "collecting the metrics")
	return got
}
