// Package rueidisthrottle runs dthrottle's Redis store on a rueidis client
// (github.com/redis/rueidis), which pipelines the commands of concurrent
// callers on one connection by default: with many goroutines per process,
// decisions share round trips instead of each waiting for its own.
//
//	client, err := rueidis.NewClient(rueidis.ClientOption{InitAddress: []string{"127.0.0.1:6379"}})
//	...
//	t, err := throttle.New("api", time.Second, throttle.WithStore(rueidisthrottle.NewStore(client)))
//
// The store is throttle.RedisStore itself: every key, script and reply is
// the one module github.com/dthrottle/throttle uses with go-redis, so
// processes on either client share a throttle. Only how a command is sent
// differs (throttle.RedisConn). Valkey users with valkey-go use module
// github.com/dthrottle/throttle/valkeythrottle, generated from this one.
//
// rueidis speaks RESP3 to Redis 6 and newer. On Redis 5 it needs
// ClientOption.DisableCache (Redis 5 has no client tracking) and speaks
// RESP2; waits on a cap (AwaitLease) then use whole-second BLPOPs, as
// with go-redis.
package rueidisthrottle
