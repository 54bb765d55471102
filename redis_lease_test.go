package throttle

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dthrottle/throttle/internal/redistest"
)

// TestAwaitLeaseAbandonedWaitStealsNothing leaves an AwaitLease early, once
// by its own wait running out (100 ms, where BLPOP's timeout in whole
// seconds would block on in Redis) and once by its ctx being cancelled
// (a 3 s wait). Another waiter then blocks for 5 s and a lease is
// released: that waiter wakes within 2 s, so the wake-up did not go to the
// BLPOP that nobody waits for any more. On a default client (no
// ContextTimeoutEnabled) and on one with ContextTimeoutEnabled, on
// redis-server (and miniredis).
func TestAwaitLeaseAbandonedWaitStealsNothing(t *testing.T) {
	backends := map[string]string{"miniredis": miniredis.RunT(t).Addr()}
	if redistest.Available() || requireRedis() {
		backends["redis"] = redistest.Start(t).Addr
	} else {
		t.Log("redis-server not found: runs on miniredis only")
	}
	for name, addr := range backends {
		for _, cte := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/ContextTimeoutEnabled=%v", name, cte), func(t *testing.T) {
				c := redis.NewClient(&redis.Options{Addr: addr, ContextTimeoutEnabled: cte})
				t.Cleanup(func() { _ = c.Close() })
				store := NewRedisStore(c, WithKeyPrefix(fmt.Sprintf("await%v:", cte)))
				req := Request{Concurrency: 1, LeaseTTL: time.Minute}
				for _, leave := range []string{"wait ran out", "ctx cancelled"} {
					t.Run(leave, func(t *testing.T) {
						key := "await/" + leave
						res, err := store.TakeLease(context.Background(), key, req, "holder")
						require.NoError(t, err)
						require.True(t, res.OK, "the one lease")

						// Each waiter first finds the lease held, as Acquire's
						// waiters do: a release wakes the waiters so counted.
						waiter := req
						waiter.MaxWait = 5 * time.Second
						for _, token := range []string{"w1", "w2"} {
							res, err := store.TakeLease(context.Background(), key, waiter, token)
							require.NoError(t, err)
							require.True(t, res.Full, "a waiter's TakeLease with the lease held")
						}
						begin := time.Now()
						if leave == "wait ran out" {
							require.NoError(t, store.AwaitLease(context.Background(), key, req, 100*time.Millisecond))
						} else {
							ctx, cancel := context.WithCancel(context.Background())
							time.AfterFunc(50*time.Millisecond, cancel)
							require.NoError(t, store.AwaitLease(ctx, key, req, 3*time.Second))
						}
						assert.Less(t, time.Since(begin), time.Second, "the first AwaitLease returns")

						woke := make(chan time.Duration, 1)
						go func() {
							begin := time.Now()
							_ = store.AwaitLease(context.Background(), key, req, 5*time.Second)
							woke <- time.Since(begin)
						}()
						time.Sleep(100 * time.Millisecond)
						released := time.Now()
						require.NoError(t, store.ReleaseLease(context.Background(), key, req, "holder"))
						d := <-woke
						assert.Less(t, time.Since(released), 2*time.Second,
							"the second waiter (5 s wait) after a release, %v after the first left (%s); it waited %v", leave, released.Sub(begin), d)
					})
				}
			})
		}
	}
}
