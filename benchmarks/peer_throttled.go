package benchmarks

import (
	"context"

	"github.com/redis/go-redis/v9"
	"github.com/throttled/throttled/v2"
	goredisstore "github.com/throttled/throttled/v2/store/goredisstore.v9"
)

// Peer: github.com/throttled/throttled/v2, GCRA in Go over its go-redis v9
// store: a pipelined TIME+GET, then SETNX and EXPIRE (two more round trips)
// on a new key or a compare-and-swap script on a known one, retried up to
// 10 times under contention. Its keys are "throttled:" + key.

// NewThrottled returns throttled's GCRA limiter for l: rate N per Interval,
// MaxBurst N-1 (so that N calls may start at once, as in the others).
func NewThrottled(c redis.UniversalClient, l Limit) (Limiter, error) {
	st, err := goredisstore.NewCtx(c, "throttled:")
	if err != nil {
		return nil, err
	}
	rl, err := throttled.NewGCRARateLimiterCtx(st, throttled.RateQuota{
		MaxRate:  throttled.PerDuration(l.N, l.Interval),
		MaxBurst: l.N - 1,
	})
	if err != nil {
		return nil, err
	}
	return throttledLimiter{rl}, nil
}

type throttledLimiter struct{ rl *throttled.GCRARateLimiterCtx }

func (t throttledLimiter) Allow(ctx context.Context, key string) (bool, error) {
	limited, _, err := t.rl.RateLimitCtx(ctx, key, 1)
	if err != nil {
		return false, err
	}
	return !limited, nil
}
