package benchmarks

import (
	"context"

	"github.com/dthrottle/throttle"
	"github.com/redis/go-redis/v9"
)

// Ours: github.com/dthrottle/throttle on a RedisStore.

// NewDthrottleStore returns a Limiter that asks the RedisStore directly
// (Store.Take), as the root module's benchmarks do: the cost of a decision
// on a key without making a Throttle for it.
func NewDthrottleStore(c redis.UniversalClient, l Limit) Limiter {
	return dthrottleStore{s: throttle.NewRedisStore(c), req: throttle.Request{Interval: l.Interval, Limit: l.N}}
}

type dthrottleStore struct {
	s   *throttle.RedisStore
	req throttle.Request
}

func (d dthrottleStore) Allow(ctx context.Context, key string) (bool, error) {
	res, err := d.s.Take(ctx, key, d.req)
	return res.OK, err
}

// NewDthrottlePerKey returns a Limiter that makes a Throttle for each call
// (throttle.New, then Allow): the whole public path, default options
// included (timeout, deny cache), on a key never seen before.
func NewDthrottlePerKey(c redis.UniversalClient, l Limit) Limiter {
	return dthrottlePerKey{s: throttle.NewRedisStore(c), l: l}
}

type dthrottlePerKey struct {
	s *throttle.RedisStore
	l Limit
}

func (d dthrottlePerKey) Allow(ctx context.Context, key string) (bool, error) {
	th, err := throttle.New(key, d.l.Interval, throttle.WithStore(d.s), throttle.WithLimit(d.l.N))
	if err != nil {
		return false, err
	}
	dec, err := th.Allow(ctx)
	return dec.Allowed, err
}

// NewDthrottle returns the Throttle for one key, as a worker process keeps
// it, with opts after the store and limit (e.g. throttle.WithDenyCache).
func NewDthrottle(c redis.UniversalClient, key string, l Limit, opts ...throttle.Option) (*throttle.Throttle, error) {
	opts = append([]throttle.Option{throttle.WithStore(throttle.NewRedisStore(c)), throttle.WithLimit(l.N)}, opts...)
	return throttle.New(key, l.Interval, opts...)
}

// DthrottleAllower returns th.Allow as an Allower.
func DthrottleAllower(th *throttle.Throttle) Allower {
	return func(ctx context.Context) (bool, error) {
		d, err := th.Allow(ctx)
		return d.Allowed, err
	}
}
