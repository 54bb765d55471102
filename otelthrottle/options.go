package otelthrottle

import (
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
)

// An Option configures New and WithMetrics. When one is given twice, the
// last one wins; WithAttributes adds up.
type Option interface {
	apply(*config)
}

type optionFunc func(*config)

func (f optionFunc) apply(c *config) { f(c) }

type config struct {
	provider metric.MeterProvider
	keys     bool
	attrs    []attribute.KeyValue
}

// WithMeterProvider makes the instruments come from mp. A nil mp means the
// default. Default: the global provider, otel.GetMeterProvider(), read
// once by New.
func WithMeterProvider(mp metric.MeterProvider) Option {
	return optionFunc(func(c *config) { c.provider = mp })
}

// WithKeys adds the key of each call as the attribute dthrottle.key.
//
// Use it with care: each key becomes a time series of every instrument,
// held by the SDK and by the metrics backend for as long as they keep it.
// For a Throttle that is one key, but the keys of a Keyed are an open set
// (customers, accounts, hosts): their count is the cardinality of the
// metrics, which a backend may refuse or bill for, and the OpenTelemetry
// SDK folds series beyond its cardinality limit (2000 by default) into one
// overflow series. Recording with WithKeys also allocates on every event.
// Default: off (the name alone).
func WithKeys() Option {
	return optionFunc(func(c *config) { c.keys = true })
}

// WithAttributes adds attrs to every measurement, after dthrottle.name;
// keep them few and of fixed values (a service or a region, not a key).
// Given more than once, the attributes add up. Default: none.
func WithAttributes(attrs ...attribute.KeyValue) Option {
	attrs = append([]attribute.KeyValue(nil), attrs...)
	return optionFunc(func(c *config) { c.attrs = append(c.attrs, attrs...) })
}
