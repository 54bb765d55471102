package throttle

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strconv"
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

// TestWindowCancelOutOfOrder hands back bookings of a limit above 64 out of
// booking order, as a shared ctx that ends many waiters does: the newest
// first, then an older one. Only a booking that is exactly the newest may
// be handed back; any other cancel must leave the counts alone, or the
// window goes below its true count and admits more than the limit once the
// older bookings leave it. Every start (the calls admitted at once and the
// bookings not handed back) is checked against the exact sliding window.
func TestWindowCancelOutOfOrder(t *testing.T) {
	const limit = 100
	run := func(t *testing.T, s *RedisStore, interval time.Duration, elapsed func() time.Duration, sleepUntil func(time.Duration)) {
		ctx := context.Background()
		now := Request{Interval: interval, Limit: limit}
		wait := Request{Interval: interval, Limit: limit, MaxWait: 3 * interval}
		// Each start lies in [lo, hi]: the store decided between the
		// caller's asking and its answer.
		type span struct{ lo, hi time.Duration }
		var starts []span
		take := func(req Request) (Reservation, span) {
			b := elapsed()
			res, err := s.Take(ctx, "ooo", req)
			require.NoError(t, err)
			return res, span{b + res.Delay, elapsed() + res.Delay}
		}
		for i := range limit {
			res, sp := take(now)
			require.True(t, res.OK, "start %d", i)
			starts = append(starts, sp)
		}
		var booked []Reservation
		var at []span
		for i := range limit + 1 {
			res, sp := take(wait)
			require.True(t, res.OK, "booking %d", i)
			require.Positive(t, res.Delay, "booking %d", i)
			booked = append(booked, res)
			at = append(at, sp)
		}
		require.Greater(t, at[limit].lo, at[limit-1].hi+interval/2, "the last booking waits for the bookings before it to leave")
		// The newest first (handed back), then the one before it: no
		// longer the newest booking made, so it must not be handed back.
		require.NoError(t, s.Cancel(ctx, "ooo", wait, booked[limit]))
		require.NoError(t, s.Cancel(ctx, "ooo", wait, booked[limit-1]))
		for i := range limit - 1 {
			starts = append(starts, at[i]) // the bookings that were kept
		}
		starts = append(starts, at[limit-1]) // its cancel came too late
		// Once the bookings have left the window, take as many as it admits.
		sleepUntil(at[limit].hi + interval/50)
		for i := range 2 * limit {
			res, sp := take(now)
			if !res.OK {
				break
			}
			require.Less(t, i, limit+1, "admitted more than the limit at once")
			starts = append(starts, sp)
		}
		// Starts that surely lie in [lo_i, lo_i + interval) never number
		// more than the limit.
		for _, first := range starts {
			n := 0
			for _, st := range starts {
				if st.lo >= first.lo && st.hi < first.lo+interval {
					n++
				}
			}
			require.LessOrEqual(t, n, limit, "starts in the interval from %v", first.lo)
		}
	}
	t.Run("miniredis", func(t *testing.T) {
		mr, advance := fakeMiniredis(t)
		c := redis.NewClient(&redis.Options{Addr: mr.Addr()})
		t.Cleanup(func() { _ = c.Close() })
		var clock time.Duration
		run(t, NewRedisStore(c), time.Second, func() time.Duration { return clock },
			func(d time.Duration) { advance(d - clock); clock = d })
	})
	t.Run("redis-server", func(t *testing.T) {
		c := redistest.Start(t).Client(t)
		begin := time.Now()
		// The times are the caller's; the store decided between them, so
		// a violation here is off by at most the calls' round trips, far
		// below the interval.
		run(t, NewRedisStore(c), time.Second, func() time.Duration { return time.Since(begin) },
			func(d time.Duration) { time.Sleep(time.Until(begin.Add(d))) })
	})
}

// TestWindowCancelRunTwice replays the cancel of a booking, as go-redis
// does when a script's reply is lost: once another booking has been made,
// the replay must not hand that one back, nor take a start off its bucket.
// Late cancels (after a reset) change nothing either.
func TestWindowCancelRunTwice(t *testing.T) {
	mr, advance := fakeMiniredis(t)
	c := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	t.Cleanup(func() { _ = c.Close() })
	s := NewRedisStore(c)
	ctx := context.Background()
	req := Request{Interval: time.Second, Limit: 100, MaxWait: 2 * time.Second}
	for range 100 {
		res, err := s.Take(ctx, "twice", Request{Interval: req.Interval, Limit: req.Limit})
		require.NoError(t, err)
		require.True(t, res.OK)
	}
	cancel := func(res Reservation) int64 {
		v, err := s.run(ctx, windowScript, []string{s.name("twice", windowSuffix)}, "c", micros(req.Interval), req.Limit,
			res.Booking.At, strconv.FormatUint(res.Booking.Mark, 10))
		require.NoError(t, err)
		require.Len(t, v, 1)
		return v[0]
	}
	a, err := s.Take(ctx, "twice", req)
	require.NoError(t, err)
	require.Positive(t, a.Delay)
	assert.EqualValues(t, 1, cancel(a), "cancel of the newest booking")
	assert.EqualValues(t, 0, cancel(a), "the same cancel run again")
	b, err := s.Take(ctx, "twice", req)
	require.NoError(t, err)
	require.Equal(t, a.Booking.At, b.Booking.At, "the next booking takes the bucket back")
	assert.EqualValues(t, 0, cancel(a), "a replayed cancel after the next booking")
	advance(time.Millisecond)
	assert.EqualValues(t, 1, cancel(b), "cancel of the newest booking")
	b2, err := s.Take(ctx, "twice", req)
	require.NoError(t, err)
	require.NoError(t, s.Reset(ctx, "twice", req))
	assert.EqualValues(t, 0, cancel(b2), "a cancel after Reset")
}

// TestWindowRingRefusalRetryAfter books a limit above 64 during a hold
// that ends further ahead than the window's ring can hold a booking: the
// refusal's RetryAfter is exactly when the ring holds it, refused 1 µs
// before and booked at it (a RetryAfter later than that would make the
// deny cache refuse what the store admits). The hold ends off a bucket's
// edge, where the ring's time and the start's differ.
func TestWindowRingRefusalRetryAfter(t *testing.T) {
	mr, advance := fakeMiniredis(t)
	c := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	t.Cleanup(func() { _ = c.Close() })
	s := NewRedisStore(c)
	ctx := context.Background()
	req := Request{Interval: time.Second, Limit: 100, MaxWait: 10 * time.Second}
	require.NoError(t, s.Hold(ctx, "ring", req, 5*time.Second+3*time.Millisecond))
	res, err := s.Take(ctx, "ring", req)
	require.NoError(t, err)
	require.False(t, res.OK, "a booking beyond the ring")
	require.Positive(t, res.RetryAfter, "RetryAfter of the refused booking")
	advance(res.RetryAfter - time.Microsecond)
	again, err := s.Take(ctx, "ring", req)
	require.NoError(t, err)
	require.False(t, again.OK, "1 µs before the RetryAfter")
	advance(time.Microsecond)
	again, err = s.Take(ctx, "ring", req)
	require.NoError(t, err)
	assert.True(t, again.OK, "at the RetryAfter")
}
