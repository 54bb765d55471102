package throttle

import (
	"context"
	"crypto/sha1"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// A RedisConn sends the commands of a RedisStore to Redis over some client.
// NewRedisStore makes one of a go-redis client; module
// github.com/dthrottle/throttle/rueidisthrottle makes one of a rueidis or
// valkey-go client. Everything else (key names, scripts and their replies,
// slot hints, bookings, leases, Cluster retries, timeouts) is the
// RedisStore's, the same whatever the client, so processes on different
// clients share a throttle.
//
// Each method must return by the time ctx is done, with ctx's error or
// another, so that a decision stays bounded by the throttle's timeout. A
// Redis error reply must come back as an error whose message is the reply
// ("NOSCRIPT ...", "TRYAGAIN ...", "MOVED ..."): the store recognises
// Cluster's refusals by their prefix. A RedisConn must be safe for
// concurrent use.
type RedisConn interface {
	// SetNX runs SET key 1 NX PX ttl (ttl in whole milliseconds) and
	// reports whether it set key.
	SetNX(ctx context.Context, key string, ttl time.Duration) (bool, error)

	// Eval runs a Lua script: EVALSHA hash, and EVAL src when the server
	// answers NOSCRIPT. Each of args is a string, an int or an int64. The
	// reply is an integer (returned as one element), an array of
	// integers, or nil (returned as a nil slice and no error).
	Eval(ctx context.Context, hash, src string, keys []string, args ...any) ([]int64, error)

	// Del runs DEL with keys, which share one Cluster slot.
	Del(ctx context.Context, keys ...string) error

	// PTTL runs PTTL key and returns its reply: the milliseconds left, -2
	// for a missing key, -1 for a key without expiry.
	PTTL(ctx context.Context, key string) (int64, error)

	// BLPop runs BLPOP key with a timeout of d (whole milliseconds), as
	// fractional seconds on Redis 6 and newer and whole seconds, rounded
	// up, on Redis 5, and reports whether it popped an element (false
	// when d ran out). It may wait in several shorter BLPOPs when the
	// client cannot wait for an answer that long.
	BLPop(ctx context.Context, key string, d time.Duration) (bool, error)
}

// A luaScript is one of the store's scripts: its source and SHA-1.
type luaScript struct{ src, hash string }

func newScript(src string) luaScript {
	h := sha1.Sum([]byte(src))
	return luaScript{src: src, hash: hex.EncodeToString(h[:])}
}

// goRedisConn is the RedisConn of a go-redis client.
type goRedisConn struct {
	client   redis.UniversalClient
	timeouts *timeoutClients // clones of a *redis.Client without ContextTimeoutEnabled (see on)

	blockMax     time.Duration // longest BLPOP (0: any; -1: whole seconds only)
	wholeSeconds atomic.Bool   // the server takes BLPOP timeouts in whole seconds
}

func (c *goRedisConn) SetNX(ctx context.Context, key string, ttl time.Duration) (bool, error) {
	return c.client.SetNX(c.on(ctx), key, "1", ttl).Result()
}

func (c *goRedisConn) Eval(ctx context.Context, hash, src string, keys []string, args ...any) ([]int64, error) {
	ctx = c.on(ctx)
	cmd := c.client.EvalSha(ctx, hash, keys, args...)
	if err := cmd.Err(); err != nil && strings.HasPrefix(err.Error(), "NOSCRIPT ") {
		cmd = c.client.Eval(ctx, src, keys, args...)
	}
	v, err := cmd.Result()
	if err != nil {
		if errors.Is(err, redis.Nil) {
			return nil, nil
		}
		return nil, err
	}
	return int64s(v)
}

// int64s returns the integers of a script's reply v, as RedisConn.Eval.
func int64s(v any) ([]int64, error) {
	switch v := v.(type) {
	case int64:
		return []int64{v}, nil
	case []any:
		n := make([]int64, len(v))
		for i, e := range v {
			x, ok := e.(int64)
			if !ok {
				return nil, fmt.Errorf("throttle: unexpected reply %v from script", v)
			}
			n[i] = x
		}
		return n, nil
	}
	return nil, fmt.Errorf("throttle: unexpected reply %v from script", v)
}

func (c *goRedisConn) Del(ctx context.Context, keys ...string) error {
	return c.client.Del(c.on(ctx), keys...).Err()
}

func (c *goRedisConn) PTTL(ctx context.Context, key string) (int64, error) {
	// go-redis gives -1 and -2 as nanoseconds, other replies as durations.
	d, err := c.client.PTTL(c.on(ctx), key).Result()
	if err != nil || d < 0 {
		return int64(d), err
	}
	return millis(d), nil
}

// BLPop waits in BLPOPs no longer than the client's ReadTimeout allows.
func (c *goRedisConn) BLPop(ctx context.Context, key string, d time.Duration) (bool, error) {
	for end := time.Now().Add(d); ; {
		w := d
		if c.blockMax > 0 {
			w = min(w, c.blockMax)
		}
		woken, err := c.blpop(ctx, key, w)
		if woken || err != nil {
			return woken, err
		}
		if d = time.Until(end); d < time.Millisecond {
			return false, nil
		}
	}
}

// blpop runs one BLPOP on key, with a timeout of d in Redis.
func (c *goRedisConn) blpop(ctx context.Context, key string, d time.Duration) (bool, error) {
	ctx = c.on(ctx)
	if c.blockMax >= 0 && !c.wholeSeconds.Load() {
		secs := strconv.FormatFloat(float64(millis(ceilMillis(d)))/1000, 'f', 3, 64)
		err := c.client.Do(ctx, "blpop", key, secs).Err()
		if err == nil || !strings.Contains(err.Error(), "timeout is not an integer") {
			return popped(err)
		}
		c.wholeSeconds.Store(true) // Redis 5
	}
	// BLPop sets go-redis's read timeout from its own timeout.
	return popped(c.client.BLPop(ctx, max(ceilMillis(d).Truncate(time.Second), time.Second), key).Err())
}

// popped is the reply of a BLPOP that ended with err: a timeout is no error.
func popped(err error) (bool, error) {
	if errors.Is(err, redis.Nil) {
		return false, nil
	}
	return err == nil, err
}
