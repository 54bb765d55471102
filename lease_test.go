package throttle

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dthrottle/throttle/internal/redistest"
)

// leaseHarness is one Leaser under test.
type leaseHarness struct {
	name    string
	store   Leaser
	fake    bool                   // the clock moves only with advance
	advance func(d time.Duration)  // moves the fake clock, or sleeps
	client  redis.UniversalClient  // nil for MemoryStore
	redis   *RedisStore            // nil for MemoryStore
	del     func(key string) error // deletes the lease set of key (Redis only)
}

// leaseHarnesses returns MemoryStore and RedisStore on miniredis with fake
// clocks, and RedisStore on a real redis-server and a 3-master Cluster.
func leaseHarnesses(t *testing.T) []leaseHarness {
	mem, memAdvance := fakeMemory()
	mr, mrAdvance := fakeMiniredis(t)
	mc := redis.NewClient(&redis.Options{Addr: mr.Addr(), ContextTimeoutEnabled: true})
	t.Cleanup(func() { _ = mc.Close() })
	hs := []leaseHarness{
		{name: "memory", store: mem, fake: true, advance: memAdvance},
		{name: "miniredis", store: NewRedisStore(mc), fake: true, advance: mrAdvance, client: mc},
	}
	if redistest.Available() || requireRedis() {
		rc := redistest.Start(t).Client(t)
		hs = append(hs, leaseHarness{name: "redis", store: NewRedisStore(rc, WithKeyPrefix("lease:")), advance: sleep, client: rc})
		cc := redistest.StartCluster(t, 3).Client(t)
		hs = append(hs, leaseHarness{name: "cluster", store: NewRedisStore(cc, WithKeyPrefix("lease:")), advance: sleep, client: cc})
	} else {
		t.Log("redis-server not found: the lease contract runs on MemoryStore and miniredis only")
	}
	for i := range hs {
		if rs, ok := hs[i].store.(*RedisStore); ok {
			hs[i].redis = rs
			c := hs[i].client
			hs[i].del = func(key string) error { return c.Del(context.Background(), rs.name(key, leasesSuffix)).Err() }
		}
	}
	return hs
}

// takeLeasesConcurrently starts n TakeLeases at once and returns the
// tokens admitted.
func takeLeasesConcurrently(t *testing.T, s Leaser, key string, req Request, n int) []string {
	t.Helper()
	var (
		wg      sync.WaitGroup
		mu      sync.Mutex
		tokens  []string
		errs    []error
		release = make(chan struct{})
	)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			token := fmt.Sprint("t", i)
			<-release
			res, err := s.TakeLease(context.Background(), key, req, token)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs = append(errs, err)
			} else if res.OK {
				tokens = append(tokens, token)
			}
		}()
	}
	close(release)
	wg.Wait()
	require.Empty(t, errs, "TakeLease errors")
	return tokens
}

func TestLeaseContract(t *testing.T) {
	ctx := context.Background()
	for _, h := range leaseHarnesses(t) {
		t.Run(h.name, func(t *testing.T) {
			key := func(t *testing.T) string { return "leasecontract/" + t.Name() }
			t.Run("cap/at most k of 40 concurrent", func(t *testing.T) {
				for _, k := range []int{1, 3} {
					req := Request{Concurrency: k, LeaseTTL: time.Minute}
					got := takeLeasesConcurrently(t, h.store, fmt.Sprint(key(t), k), req, 40)
					assert.Len(t, got, k, "40 concurrent TakeLeases with cap %d: admitted", k)
				}
			})
			t.Run("rate and cap/both hold under 40 concurrent", func(t *testing.T) {
				// Rate 2 per minute, cap 3: the rate binds.
				req := Request{Interval: time.Minute, Limit: 2, Concurrency: 3, LeaseTTL: time.Minute}
				assert.Len(t, takeLeasesConcurrently(t, h.store, key(t)+"/a", req, 40), 2, "rate 2, cap 3")
				// Rate 5 per minute, cap 2: the cap binds.
				req = Request{Interval: time.Minute, Limit: 5, Concurrency: 2, LeaseTTL: time.Minute}
				assert.Len(t, takeLeasesConcurrently(t, h.store, key(t)+"/b", req, 40), 2, "rate 5, cap 2")
			})
			t.Run("rate and cap/a refusal uses nothing of the other", func(t *testing.T) {
				k := key(t)
				req := Request{Interval: time.Minute, Limit: 2, Concurrency: 1, LeaseTTL: time.Minute}
				a, err := h.store.TakeLease(ctx, k, req, "a")
				require.NoError(t, err)
				require.True(t, a.OK, "first: got %+v", a)
				b, err := h.store.TakeLease(ctx, k, req, "b")
				require.NoError(t, err)
				assert.False(t, b.OK, "second with the lease held: got %+v", b)
				assert.True(t, b.Full, "second with the lease held: refused by the cap: got %+v", b)
				require.NoError(t, h.store.ReleaseLease(ctx, k, req, "a"))
				// The cap's refusal used no start: the second start is free.
				c, err := h.store.TakeLease(ctx, k, req, "c")
				require.NoError(t, err)
				assert.True(t, c.OK, "after release: got %+v, want the rate's second start", c)
				require.NoError(t, h.store.ReleaseLease(ctx, k, req, "c"))
				// Now the rate refuses, and keeps no lease.
				d, err := h.store.TakeLease(ctx, k, req, "d")
				require.NoError(t, err)
				assert.False(t, d.OK, "third start in a minute: got %+v", d)
				assert.False(t, d.Full, "third start: refused by the rate, not the cap: %+v", d)
				assert.Greater(t, d.RetryAfter, 50*time.Second, "rate retry-after")
				capOnly := Request{Concurrency: 1, LeaseTTL: time.Minute}
				e, err := h.store.TakeLease(ctx, k, capOnly, "e")
				require.NoError(t, err)
				assert.True(t, e.OK, "the lease is free after the rate's refusal: got %+v", e)
			})
			t.Run("release, renew and expiry", func(t *testing.T) {
				k := key(t)
				ttl := 300 * time.Millisecond
				if h.fake {
					ttl = 10 * time.Second
				}
				req := Request{Concurrency: 2, LeaseTTL: ttl}
				for _, tok := range []string{"a", "b"} {
					res, err := h.store.TakeLease(ctx, k, req, tok)
					require.NoError(t, err)
					require.True(t, res.OK, "lease %s: %+v", tok, res)
				}
				full, err := h.store.TakeLease(ctx, k, req, "c")
				require.NoError(t, err)
				require.True(t, full.Full, "third lease of 2: %+v", full)
				// A lease is held through the last millisecond of its TTL
				// on Redis, so it frees up to 1 ms more than the TTL after a
				// denial in the millisecond it was taken.
				assert.LessOrEqual(t, full.RetryAfter, ttl+time.Millisecond, "cap retry-after is the earliest expiry")
				require.NoError(t, h.store.ReleaseLease(ctx, k, req, "a"))
				require.NoError(t, h.store.ReleaseLease(ctx, k, req, "a"), "second release")
				res, err := h.store.TakeLease(ctx, k, req, "c")
				require.NoError(t, err)
				require.True(t, res.OK, "lease after a release: %+v", res)
				// b is renewed at 2/3 of its TTL; c is not, and expires.
				h.advance(ttl * 2 / 3)
				held, err := h.store.RenewLease(ctx, k, req, "b")
				require.NoError(t, err)
				assert.True(t, held, "renew b")
				h.advance(ttl / 2)
				held, err = h.store.RenewLease(ctx, k, req, "c")
				require.NoError(t, err)
				assert.False(t, held, "renew c after its TTL")
				held, err = h.store.RenewLease(ctx, k, req, "b")
				require.NoError(t, err)
				assert.True(t, held, "renew b again")
				res, err = h.store.TakeLease(ctx, k, req, "d")
				require.NoError(t, err)
				assert.True(t, res.OK, "lease after c expired: %+v", res)
				res, err = h.store.TakeLease(ctx, k, req, "e")
				require.NoError(t, err)
				assert.True(t, res.Full, "b and d held: %+v", res)
				held, err = h.store.RenewLease(ctx, k, req, "nobody")
				require.NoError(t, err)
				assert.False(t, held, "renew of an unknown token")
			})
			t.Run("booked start holds its lease", func(t *testing.T) {
				k := key(t)
				req := Request{Interval: time.Minute, Limit: 1, Concurrency: 2, LeaseTTL: time.Minute, MaxWait: 2 * time.Minute}
				a, err := h.store.TakeLease(ctx, k, req, "a")
				require.NoError(t, err)
				require.True(t, a.OK)
				b, err := h.store.TakeLease(ctx, k, req, "b")
				require.NoError(t, err)
				require.True(t, b.OK, "booking: %+v", b)
				assert.Greater(t, b.Delay, 50*time.Second, "booking delay")
				c, err := h.store.TakeLease(ctx, k, Request{Concurrency: 2, LeaseTTL: time.Minute}, "c")
				require.NoError(t, err)
				assert.True(t, c.Full, "the booking holds a lease: %+v", c)
				// The booking can be handed back as one made by Take.
				require.NoError(t, h.store.Cancel(ctx, k, req, b))
				require.NoError(t, h.store.ReleaseLease(ctx, k, req, "b"))
				d, err := h.store.TakeLease(ctx, k, req, "d")
				require.NoError(t, err)
				assert.True(t, d.OK, "booking after the cancel: %+v", d)
				assert.LessOrEqual(t, d.Delay, b.Delay+redisTick, "booking after the cancel")
			})
			t.Run("await wakes on release", func(t *testing.T) {
				k := key(t)
				req := Request{Concurrency: 1, LeaseTTL: time.Minute}
				waiter := req
				waiter.MaxWait = 20 * time.Second
				res, err := h.store.TakeLease(ctx, k, req, "a")
				require.NoError(t, err)
				require.True(t, res.OK)
				// A waiter: its TakeLease finds every lease held.
				res, err = h.store.TakeLease(ctx, k, waiter, "w")
				require.NoError(t, err)
				require.True(t, res.Full, "waiter's TakeLease with the lease held: %+v", res)
				woke := make(chan time.Duration, 1)
				go func() {
					begin := time.Now()
					_ = h.store.AwaitLease(ctx, k, req, 20*time.Second)
					woke <- time.Since(begin)
				}()
				time.Sleep(50 * time.Millisecond)
				require.NoError(t, h.store.ReleaseLease(ctx, k, req, "a"))
				select {
				case d := <-woke:
					t.Logf("woke after %v", d)
				case <-time.After(10 * time.Second):
					t.Errorf("AwaitLease not woken 10s after a release (its wait: 20s)")
				}
				// A wait that finds a wake-up left by a release (after the
				// waiter's TakeLease, before its wait) returns.
				res, err = h.store.TakeLease(ctx, k, req, "b")
				require.NoError(t, err)
				require.True(t, res.OK)
				res, err = h.store.TakeLease(ctx, k, waiter, "w2")
				require.NoError(t, err)
				require.True(t, res.Full, "waiter's TakeLease with the lease held: %+v", res)
				require.NoError(t, h.store.ReleaseLease(ctx, k, req, "b"))
				begin := time.Now()
				require.NoError(t, h.store.AwaitLease(ctx, k, req, 20*time.Second))
				assert.Less(t, time.Since(begin), 10*time.Second, "AwaitLease after a release")
			})
			t.Run("keys expire", func(t *testing.T) {
				if h.client == nil {
					t.Skip("no keys on " + h.name)
				}
				k := key(t)
				req := Request{Interval: 200 * time.Millisecond, Limit: 3, Concurrency: 2, LeaseTTL: 400 * time.Millisecond}
				for _, tok := range []string{"a", "b", "c"} {
					_, err := h.store.TakeLease(ctx, k, req, tok)
					require.NoError(t, err)
				}
				_, err := h.store.RenewLease(ctx, k, req, "a")
				require.NoError(t, err)
				require.NoError(t, h.store.ReleaseLease(ctx, k, req, "b"))
				names := append(h.redis.LeaseKeys(k), h.redis.Keys(k, req.Limit)...)
				for _, name := range names {
					ttl, err := h.client.PTTL(ctx, name).Result()
					require.NoError(t, err)
					assert.NotEqual(t, time.Duration(-1), ttl, "key %q has no TTL", name)
					assert.LessOrEqual(t, ttl, 2*time.Second, "TTL of %q", name)
				}
				h.advance(time.Second + 10*time.Millisecond)
				for _, name := range names {
					n, err := h.client.Exists(ctx, name).Result()
					require.NoError(t, err)
					assert.Zero(t, n, "key %q after every TTL", name)
				}
			})
			t.Run("foreign key is an error", func(t *testing.T) {
				if h.client == nil {
					t.Skip("no keys on " + h.name)
				}
				k := key(t)
				name := h.redis.LeaseKeys(k)[0]
				require.NoError(t, h.client.Set(ctx, name, "x", time.Minute).Err())
				_, err := h.store.TakeLease(ctx, k, Request{Concurrency: 1, LeaseTTL: time.Minute}, "a")
				assert.ErrorContains(t, err, "is not a lease set")
			})
		})
	}
}

// racyLeaser takes a lease with ZCARD, then ZADD: the non-atomic design
// that the concurrent check must reject. reads holds every TakeLease
// between its read and its write until all callers have read.
type racyLeaser struct {
	*RedisStore
	c     *redis.Client
	reads *sync.WaitGroup
}

func (s racyLeaser) TakeLease(ctx context.Context, key string, req Request, token string) (Reservation, error) {
	name := s.name(key, leasesSuffix)
	n, err := s.c.ZCard(ctx, name).Result()
	s.reads.Done()
	s.reads.Wait()
	if err != nil || n >= int64(req.Concurrency) {
		return Reservation{Full: true}, err
	}
	return Reservation{OK: true}, s.c.ZAdd(ctx, name, redis.Z{Score: 1, Member: token}).Err()
}

// TestLeaseAtomicityCheckCatchesRacyStore shows that the concurrent check
// of the lease contract fails for a store that reads and then writes.
func TestLeaseAtomicityCheckCatchesRacyStore(t *testing.T) {
	mr := miniredis.RunT(t)
	c := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	t.Cleanup(func() { _ = c.Close() })
	const n = 20
	var reads sync.WaitGroup
	reads.Add(n)
	s := racyLeaser{RedisStore: NewRedisStore(c), c: c, reads: &reads}
	got := takeLeasesConcurrently(t, s, "racy", Request{Concurrency: 2, LeaseTTL: time.Minute}, n)
	assert.Greater(t, len(got), 2, "a read-then-write lease store under %d concurrent TakeLeases admitted %d of cap 2", n, len(got))
}

func TestLeaseOptionsValidation(t *testing.T) {
	cases := []struct {
		name     string
		interval time.Duration
		opts     []Option
		want     string
	}{
		{"concurrency 0", time.Second, []Option{WithConcurrency(0)}, "throttle: concurrency 0 is below 1"},
		{"concurrency -2", time.Second, []Option{WithConcurrency(-2)}, "throttle: concurrency -2 is below 1"},
		{"negative lease TTL", time.Second, []Option{WithConcurrency(1), WithLeaseTTL(-time.Second)}, "throttle: negative lease TTL -1s"},
		{"short lease TTL", time.Second, []Option{WithConcurrency(1), WithLeaseTTL(time.Millisecond)}, "throttle: lease TTL 1ms is below 10ms"},
		{"interval 0 without a cap", 0, nil, "throttle: interval 0s is below 1ms"},
		{"negative interval with a cap", -time.Second, []Option{WithConcurrency(1)}, "throttle: interval -1s is below 1ms"},
		{"limit above 64 with a cap", time.Second, []Option{WithConcurrency(1), WithLimit(65)}, "throttle: WithConcurrency needs a limit of at most 64, not 65"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := New("k", c.interval, c.opts...)
			assert.EqualError(t, err, c.want, "New")
			_, err = NewKeyed(c.interval, c.opts...)
			assert.EqualError(t, err, c.want, "NewKeyed")
			assert.PanicsWithValue(t, c.want, func() { Wrap("k", c.interval, func() int { return 0 }, c.opts...) }, "Wrap")
			assert.PanicsWithValue(t, c.want, func() {
				WrapErr("k", c.interval, func(context.Context) (int, error) { return 0, nil }, c.opts...)
			}, "WrapErr")
			assert.PanicsWithValue(t, c.want, func() {
				WrapKeyed(c.interval, func(s string) string { return s }, func(context.Context, string) (int, error) { return 0, nil }, c.opts...)
			}, "WrapKeyed")
		})
	}
	for _, ok := range []struct {
		name     string
		interval time.Duration
		opts     []Option
	}{
		{"cap only", 0, []Option{WithConcurrency(3)}},
		{"cap and rate", time.Second, []Option{WithConcurrency(3), WithLimit(64)}},
		{"default TTL", 0, []Option{WithConcurrency(1), WithLeaseTTL(0)}},
		{"limit above 64 without a cap", time.Second, []Option{WithLimit(65)}},
	} {
		_, err := New("k", ok.interval, ok.opts...)
		assert.NoError(t, err, "New with %s", ok.name)
	}
}

func TestLeaseMisuse(t *testing.T) {
	ctx := context.Background()
	th, err := New("k", 0, WithConcurrency(1))
	require.NoError(t, err)
	_, err = th.Allow(ctx)
	assert.ErrorIs(t, err, ErrLeaseRequired, "Allow on a capped throttle")
	assert.ErrorContains(t, err, "use Acquire", "Allow on a capped throttle")
	assert.ErrorIs(t, th.Wait(ctx), ErrLeaseRequired, "Wait on a capped throttle")
	k, err := NewKeyed(time.Second, WithConcurrency(1))
	require.NoError(t, err)
	_, err = k.Allow(ctx, "a")
	assert.ErrorIs(t, err, ErrLeaseRequired, "Keyed.Allow on a capped throttle")
	_, err = k.Acquire(ctx, "")
	assert.ErrorIs(t, err, errEmptyKey, "Keyed.Acquire with an empty key")
	plain, err := New("k", time.Second)
	require.NoError(t, err)
	_, err = plain.Acquire(ctx)
	assert.ErrorContains(t, err, "needs WithConcurrency", "Acquire without a cap")
	notLeaser, err := New("k", 0, WithConcurrency(1), WithStore(racyStore{}))
	require.NoError(t, err)
	_, err = notLeaser.Acquire(ctx)
	assert.ErrorContains(t, err, "not a Leaser")
}
