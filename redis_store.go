package throttle

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// DefaultKeyPrefix is the prefix of every Redis key a RedisStore writes,
// unless WithKeyPrefix sets another.
const DefaultKeyPrefix = "throttle:"

var (
	//go:embed scripts/take.lua
	takeSource string
	//go:embed scripts/cancel.lua
	cancelSource string
	//go:embed scripts/book1.lua
	book1Source string
	//go:embed scripts/cancel1.lua
	cancel1Source string

	takeScript    = redis.NewScript(takeSource)
	cancelScript  = redis.NewScript(cancelSource)
	book1Script   = redis.NewScript(book1Source)
	cancel1Script = redis.NewScript(cancel1Source)
)

// RedisStore is a Store kept in Redis, shared by every process that uses the
// same Redis server (or Cluster) and key prefix. Decisions use the Redis
// server's clock, never the callers', so skewed clocks on the workers do not
// matter.
//
// Each throttle key is one Redis key, the prefix followed by the throttle's
// key bytes, with an expiry: an idle throttle leaves nothing behind.
//   - Limit 1: a string written with SET key 1 NX PX interval, which is the
//     whole decision (one round trip, pipelined with PTTL for the
//     retry-after). Waiting calls book with a short script instead.
//   - Limit N > 1: a list of the start times (server microseconds) still in
//     the window, updated by one Lua script that reads the server's TIME.
//
// Because one throttle uses one Redis key, it works unchanged on Redis
// Cluster. Scripts run with EVALSHA and fall back to EVAL when the server
// has lost its script cache (restart, failover, new shard). Redis 5 or newer
// is needed (scripts write after reading TIME).
//
// A RedisStore is safe for concurrent use and starts no goroutine of its
// own, except as described for clients without ContextTimeoutEnabled.
type RedisStore struct {
	client  redis.UniversalClient
	prefix  string
	bounded bool // the client honours context deadlines
}

// A RedisOption configures a RedisStore.
type RedisOption interface {
	applyRedis(*RedisStore)
}

type redisOptionFunc func(*RedisStore)

func (f redisOptionFunc) applyRedis(s *RedisStore) { f(s) }

// WithKeyPrefix sets the prefix of the store's Redis keys. Stores that must
// share throttles must use the same prefix. Default: DefaultKeyPrefix
// ("throttle:").
func WithKeyPrefix(prefix string) RedisOption {
	return redisOptionFunc(func(s *RedisStore) { s.prefix = prefix })
}

// NewRedisStore returns a RedisStore that uses c: a *redis.Client, a
// *redis.ClusterClient, a Sentinel failover client or a *redis.Ring.
//
// Every decision is bounded by the throttle's timeout (WithTimeout). When c
// was made with ContextTimeoutEnabled (recommended), go-redis itself stops
// at that deadline. Otherwise go-redis ignores context deadlines, so each
// call runs in a goroutine that the caller leaves when the timeout ends;
// that goroutine ends when go-redis returns (at its ReadTimeout at worst).
func NewRedisStore(c redis.UniversalClient, opts ...RedisOption) *RedisStore {
	s := &RedisStore{client: c, prefix: DefaultKeyPrefix, bounded: honoursDeadlines(c)}
	for _, o := range opts {
		if o != nil {
			o.applyRedis(s)
		}
	}
	return s
}

// honoursDeadlines reports whether go-redis stops c's commands at the
// context's deadline.
func honoursDeadlines(c redis.UniversalClient) bool {
	switch v := c.(type) {
	case *redis.Client:
		return v.Options().ContextTimeoutEnabled
	case *redis.ClusterClient:
		return v.Options().ContextTimeoutEnabled
	case *redis.Ring:
		return v.Options().ContextTimeoutEnabled
	}
	return false
}

// Key returns the Redis key that holds the throttle key.
func (s *RedisStore) Key(key string) string { return s.prefix + key }

// Take implements Store.
func (s *RedisStore) Take(ctx context.Context, key string, req Request) (Reservation, error) {
	if s.bounded { // the hot path, without the closure of bounded
		return s.take(ctx, key, req)
	}
	return bounded(s, ctx, func(ctx context.Context) (Reservation, error) { return s.take(ctx, key, req) })
}

// Cancel implements Store.
func (s *RedisStore) Cancel(ctx context.Context, key string, req Request, res Reservation) error {
	return boundedErr(s, ctx, func(ctx context.Context) error { return s.cancel(ctx, key, req, res) })
}

// Reset deletes the Redis key of key, and the record of a hold set by
// Block, so the next Take is admitted.
func (s *RedisStore) Reset(ctx context.Context, key string) error {
	return boundedErr(s, ctx, func(ctx context.Context) error {
		// Two DELs in one round trip, not one DEL of two keys: on Redis
		// Cluster the keys may live in two slots.
		rkey := s.Key(key)
		pipe := s.client.Pipeline()
		pipe.Del(ctx, rkey+blockSuffix)
		pipe.Del(ctx, rkey)
		_, err := pipe.Exec(ctx)
		return err
	})
}

// bounded returns f(ctx) once ctx ends at the latest. When s's client
// honours context deadlines, go-redis itself stops there and f runs in the
// caller's goroutine. Otherwise f runs in a goroutine of its own, which the
// caller leaves when ctx ends; it ends when go-redis returns.
func bounded[T any](s *RedisStore, ctx context.Context, f func(context.Context) (T, error)) (T, error) {
	if s.bounded {
		return f(ctx)
	}
	type result struct {
		v   T
		err error
	}
	ch := make(chan result, 1) // buffered: the goroutine never blocks on a caller that left
	go func() {
		v, err := f(ctx)
		ch <- result{v, err}
	}()
	select {
	case r := <-ch:
		return r.v, r.err
	case <-ctx.Done():
		var zero T
		return zero, ctx.Err()
	}
}

// boundedErr is bounded for calls that return only an error.
func boundedErr(s *RedisStore, ctx context.Context, f func(context.Context) error) error {
	_, err := bounded(s, ctx, func(ctx context.Context) (struct{}, error) { return struct{}{}, f(ctx) })
	return err
}

func (s *RedisStore) take(ctx context.Context, key string, req Request) (Reservation, error) {
	rkey := s.Key(key)
	if req.Limit == 1 {
		if req.MaxWait <= 0 {
			return s.setNX(ctx, rkey, req)
		}
		return s.book1(ctx, rkey, req)
	}
	v, err := takeScript.Run(ctx, s.client, []string{rkey},
		micros(req.Interval), req.Limit, micros(min(req.MaxWait, MaxInterval))).Int64Slice()
	if err != nil {
		return Reservation{}, err
	}
	if len(v) != 5 {
		return Reservation{}, fmt.Errorf("throttle: unexpected reply %v from take script", v)
	}
	return Reservation{
		OK:         v[0] == 1,
		Delay:      time.Duration(v[1]) * time.Microsecond,
		RetryAfter: time.Duration(v[2]) * time.Microsecond,
		Remaining:  int(v[3]),
		Slot:       v[4],
	}, nil
}

// setNX decides a start for limit 1 with SET NX PX, pipelined with PTTL so a
// denied call learns its retry-after in the same round trip.
func (s *RedisStore) setNX(ctx context.Context, rkey string, req Request) (Reservation, error) {
	pipe := s.client.Pipeline()
	set := pipe.SetNX(ctx, rkey, "1", ceilMillis(req.Interval))
	ttl := pipe.PTTL(ctx, rkey)
	if _, err := pipe.Exec(ctx); err != nil {
		return Reservation{}, err
	}
	if set.Val() {
		return Reservation{OK: true}, nil
	}
	// PTTL is -2 when the key expired between the two commands: the next
	// start is free now.
	return Reservation{RetryAfter: max(ttl.Val(), 0)}, nil
}

func (s *RedisStore) book1(ctx context.Context, rkey string, req Request) (Reservation, error) {
	v, err := book1Script.Run(ctx, s.client, []string{rkey},
		millis(ceilMillis(req.Interval)), millis(min(req.MaxWait, MaxInterval))).Int64Slice()
	if err != nil {
		return Reservation{}, err
	}
	if len(v) != 4 {
		return Reservation{}, fmt.Errorf("throttle: unexpected reply %v from book script", v)
	}
	return Reservation{
		OK:         v[0] == 1,
		Delay:      time.Duration(v[1]) * time.Millisecond,
		RetryAfter: time.Duration(v[2]) * time.Millisecond,
		Slot:       v[3],
	}, nil
}

func (s *RedisStore) cancel(ctx context.Context, key string, req Request, res Reservation) error {
	script := cancelScript
	if req.Limit == 1 {
		script = cancel1Script
	}
	err := script.Run(ctx, s.client, []string{s.Key(key)}, strconv.FormatInt(res.Slot, 10)).Err()
	if errors.Is(err, redis.Nil) {
		return nil
	}
	return err
}

// ceilMillis rounds d up to whole milliseconds, as Redis keeps expiries.
func ceilMillis(d time.Duration) time.Duration {
	return (d + time.Millisecond - 1).Truncate(time.Millisecond)
}

func millis(d time.Duration) int64 { return int64(d / time.Millisecond) }

// micros rounds d up to whole microseconds.
func micros(d time.Duration) int64 { return int64((d + time.Microsecond - 1) / time.Microsecond) }
