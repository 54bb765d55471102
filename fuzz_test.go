package throttle

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// FuzzKey checks that any non-empty key maps to exactly the prefixed Redis
// key and is limited on its own.
func FuzzKey(f *testing.F) {
	for _, k := range []string{"a", "{tag}", "a\r\nb", "\x00", strings.Repeat("k", 1000), "throttle:x", "ключ"} {
		f.Add(k)
	}
	mr := miniredis.NewMiniRedis()
	require.NoError(f, mr.Start())
	f.Cleanup(mr.Close)
	c := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	f.Cleanup(func() { _ = c.Close() })
	s := NewRedisStore(c, WithKeyPrefix("fz:"))
	f.Fuzz(func(t *testing.T, key string) {
		th, err := New(key, time.Hour, WithStore(s), WithDenyCache(false))
		if key == "" {
			require.Error(t, err, "New with an empty key")
			return
		}
		require.NoError(t, err, "New(%q)", key)
		mr.FlushAll()
		ctx := context.Background()
		d, err := th.Allow(ctx)
		require.NoError(t, err)
		assert.True(t, d.Allowed, "first Allow of %q", key)
		assert.Equal(t, []string{s.name(key, "")}, mr.Keys(), "Redis keys after Allow(%q)", key)
		d, err = th.Allow(ctx)
		require.NoError(t, err)
		assert.False(t, d.Allowed, "second Allow of %q", key)
		ttl := mr.TTL(s.name(key, ""))
		assert.Positive(t, ttl, "TTL of %q", key)
		assert.LessOrEqual(t, ttl, time.Hour, "TTL of %q", key)

		// Every key of the throttle has one non-empty hash tag, so a
		// script over them works on Redis Cluster.
		names := append(s.slots(key, maxSlots), s.name(key, holdSuffix), s.name(key, windowSuffix))
		tag := hashTag(names[0])
		assert.NotEmpty(t, tag, "hash tag of %q", names[0])
		for _, n := range names {
			assert.Equal(t, tag, hashTag(n), "hash tag of %q", n)
		}
	})
}

// hashTag returns what Redis Cluster hashes of a key name: the bytes
// between its first '{' and the next '}', or "" when that is empty or
// missing (then Redis hashes the whole name).
func hashTag(name string) string {
	i := strings.IndexByte(name, '{')
	if i < 0 {
		return ""
	}
	j := strings.IndexByte(name[i+1:], '}')
	if j <= 0 {
		return ""
	}
	return name[i+1 : i+1+j]
}

// FuzzOptions checks that any combination of settings is either rejected
// by New with a throttle error, or gives a throttle that decides.
func FuzzOptions(f *testing.F) {
	f.Add(int64(time.Second), 1, int64(0), int64(0))
	f.Add(int64(1), 0, int64(-1), int64(-1))
	f.Add(int64(time.Millisecond), MaxLimit, int64(MaxInterval), int64(time.Hour))
	f.Add(int64(MaxInterval)+1, -5, int64(1)<<62, int64(1))
	f.Fuzz(func(t *testing.T, interval int64, limit int, wait, timeout int64) {
		opts := []Option{WithLimit(limit), WithWait(time.Duration(wait)), WithTimeout(time.Duration(timeout))}
		th, err := New("k", time.Duration(interval), opts...)
		if err != nil {
			assert.True(t, strings.HasPrefix(err.Error(), "throttle: "), "error %q", err)
			assert.Panics(t, func() { Wrap("k", time.Duration(interval), func() int { return 1 }, opts...) })
			return
		}
		d, err := th.Allow(context.Background())
		require.NoError(t, err)
		assert.True(t, d.Allowed, "first Allow with interval %d, limit %d", interval, limit)
	})
}
