package rueidisthrottle

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/redis/rueidis"
)

// conn is the throttle.RedisConn of a rueidis client. Every command is
// built afresh for each call: rueidis recycles a built command once Do
// returns, so none is kept or sent twice (the EVAL fallback builds its
// own).
type conn struct {
	client       rueidis.Client
	wholeSeconds atomic.Bool // the server takes BLPOP timeouts in whole seconds (Redis 5)
}

func (c *conn) SetNX(ctx context.Context, key string, ttl time.Duration) (bool, error) {
	cmd := c.client.B().Set().Key(key).Value("1").Nx().PxMilliseconds(int64(ttl / time.Millisecond)).Build()
	err := c.client.Do(ctx, cmd).Error()
	if err == nil {
		return true, nil
	}
	if rueidis.IsRedisNil(err) {
		return false, nil // not set: a decision, not an error
	}
	return false, err
}

func (c *conn) Eval(ctx context.Context, hash, src string, keys []string, args ...any) ([]int64, error) {
	argv, err := strs(args)
	if err != nil {
		return nil, err
	}
	b := c.client.B()
	res := c.client.Do(ctx, b.Evalsha().Sha1(hash).Numkeys(int64(len(keys))).Key(keys...).Arg(argv...).Build())
	if err := res.Error(); err != nil && strings.HasPrefix(err.Error(), "NOSCRIPT ") {
		res = c.client.Do(ctx, b.Eval().Script(src).Numkeys(int64(len(keys))).Key(keys...).Arg(argv...).Build())
	}
	m, err := res.ToMessage()
	if err != nil {
		if rueidis.IsRedisNil(err) {
			return nil, nil
		}
		return nil, err
	}
	return int64s(m)
}

// strs returns the script arguments args as strings.
func strs(args []any) ([]string, error) {
	s := make([]string, len(args))
	for i, a := range args {
		switch a := a.(type) {
		case string:
			s[i] = a
		case int:
			s[i] = strconv.Itoa(a)
		case int64:
			s[i] = strconv.FormatInt(a, 10)
		default:
			return nil, fmt.Errorf("rueidisthrottle: script argument %v of type %T", a, a)
		}
	}
	return s, nil
}

// int64s returns the integers of a script's reply m: one integer, or an
// array of integers.
func int64s(m rueidis.RedisMessage) ([]int64, error) {
	if m.IsInt64() {
		n, err := m.AsInt64()
		return []int64{n}, err
	}
	if !m.IsArray() {
		return nil, fmt.Errorf("rueidisthrottle: unexpected reply %s from script", m.String())
	}
	a, err := m.ToArray()
	if err != nil {
		return nil, err
	}
	n := make([]int64, len(a))
	for i := range a {
		if !a[i].IsInt64() {
			return nil, fmt.Errorf("rueidisthrottle: unexpected reply %s from script", m.String())
		}
		n[i], _ = a[i].AsInt64()
	}
	return n, nil
}

func (c *conn) Del(ctx context.Context, keys ...string) error {
	return c.client.Do(ctx, c.client.B().Del().Key(keys...).Build()).Error()
}

func (c *conn) PTTL(ctx context.Context, key string) (int64, error) {
	return c.client.Do(ctx, c.client.B().Pttl().Key(key).Build()).AsInt64()
}

// BLPop runs one BLPOP, which rueidis sends on a connection of its pool of
// dedicated connections for blocking commands, so that it holds up no other
// command. A ctx without a deadline that is cancelled ends it too (rueidis
// then runs it in pipelining mode, which watches ctx).
func (c *conn) BLPop(ctx context.Context, key string, d time.Duration) (bool, error) {
	ms := max(int64((d+time.Millisecond-1)/time.Millisecond), 1)
	if !c.wholeSeconds.Load() {
		err := c.client.Do(ctx, c.client.B().Blpop().Key(key).Timeout(float64(ms)/1000).Build()).Error()
		if err == nil || !strings.Contains(err.Error(), "timeout is not an integer") {
			return popped(err)
		}
		c.wholeSeconds.Store(true) // Redis 5
	}
	secs := (ms + 999) / 1000
	return popped(c.client.Do(ctx, c.client.B().Blpop().Key(key).Timeout(float64(secs)).Build()).Error())
}

// popped is the result of a BLPOP that ended with err: a timeout is no
// error.
func popped(err error) (bool, error) {
	if rueidis.IsRedisNil(err) {
		return false, nil
	}
	return err == nil, err
}
