package throttle

import (
	"context"
	_ "embed"
	"fmt"
	"strconv"
	"sync/atomic"
	"time"
)

var (
	//go:embed scripts/leaseset.lua
	leaseSetSource string
	//go:embed scripts/leasetake.lua
	leaseTakeSource string
	//go:embed scripts/leaserenew.lua
	leaseRenewSource string
	//go:embed scripts/leaserelease.lua
	leaseReleaseSource string

	//go:embed scripts/wake.lua
	wakeSource string

	leaseTakeScript    = newScript(slotScanSource + leaseSetSource + leaseTakeSource)
	leaseRenewScript   = newScript(leaseSetSource + leaseRenewSource)
	leaseReleaseScript = newScript(leaseSetSource + leaseReleaseSource)
	wakeScript         = newScript(wakeSource)
)

// Suffixes of the keys of a throttle with a cap (WithConcurrency).
const (
	leasesSuffix  = ":leases"  // the sorted set of leases
	freeSuffix    = ":free"    // the list that wakes waiters
	waitingSuffix = ":waiting" // the count of waiters that a release wakes
)

// leaseWakeTTL is how long a wake-up pushed by a release waits for a
// blocked waiter in P{k}:free.
const leaseWakeTTL = time.Second

var _ Leaser = (*RedisStore)(nil)

// LeaseKeys returns the names of the Redis keys that the leases of a
// throttle of key with a cap (WithConcurrency) may write: P{key}:leases, a
// sorted set of the leases (member: a random token; score: the last Redis
// server millisecond in which it is held), P{key}:free, the list that a
// release pushes to so that a blocked waiter wakes, and P{key}:waiting,
// the count of callers that found every lease held and wait, which a
// release wakes (and nobody else). All three always have an expiry. Reset
// does not delete them: the holders of the leases still run.
func (s *RedisStore) LeaseKeys(key string) []string {
	return []string{s.name(key, leasesSuffix), s.name(key, freeSuffix), s.name(key, waitingSuffix)}
}

// TakeLease implements Leaser with one script (scripts/leasetake.lua) over
// the lease keys and, when req has a rate, its slot keys: one round trip.
// The lease's expiry and the slots' are on the Redis server's clock (TIME),
// and a lease is held through the last millisecond of its TTL, so it lasts
// at least req.LeaseTTL after the decision, never less. A booked start can
// be handed back with Cancel, as one made by Take.
//
// With req.Windows (WithLimitPer) the script is scripts/leasewindows.lua,
// over the lease keys and the hash of the windows (see KeysFor):
// the lease and a start in every window, or nothing, in one round trip,
// whatever the limits.
func (s *RedisStore) TakeLease(ctx context.Context, key string, req Request, token string) (Reservation, error) {
	return bounded(s, ctx, func(ctx context.Context) (Reservation, error) { return s.takeLease(ctx, key, req, token) })
}

func (s *RedisStore) takeLease(ctx context.Context, key string, req Request, token string) (Reservation, error) {
	if req.Concurrency < 1 || req.LeaseTTL < time.Millisecond {
		return Reservation{}, fmt.Errorf("throttle: cannot lease with concurrency %d and TTL %v", req.Concurrency, req.LeaseTTL)
	}
	if len(req.Windows) > 0 {
		if req.Interval < time.Millisecond {
			return Reservation{}, fmt.Errorf("throttle: cannot lease windows with an interval of %v", req.Interval)
		}
		return s.takeLeaseWindows(ctx, key, req, token)
	}
	keys := s.LeaseKeys(key)
	first, n := 0, 0
	var interval int64
	if req.Interval > 0 {
		n = req.Limit
		if n < 1 || n > maxSlots {
			return Reservation{}, fmt.Errorf("throttle: cannot lease with a limit of %d", n)
		}
		keys = append(keys, s.slots(key, n)...)
		interval = millis(ceilMillis(req.Interval))
		if n > 1 {
			first = int(s.next.Add(1) % uint32(n))
		}
	}
	var mark uint64
	if req.MaxWait > 0 && n > 0 {
		mark = newMark()
	}
	v, err := s.run(ctx, leaseTakeScript, keys, token, req.Concurrency, millis(ceilMillis(req.LeaseTTL)),
		interval, millis(min(req.MaxWait, MaxInterval)), first, strconv.FormatUint(mark, 10))
	if err != nil {
		return Reservation{}, err
	}
	if len(v) != 6 || (n > 0 && (v[3] < 0 || v[3] >= int64(n))) {
		return Reservation{}, fmt.Errorf("throttle: unexpected reply %v from lease script", v)
	}
	if n > 1 && v[5] == 0 {
		s.hint(v[0] == 1, v[3], n)
	}
	res := slotReservation(v, mark)
	res.Full = v[5] == 1
	return res, nil
}

// RenewLease implements Leaser: one script call (scripts/leaserenew.lua).
func (s *RedisStore) RenewLease(ctx context.Context, key string, req Request, token string) (bool, error) {
	return bounded(s, ctx, func(ctx context.Context) (bool, error) {
		v, err := s.run(ctx, leaseRenewScript, s.LeaseKeys(key), token, millis(ceilMillis(req.LeaseTTL)))
		return len(v) == 1 && v[0] == 1, err
	})
}

// ReleaseLease implements Leaser: one script call
// (scripts/leaserelease.lua), which also pushes a wake-up to P{key}:free
// for a waiter blocked in AwaitLease, when one waits.
func (s *RedisStore) ReleaseLease(ctx context.Context, key string, req Request, token string) error {
	return boundedErr(s, ctx, func(ctx context.Context) error {
		_, err := s.run(ctx, leaseReleaseScript, s.LeaseKeys(key), token, max(req.Concurrency, 1), millis(leaseWakeTTL))
		return err
	})
}

// AwaitLease implements Leaser with BLPOP on P{key}:free: it returns when a
// release pushes a wake-up (a release since the caller's last TakeLease
// left one there), after d, or when ctx ends. Each waiter holds one pooled
// connection of the client for as long as it waits, so size the pool
// (PoolSize) for the waiters as well as the other calls.
//
// BLPOP's timeout is d itself, in fractional seconds (Redis 6 and newer;
// Redis 5 gets whole seconds, rounded up), so Redis ends the wait when the
// caller does; a Cluster or Ring client waits in BLPOPs shorter than its
// ReadTimeout. The BLPOP runs in a goroutine, which the caller leaves when
// ctx ends, or awaitSlack after d when Redis has not answered. Should that
// BLPOP still take a wake-up, the goroutine pushes it back for another
// waiter. The goroutine ends when go-redis returns.
func (s *RedisStore) AwaitLease(ctx context.Context, key string, _ Request, d time.Duration) error {
	if d <= 0 {
		return nil
	}
	if deadline, ok := ctx.Deadline(); ok {
		// Redis ends the wait before ctx does, so that its answer arrives
		// while the caller still waits for it.
		d = max(min(d, time.Until(deadline)-awaitSlack), time.Millisecond)
	}
	name := s.name(key, freeSuffix)
	wctx, cancel := context.WithTimeout(ctx, d+awaitSlack)
	defer cancel()
	var claimed atomic.Bool // by the goroutine with its answer, or by the caller leaving
	done := make(chan error, 1)
	go func() {
		woken, err := s.conn.BLPop(wctx, name, d)
		if claimed.CompareAndSwap(false, true) {
			done <- err
		} else if woken {
			// The caller left: hand the wake-up on to another waiter.
			s.pushWake(name)
		}
	}()
	var err error
	select {
	case err = <-done:
	case <-wctx.Done():
		if claimed.CompareAndSwap(false, true) {
			return nil
		}
		err = <-done // the answer came just now
	}
	if err == nil || ctx.Err() != nil {
		return nil
	}
	return err
}

// awaitSlack is how long after its BLPOP's timeout an AwaitLease waits for
// Redis's answer.
const awaitSlack = 100 * time.Millisecond

// pushWake pushes back a wake-up that a BLPOP took for a caller that had
// left, with the expiry a release gives it.
func (s *RedisStore) pushWake(name string) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_, _ = s.run(ctx, wakeScript, []string{name}, millis(leaseWakeTTL))
}
