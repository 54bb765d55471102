// Package throttle lets a function start at most once (or N times) per
// interval across every process that shares a Redis server: a pool of
// workers calling an API whose one shared key allows a call every few
// seconds, say. Per-process limiters cannot see the other workers; a
// throttle decides in Redis, so the limit holds for the pool as a whole.
//
// # Quick start
//
//	rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:6379", ContextTimeoutEnabled: true})
//	store := throttle.NewRedisStore(rdb)
//	fetch := throttle.Wrap("api:shared-key", 3*time.Second, callAPI, throttle.WithStore(store))
//	v := fetch() // runs callAPI, or returns the zero value if any process started it < 3 s ago
//
// Wrap drops a throttled call and returns the zero value. WrapErr says why a
// call did not run (an error matching ErrThrottled, with the retry-after, or
// ErrStoreUnavailable). New returns a Throttle whose Allow gives the
// decision itself and whose Wait waits for a turn. WithWait makes the
// wrapped functions wait for their turn too, instead of dropping.
//
// # The guarantee
//
// For a throttle with key K, interval I and limit N (default 1, see
// WithLimit), across all processes using the same store: fn starts at most N
// times in any half-open window of length I. With N = 1, two starts are
// never closer than I. The window slides: this is not a fixed window that
// admits 2N around a boundary. Decisions are made by the store with the
// store's clock (Redis expiries and the server's TIME), never with the
// callers' clocks, so skewed clocks on the workers cannot break it.
//
// The guarantee is about when the store admitted each call. fn starts right
// after that, in the caller's goroutine; on a busy machine that can be a few
// milliseconds later, so start times measured in the callers can look closer
// than I even though the store admitted them I apart.
//
// # Stores
//
// Without WithStore a throttle is process-local: it keeps its state in a
// MemoryStore of its own and limits only the calls made through it. To limit
// many processes together, give each the same key, interval and limit, and
// WithStore(NewRedisStore(client)) on the same Redis. RedisStore works with
// a single server, Sentinel, Cluster and Ring clients; each throttle is one
// Redis key under the prefix "throttle:", always with an expiry.
//
// # Outbound HTTP
//
// NewTransport wraps an http.RoundTripper so that every request is
// throttled per host (or per key of your choice). When the upstream answers
// 429 or 503 with Retry-After, the transport calls Throttle.Block, and every
// process sharing the key holds off until then.
//
// # When the store fails
//
// Every decision is bounded by a timeout (WithTimeout, default 250 ms). When
// the store cannot decide in time, or fails, the throttle fails closed: fn
// does not run, and WrapErr returns an error matching ErrStoreUnavailable.
// WithFailOpen runs fn instead, and WithFallback decides with a
// process-local share of the limit. Nothing needs to be done when Redis
// comes back: the next call uses it again.
//
// # Cost
//
// With limit 1 a decision is one Redis round trip (SET NX PX, pipelined with
// PTTL); with a larger limit, one Lua script. After a denial, the throttle
// remembers until when the store will deny and answers locally until then
// (see WithDenyCache), without a round trip or an allocation.
package throttle
