package throttle

import (
	"cmp"
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
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
		if got > sent+kept {
			continue // the reply came too late: a process spends none
		}
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
		total := 0 // the first seed of three that over-admits is enough
		for seed := uint64(0); seed < 3 && total == 0; seed++ {
			v, _, _ := permitModel(t, seed, d, 20*d)
			total += v
		}
		assert.Positive(t, total, "windows over the limit when permits outlive their validity")
	})
	t.Run("grant without the validity", func(t *testing.T) {
		total := 0
		for seed := uint64(0); seed < 3 && total == 0; seed++ {
			v, _, _ := permitModel(t, seed, time.Microsecond, d)
			total += v
		}
		assert.Positive(t, total, "windows over the limit when the store counts a batch at its request")
	})
}

// opLog is a go-redis hook that counts the window script's calls by op
// (a NOSCRIPT reply, which go-redis follows with EVAL, does not count).
type opLog struct {
	mu  sync.Mutex
	ops map[string]int
}

func (h *opLog) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h *opLog) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		err := next(ctx, cmd)
		args := cmd.Args()
		n := strings.ToLower(cmd.Name())
		if (n == "evalsha" || n == "eval") && len(args) > 4 && (err == nil || !strings.HasPrefix(err.Error(), "NOSCRIPT")) {
			h.mu.Lock()
			if h.ops == nil {
				h.ops = map[string]int{}
			}
			h.ops[fmt.Sprint(args[4])]++
			h.mu.Unlock()
		}
		return err
	}
}

func (h *opLog) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

func (h *opLog) count(op string) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.ops[op]
}

// TestPermitsAcrossThrottles runs four throttles (as four processes would)
// of eight goroutines each on one key of 2000 per 100 ms on redis-server,
// calling Allow as fast as they can. Every admitted call started between
// its Allow's beginning and end, so N+1 admissions prove a violation only
// when they all began and ended within one interval: there are none. The
// batches take far fewer script calls than admissions.
func TestPermitsAcrossThrottles(t *testing.T) {
	c := redistest.Start(t).Client(t)
	var ops opLog
	c.AddHook(&ops)
	const limit, procs, goroutines = 2000, 4, 8
	interval := 100 * time.Millisecond
	var local atomic.Int64
	observer := func(ev Event) {
		if ev.Permit {
			local.Add(1)
		}
	}
	type span struct{ lo, hi time.Duration }
	var mu sync.Mutex
	var starts []span
	epoch := time.Now()
	end := epoch.Add(6 * interval)
	var wg sync.WaitGroup
	for range procs {
		th, err := New("hot", interval, WithLimit(limit), WithStore(NewRedisStore(c)), WithObserver(observer),
			WithTimeout(5*time.Second)) // not a test of timeouts: the machine may be busy
		require.NoError(t, err)
		for range goroutines {
			wg.Go(func() {
				var mine []span
				for time.Now().Before(end) {
					b := time.Since(epoch)
					d, err := th.Allow(context.Background())
					if err != nil {
						t.Errorf("Allow: %v", err)
						return
					}
					if d.Allowed {
						mine = append(mine, span{b, time.Since(epoch)})
					}
				}
				mu.Lock()
				starts = append(starts, mine...)
				mu.Unlock()
			})
		}
	}
	wg.Wait()
	slices.SortFunc(starts, func(a, b span) int { return cmp.Compare(a.lo, b.lo) })
	violations := 0
	for i, first := range starts {
		n := 0
		for _, st := range starts[i:] {
			if st.lo >= first.lo+interval {
				break
			}
			if st.hi < first.lo+interval {
				n++
			}
		}
		if n > limit {
			violations++
		}
	}
	calls := ops.count("t") + ops.count("p")
	t.Logf("%d admitted (%.0f%% of %d intervals' limit), %d from local permits, %d script calls (%d batches)",
		len(starts), 100*float64(len(starts))/float64(6*limit), 6, local.Load(), calls, ops.count("p"))
	assert.Zero(t, violations, "windows provably over the limit")
	assert.Greater(t, len(starts), 2*limit, "admitted over six intervals")
	assert.Positive(t, ops.count("p"), "batches asked for")
	assert.Less(t, calls, len(starts)/4, "script calls for %d admissions", len(starts))
}

// TestPermitsQuietCallerAsksOne checks that a caller whose demand is below
// one call per validity never asks for a batch: its decisions are ordinary
// and waste nothing.
func TestPermitsQuietCallerAsksOne(t *testing.T) {
	mr := miniredis.RunT(t)
	c := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	t.Cleanup(func() { _ = c.Close() })
	var ops opLog
	c.AddHook(&ops)
	interval := 640 * time.Millisecond // validity 10 ms
	th, err := New("quiet", interval, WithLimit(1000), WithStore(NewRedisStore(c)))
	require.NoError(t, err)
	for i := range 5 {
		d, err := th.Allow(context.Background())
		require.NoError(t, err)
		require.True(t, d.Allowed, "call %d", i)
		time.Sleep(30 * time.Millisecond)
	}
	assert.Equal(t, 5, ops.count("t"), "ordinary decisions")
	assert.Zero(t, ops.count("p"), "batches")
}

// TestPermitsHoldStopsSpending checks that Hold stops this process's
// permits at once, and another process's by the end of their validity:
// no call of the other throttle that began later than that is admitted.
func TestPermitsHoldStopsSpending(t *testing.T) {
	c := redistest.Start(t).Client(t)
	interval := 640 * time.Millisecond // validity 10 ms
	validity, _ := permitValidity(interval)
	var local atomic.Int64
	opts := []Option{WithLimit(1_000_000), WithStore(NewRedisStore(c)), WithTimeout(5 * time.Second), WithObserver(func(ev Event) {
		if ev.Permit {
			local.Add(1)
		}
	})}
	a, err := New("held", interval, opts...)
	require.NoError(t, err)
	b, err := New("held", interval, opts...)
	require.NoError(t, err)
	ctx := context.Background()
	// Both take batches.
	for range 2000 {
		for _, th := range []*Throttle{a, b} {
			d, err := th.Allow(ctx)
			require.NoError(t, err)
			require.True(t, d.Allowed)
		}
	}
	require.Positive(t, local.Load(), "calls answered by permits")
	stop := make(chan struct{})
	var lastBegin atomic.Int64 // of b's admitted calls, ns since epoch
	epoch := time.Now()
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			begin := time.Since(epoch)
			if d, err := b.Allow(ctx); err == nil && d.Allowed {
				lastBegin.Store(int64(begin))
			}
		}
	})
	time.Sleep(20 * time.Millisecond)
	require.NoError(t, a.Hold(ctx, time.Minute))
	held := time.Since(epoch)
	d, err := a.Allow(ctx)
	require.NoError(t, err)
	assert.False(t, d.Allowed, "Allow of the holder right after its Hold")
	time.Sleep(5 * validity)
	close(stop)
	wg.Wait()
	assert.Less(t, time.Duration(lastBegin.Load()), held+validity, "the other throttle's last admitted call began after the hold plus the validity")
}

// TestPermitBatchOne turns leased permits off: every decision is ordinary.
func TestPermitBatchOne(t *testing.T) {
	mr := miniredis.RunT(t)
	c := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	t.Cleanup(func() { _ = c.Close() })
	var ops opLog
	c.AddHook(&ops)
	th, err := New("off", time.Second, WithLimit(1000), WithStore(NewRedisStore(c)), WithPermitBatch(1))
	require.NoError(t, err)
	for range 300 {
		_, err := th.Allow(context.Background())
		require.NoError(t, err)
	}
	assert.Equal(t, 300, ops.count("t"), "ordinary decisions")
	assert.Zero(t, ops.count("p"), "batches")
}

// TestPermitsKeyed checks that each key of a Keyed has its own permits:
// batches on a hot key, none on a quiet one, and the limit of each.
func TestPermitsKeyed(t *testing.T) {
	c := redistest.Start(t).Client(t)
	var ops opLog
	c.AddHook(&ops)
	// An interval of a minute: the loop ends well within it, so each key
	// admits at most its limit, and the validity (a 64th of it) leaves
	// little to waste.
	k, err := NewKeyed(time.Minute, WithLimit(500), WithStore(NewRedisStore(c)), WithTimeout(5*time.Second))
	require.NoError(t, err)
	ctx := context.Background()
	admitted := map[string]int{}
	for range 2000 {
		for _, key := range []string{"a", "b"} {
			d, err := k.Allow(ctx, key)
			require.NoError(t, err)
			if d.Allowed {
				admitted[key]++
			}
		}
	}
	for _, key := range []string{"a", "b"} {
		assert.LessOrEqual(t, admitted[key], 500, "admitted of key %s within its interval", key)
		// Permits not spent within their validity are lost, never late.
		assert.GreaterOrEqual(t, admitted[key], 400, "admitted of key %s within its interval", key)
	}
	assert.Positive(t, ops.count("p"), "batches")
	assert.Less(t, ops.count("p")+ops.count("t"), 200, "script calls for 1000 admissions")
}

// gateStore is a Store whose answers to batch requests wait for open to
// close, once they are decided.
type gateStore struct {
	*RedisStore
	open    chan struct{}
	decided chan struct{}
}

func (s gateStore) Take(ctx context.Context, key string, req Request) (Reservation, error) {
	res, err := s.RedisStore.Take(ctx, key, req)
	if req.Permits > 1 {
		close(s.decided)
		<-s.open
	}
	return res, err
}

// TestPermitsHoldStopsARefillInFlight holds a key while the answer to a
// refill of its permits, granted before the hold, is on its way: the batch
// that comes back after the hold is not spent in this process.
func TestPermitsHoldStopsARefillInFlight(t *testing.T) {
	mr := miniredis.RunT(t)
	c := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	t.Cleanup(func() { _ = c.Close() })
	s := gateStore{NewRedisStore(c), make(chan struct{}), make(chan struct{})}
	th, err := New("gate", time.Second, WithLimit(1_000_000), WithStore(s), WithTimeout(5*time.Second))
	require.NoError(t, err)
	ctx := context.Background()
	d, err := th.Allow(ctx) // the first refill asks for one
	require.NoError(t, err)
	require.True(t, d.Allowed)
	refill := make(chan Decision, 1)
	go func() {
		// Calls close together, until one asks for a batch (a call long
		// after the last asks for one permit: an ordinary decision) and
		// waits at the gate.
		for {
			d, _ := th.Allow(ctx)
			select {
			case <-s.decided:
				refill <- d
				return
			default:
			}
		}
	}()
	select {
	case <-s.decided:
	case <-time.After(30 * time.Second):
		t.Fatal("no call asked for a batch of permits")
	}
	require.NoError(t, th.Hold(ctx, time.Minute))
	close(s.open)
	assert.True(t, (<-refill).Allowed, "the call whose batch was granted before the hold")
	for i := range 10 {
		d, err := th.Allow(ctx)
		require.NoError(t, err)
		assert.False(t, d.Allowed, "call %d after the hold", i)
	}
}

// TestPermitsOnCluster takes leased permits of keys on every master of a
// 3-master Redis Cluster through one Keyed: each key keeps its limit, and
// batches answer most calls.
func TestPermitsOnCluster(t *testing.T) {
	cl := redistest.StartCluster(t, 3) // skips without redis-cli, unless Redis is required
	c := cl.Client(t)
	var local atomic.Int64
	k, err := NewKeyed(time.Minute, WithLimit(500), WithStore(NewRedisStore(c)), WithTimeout(5*time.Second),
		WithObserver(func(ev Event) {
			if ev.Permit {
				local.Add(1)
			}
		}))
	require.NoError(t, err)
	ctx := context.Background()
	keys := clusterKeys(t, cl, "permits:", 3)
	admitted := map[string]int{}
	for range 1000 {
		for _, key := range keys {
			d, err := k.Allow(ctx, key)
			require.NoError(t, err)
			if d.Allowed {
				admitted[key]++
			}
		}
	}
	for _, key := range keys {
		assert.LessOrEqual(t, admitted[key], 500, "admitted of %q within its interval", key)
		assert.GreaterOrEqual(t, admitted[key], 400, "admitted of %q within its interval", key)
	}
	assert.Greater(t, local.Load(), int64(1000), "calls answered by leased permits")
}
