package throttle

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dthrottle/throttle/internal/redistest"
	"github.com/dthrottle/throttle/internal/simevent"
)

// TestSentinelFailover kills the primary (SIGKILL) of a primary, replica and
// Sentinel set while callers use it through a go-redis failover client:
// every call stays bounded by the timeout, fails closed while there is no
// primary, and calls succeed again once the Sentinel has promoted the
// replica, with no action from the caller.
//
// It also measures what the guarantee becomes across the failover, and logs
// it (replication is asynchronous, so zero cannot be asserted):
//   - provable violations of limit 1 per 200 ms on one key under continuous
//     demand from several callers, each with its own throttle;
//   - admissions lost by the failover: starts of fresh keys (limit 1 per
//     minute) admitted by the old primary just before it died whose keys
//     the new primary does not have, so that it would admit them again
//     within their interval.
//
// It runs on a failover client with ContextTimeoutEnabled and on one with
// go-redis's default (without it).
func TestSentinelFailover(t *testing.T) {
	if testing.Short() {
		t.Skip("failover test skipped in -short mode")
	}
	t.Parallel()
	for _, cte := range []bool{true, false} {
		t.Run(fmt.Sprintf("ContextTimeoutEnabled=%v", cte), func(t *testing.T) {
			t.Parallel()
			testSentinelFailover(t, cte)
		})
	}
}

func testSentinelFailover(t *testing.T, cte bool) {
	setup := time.Now()
	sn := redistest.StartSentinel(t, 1)
	t.Logf("primary, replica and Sentinel ready in %v", time.Since(setup).Round(time.Millisecond))
	c := sn.Client(t, func(o *redis.FailoverOptions) {
		o.DialTimeout = 200 * time.Millisecond
		o.ContextTimeoutEnabled = cte
	})
	store := NewRedisStore(c, WithKeyPrefix("failover:"))
	const (
		interval = 200 * time.Millisecond
		timeout  = 100 * time.Millisecond
		callers  = 6
	)
	ctx := context.Background()

	var (
		mu         sync.Mutex
		starts     []simevent.Admission
		slowest    time.Duration
		slowestErr error
		errs       int
		lastErr    error
		lastErrAt  time.Time
		lastOK     time.Time // the latest call that the store decided
		// firstOKAfterKill is when the first call that began after the
		// kill was decided by the store.
		firstOKAfterKill time.Time
		killedAt         time.Time
	)
	record := func(asked, done time.Time, admitted bool, err error) {
		mu.Lock()
		defer mu.Unlock()
		if d := done.Sub(asked); d > slowest {
			slowest, slowestErr = d, err
		}
		if err != nil {
			errs++
			lastErr, lastErrAt = err, done
			return
		}
		lastOK = done
		if !killedAt.IsZero() && asked.After(killedAt) && firstOKAfterKill.IsZero() {
			firstOKAfterKill = done
		}
		if admitted {
			starts = append(starts, simevent.Admission{Asked: asked.UnixNano(), Started: done.UnixNano()})
		}
	}

	var wg sync.WaitGroup
	stop := make(chan struct{})
	for range callers {
		th, err := New("one", interval, WithStore(store), WithTimeout(timeout), WithDenyCache(false))
		require.NoError(t, err)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				asked := time.Now()
				d, err := th.Allow(ctx)
				record(asked, time.Now(), d.Allowed && err == nil, err)
				time.Sleep(time.Duration(rand.Int64N(int64(2 * time.Millisecond))))
			}
		}()
	}
	// Fresh keys with a long interval: each admission writes a new key, so
	// the old primary's last writes are the ones at risk.
	var (
		freshMu  sync.Mutex
		fresh    []string // keys admitted before the kill
		freshSeq atomic.Int64
		freshEnd = make(chan struct{})
	)
	var freshWG sync.WaitGroup
	for range 2 {
		freshWG.Add(1)
		go func() {
			defer freshWG.Done()
			for {
				select {
				case <-freshEnd:
					return
				default:
				}
				key := fmt.Sprintf("fresh/%d", freshSeq.Add(1))
				tctx, cancel := context.WithTimeout(ctx, timeout)
				d, err := store.Take(tctx, key, Request{Interval: time.Minute, Limit: 1})
				cancel()
				if err == nil && d.OK {
					freshMu.Lock()
					fresh = append(fresh, key)
					freshMu.Unlock()
				}
			}
		}()
	}

	time.Sleep(500 * time.Millisecond)
	oldPrimary := sn.Primary.Addr
	mu.Lock()
	killedAt = time.Now()
	mu.Unlock()
	sn.Primary.Kill()
	close(freshEnd) // the fresh keys admitted up to the kill are the ones at risk
	freshWG.Wait()

	// Wait for the promotion and for callers to be decided again.
	const recoveryLimit = 15 * time.Second
	var promotedAt time.Time
	for deadline := killedAt.Add(recoveryLimit); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if promotedAt.IsZero() {
			if m, err := sn.Master(); err == nil && m != oldPrimary {
				promotedAt = time.Now()
			}
		}
		mu.Lock()
		ok := !firstOKAfterKill.IsZero()
		mu.Unlock()
		if ok && !promotedAt.IsZero() {
			break
		}
	}
	recoveredAt := func() time.Time { mu.Lock(); defer mu.Unlock(); return firstOKAfterKill }()
	if recoveredAt.IsZero() {
		close(stop)
		wg.Wait()
		t.Fatalf("no call was decided within %v of killing the primary (promoted: %v); last error: %v", recoveryLimit, !promotedAt.IsZero(), lastErr)
	}
	// Keep calling for a while after the recovery.
	time.Sleep(700 * time.Millisecond)
	close(stop)
	wg.Wait()
	end := time.Now()

	// Which fresh keys did the new primary lose?
	lost := 0
	pipe := c.Pipeline()
	exists := make([]*redis.IntCmd, len(fresh))
	for i, k := range fresh {
		exists[i] = pipe.Exists(ctx, store.name(k, ""))
	}
	_, err := pipe.Exec(ctx)
	require.NoError(t, err, "EXISTS of the fresh keys on the new primary")
	for _, e := range exists {
		if e.Val() == 0 {
			lost++
		}
	}

	mu.Lock()
	defer mu.Unlock()
	r := simevent.Check(starts, interval, 1, end.Sub(killedAt.Add(-500*time.Millisecond)))
	t.Logf("primary %s killed; Sentinel promoted the replica after %v; first call decided by the new primary %v after the kill; last error %v after the kill",
		oldPrimary, promotedAt.Sub(killedAt).Round(time.Millisecond), recoveredAt.Sub(killedAt).Round(time.Millisecond), lastErrAt.Sub(killedAt).Round(time.Millisecond))
	t.Logf("limit 1 per %v, %d callers: %d starts, %d store errors (fail closed), slowest call %v with a %v timeout, provable violations across the failover: %d",
		interval, callers, r.Starts, errs, slowest.Round(time.Millisecond), timeout, r.Violations)
	t.Logf("fresh keys (limit 1 per minute) admitted before the kill: %d, lost by the failover (would be admitted again): %d", len(fresh), lost)

	assert.Less(t, slowest, time.Second, "slowest call with a %v timeout (its error: %v)", timeout, slowestErr)
	assert.Positive(t, errs, "calls that failed while there was no primary")
	assert.True(t, lastOK.After(recoveredAt), "calls kept succeeding after the recovery")
	// Every call that began well after the recovery was decided.
	assert.True(t, lastErrAt.Before(recoveredAt.Add(500*time.Millisecond)),
		"store error %v after the kill, more than 500ms after calls recovered (%v): %v",
		lastErrAt.Sub(killedAt), recoveredAt.Sub(killedAt), lastErr)
}
