package throttle

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestNewKeyedRejectsBadInput(t *testing.T) {
	for _, tt := range []struct {
		name     string
		interval time.Duration
		opts     []Option
		want     string
	}{
		{"zero interval", 0, nil, "throttle: interval 0s is below 1ms"},
		{"zero limit", time.Second, []Option{WithLimit(0)}, "throttle: limit 0 is below 1"},
		{"typed nil store", time.Second, []Option{WithStore((*ptrStore)(nil))}, "throttle: nil store"},
		{"negative wait", time.Second, []Option{WithWait(-1)}, "throttle: negative wait -1ns"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			k, err := NewKeyed(tt.interval, tt.opts...)
			assert.Nil(t, k, "NewKeyed(%v)", tt.interval)
			assert.EqualError(t, err, tt.want, "NewKeyed(%v)", tt.interval)
			assert.PanicsWithValue(t, tt.want, func() {
				WrapKeyed(tt.interval, func(s string) string { return s },
					func(context.Context, string) (int, error) { return 1, nil }, tt.opts...)
			}, "WrapKeyed(%v)", tt.interval)
		})
	}
	assert.PanicsWithValue(t, "throttle: nil keyOf", func() {
		WrapKeyed[string, int](time.Second, nil, func(context.Context, string) (int, error) { return 1, nil })
	})
	assert.PanicsWithValue(t, "throttle: nil fn", func() {
		WrapKeyed[string, int](time.Second, func(s string) string { return s }, nil)
	})
}

func TestKeyedEmptyKeyIsAnError(t *testing.T) {
	k, err := NewKeyed(time.Second)
	require.NoError(t, err)
	ctx := context.Background()
	d, err := k.Allow(ctx, "")
	assert.EqualError(t, err, "throttle: empty key", "Allow(\"\")")
	assert.False(t, d.Allowed, "Allow(\"\")")
	assert.EqualError(t, k.Wait(ctx, ""), "throttle: empty key", "Wait(\"\")")
	assert.EqualError(t, k.Hold(ctx, "", time.Second), "throttle: empty key", "Hold(\"\")")
	_, err = k.Held(ctx, "")
	assert.EqualError(t, err, "throttle: empty key", "Held(\"\")")
	assert.EqualError(t, k.Reset(ctx, ""), "throttle: empty key", "Reset(\"\")")

	ran := 0
	f := WrapKeyed(time.Second, func(s string) string { return s },
		func(context.Context, string) (int, error) { ran++; return 1, nil })
	v, err := f(ctx, "")
	assert.EqualError(t, err, "throttle: empty key", "wrapped call with an empty key")
	assert.Zero(t, v, "wrapped call with an empty key")
	assert.Zero(t, ran, "fn runs for an empty key")
}

// keyedStores returns the stores a Keyed is tested on: its own MemoryStore
// and a RedisStore on miniredis.
func keyedStores(t *testing.T) map[string][]Option {
	mr := miniredis.RunT(t)
	c := redis.NewClient(&redis.Options{Addr: mr.Addr(), ContextTimeoutEnabled: true})
	t.Cleanup(func() { _ = c.Close() })
	return map[string][]Option{
		"memory":    nil,
		"miniredis": {WithStore(NewRedisStore(c))},
	}
}

func TestKeyedKeysAreIndependent(t *testing.T) {
	ctx := context.Background()
	for name, opts := range keyedStores(t) {
		t.Run(name, func(t *testing.T) {
			for _, limit := range []int{1, 3} {
				k, err := NewKeyed(time.Hour, append(opts, WithLimit(limit))...)
				require.NoError(t, err)
				a, b := fmt.Sprint("a", limit), fmt.Sprint("b", limit)
				for i := range limit {
					d, err := k.Allow(ctx, a)
					require.NoError(t, err)
					assert.True(t, d.Allowed, "limit %d: Allow %d of %q", limit, i+1, a)
				}
				d, err := k.Allow(ctx, a)
				require.NoError(t, err)
				assert.False(t, d.Allowed, "limit %d: Allow of %q beyond the limit", limit, a)
				assert.Positive(t, d.RetryAfter, "limit %d: RetryAfter of %q", limit, a)
				// The denial of a, and a hold of a, do not touch b.
				require.NoError(t, k.Hold(ctx, a, 2*time.Hour))
				for i := range limit {
					d, err := k.Allow(ctx, b)
					require.NoError(t, err)
					assert.True(t, d.Allowed, "limit %d: Allow %d of %q after %q was denied and held", limit, i+1, b, a)
				}
				held, err := k.Held(ctx, b)
				require.NoError(t, err)
				assert.Zero(t, held, "limit %d: Held(%q)", limit, b)
				// Reset of a opens a only.
				require.NoError(t, k.Reset(ctx, a))
				d, err = k.Allow(ctx, a)
				require.NoError(t, err)
				assert.True(t, d.Allowed, "limit %d: Allow of %q after its Reset", limit, a)
				d, err = k.Allow(ctx, b)
				require.NoError(t, err)
				assert.False(t, d.Allowed, "limit %d: Allow of %q after the Reset of %q", limit, b, a)
			}
		})
	}
}

// TestKeyedSharesOneKeyWithThrottle checks that a Keyed's key and a
// Throttle of the same key, interval and limit are one limit in the store.
func TestKeyedSharesOneKeyWithThrottle(t *testing.T) {
	ctx := context.Background()
	store := keyedStores(t)["miniredis"]
	k, err := NewKeyed(time.Hour, store...)
	require.NoError(t, err)
	th, err := New("shared", time.Hour, store...)
	require.NoError(t, err)
	d, err := k.Allow(ctx, "shared")
	require.NoError(t, err)
	require.True(t, d.Allowed)
	d, err = th.Allow(ctx)
	require.NoError(t, err)
	assert.False(t, d.Allowed, "Throttle after the Keyed admitted its key")
}

func TestWrapKeyedPerCustomer(t *testing.T) {
	type order struct {
		customer string
		id       int
	}
	var mu sync.Mutex
	var ran []int
	refresh := WrapKeyed(time.Hour, func(o order) string { return o.customer },
		func(_ context.Context, o order) (int, error) {
			mu.Lock()
			defer mu.Unlock()
			ran = append(ran, o.id)
			return o.id, nil
		})
	ctx := context.Background()
	for i, c := range []string{"acme", "globex", "acme", "initech", "globex"} {
		v, err := refresh(ctx, order{c, i})
		if slices := []int{0, 1, 3}; containsInt(slices, i) {
			assert.NoError(t, err, "order %d of %s", i, c)
			assert.Equal(t, i, v, "order %d of %s", i, c)
		} else {
			assert.ErrorIs(t, err, ErrThrottled, "order %d of %s", i, c)
			var te *ThrottledError
			if assert.ErrorAs(t, err, &te) {
				assert.Equal(t, c, te.Key, "ThrottledError.Key")
			}
		}
	}
	assert.Equal(t, []int{0, 1, 3}, ran, "orders that ran: the first of each customer")
}

func containsInt(s []int, v int) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// TestKeyedMemoryFollowsActiveKeys shows that a Keyed (and its MemoryStore)
// keeps memory for the keys active within about one interval, not for every
// key ever seen: after 300,000 distinct keys, once their intervals passed,
// more use of the Keyed brings the heap back near where it started.
func TestKeyedMemoryFollowsActiveKeys(t *testing.T) {
	if testing.Short() {
		t.Skip("memory test skipped in -short mode")
	}
	const interval = time.Minute
	mem, advance := fakeMemory()
	store := clockedMemory{mem}
	k, err := NewKeyed(interval, WithStore(store))
	require.NoError(t, err)
	ctx := context.Background()
	heap := func() uint64 {
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return ms.HeapAlloc
	}
	use := func(prefix string, n int) {
		for i := range n {
			d, err := k.Allow(ctx, fmt.Sprintf("%s%d", prefix, i))
			require.NoError(t, err)
			require.True(t, d.Allowed, "first Allow of key %s%d", prefix, i)
		}
	}
	use("warm", 1000)
	before := heap()
	use("burst", 300_000) // all within one interval of the fake clock
	during := heap()
	advance(2 * interval)
	// New keys after the burst's intervals passed: the sweeps run as they
	// are added, in every shard.
	use("after", 2000)
	after := heap()
	t.Logf("heap: %d KiB before, %d KiB with 300k keys, %d KiB after", before>>10, during>>10, after>>10)
	assert.Greater(t, during, before+8<<20, "the burst's keys took memory (else the test shows nothing)")
	assert.Less(t, after, before+4<<20, "heap after the burst's intervals passed: within 4 MiB of before")
	assert.Less(t, mem.len(), 2000+1000+2*minSweep, "keys in the store after the burst's intervals passed")
}

// clockedMemory is a MemoryStore on a fake clock that tells its time, so
// that a Throttle or Keyed on it runs its deny cache on the same clock.
type clockedMemory struct{ *MemoryStore }

func (c clockedMemory) Now() time.Time { return time.Unix(0, c.MemoryStore.now()) }

// TestAdmittedPathIsOneSET counts the commands that reach Redis: an
// admitted call of limit 1, and of a limit N up to 64 while its slots are
// free, is one SET (NX PX), with nothing pipelined; a denial costs one more
// command (the slots script), and then the deny cache answers.
func TestAdmittedPathIsOneSET(t *testing.T) {
	mr := miniredis.RunT(t)
	c := redis.NewClient(&redis.Options{Addr: mr.Addr(), ContextTimeoutEnabled: true})
	t.Cleanup(func() { _ = c.Close() })
	var hook cmdLog
	c.AddHook(&hook)
	ctx := context.Background()
	require.NoError(t, c.Ping(ctx).Err(), "PING: the connection handshake is not the decision's")
	for _, limit := range []int{1, 10, 64} {
		k, err := NewKeyed(time.Hour, WithStore(NewRedisStore(c)), WithLimit(limit))
		require.NoError(t, err)
		key := fmt.Sprint("one-set/", limit)
		for i := range limit {
			hook.reset()
			d, err := k.Allow(ctx, key)
			require.NoError(t, err)
			require.True(t, d.Allowed, "limit %d: Allow %d", limit, i+1)
			assert.Equal(t, []string{"set"}, hook.names(), "limit %d: commands of admitted Allow %d", limit, i+1)
		}
		hook.reset()
		d, err := k.Allow(ctx, key)
		require.NoError(t, err)
		require.False(t, d.Allowed, "limit %d: Allow beyond the limit", limit)
		cmds := hook.names()
		if limit == 1 {
			// Limit 1 learned the denial from its admission.
			assert.Empty(t, cmds, "limit 1: commands of the Allow after an admission")
		} else {
			// SET on the slot expected free, then the slots script
			// (EVAL after EVALSHA once, while the server lacks the script).
			if len(cmds) == 3 && cmds[2] == "eval" {
				cmds = cmds[:2]
			}
			assert.Equal(t, []string{"set", "evalsha"}, cmds, "limit %d: commands of the first denial", limit)
		}
		hook.reset()
		d, err = k.Allow(ctx, key)
		require.NoError(t, err)
		require.False(t, d.Allowed)
		assert.Empty(t, hook.names(), "limit %d: commands of a denial while the retry-after runs", limit)
	}
}

// cmdLog is a go-redis hook that records the names of the commands sent.
type cmdLog struct {
	mu   sync.Mutex
	cmds []string
}

func (h *cmdLog) reset() { h.mu.Lock(); h.cmds = nil; h.mu.Unlock() }

func (h *cmdLog) names() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]string(nil), h.cmds...)
}

func (h *cmdLog) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h *cmdLog) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		h.mu.Lock()
		h.cmds = append(h.cmds, strings.ToLower(cmd.Name()))
		h.mu.Unlock()
		return next(ctx, cmd)
	}
}

func (h *cmdLog) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		h.mu.Lock()
		for _, c := range cmds {
			h.cmds = append(h.cmds, "pipelined "+strings.ToLower(c.Name()))
		}
		h.mu.Unlock()
		return next(ctx, cmds)
	}
}

// TestSlotsMatchTheSlidingWindow runs random schedules of Allow through a
// RedisStore on miniredis with a fake clock, and through an exact model of
// the sliding window (at most N starts in any half-open window of one
// interval), and checks that both admit exactly the same calls. miniredis
// frees a key when its TTL reaches 0, so on it the slots are the exact
// window; Redis keeps a key through its expiry millisecond, which makes it
// admit up to 1 ms later (see TestBookingAgreesWithAdmission).
func TestSlotsMatchTheSlidingWindow(t *testing.T) {
	for _, limit := range []int{1, 2, 3, 7, 64} {
		for seed := range uint64(3) {
			t.Run(fmt.Sprintf("limit %d seed %d", limit, seed), func(t *testing.T) {
				mr, advance := fakeMiniredis(t)
				c := redis.NewClient(&redis.Options{Addr: mr.Addr()})
				t.Cleanup(func() { _ = c.Close() })
				s := NewRedisStore(c)
				// About ten calls per admission: an interval of 10 ms per
				// unit of the limit, calls 0 to 2 ms apart.
				req := Request{Interval: time.Duration(limit) * 10 * time.Millisecond, Limit: limit}
				rng := rand.New(rand.NewPCG(seed, uint64(limit)))
				var now time.Duration
				var starts []time.Duration // the model's admitted starts
				admitted, denied := 0, 0
				for i := range 800 {
					// Steps of 0 to 2 ms (ties included), and now and then
					// a gap of up to three intervals.
					step := time.Duration(rng.IntN(3)) * time.Millisecond
					if rng.IntN(50) == 0 {
						step = time.Duration(rng.Int64N(int64(3 * req.Interval)))
					}
					advance(step)
					now += step
					inWindow := 0
					for _, st := range starts {
						if st > now-req.Interval {
							inWindow++
						}
					}
					want := inWindow < limit
					res, err := s.Take(context.Background(), "model", req)
					require.NoError(t, err, "Take %d", i)
					require.Equal(t, want, res.OK, "Take %d at %v with %d starts in the window: got %+v", i, now, inWindow, res)
					if want {
						starts = append(starts, now)
						admitted++
					} else {
						denied++
					}
				}
				assert.Greater(t, admitted, 20, "admissions in the schedule")
				assert.Greater(t, denied, 20, "denials in the schedule")
			})
		}
	}
}

// TestDenyCacheSurvivesACancelledWait shows that a Wait cut short takes
// back only what its own booking taught the deny cache: a hold set before
// it still denies locally, even when the store fails.
func TestDenyCacheSurvivesACancelledWait(t *testing.T) {
	store := &switchStore{}
	th, err := New("k", 100*time.Millisecond, WithStore(store))
	require.NoError(t, err)
	ctx := context.Background()
	require.NoError(t, th.Hold(ctx, time.Hour))
	// A booking that raised nothing: cancel must leave the hold.
	booked, learnt, err := th.c.take(ctx, th.key, &th.e, time.Hour)
	require.NoError(t, err)
	require.True(t, booked.OK)
	require.Positive(t, booked.Delay)
	wctx, cancel := context.WithCancel(ctx)
	cancel()
	th.c.cancel(wctx, store, th.key, &th.e, booked, learnt)
	store.fail.Store(true)
	d, err := th.Allow(ctx)
	assert.NoError(t, err, "Allow during the hold, with the store failing: the deny cache answers")
	assert.False(t, d.Allowed, "Allow during the hold after a cancelled Wait")
	assert.Greater(t, d.RetryAfter, 59*time.Minute, "RetryAfter during the hold after a cancelled Wait")
}

// TestCancelledWaitTakesBackItsOwnDenial shows the other half: a booking
// that raised the deny cache, once handed back, no longer denies.
func TestCancelledWaitTakesBackItsOwnDenial(t *testing.T) {
	store := &switchStore{}
	th, err := New("k", time.Hour, WithStore(store))
	require.NoError(t, err)
	ctx := context.Background()
	d, err := th.Allow(ctx)
	require.NoError(t, err)
	require.True(t, d.Allowed)
	before := th.e.deniedUntil.Load()
	booked, learnt, err := th.c.take(ctx, th.key, &th.e, 2*time.Hour)
	require.NoError(t, err)
	require.True(t, booked.OK)
	require.Greater(t, th.e.deniedUntil.Load(), before, "the booking raised the deny cache")
	th.c.cancel(ctx, store, th.key, &th.e, booked, learnt)
	assert.Equal(t, before, th.e.deniedUntil.Load(), "deny cache after the booking was handed back")
}

// switchStore is a MemoryStore whose Take fails while fail is set.
type switchStore struct {
	MemoryStore
	once sync.Once
	fail atomicBool
}

type atomicBool struct {
	mu sync.Mutex
	v  bool
}

func (b *atomicBool) Store(v bool) { b.mu.Lock(); b.v = v; b.mu.Unlock() }
func (b *atomicBool) Load() bool   { b.mu.Lock(); defer b.mu.Unlock(); return b.v }

func (s *switchStore) init() {
	s.once.Do(func() { s.MemoryStore = *NewMemoryStore() })
}

func (s *switchStore) Take(ctx context.Context, key string, req Request) (Reservation, error) {
	s.init()
	if s.fail.Load() {
		return Reservation{}, errors.New("store down")
	}
	return s.MemoryStore.Take(ctx, key, req)
}

func (s *switchStore) Cancel(ctx context.Context, key string, req Request, res Reservation) error {
	s.init()
	return s.MemoryStore.Cancel(ctx, key, req, res)
}

func (s *switchStore) Hold(ctx context.Context, key string, req Request, d time.Duration) error {
	s.init()
	return s.MemoryStore.Hold(ctx, key, req, d)
}

func (s *switchStore) Held(ctx context.Context, key string) (time.Duration, error) {
	s.init()
	return s.MemoryStore.Held(ctx, key)
}

func TestResetWithEndedContextReturnsItsError(t *testing.T) {
	th, err := New("k", time.Hour)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err = th.Reset(ctx)
	assert.ErrorIs(t, err, context.Canceled, "Reset with a cancelled ctx")
	assert.NotErrorIs(t, err, ErrStoreUnavailable, "Reset with a cancelled ctx")
}
