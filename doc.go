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
// For an open set of keys under one interval (per customer, per account,
// per host), NewKeyed returns a Keyed whose Allow and Wait take the key per
// call, and WrapKeyed wraps a function whose argument picks the key. Its
// local state follows the keys active within about one interval.
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
// a single server, Sentinel and Cluster clients; a throttle's Redis keys
// share one Cluster hash tag under the prefix "throttle:", always with an
// expiry. Use one interval and one limit per key: throttles of one key with
// different limits do not share their starts.
//
// A Store may also be a Resetter (Reset), a Holder (Hold and Held) and a
// Clock (its own time, for the deny cache); RedisStore and MemoryStore are
// the first two. A Store that wraps another must implement them too, or the
// methods that need them return an error.
//
// # Rate and concurrency together
//
// WithConcurrency(k) also caps the calls in flight: at most k executions of
// fn run at once across every process that shares the store. Each call
// holds a lease (a Lease, from Acquire, or inside Wrap, WrapErr and
// WrapKeyed) from before fn starts until it returns or panics. With a rate
// too, the start and the lease are decided in one atomic store step. A lease
// is renewed while fn runs (every third of WithLeaseTTL, default 10 s) and
// freed at once by its release; a process that dies frees its leases one
// TTL after its last renewal, never before, on the store's clock. An
// interval of 0 means a cap without a rate. The windows of WithLimitPer
// join the same step: the lease and a start in every window, or nothing.
//
// # Holds and outbound HTTP
//
// Hold stops every process that shares the key for a while, as an API's
// 429 with Retry-After asks. Package httpthrottle wraps an
// http.RoundTripper so that every request is throttled per host (or per
// key of your choice) and sets those holds on its own.
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
// With a limit up to 64, an admitted decision is one Redis command: SET NX
// PX on the slot key the process expects to be free. A denial, or a slot
// found taken, costs one more round trip (a short script). Larger limits
// decide with one script of three Redis calls, in bounded memory. After a
// denial, the throttle remembers until when the store will deny and
// answers locally until then (see WithDenyCache), without a round trip or
// an allocation.
package throttle
