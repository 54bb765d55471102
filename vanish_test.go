package throttle

import (
	"context"
	"fmt"
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
// examples use it) does. These tests run a copy of the window script with a
// DEL of the key injected where an expiry could strike, and check that the
// start is still recorded, with an expiry.

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

func TestWindowScriptSurvivesKeyExpiringMidScript(t *testing.T) {
	const anchor = "if redis.call('HSET', key, unpack(fields)) > 0 or into ~= l then"
	for _, bucket := range []string{"the newest bucket", "a new bucket"} {
		t.Run(bucket, func(t *testing.T) {
			mr, c, now := stoppedMiniredis(t)
			ctx := context.Background()
			s := NewRedisStore(c, WithKeyPrefix(""))
			req := Request{Interval: time.Second, Limit: 100}
			res, err := s.Take(ctx, "k", req)
			require.NoError(t, err)
			require.True(t, res.OK)
			if bucket == "a new bucket" {
				mr.SetTime(now.Add(100 * time.Millisecond))
			}
			k := s.name("k", windowSuffix)
			script := redis.NewScript(inject(t, bucketSource+windowSource, anchor, "redis.call('DEL', key)"))
			v, err := script.Run(ctx, c, []string{k}, "t", micros(req.Interval), req.Limit, 0).Int64Slice()
			require.NoError(t, err)
			require.Len(t, v, 4)
			assert.EqualValues(t, 1, v[0], "admitted")
			assert.True(t, mr.Exists(k), "the window after the script")
			assert.Positive(t, mr.TTL(k), "the window expires")
			// What the script left is a window: the next Take decides.
			res, err = s.Take(ctx, "k", req)
			require.NoError(t, err, "Take after the window vanished mid-script")
			assert.True(t, res.OK, "Take after the window vanished mid-script")
		})
	}
}

// Data that is not the window's is an error, not a decision.
func TestWindowScriptRejectsForeignData(t *testing.T) {
	mr := miniredis.RunT(t)
	c := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	t.Cleanup(func() { _ = c.Close() })
	ctx := context.Background()
	s := NewRedisStore(c)
	req := Request{Interval: time.Minute, Limit: 100}
	require.NoError(t, c.RPush(ctx, s.name("list", windowSuffix), "x").Err())
	_, err := s.Take(ctx, "list", req)
	assert.ErrorContains(t, err, "WRONGTYPE", "Take over a list")
	require.NoError(t, c.HSet(ctx, s.name("hash", windowSuffix), "c", "garbage").Err())
	_, err = s.Take(ctx, "hash", req)
	assert.Error(t, err, "Take over a hash that is not a window")
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
