package benchmarks

import (
	"context"

	"github.com/go-redis/redis_rate/v10"
	"github.com/redis/go-redis/v9"
)

// Peer: github.com/go-redis/redis_rate/v10, GCRA in one Lua script (EVALSHA)
// on the server's TIME. Its keys are "rate:" + key (fixed prefix).

// NewRedisRate returns redis_rate for l: rate N per Interval with burst N,
// as redis_rate.PerSecond(N) and friends set it. (A burst of N lets GCRA
// admit up to 2N-1 calls in one window; burst 1 would admit only one call
// per Interval/N, a different limit.)
func NewRedisRate(c redis.UniversalClient, l Limit) Limiter {
	return redisRate{l: redis_rate.NewLimiter(c), limit: redis_rate.Limit{Rate: l.N, Burst: l.N, Period: l.Interval}}
}

type redisRate struct {
	l     *redis_rate.Limiter
	limit redis_rate.Limit
}

func (r redisRate) Allow(ctx context.Context, key string) (bool, error) {
	res, err := r.l.Allow(ctx, key, r.limit)
	if err != nil {
		return false, err
	}
	return res.Allowed > 0, nil
}
