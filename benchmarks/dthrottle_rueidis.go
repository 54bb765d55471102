package benchmarks

import (
	"context"
	"time"

	"github.com/dthrottle/throttle"
	"github.com/redis/rueidis"

	"github.com/dthrottle/throttle/rueidisthrottle"
)

// Ours on rueidis: github.com/dthrottle/throttle with the store of
// rueidisthrottle, and rueidis's own bare SET NX PX beside it.

// NewDthrottleKeyedRueidis returns the Keyed a worker process keeps for l
// on the rueidis client c (rueidisthrottle.NewStore), with opts after the
// store and limit.
func NewDthrottleKeyedRueidis(c rueidis.Client, l Limit, opts ...throttle.Option) (*throttle.Keyed, error) {
	return throttle.NewKeyed(l.Interval, append([]throttle.Option{
		throttle.WithStore(rueidisthrottle.NewStore(c)), throttle.WithLimit(l.N)}, opts...)...)
}

// RueidisSetNX runs SET key 1 NX PX interval on c and reports whether it
// set key: the floor of a decision on rueidis.
func RueidisSetNX(ctx context.Context, c rueidis.Client, key string, interval time.Duration) (bool, error) {
	err := c.Do(ctx, c.B().Set().Key(key).Value("1").Nx().PxMilliseconds(interval.Milliseconds()).Build()).Error()
	if rueidis.IsRedisNil(err) {
		return false, nil
	}
	return err == nil, err
}
