package benchmarks

import (
	"context"

	"github.com/dthrottle/throttle"
	"github.com/redis/go-redis/v9"
)

// Ours: github.com/dthrottle/throttle on a RedisStore, through its public
// API only.

// NewDthrottleKeyed returns the Keyed a worker process keeps for l: one
// throttle per key, decided with Keyed.Allow(ctx, key), with opts after the
// store and limit (e.g. throttle.WithDenyCache(false)).
func NewDthrottleKeyed(c redis.UniversalClient, l Limit, opts ...throttle.Option) (*throttle.Keyed, error) {
	return throttle.NewKeyed(l.Interval, dthrottleOptions(c, l, opts)...)
}

// NewDthrottle returns the Throttle for one key, as a worker process keeps
// it, with opts after the store and limit.
func NewDthrottle(c redis.UniversalClient, key string, l Limit, opts ...throttle.Option) (*throttle.Throttle, error) {
	return throttle.New(key, l.Interval, dthrottleOptions(c, l, opts)...)
}

func dthrottleOptions(c redis.UniversalClient, l Limit, opts []throttle.Option) []throttle.Option {
	return append([]throttle.Option{throttle.WithStore(throttle.NewRedisStore(c)), throttle.WithLimit(l.N)}, opts...)
}

// KeyedLimiter returns k as a Limiter: Keyed.Allow(ctx, key).
func KeyedLimiter(k *throttle.Keyed) Limiter { return keyedLimiter{k} }

type keyedLimiter struct{ k *throttle.Keyed }

func (k keyedLimiter) Allow(ctx context.Context, key string) (bool, error) {
	d, err := k.k.Allow(ctx, key)
	return d.Allowed, err
}

// DthrottleAllower returns th.Allow as an Allower.
func DthrottleAllower(th *throttle.Throttle) Allower {
	return func(ctx context.Context) (bool, error) {
		d, err := th.Allow(ctx)
		return d.Allowed, err
	}
}
