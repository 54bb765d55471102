package otelthrottle

import (
	"context"
	"errors"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	"github.com/dthrottle/throttle"
)

// ScopeName is the instrumentation scope of the meter that the instruments
// come from.
const ScopeName = "github.com/dthrottle/throttle/otelthrottle"

// The names of the instruments. See the package documentation for their
// units, descriptions and attributes.
const (
	DecisionsName        = "dthrottle.decisions"
	DecisionDurationName = "dthrottle.decision.duration"
	WaitDurationName     = "dthrottle.wait.duration"
	WaitingName          = "dthrottle.waiting"
	HoldsName            = "dthrottle.holds"
	LeasesActiveName     = "dthrottle.leases.active"
	LeaseDurationName    = "dthrottle.lease.duration"
)

// The attribute keys of the measurements.
const (
	// NameKey is the name given to New: one per throttle, not per key.
	NameKey = attribute.Key("dthrottle.name")
	// OutcomeKey is what the call got: "allowed", "throttled" or "error".
	OutcomeKey = attribute.Key("dthrottle.outcome")
	// SourceKey is what answered a decision: "store", "deny_cache" or
	// "permit".
	SourceKey = attribute.Key("dthrottle.source")
	// ErrorTypeKey is the general OpenTelemetry attribute for what failed:
	// "store_unavailable" or "canceled"; absent when nothing failed.
	ErrorTypeKey = attribute.Key("error.type")
	// KeyKey is the key of the call, only with WithKeys.
	KeyKey = attribute.Key("dthrottle.key")
)

// The bucket boundaries, in seconds, of the duration histograms: a
// decision takes from well under a microsecond (the deny cache) to a
// Redis round trip or a timeout; waits and leases last from milliseconds
// to minutes.
var (
	decisionBuckets = []float64{0.00001, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1}
	longBuckets     = []float64{0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300}
)

// Metrics records the events of the throttles it observes as OpenTelemetry
// measurements, under one name. Make it with New and pass its Option to
// throttle.New, throttle.NewKeyed or a Wrap function, or call Observe from
// an observer of your own.
//
// A Metrics is safe for concurrent use; it may observe many throttles,
// which then add up under its name.
type Metrics struct {
	decisions     metric.Int64Counter
	decisionTime  metric.Float64Histogram
	waitTime      metric.Float64Histogram
	waiting       metric.Int64UpDownCounter
	holds         metric.Int64Counter
	leases        metric.Int64UpDownCounter
	leaseDuration metric.Float64Histogram

	keys bool
	base []attribute.KeyValue // the name and WithAttributes'

	// The measurement options of each class of event, made once so that
	// recording allocates nothing. Unused with WithKeys.
	decision [numDecisionClasses]measure
	waited   [numWaitClasses]measure
	hold     [numHoldClasses]measure
	plain    measure // the base attributes alone
}

// measure is what the instruments of one set of attributes are given.
type measure struct {
	add []metric.AddOption
	rec []metric.RecordOption
}

func newMeasure(attrs []attribute.KeyValue) measure {
	set := attribute.NewSet(attrs...)
	return measure{
		add: []metric.AddOption{metric.WithAttributeSet(set)},
		rec: []metric.RecordOption{metric.WithAttributeSet(set)},
	}
}

// The classes of decisions, by their attributes.
const (
	allowed          = iota // the store admitted the call
	allowedByPermit         // a leased permit admitted it
	throttledByStore        // the store refused it
	throttledByCache        // the deny cache refused it
	allowedDegraded         // the store failed; WithFailOpen or WithFallback admitted it
	storeFailed             // the store failed; not admitted
	canceled                // the call's context ended before a decision
	numDecisionClasses
)

var decisionAttrs = [numDecisionClasses][]attribute.KeyValue{
	allowed:          {OutcomeKey.String("allowed"), SourceKey.String("store")},
	allowedByPermit:  {OutcomeKey.String("allowed"), SourceKey.String("permit")},
	throttledByStore: {OutcomeKey.String("throttled"), SourceKey.String("store")},
	throttledByCache: {OutcomeKey.String("throttled"), SourceKey.String("deny_cache")},
	allowedDegraded:  {OutcomeKey.String("allowed"), SourceKey.String("store"), ErrorTypeKey.String("store_unavailable")},
	storeFailed:      {OutcomeKey.String("error"), SourceKey.String("store"), ErrorTypeKey.String("store_unavailable")},
	canceled:         {OutcomeKey.String("error"), SourceKey.String("store"), ErrorTypeKey.String("canceled")},
}

// The classes of ended waits.
const (
	waitReached  = iota // the call reached its booked start
	waitTooShort        // the time left could not cover the delay
	waitCanceled        // the call's context ended during the wait
	numWaitClasses
)

var waitAttrs = [numWaitClasses][]attribute.KeyValue{
	waitReached:  {OutcomeKey.String("allowed")},
	waitTooShort: {OutcomeKey.String("throttled")},
	waitCanceled: {OutcomeKey.String("error"), ErrorTypeKey.String("canceled")},
}

// The classes of holds.
const (
	holdSet = iota
	holdStoreFailed
	holdCanceled
	numHoldClasses
)

var holdAttrs = [numHoldClasses][]attribute.KeyValue{
	holdSet:         nil,
	holdStoreFailed: {ErrorTypeKey.String("store_unavailable")},
	holdCanceled:    {ErrorTypeKey.String("canceled")},
}

// New returns the Metrics of the throttles named name, with instruments
// from the meter provider set with WithMeterProvider (by default the global
// one, otel.GetMeterProvider). The name becomes the dthrottle.name
// attribute of every measurement: give each throttle (or Keyed) a name of
// its own, from a small fixed set, such as "github-api". New returns an
// error for an empty name, and when the meter refuses an instrument.
func New(name string, opts ...Option) (*Metrics, error) {
	if name == "" {
		return nil, errors.New("otelthrottle: empty name")
	}
	cfg := config{}
	for _, o := range opts {
		if o != nil {
			o.apply(&cfg)
		}
	}
	mp := cfg.provider
	if mp == nil {
		mp = otel.GetMeterProvider()
	}
	meter := mp.Meter(ScopeName)
	m := &Metrics{keys: cfg.keys}
	var errs [7]error
	m.decisions, errs[0] = meter.Int64Counter(DecisionsName, metric.WithUnit("{decision}"),
		metric.WithDescription("Decisions of the throttle, by outcome and by what answered."))
	m.decisionTime, errs[1] = meter.Float64Histogram(DecisionDurationName, metric.WithUnit("s"),
		metric.WithDescription("How long each decision took, store round trip included."),
		metric.WithExplicitBucketBoundaries(decisionBuckets...))
	m.waitTime, errs[2] = meter.Float64Histogram(WaitDurationName, metric.WithUnit("s"),
		metric.WithDescription("How long calls that booked a start ahead waited for it, by outcome."),
		metric.WithExplicitBucketBoundaries(longBuckets...))
	m.waiting, errs[3] = meter.Int64UpDownCounter(WaitingName, metric.WithUnit("{call}"),
		metric.WithDescription("Calls waiting for a start booked ahead."))
	m.holds, errs[4] = meter.Int64Counter(HoldsName, metric.WithUnit("{hold}"),
		metric.WithDescription("Holds set on the throttle (such as after a 429 Too Many Requests)."))
	m.leases, errs[5] = meter.Int64UpDownCounter(LeasesActiveName, metric.WithUnit("{lease}"),
		metric.WithDescription("Leases of the concurrency cap held in this process."))
	m.leaseDuration, errs[6] = meter.Float64Histogram(LeaseDurationName, metric.WithUnit("s"),
		metric.WithDescription("How long leases of the concurrency cap were held."),
		metric.WithExplicitBucketBoundaries(longBuckets...))
	if err := errors.Join(errs[:]...); err != nil {
		return nil, err
	}

	m.base = append([]attribute.KeyValue{NameKey.String(name)}, cfg.attrs...)
	for c := range m.decision {
		m.decision[c] = newMeasure(m.with(decisionAttrs[c]))
	}
	for c := range m.waited {
		m.waited[c] = newMeasure(m.with(waitAttrs[c]))
	}
	for c := range m.hold {
		m.hold[c] = newMeasure(m.with(holdAttrs[c]))
	}
	m.plain = newMeasure(m.base)
	return m, nil
}

// WithMetrics returns a throttle.Option that records the throttle's events
// as New(name, opts...)'s Metrics do. It panics with New's message for an
// empty name. When the meter refuses an instrument, it reports the error to
// otel.Handle and returns a nil Option, which the throttle ignores.
//
// The option is a throttle.WithObserver, so it replaces an observer given
// before it, and one given after it replaces it; to observe the events
// yourself too, make a Metrics with New and call its Observe from your
// observer.
func WithMetrics(name string, opts ...Option) throttle.Option {
	if name == "" {
		panic("otelthrottle: empty name")
	}
	m, err := New(name, opts...)
	if err != nil {
		otel.Handle(err)
		return nil
	}
	return m.Option()
}

// Option returns throttle.WithObserver(m.Observe).
func (m *Metrics) Option() throttle.Option { return throttle.WithObserver(m.Observe) }

// with returns the base attributes followed by attrs, in a new slice.
func (m *Metrics) with(attrs []attribute.KeyValue) []attribute.KeyValue {
	out := make([]attribute.KeyValue, 0, len(m.base)+len(attrs)+1)
	return append(append(out, m.base...), attrs...)
}

// measureOf returns the options for attrs and key: those made in New, or
// with WithKeys, new ones that carry the key.
func (m *Metrics) measureOf(made *measure, attrs []attribute.KeyValue, key string) *measure {
	if !m.keys {
		return made
	}
	mm := newMeasure(append(m.with(attrs), KeyKey.String(key)))
	return &mm
}

// bg is the context of every measurement: an event carries none.
var bg = context.Background()

// Observe records one event of a throttle. It is the observer that Option
// installs; call it from an observer of your own to record the events and
// see them too.
func (m *Metrics) Observe(e throttle.Event) {
	switch e.Kind {
	case throttle.EventDecision:
		c := classify(e)
		mm := m.measureOf(&m.decision[c], decisionAttrs[c], e.Key)
		m.decisions.Add(bg, 1, mm.add...)
		if !e.Cached && !e.Permit {
			// The deny cache and a permit answer in well under a
			// microsecond: a histogram of them would say nothing, at
			// half the cost of the decision.
			m.decisionTime.Record(bg, e.Latency.Seconds(), mm.rec...)
		}
		if e.Allowed && e.Delay > 0 {
			m.waiting.Add(bg, 1, m.measureOf(&m.plain, nil, e.Key).add...)
		}
	case throttle.EventWaited:
		c := waitReached
		switch {
		case e.Err != nil:
			c = waitCanceled
		case !e.Allowed:
			c = waitTooShort
		}
		m.waitTime.Record(bg, e.Delay.Seconds(), m.measureOf(&m.waited[c], waitAttrs[c], e.Key).rec...)
		m.waiting.Add(bg, -1, m.measureOf(&m.plain, nil, e.Key).add...)
	case throttle.EventHold:
		c := holdSet
		switch {
		case errors.Is(e.Err, throttle.ErrStoreUnavailable):
			c = holdStoreFailed
		case e.Err != nil:
			c = holdCanceled
		}
		m.holds.Add(bg, 1, m.measureOf(&m.hold[c], holdAttrs[c], e.Key).add...)
	case throttle.EventLeaseTaken:
		m.leases.Add(bg, 1, m.measureOf(&m.plain, nil, e.Key).add...)
	case throttle.EventLeaseReleased:
		mm := m.measureOf(&m.plain, nil, e.Key)
		m.leases.Add(bg, -1, mm.add...)
		m.leaseDuration.Record(bg, e.Held.Seconds(), mm.rec...)
	}
}

// classify returns the class of a decision.
func classify(e throttle.Event) int {
	switch {
	case e.Err == nil && e.Permit:
		return allowedByPermit
	case e.Err == nil && e.Allowed:
		return allowed
	case e.Err == nil && e.Cached:
		return throttledByCache
	case e.Err == nil:
		return throttledByStore
	case !errors.Is(e.Err, throttle.ErrStoreUnavailable):
		return canceled
	case e.Allowed:
		return allowedDegraded
	}
	return storeFailed
}
