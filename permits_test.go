package throttle

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dthrottle/throttle/internal/redistest"
)

// permitModel runs demand from several simulated processes against the
// leased permits of a RedisStore on miniredis with a fake clock, and
// returns the number of windows of one interval, each beginning at a spend,
// that hold more spends than the limit, the spends, and the span of the
// schedule. Processes ask for batches of random size in turn, faster than
// the limit allows, and spend every permit granted, each at a random time
// within kept of the request, as an adversary would. told is the validity
// the store is told; a correct process keeps at most told.
func permitModel(t *testing.T, seed uint64, told, kept time.Duration) (violations, spends int, span time.Duration) {
	mr, advance := fakeMiniredis(t)
	c := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	t.Cleanup(func() { _ = c.Close() })
	var now time.Duration
	rng := rand.New(rand.NewPCG(seed, 7))
	clock := func() time.Duration { return now }
	step := func() {
		d := time.Duration(rng.Int64N(int64(5 * time.Millisecond)))
		advance(d)
		now += d
	}
	return runPermitModel(t, NewRedisStore(c), rng, time.Second, 2000, clock, step, told, kept)
}

// runPermitModel is permitModel on store s, with the clock now (the
// store's, on the same scale) and step, which lets time pass between
// requests. A spend's time is taken from when its request was sent, as a
// process does; it is never before the reply.
func runPermitModel(t *testing.T, s *RedisStore, rng *rand.Rand, interval time.Duration, requests int,
	now func() time.Duration, step func(), told, kept time.Duration) (violations, spends int, span time.Duration) {
	ctx := context.Background()
	const limit = 100
	var at []time.Duration
	begin := now()
	for range requests {
		step()
		req := Request{Interval: interval, Limit: limit, Permits: 2 + rng.IntN(8), Validity: told}
		sent := now()
		res, err := s.Take(ctx, "model", req)
		require.NoError(t, err)
		got := now()
		if !res.OK {
			require.Positive(t, res.RetryAfter, "RetryAfter of a denied batch")
			continue
		}
		require.Positive(t, res.Permits, "a grant of permits says how many")
		require.LessOrEqual(t, res.Permits, req.Permits, "granted more than asked")
		for range res.Permits {
			spend := sent + kept // the last moment, or any time before it
			if rng.IntN(2) == 0 {
				spend = sent + time.Duration(rng.Int64N(int64(kept)+1))
			}
			at = append(at, max(spend, got))
		}
	}
	slices.Sort(at)
	for i := range at {
		n := 0
		for _, st := range at[i:] {
			if st >= at[i]+interval {
				break
			}
			n++
		}
		if n > limit {
			violations++
		}
	}
	return violations, len(at), now() - begin
}

// TestPermitsKeepTheLimit checks leased permits against the exact sliding
// window over the times they are spent, and that the check would catch the
// two ways batching can go wrong: spending a permit after its validity,
// and a store that counts a batch without its validity.
func TestPermitsKeepTheLimit(t *testing.T) {
	d := time.Second / permitShare
	for seed := range uint64(3) {
		t.Run(fmt.Sprintf("seed %d", seed), func(t *testing.T) {
			v, n, span := permitModel(t, seed, d, d)
			assert.Zero(t, v, "windows over the limit among %d spends", n)
			// The demand is several times the limit and every permit is
			// spent; the clock is fake, so the counts are the same on
			// every run.
			ideal := 100 * math.Ceil(float64(span)/float64(time.Second))
			t.Logf("%d spends in %v: %.1f%% of the limit", n, span, 100*float64(n)/ideal)
			assert.Greater(t, float64(n), 0.95*ideal, "spends in %v", span)
		})
	}
	t.Run("redis-server", func(t *testing.T) {
		// Times are the wall clock, which redis-server's TIME reads too.
		c := redistest.Start(t).Client(t)
		interval := 100 * time.Millisecond
		d := interval / permitShare
		now := func() time.Duration { return time.Duration(time.Now().UnixNano()) }
		rng := rand.New(rand.NewPCG(1, 2))
		step := func() {
			if rng.IntN(4) == 0 {
				time.Sleep(time.Duration(rng.Int64N(int64(time.Millisecond))))
			}
		}
		v, n, span := runPermitModel(t, NewRedisStore(c), rng, interval, 3000, now, step, d, d)
		t.Logf("%d spends in %v", n, span)
		assert.Zero(t, v, "windows over the limit among %d spends", n)
		assert.Greater(t, n, 200, "spends in %v", span)
	})
	t.Run("spent after the validity", func(t *testing.T) {
		total := 0
		for seed := range uint64(3) {
			v, _, _ := permitModel(t, seed, d, 20*d)
			total += v
		}
		assert.Positive(t, total, "windows over the limit when permits outlive their validity")
	})
	t.Run("grant without the validity", func(t *testing.T) {
		total := 0
		for seed := range uint64(3) {
			v, _, _ := permitModel(t, seed, time.Microsecond, d)
			total += v
		}
		assert.Positive(t, total, "windows over the limit when the store counts a batch at its request")
	})
}
