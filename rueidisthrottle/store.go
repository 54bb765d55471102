package rueidisthrottle

import (
	"github.com/redis/rueidis"

	throttle "github.com/dthrottle/throttle"
)

// NewStore returns a throttle.RedisStore that sends its commands on c, a
// rueidis client of a single node, a Cluster (several InitAddress) or
// Sentinel. It is the same store as throttle.NewRedisStore's, with the
// same keys, scripts and guarantee, so processes on go-redis and on
// rueidis share throttles; it is a throttle.Leaser, Resetter and Holder
// as that one is.
//
// Each decision is bounded by the throttle's timeout (throttle.WithTimeout)
// through rueidis itself, which ends a command at its context's deadline.
// rueidis honours a cancellation before the deadline only for a command it
// pipelines (when other commands are under way on the connection, or with
// ClientOption.AlwaysPipelining), and not always then: a cancelled
// decision on a hung server may run until the throttle's timeout, never
// longer.
// Lease waiters (throttle.WithConcurrency with a wait) block in BLPOP on a
// connection of rueidis's pool for blocking commands, never on the
// pipelined connection the decisions share: each waiter holds one, so
// ClientOption.BlockingPoolSize (default 1024) bounds how many wait at
// once. The store never closes c.
//
// NewStore panics if c is nil or the key prefix contains '{' or '}'.
func NewStore(c rueidis.Client, opts ...throttle.RedisOption) *throttle.RedisStore {
	if c == nil {
		panic("rueidisthrottle: NewStore with a nil client")
	}
	return throttle.NewRedisStoreOn(&conn{client: c}, opts...)
}
