package rueidisthrottle

import (
	"context"
	"fmt"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/redis/rueidis"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	throttle "github.com/dthrottle/throttle"
	"github.com/dthrottle/throttle/internal/redistest"
	"github.com/dthrottle/throttle/internal/storecontract"
)

var _ throttle.RedisConn = (*conn)(nil)

func requireRedis(t *testing.T) {
	t.Helper()
	if !redistest.Available() && os.Getenv("THROTTLE_REQUIRE_REDIS") != "1" {
		t.Skip("redis-server not found")
	}
}

// newClient returns a rueidis client of addrs (several for a Cluster),
// closed when the test ends.
func newClient(tb testing.TB, addrs ...string) rueidis.Client {
	return newClientWith(tb, rueidis.ClientOption{}, addrs...)
}

func newClientWith(tb testing.TB, o rueidis.ClientOption, addrs ...string) rueidis.Client {
	tb.Helper()
	o.InitAddress = addrs
	c, err := rueidis.NewClient(o)
	require.NoError(tb, err, "rueidis.NewClient(%v)", addrs)
	tb.Cleanup(c.Close)
	return c
}

// ttlOf is the Harness TTL of s on the rueidis client c.
func ttlOf(tb testing.TB, c rueidis.Client, s *throttle.RedisStore) func(string, int) time.Duration {
	return storecontract.RedisTTL(tb, s, func(ctx context.Context, name string) (time.Duration, error) {
		n, err := c.Do(ctx, c.B().Pttl().Key(name).Build()).AsInt64()
		if n < 0 {
			return time.Duration(n), err
		}
		return time.Duration(n) * time.Millisecond, err
	})
}

// harnesses returns the stores on rueidis that the contract runs on: one
// redis-server (in RESP3, and in RESP2 as on Redis 5) and a 3-master
// Cluster (rueidis's cluster client, seeded with every node).
func harnesses(t *testing.T) []storecontract.Harness {
	requireRedis(t)
	srv := redistest.Start(t)
	rc := newClient(t, srv.Addr)
	rs := NewStore(rc, throttle.WithKeyPrefix("contract:"))
	// RESP2, as rueidis speaks to Redis 5 (which has no client tracking):
	// script replies and nil replies in the older protocol.
	r2 := newClientWith(t, rueidis.ClientOption{AlwaysRESP2: true, DisableCache: true}, srv.Addr)
	r2s := NewStore(r2, throttle.WithKeyPrefix("contract-resp2:"))
	cc := newClient(t, redistest.StartCluster(t, 3).Addrs...)
	require.Greater(t, len(cc.Nodes()), 1, "rueidis client of the Cluster: nodes")
	cs := NewStore(cc, throttle.WithKeyPrefix("contract:"))
	return []storecontract.Harness{
		{Name: "rueidis", Store: rs, Advance: storecontract.Sleep, TTL: ttlOf(t, rc, rs), Tick: storecontract.RedisTick},
		{Name: "rueidis-resp2", Store: r2s, Advance: storecontract.Sleep, TTL: ttlOf(t, r2, r2s), Tick: storecontract.RedisTick},
		{Name: "rueidis-cluster", Store: cs, Advance: storecontract.Sleep, TTL: ttlOf(t, cc, cs), Tick: storecontract.RedisTick},
	}
}

func TestStoreContract(t *testing.T) {
	storecontract.Run(t, harnesses(t), storecontract.Cases, "contract/")
}

func TestHoldContract(t *testing.T) {
	storecontract.Run(t, harnesses(t), storecontract.HoldCases, "block/")
}

func TestNewStoreNil(t *testing.T) {
	assert.PanicsWithValue(t, "rueidisthrottle: NewStore with a nil client", func() { NewStore(nil) })
}

// TestClusterMultiKey sends every multi-key command and script of the store
// on rueidis's cluster client, whose command builder panics when the keys
// of one command are in different slots: slots of a limit above 1, the
// window of a limit above 64, windows of WithLimitPer, leases, and Reset
// (one DEL of all of a throttle's keys).
func TestClusterMultiKey(t *testing.T) {
	requireRedis(t)
	cl := redistest.StartCluster(t, 3)
	c := newClient(t, cl.Addrs...)
	s := NewStore(c, throttle.WithKeyPrefix("multikey:"))
	ctx := context.Background()
	for _, tc := range []struct {
		name string
		opts []throttle.Option
	}{
		{"limit 5", []throttle.Option{throttle.WithLimit(5)}},
		{"limit 5 wait", []throttle.Option{throttle.WithLimit(5), throttle.WithWait(time.Minute)}},
		{"limit 1000", []throttle.Option{throttle.WithLimit(1000)}},
		{"limit 1000 no permits", []throttle.Option{throttle.WithLimit(1000), throttle.WithPermitBatch(1)}},
		{"limit per", []throttle.Option{throttle.WithLimit(3), throttle.WithLimitPer(5, time.Hour)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// Keys whose hash tags fall in many slots: the store's keys of
			// one throttle must all be in that throttle's slot.
			slots := map[int]bool{}
			for i := range 8 {
				key := fmt.Sprintf("%s/%d", tc.name, i)
				slot, err := cl.KeySlot("{" + key + "}")
				require.NoError(t, err)
				slots[slot] = true
				th, err := throttle.New(key, time.Hour, append(tc.opts, throttle.WithStore(s))...)
				require.NoError(t, err)
				for j := range 3 {
					d, err := th.Allow(ctx)
					require.NoError(t, err, "%q: Allow %d", key, j)
					assert.True(t, d.Allowed, "%q: Allow %d of a limit of 3 or more", key, j)
				}
				require.NoError(t, th.Hold(ctx, time.Minute), "%q: Hold", key)
				require.NoError(t, th.Reset(ctx), "%q: Reset", key)
				d, err := th.Allow(ctx)
				require.NoError(t, err, "%q: Allow after Reset", key)
				assert.True(t, d.Allowed, "%q: Allow after Reset", key)
			}
			t.Logf("%d slots", len(slots))
		})
	}
	t.Run("lease", func(t *testing.T) {
		for i := range 8 {
			key := fmt.Sprintf("lease/%d", i)
			th, err := throttle.New(key, time.Millisecond, throttle.WithStore(s), throttle.WithConcurrency(2), throttle.WithLimit(3))
			require.NoError(t, err)
			a, err := th.Acquire(ctx)
			require.NoError(t, err, "%q: first Acquire", key)
			b, err := th.Acquire(ctx)
			require.NoError(t, err, "%q: second Acquire", key)
			_, err = th.Acquire(ctx)
			assert.ErrorIs(t, err, throttle.ErrAtCapacity, "%q: third Acquire of a cap of 2", key)
			a.Release()
			b.Release()
		}
	})
}

// TestScriptCacheLoss empties the script cache of the server (and of every
// Cluster node) between decisions that run scripts: EVALSHA gets NOSCRIPT
// and the store sends EVAL on a command built anew (rueidis recycles the
// first one once Do returns).
func TestScriptCacheLoss(t *testing.T) {
	requireRedis(t)
	single := redistest.Start(t)
	cl := redistest.StartCluster(t, 3)
	for _, tc := range []struct {
		name    string
		client  rueidis.Client
		servers []*redistest.Server
	}{
		{"single", newClient(t, single.Addr), []*redistest.Server{single}},
		{"cluster", newClient(t, cl.Addrs...), cl.Nodes},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := NewStore(tc.client, throttle.WithKeyPrefix("flush:"))
			ctx := context.Background()
			for _, limit := range []int{2, 1000} {
				key := fmt.Sprintf("%s/%d", tc.name, limit)
				req := throttle.Request{Interval: time.Hour, Limit: limit}
				res, err := s.Take(ctx, key, req)
				require.NoError(t, err)
				require.True(t, res.OK)
				for _, srv := range tc.servers {
					_, err := srv.Do("SCRIPT", "FLUSH")
					require.NoError(t, err, "SCRIPT FLUSH on %s", srv.Addr)
				}
				// limit 2: the second start is the slots script.
				res, err = s.Take(ctx, key, throttle.Request{Interval: time.Hour, Limit: limit, MaxWait: time.Hour})
				require.NoError(t, err, "limit %d: Take after SCRIPT FLUSH", limit)
				assert.True(t, res.OK, "limit %d: second Take after SCRIPT FLUSH", limit)
				assert.Zero(t, res.Delay, "limit %d: second Take after SCRIPT FLUSH: delay", limit)
			}
		})
	}
}

// TestBlockingCommandsAside checks that rueidis marks the store's BLPOP as
// a blocking command (sent on a dedicated connection), and that callers
// blocked waiting for a lease (AwaitLease, in BLPOP) hold up no decision of
// other throttles on the same client: each of those returns within 1 s
// while the waiters wait for 10 s. Cancelling the waiters' context ends
// their wait within 1 s.
func TestBlockingCommandsAside(t *testing.T) {
	requireRedis(t)
	c := newClient(t, redistest.Start(t).Addr)
	blpop := c.B().Blpop().Key("k").Timeout(1).Build()
	assert.True(t, blpop.IsBlock(), "BLPOP built by rueidis is a blocking command")

	s := NewStore(c, throttle.WithKeyPrefix("blocking:"))
	ctx := context.Background()
	capped, err := throttle.New("capped", 0, throttle.WithStore(s), throttle.WithConcurrency(1), throttle.WithWait(10*time.Second))
	require.NoError(t, err)
	held, err := capped.Acquire(ctx)
	require.NoError(t, err)
	defer held.Release()

	const waiters = 4
	var wg sync.WaitGroup
	waitCtx, stopWaiting := context.WithCancel(ctx)
	for range waiters {
		wg.Add(1)
		go func() {
			defer wg.Done()
			l, err := capped.Acquire(waitCtx)
			if err == nil {
				l.Release()
			}
		}()
	}
	time.Sleep(300 * time.Millisecond) // the waiters are in BLPOP

	for i := range 20 {
		th, err := throttle.New(fmt.Sprint("free/", i), time.Hour, throttle.WithStore(s), throttle.WithTimeout(5*time.Second), throttle.WithLimit(1+i%3))
		require.NoError(t, err)
		start := time.Now()
		d, err := th.Allow(ctx)
		elapsed := time.Since(start)
		require.NoError(t, err, "Allow %d while %d callers wait for a lease", i, waiters)
		assert.True(t, d.Allowed, "Allow %d", i)
		assert.Less(t, elapsed, time.Second, "Allow %d while %d callers wait in BLPOP took %v", i, waiters, elapsed)
	}
	// Cancelling the waiters' context ends their BLPOPs, long before
	// their 10 s wait.
	start := time.Now()
	stopWaiting()
	wg.Wait()
	assert.Less(t, time.Since(start), time.Second, "waiters in BLPOP returning after their context was cancelled")
}
