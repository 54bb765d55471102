package benchmarks

import (
	"context"

	"github.com/redis/go-redis/v9"
	"github.com/ulule/limiter/v3"
	ulredis "github.com/ulule/limiter/v3/drivers/store/redis"
)

// Peer: github.com/ulule/limiter/v3 with its Redis store: a fixed window, one
// EVALSHA of INCRBY plus PEXPIRE on the window's first call (denied calls
// count too). Its keys are "ulule:" + key.

// NewUlule returns ulule's limiter for l: N calls per fixed window of
// Interval, starting at the window's first call.
func NewUlule(c redis.UniversalClient, l Limit) (Limiter, error) {
	st, err := ulredis.NewStoreWithOptions(c, limiter.StoreOptions{Prefix: "ulule"})
	if err != nil {
		return nil, err
	}
	return ulule{limiter.New(st, limiter.Rate{Period: l.Interval, Limit: int64(l.N)})}, nil
}

type ulule struct{ l *limiter.Limiter }

func (u ulule) Allow(ctx context.Context, key string) (bool, error) {
	lc, err := u.l.Get(ctx, key)
	if err != nil {
		return false, err
	}
	return !lc.Reached, nil
}
