package throttle

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dthrottle/throttle/internal/redistest"
)

// The tests in this file check the scripts at the millisecond edges that
// Redis keeps: a key with an expiry e is live through millisecond e and
// gone from e+1; PEXPIREAT at or before the command's clock deletes at once;
// TIME moves during a script while the clock of its TTLs may not.

// exactServers returns a client of miniredis (its TIME and TTLs frozen
// unless moved) and, when redis-server is available, one of a real server.
func exactServers(t *testing.T) map[string]redis.UniversalClient {
	t.Helper()
	mr := miniredis.RunT(t)
	mr.SetTime(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	mc := redis.NewClient(&redis.Options{Addr: mr.Addr(), ContextTimeoutEnabled: true})
	t.Cleanup(func() { _ = mc.Close() })
	servers := map[string]redis.UniversalClient{"miniredis": mc}
	if redistest.Available() || requireRedis() {
		servers["redis"] = redistest.Start(t).Client(t)
	}
	return servers
}

// serverMillis returns the server's TIME in milliseconds.
func serverMillis(t *testing.T, c redis.UniversalClient) int64 {
	t.Helper()
	now, err := c.Time(context.Background()).Result()
	require.NoError(t, err, "TIME")
	return now.UnixMilli()
}

// unbookInLastMillisecond books the slot KEYS[1] with mark ARGV[1] to start
// at the server's next millisecond (so its previous holder is live through
// this one), then runs unbook.lua in the same script, that is in the
// previous holder's last live millisecond unless TIME moved meanwhile.
// Returns {handed back, TIME before, TIME after (ms), PTTL, value}.
var unbookInLastMillisecond = redis.NewScript(`
local function ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local now = ms()
redis.call('SET', KEYS[1], ARGV[1])
redis.call('PEXPIREAT', KEYS[1], string.format('%d', now + 1 + 100000))
ARGV[2] = string.format('%d', now + 1)
local function unbook()
` + unbookSource + `
end
local handed = unbook()
return {handed, now, ms(), redis.call('PTTL', KEYS[1]), redis.call('GET', KEYS[1]) or ''}
`)

// TestUnbookKeepsThePreviousHolderThroughItsLastMillisecond (issue 19, item
// 2): a booking handed back in the last live millisecond of its slot's
// previous holder must leave the slot held through that millisecond. Before
// the fix unbook.lua deleted it then (until <= now), and a SET NX in the
// same millisecond took the slot less than an interval after that holder's
// start. The handed-back slot holds '1', not the booking's mark.
func TestUnbookKeepsThePreviousHolderThroughItsLastMillisecond(t *testing.T) {
	for name, c := range exactServers(t) {
		t.Run(name, func(t *testing.T) {
			key := "exact:unbook:" + name
			const mark = "12345678901234567890" // above 2^53: matched as a string
			same := 0
			for try := 0; try < 50 && same < 5; try++ {
				v, err := unbookInLastMillisecond.Run(context.Background(), c, []string{key}, mark, "").Slice()
				require.NoError(t, err, "script")
				require.Len(t, v, 5)
				if v[1].(int64) != v[2].(int64) {
					continue // TIME moved during the script: the holder's last ms had passed
				}
				same++
				assert.Equal(t, int64(1), v[0], "the booking was handed back")
				assert.GreaterOrEqual(t, v[3].(int64), int64(0), "PTTL of the slot handed back in its previous holder's last live ms: it must still be held")
				assert.LessOrEqual(t, v[3].(int64), int64(2), "PTTL of the slot handed back: held about 1 ms more, not for the booking")
				assert.Equal(t, "1", v[4], "value of the handed-back slot: not the mark")
			}
			require.Positive(t, same, "no run of the script stayed within one millisecond")
		})
	}
}

// TestBookingExpiresOnTheServersTime (issue 19, item 4): a booked slot
// expires exactly at its start plus the interval, both counted on TIME. A
// relative PX counts from the clock that newer Redis versions freeze for
// the script, while TIME moves; then the slot expired before start +
// interval. The test checks the arithmetic on the server it has: Redis
// 7.0 and miniredis count PX from the same clock as TIME, so on them the
// old scripts passed too; the frozen clock is seen only on newer servers.
func TestBookingExpiresOnTheServersTime(t *testing.T) {
	for name, c := range exactServers(t) {
		t.Run(name, func(t *testing.T) {
			s := NewRedisStore(c, WithKeyPrefix("exact:"))
			ctx := context.Background()
			const interval = 10 * time.Second
			expiry := func(name string) int64 {
				// The absolute expiry (Redis 7); where PEXPIRETIME is
				// missing, TIME + PTTL, exact on miniredis, whose clock
				// stands still.
				if at, err := c.Do(ctx, "PEXPIRETIME", name).Int64(); err == nil {
					return at
				}
				pttl, err := c.PTTL(ctx, name).Result()
				require.NoError(t, err)
				return serverMillis(t, c) + pttl.Milliseconds()
			}
			for _, limit := range []int{1, 3} {
				req := Request{Interval: interval, Limit: limit, MaxWait: time.Minute}
				k := fmt.Sprint("booking/", limit)
				for range limit {
					res, err := s.Take(ctx, k, req)
					require.NoError(t, err)
					require.True(t, res.OK)
				}
				res, err := s.Take(ctx, k, req)
				require.NoError(t, err)
				require.True(t, res.OK, "booking: %+v", res)
				b := res.Booking
				require.Positive(t, b.Mark, "booking's mark")
				assert.Equal(t, b.Start+interval.Milliseconds(), expiry(s.slots(k, limit)[b.At]),
					"limit %d: expiry of the booked slot %d, start %d", limit, b.At, b.Start)

				// The same through TakeLease.
				lk := fmt.Sprint("lease-booking/", limit)
				lreq := req
				lreq.Concurrency, lreq.LeaseTTL = 10, time.Minute
				for i := range limit {
					r, err := s.TakeLease(ctx, lk, lreq, fmt.Sprint("t", i))
					require.NoError(t, err)
					require.True(t, r.OK)
				}
				r, err := s.TakeLease(ctx, lk, lreq, "booked")
				require.NoError(t, err)
				require.True(t, r.OK, "lease booking: %+v", r)
				require.Positive(t, r.Delay)
				b = r.Booking
				assert.Equal(t, b.Start+interval.Milliseconds(), expiry(s.slots(lk, limit)[b.At]),
					"limit %d: expiry of the slot %d booked with a lease, start %d", limit, b.At, b.Start)
			}
		})
	}
}

// TestLeaseNeverEndsBeforeItsTTL (issue 19, item 5), on fake clocks: a
// lease taken late in a millisecond is still held TTL - 0.5 ms later.
// Before the fix lease.lua dropped a lease in the millisecond of its score
// (now + TTL), so one taken at x.999 ms ended after TTL - 0.999 ms.
func TestLeaseNeverEndsBeforeItsTTL(t *testing.T) {
	mem, memAdvance := fakeMemory()
	mr, mrAdvance := fakeMiniredis(t)
	mc := redis.NewClient(&redis.Options{Addr: mr.Addr(), ContextTimeoutEnabled: true})
	t.Cleanup(func() { _ = mc.Close() })
	for _, h := range []leaseHarness{
		{name: "memory", store: mem, advance: memAdvance},
		{name: "miniredis", store: NewRedisStore(mc), advance: mrAdvance},
	} {
		t.Run(h.name, func(t *testing.T) {
			ctx := context.Background()
			const ttl = 10 * time.Millisecond
			req := Request{Concurrency: 1, LeaseTTL: ttl}
			h.advance(999 * time.Microsecond)
			a, err := h.store.TakeLease(ctx, "k", req, "a")
			require.NoError(t, err)
			require.True(t, a.OK)
			h.advance(ttl - 500*time.Microsecond)
			b, err := h.store.TakeLease(ctx, "k", req, "b")
			require.NoError(t, err)
			assert.True(t, b.Full, "TakeLease %v after a lease of %v was taken: want refused by the cap, got %+v", ttl-500*time.Microsecond, ttl, b)
			// It renews to a full TTL from now, and then ends.
			held, err := h.store.RenewLease(ctx, "k", req, "a")
			require.NoError(t, err)
			require.True(t, held, "renew")
			h.advance(ttl - 500*time.Microsecond)
			b, err = h.store.TakeLease(ctx, "k", req, "b")
			require.NoError(t, err)
			assert.True(t, b.Full, "TakeLease %v after a renewal: want refused by the cap, got %+v", ttl-500*time.Microsecond, b)
			h.advance(2 * time.Millisecond)
			b, err = h.store.TakeLease(ctx, "k", req, "b")
			require.NoError(t, err)
			assert.True(t, b.OK, "TakeLease %v after a renewal: the lease ended, got %+v", ttl+1500*time.Microsecond, b)
		})
	}
}

// TestLeaseHeldForItsTTLOnRedis (issue 19, item 5) checks on a real server
// that no lease ends before its TTL, and that the holder's local expiry is
// never later than the store's. A second caller polls for the lease; when
// it gets it, the first lease ended before that reply came back. The first
// decision came after begin, so a reply before begin + TTL proves the lease
// ended early. Before the fix most of 20 leases did (by up to 1 ms).
func TestLeaseHeldForItsTTLOnRedis(t *testing.T) {
	c := redistest.Start(t).Client(t)
	s := NewRedisStore(c, WithKeyPrefix("exact:"))
	ctx := context.Background()
	const ttl = 20 * time.Millisecond
	req := Request{Concurrency: 1, LeaseTTL: ttl}
	early := 0
	for i := range 20 {
		key := fmt.Sprint("held/", i)
		begin := time.Now()
		a, err := s.TakeLease(ctx, key, req, "a")
		require.NoError(t, err)
		require.True(t, a.OK)
		time.Sleep(time.Until(begin.Add(ttl - 3*time.Millisecond)))
		for {
			b, err := s.TakeLease(ctx, key, req, "b")
			require.NoError(t, err)
			if b.OK {
				if got := time.Since(begin); got < ttl {
					early++
					t.Errorf("lease %d of %v taken by another caller %v after the first was asked for", i, ttl, got)
				}
				break
			}
			require.True(t, b.Full, "probe %d: %+v", i, b)
		}
	}
	t.Logf("%d of 20 leases ended before their TTL", early)

	// The holder's expiry: begin + TTL on this process's clock, against the
	// lease's last live millisecond on the server's, which is the same
	// wall clock on this machine.
	th, err := New("local-expiry", 0, WithStore(s), WithConcurrency(1), WithLeaseTTL(ttl))
	require.NoError(t, err)
	for i := range 20 {
		l, err := th.Acquire(ctx)
		require.NoError(t, err)
		score, err := c.ZScore(ctx, s.name("local-expiry", leasesSuffix), l.token).Result()
		require.NoError(t, err)
		l.mu.Lock()
		local := l.expires
		l.mu.Unlock()
		// The lease is gone from millisecond score + 1 on.
		store := time.UnixMilli(int64(score) + 1)
		assert.False(t, local.After(store), "lease %d: local expiry %v is after the store's %v", i, local.Round(0), store)
		l.Release()
	}
}

// countingLeaser counts the TakeLease calls of a Leaser, and tells taken
// of each.
type countingLeaser struct {
	Leaser
	takes atomic.Int32
	taken chan Reservation
}

func (s *countingLeaser) TakeLease(ctx context.Context, key string, req Request, token string) (Reservation, error) {
	s.takes.Add(1)
	res, err := s.Leaser.TakeLease(ctx, key, req, token)
	if s.taken != nil {
		s.taken <- res
	}
	return res, err
}

// holdEveryLease takes the req.Concurrency leases of key, as holders
// h0, h1, ...
func holdEveryLease(t *testing.T, s *RedisStore, key string, req Request) {
	t.Helper()
	for i := range req.Concurrency {
		res, err := s.TakeLease(context.Background(), key, req, fmt.Sprint("h", i))
		require.NoError(t, err)
		require.True(t, res.OK, "lease %d", i)
	}
}

// TestReleaseWakesOnlyWaiters (issue 19, item 7): releases while nobody
// waits leave no wake-up behind, so a later waiter asks the store twice:
// once to find every lease held, once after the release that wakes it.
// Before the fix every release pushed a wake-up (up to k kept), and the
// waiter popped each stale one and asked again: 1 + k + 1 calls.
func TestReleaseWakesOnlyWaiters(t *testing.T) {
	for name, c := range exactServers(t) {
		t.Run(name, func(t *testing.T) {
			const k = 3
			ctx := context.Background()
			s := NewRedisStore(c, WithKeyPrefix("exact:"))
			req := Request{Limit: 1, Concurrency: k, LeaseTTL: time.Minute}
			key := "wake"
			holdEveryLease(t, s, key, req)
			// Holders come and go while nobody waits: each release frees a
			// lease of a full set.
			for i := range 10 {
				require.NoError(t, s.ReleaseLease(ctx, key, req, fmt.Sprint("h", i%k)))
				res, err := s.TakeLease(ctx, key, req, fmt.Sprint("h", i%k))
				require.NoError(t, err)
				require.True(t, res.OK, "holder %d back", i)
			}
			cl := &countingLeaser{Leaser: s, taken: make(chan Reservation, 10)}
			th, err := New(key, 0, WithStore(cl), WithConcurrency(k), WithWait(10*time.Second))
			require.NoError(t, err)
			got := make(chan error, 1)
			go func() {
				l, err := th.Acquire(ctx)
				if err == nil {
					l.Release()
				}
				got <- err
			}()
			first := <-cl.taken
			require.True(t, first.Full, "the waiter's first TakeLease: %+v", first)
			time.Sleep(100 * time.Millisecond) // the waiter blocks, or polls
			require.NoError(t, s.ReleaseLease(ctx, key, req, "h0"))
			select {
			case err := <-got:
				require.NoError(t, err, "Acquire")
			case <-time.After(5 * time.Second):
				t.Fatal("Acquire not woken 5 s after the release")
			}
			assert.Equal(t, int32(2), cl.takes.Load(), "TakeLease calls of a waiter woken by one release")
		})
	}
}

// TestReleasesWakeEveryWaiter: two releases in a row, before the first
// waiter woken has taken its lease, wake both waiters. A release counts
// the waiters, so the second one wakes the second waiter although the set
// is no longer full when it runs.
func TestReleasesWakeEveryWaiter(t *testing.T) {
	for name, c := range exactServers(t) {
		t.Run(name, func(t *testing.T) {
			const k = 2
			ctx := context.Background()
			s := NewRedisStore(c, WithKeyPrefix("exact:"))
			req := Request{Limit: 1, Concurrency: k, LeaseTTL: time.Minute}
			key := "wake-both"
			holdEveryLease(t, s, key, req)
			cl := &countingLeaser{Leaser: s, taken: make(chan Reservation, 10)}
			th, err := New(key, 0, WithStore(cl), WithConcurrency(k), WithWait(time.Minute))
			require.NoError(t, err)
			got := make(chan error, 2)
			for range 2 {
				go func() {
					l, err := th.Acquire(ctx)
					if err == nil {
						t.Cleanup(l.Release)
					}
					got <- err
				}()
			}
			for range 2 {
				require.True(t, (<-cl.taken).Full, "a waiter's first TakeLease")
			}
			time.Sleep(50 * time.Millisecond) // both block
			require.NoError(t, s.ReleaseLease(ctx, key, req, "h0"))
			require.NoError(t, s.ReleaseLease(ctx, key, req, "h1"))
			for i := range 2 {
				select {
				case err := <-got:
					require.NoError(t, err, "Acquire %d", i)
				case <-time.After(5 * time.Second):
					t.Fatalf("waiter %d not woken 5 s after two releases", i)
				}
			}
		})
	}
}

// slowLeaser is a MemoryStore whose TakeLease, after booking a start,
// answers only 10 ms before its ctx's deadline (its own clock does not
// move).
type slowLeaser struct {
	*MemoryStore
	bookings *atomic.Int32
}

func (s slowLeaser) TakeLease(ctx context.Context, key string, req Request, token string) (Reservation, error) {
	res, err := s.MemoryStore.TakeLease(ctx, key, req, token)
	if deadline, ok := ctx.Deadline(); ok && res.OK && res.Delay > 0 {
		s.bookings.Add(1)
		time.Sleep(time.Until(deadline) - 10*time.Millisecond)
	}
	return res, err
}

// TestAcquireBookedPastTheDeadlineIsThrottled (issue 19, item 9): when the
// store books a start that the time left before ctx's deadline cannot
// reach, Acquire hands back the booking and the lease at once and reports
// the call as throttled, as Wait does. Before the fix it slept until the
// deadline, holding both, and returned ctx's error.
func TestAcquireBookedPastTheDeadlineIsThrottled(t *testing.T) {
	m, _ := fakeMemory()
	store := slowLeaser{MemoryStore: m, bookings: new(atomic.Int32)}
	const interval = 100 * time.Millisecond
	th, err := New("k", interval, WithStore(store), WithConcurrency(2), WithWait(time.Hour), WithTimeout(time.Second))
	require.NoError(t, err)
	first, err := th.Acquire(context.Background())
	require.NoError(t, err)
	defer first.Release()
	// 500 ms left when Acquire asks, far more than the 100 ms booking
	// needs; the store books it, then answers only 10 ms before the
	// deadline.
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	begin := time.Now()
	l, err := th.Acquire(ctx)
	if l != nil {
		l.Release()
	}
	var te *ThrottledError
	require.ErrorAs(t, err, &te, "Acquire whose booking falls past the deadline")
	assert.NotErrorIs(t, err, context.DeadlineExceeded)
	assert.Equal(t, interval, te.RetryAfter, "RetryAfter: the booked delay")
	assert.Less(t, time.Since(begin), 500*time.Millisecond, "Acquire returned before the deadline")
	require.Positive(t, store.bookings.Load(), "the store booked the start (else the test shows nothing)")
	// The lease was released and the booking handed back.
	req := Request{Interval: interval, Limit: 1, MaxWait: time.Hour, Concurrency: 2, LeaseTTL: DefaultLeaseTTL}
	res, err := m.TakeLease(context.Background(), "k", req, "probe")
	require.NoError(t, err)
	assert.True(t, res.OK, "a lease and the booked start are free again: %+v", res)
	assert.Equal(t, interval, res.Delay, "the booking was handed back")
}
