package throttle

import (
	"context"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dthrottle/throttle/internal/redistest"
)

// TestWindowKeepsTheLimitAndLosesAtMostABucket runs random schedules of
// Allow through the window of a limit above 64 (RedisStore on miniredis,
// fake clock) and checks every decision against the exact sliding window
// of the calls it admitted:
//   - an admitted call never makes N+1 starts in a window of one interval;
//   - a denied call always has N starts within one interval plus one
//     bucket (interval/160) before it: the window is late by at most one
//     bucket, 0.7% of the interval.
func TestWindowKeepsTheLimitAndLosesAtMostABucket(t *testing.T) {
	for _, limit := range []int{65, 300} {
		for seed := range uint64(2) {
			t.Run(fmt.Sprintf("limit %d seed %d", limit, seed), func(t *testing.T) {
				mr, advance := fakeMiniredis(t)
				c := redis.NewClient(&redis.Options{Addr: mr.Addr()})
				t.Cleanup(func() { _ = c.Close() })
				s := NewRedisStore(c)
				req := Request{Interval: time.Second, Limit: limit}
				bucket := req.Interval / 160
				rng := rand.New(rand.NewPCG(seed, uint64(limit)))
				// About three calls per admission.
				mean := req.Interval / time.Duration(3*limit)
				var now time.Duration
				var starts []time.Duration
				admitted, denied := 0, 0
				within := func(span time.Duration) int {
					n := 0
					for _, st := range starts {
						if st > now-span {
							n++
						}
					}
					return n
				}
				for i := range 3000 {
					step := time.Duration(rng.Int64N(int64(2*mean))) / time.Microsecond * time.Microsecond
					if rng.IntN(200) == 0 {
						step = time.Duration(rng.Int64N(int64(2 * req.Interval)))
					}
					advance(step)
					now += step
					res, err := s.Take(context.Background(), "window", req)
					require.NoError(t, err, "Take %d", i)
					if res.OK {
						require.Less(t, within(req.Interval), limit, "Take %d at %v admitted with %d starts in the interval before", i, now, within(req.Interval))
						starts = append(starts, now)
						admitted++
					} else {
						require.GreaterOrEqual(t, within(req.Interval+bucket), limit, "Take %d at %v denied with %d starts in the interval and a bucket before", i, now, within(req.Interval+bucket))
						assert.Positive(t, res.RetryAfter, "Take %d: RetryAfter of a denial", i)
						denied++
					}
				}
				assert.Greater(t, admitted, 2*limit, "admissions in the schedule")
				assert.Greater(t, denied, limit, "denials in the schedule")
				n, err := c.HLen(context.Background(), s.name("window", windowSuffix)).Result()
				require.NoError(t, err)
				assert.LessOrEqual(t, n, int64(643), "fields of the window after %d admissions", admitted)
			})
		}
	}
}

// TestWindowMemoryIsBounded drives a limit of a million per second on a
// redis-server for several intervals and checks the key's size: about
// 640 fields and under 64 KiB, whatever the limit.
func TestWindowMemoryIsBounded(t *testing.T) {
	if testing.Short() {
		t.Skip("skipped in -short mode")
	}
	c := redistest.Start(t).Client(t)
	s := NewRedisStore(c)
	ctx := context.Background()
	req := Request{Interval: 100 * time.Millisecond, Limit: 1_000_000}
	end := time.Now().Add(5 * req.Interval)
	n := 0
	for time.Now().Before(end) {
		res, err := s.Take(ctx, "big", req)
		require.NoError(t, err)
		require.True(t, res.OK, "Take %d of a million per interval", n+1)
		n++
	}
	key := s.name("big", windowSuffix)
	fields, err := c.HLen(ctx, key).Result()
	require.NoError(t, err)
	bytes, err := c.MemoryUsage(ctx, key).Result()
	require.NoError(t, err)
	t.Logf("%d admissions over 5 intervals: %d fields, %d bytes", n, fields, bytes)
	assert.LessOrEqual(t, fields, int64(643), "fields of the window")
	assert.Less(t, bytes, int64(64<<10), "MEMORY USAGE of the window")
}

// TestWindowBookings checks waiting calls on a limit above 64: they book
// in order, each at the earliest time the window admits, they keep the
// limit, and a cancel of the newest hands its start back.
func TestWindowBookings(t *testing.T) {
	mr, advance := fakeMiniredis(t)
	c := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	t.Cleanup(func() { _ = c.Close() })
	s := NewRedisStore(c)
	ctx := context.Background()
	req := Request{Interval: time.Second, Limit: 100, MaxWait: 10 * time.Second}
	// One call per millisecond; starts are times since the first call.
	var starts []time.Duration
	for i := range 350 {
		res, err := s.Take(ctx, "w", req)
		require.NoError(t, err)
		require.True(t, res.OK, "booking %d", i)
		starts = append(starts, time.Duration(i)*time.Millisecond+res.Delay)
		advance(time.Millisecond)
	}
	// No window of one interval holds more than 100 of the booked starts.
	for i := range starts {
		n := 0
		for _, st := range starts {
			if st >= starts[i] && st < starts[i]+req.Interval {
				n++
			}
		}
		assert.LessOrEqual(t, n, 100, "starts in the interval from booking %d", i)
	}
	// The 101st starts when the first leaves the window, one interval
	// after it, at most one bucket late; the 201st one more interval
	// later.
	bucket := req.Interval / 160
	assert.GreaterOrEqual(t, starts[100], req.Interval, "start of booking 101")
	assert.LessOrEqual(t, starts[100], req.Interval+bucket, "start of booking 101")
	assert.GreaterOrEqual(t, starts[200], starts[100]+req.Interval, "start of booking 201")
	assert.LessOrEqual(t, starts[200], starts[100]+req.Interval+2*bucket, "start of booking 201")
	last, err := s.Take(ctx, "w", req)
	require.NoError(t, err)
	require.True(t, last.OK)
	require.NoError(t, s.Cancel(ctx, "w", req, last))
	again, err := s.Take(ctx, "w", req)
	require.NoError(t, err)
	require.True(t, again.OK)
	assert.Equal(t, last.Delay, again.Delay, "booking after cancelling the newest takes its time")
}
