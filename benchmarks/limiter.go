package benchmarks

import (
	"context"
	"time"
)

// Limit is a workload's rule: at most N calls per Interval on one key.
type Limit struct {
	N        int
	Interval time.Duration
}

// A Limiter decides calls on any key under one Limit, the way a library
// is used for a key it has not seen before.
type Limiter interface {
	// Allow reports whether one call on key may run now, and records it
	// if so.
	Allow(ctx context.Context, key string) (bool, error)
}

// An Allower decides calls on one key fixed when it was made.
type Allower func(ctx context.Context) (bool, error)

// Bind returns an Allower for key on l.
func Bind(l Limiter, key string) Allower {
	return func(ctx context.Context) (bool, error) { return l.Allow(ctx, key) }
}
