package throttle

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Redis stops its clock while a script runs, so a key never expires in the
// middle of one; miniredis in real time (ClockTTL, as the simulator and the
// examples use it) does. These tests run copies of the scripts with a DEL
// of the key injected at each point where an expiry could strike, and
// check that the start (or the hold) is still recorded, with an expiry.

// inject returns src with code inserted before the line anchor, which must
// occur exactly once.
func inject(t *testing.T, src, anchor, code string) string {
	t.Helper()
	require.Equal(t, 1, strings.Count(src, anchor), "anchor %q in the script", anchor)
	return strings.Replace(src, anchor, code+"\n"+anchor, 1)
}

// stoppedMiniredis returns a miniredis server whose clock stands at
// 2026-01-01 00:00 UTC, a client of it, and that time.
func stoppedMiniredis(t *testing.T) (*miniredis.Miniredis, *redis.Client, time.Time) {
	t.Helper()
	mr := miniredis.RunT(t)
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	mr.SetTime(now)
	c := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	t.Cleanup(func() { _ = c.Close() })
	return mr, c, now
}

func TestTakeScriptSurvivesKeyExpiringMidScript(t *testing.T) {
	const del = "redis.call('DEL', key)"
	points := map[string]string{
		"in the scan of expired starts": "  head = redis.call('LINDEX', key, string.format('%d', expired))",
		"before LLEN":                   "  local len = redis.call('LLEN', key)",
		"before the newest":             "    local v = redis.call('LINDEX', key, '-1')",
		"before the Nth newest":         "    local v = redis.call('LINDEX', key, string.format('%d', len - limit))",
		"before the push":               "if redis.call('RPUSH', key, entry) > expired and expired > 0 then",
		"before the expiry":             "if redis.call('PEXPIRE', key, ttl) == 0 then",
	}
	for name, anchor := range points {
		t.Run(name, func(t *testing.T) {
			mr, c, now := stoppedMiniredis(t)
			ctx := context.Background()
			us := func(d time.Duration) string { return strconv.FormatInt(now.Add(d).UnixMicro(), 10) }
			// Limit 2 per second: one start that left the window, two in it,
			// and one booked ahead, so that the script reaches every point.
			require.NoError(t, c.RPush(ctx, "k", us(-5*time.Second), us(-500*time.Millisecond), us(-400*time.Millisecond), us(300*time.Millisecond)).Err())
			require.NoError(t, c.PExpire(ctx, "k", time.Hour).Err())
			script := redis.NewScript(inject(t, takeSource, anchor, del))
			v, err := script.Run(ctx, c, []string{"k"}, micros(time.Second), 2, micros(10*time.Second)).Int64Slice()
			require.NoError(t, err)
			require.Len(t, v, 4)
			assert.EqualValues(t, 1, v[0], "admitted or booked")
			list, err := c.LRange(ctx, "k", 0, -1).Result()
			require.NoError(t, err)
			assert.Contains(t, list, strconv.FormatInt(v[3], 10), "the new start is in the list %v", list)
			assert.Positive(t, mr.TTL("k"), "the list expires")
		})
	}
}

// A start that is not a number is an error, not an expired key.
func TestTakeScriptRejectsAForeignList(t *testing.T) {
	mr := miniredis.RunT(t)
	c := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	t.Cleanup(func() { _ = c.Close() })
	ctx := context.Background()
	now := time.Now()
	s := NewRedisStore(c, WithKeyPrefix(""))
	require.NoError(t, c.RPush(ctx, s.name("k", listSuffix), strconv.FormatInt(now.Add(-30*time.Second).UnixMicro(), 10), "garbage").Err())
	_, err := s.Take(ctx, "k", Request{Interval: time.Minute, Limit: 100})
	assert.ErrorContains(t, err, "attempt to compare", "the script stops at the start that is not a number")
}

// A slot key without an expiry that is not a string is an error, not a
// throttle that never admits again; a string gets an expiry.
func TestSlotsScriptRejectsAForeignKey(t *testing.T) {
	mr := miniredis.RunT(t)
	c := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	t.Cleanup(func() { _ = c.Close() })
	ctx := context.Background()
	s := NewRedisStore(c)
	for _, limit := range []int{1, 3} {
		key := fmt.Sprint("list", limit)
		for _, name := range s.slots(key, limit) {
			require.NoError(t, c.RPush(ctx, name, "x").Err())
		}
		for _, wait := range []time.Duration{0, time.Hour} {
			_, err := s.Take(ctx, key, Request{Interval: time.Minute, Limit: limit, MaxWait: wait})
			assert.ErrorContains(t, err, "is not a throttle slot", "Take of limit %d, wait %v over lists", limit, wait)
		}
		assert.ErrorContains(t, s.Hold(ctx, key, Request{Interval: time.Minute, Limit: limit}, time.Second), "is not a throttle slot", "Hold of limit %d over lists", limit)

		key = fmt.Sprint("string", limit)
		for _, name := range s.slots(key, limit) {
			require.NoError(t, c.Set(ctx, name, "x", 0).Err())
		}
		res, err := s.Take(ctx, key, Request{Interval: time.Minute, Limit: limit})
		require.NoError(t, err, "Take of limit %d over strings without expiry", limit)
		assert.False(t, res.OK, "Take of limit %d over strings without expiry, counted as started now", limit)
		assert.Equal(t, time.Minute, res.RetryAfter, "RetryAfter of limit %d over strings without expiry", limit)
		for _, name := range s.slots(key, limit) {
			assert.Equal(t, time.Minute, mr.TTL(name), "TTL of %q after the Take", name)
		}
	}
}

func TestHoldScriptSurvivesKeyExpiringMidScript(t *testing.T) {
	const limit = 1500 // more than one push of 1000
	for name, code := range map[string]string{
		"before the first push": "if i == 1 and vanish then vanish = false; redis.call('DEL', key) end",
		"between pushes":        "if i == 1001 and vanish then vanish = false; redis.call('DEL', key) end",
		"before the expiry":     "",
	} {
		t.Run(name, func(t *testing.T) {
			mr, c, now := stoppedMiniredis(t)
			ctx := context.Background()
			s := NewRedisStore(c, WithKeyPrefix(""))
			k := s.name("k", listSuffix)
			starts := make([]any, 100)
			for i := range starts {
				starts[i] = strconv.FormatInt(now.Add(-time.Duration(100-i)*time.Millisecond).UnixMicro(), 10)
			}
			require.NoError(t, c.RPush(ctx, k, starts...).Err())
			require.NoError(t, c.PExpire(ctx, k, time.Minute).Err())
			src := inject(t, blockSource, "local key = KEYS[1]", "local vanish = true")
			if code != "" {
				src = inject(t, src, "    if redis.call('RPUSH', key, unpack(vals, i, last)) ~= oldlen + last then", code)
			} else {
				src = inject(t, src, "if redis.call('PEXPIRE', key, string.format('%d', ttl)) == 0 then", "redis.call('DEL', key)")
			}
			require.NoError(t, redis.NewScript(src).Run(ctx, c, []string{k}, micros(time.Minute), limit, micros(30*time.Second)).Err())
			n, err := c.LLen(ctx, k).Result()
			require.NoError(t, err)
			assert.GreaterOrEqual(t, n, int64(limit), "every mark of the hold is in the list")
			assert.Positive(t, mr.TTL(k), "the list expires")
			res, err := s.Take(ctx, "k", Request{Interval: time.Minute, Limit: limit})
			require.NoError(t, err)
			assert.False(t, res.OK, "a start during the hold")
			assert.InDelta(t, 30*time.Second, res.RetryAfter, float64(time.Millisecond), "retry-after: the hold")
		})
	}
}
