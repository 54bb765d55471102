package throttle_test

import (
	"context"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	throttle "github.com/dthrottle/throttle"
	"github.com/dthrottle/throttle/internal/redistest"
	"github.com/dthrottle/throttle/internal/storecontract"
)

// goRedisTTL is the Harness TTL of s on the go-redis client c.
func goRedisTTL(tb testing.TB, c redis.UniversalClient, s *throttle.RedisStore) func(string, int) time.Duration {
	return storecontract.RedisTTL(tb, s, func(ctx context.Context, name string) (time.Duration, error) {
		return c.PTTL(ctx, name).Result()
	})
}

// harnesses returns every store the contract runs on in this module:
// MemoryStore and RedisStore on miniredis with fake clocks, and RedisStore
// on a real redis-server (also through go-redis auto-pipelining) and on a
// 3-master Redis Cluster (skipped, or failed with THROTTLE_REQUIRE_REDIS=1,
// when the binaries are missing). Module rueidisthrottle runs the same
// contract on its own stores.
func harnesses(t *testing.T) []storecontract.Harness {
	mem, memAdvance := throttle.FakeMemory()
	mr, mrAdvance := throttle.FakeMiniredis(t)
	mc := redis.NewClient(&redis.Options{Addr: mr.Addr(), ContextTimeoutEnabled: true})
	t.Cleanup(func() { _ = mc.Close() })
	ms := throttle.NewRedisStore(mc)
	hs := []storecontract.Harness{
		{Name: "memory", Store: mem, Fake: true, Advance: memAdvance},
		{Name: "miniredis", Store: ms, Fake: true, Advance: mrAdvance, TTL: goRedisTTL(t, mc, ms), Tick: storecontract.RedisTick},
	}
	if !redistest.Available() && os.Getenv("THROTTLE_REQUIRE_REDIS") != "1" {
		t.Log("redis-server not found: the contract runs on MemoryStore and miniredis only")
		return hs
	}
	srv := redistest.Start(t)
	rc := srv.Client(t)
	rs := throttle.NewRedisStore(rc, throttle.WithKeyPrefix("contract:"))
	hs = append(hs, storecontract.Harness{Name: "redis", Store: rs, Advance: storecontract.Sleep, TTL: goRedisTTL(t, rc, rs), Tick: storecontract.RedisTick})
	// The same server through go-redis auto-pipelining: commands of
	// concurrent callers share round trips, and a queued command's
	// context is not honoured (the store bounds the wait itself).
	ap, err := rc.AutoPipeline()
	require.NoError(t, err, "AutoPipeline")
	t.Cleanup(func() { _ = ap.Close() })
	as := throttle.NewRedisStore(ap, throttle.WithKeyPrefix("contract-ap:"))
	hs = append(hs, storecontract.Harness{Name: "redis-autopipeline", Store: as, Advance: storecontract.Sleep, TTL: goRedisTTL(t, rc, as), Tick: storecontract.RedisTick})
	cc := redistest.StartCluster(t, 3).Client(t)
	cs := throttle.NewRedisStore(cc, throttle.WithKeyPrefix("contract:"))
	hs = append(hs, storecontract.Harness{Name: "cluster", Store: cs, Advance: storecontract.Sleep, TTL: goRedisTTL(t, cc, cs), Tick: storecontract.RedisTick})
	return hs
}

func TestStoreContract(t *testing.T) {
	storecontract.Run(t, harnesses(t), storecontract.Cases, "contract/")
}

func TestHoldContract(t *testing.T) {
	storecontract.Run(t, harnesses(t), storecontract.HoldCases, "block/")
}

// TestAtomicityCheckCatchesRacyStore shows that the contract's concurrent
// check fails for a store that reads and then writes: the contract would
// catch a loss of atomicity in any store it runs on.
func TestAtomicityCheckCatchesRacyStore(t *testing.T) {
	mr := miniredis.RunT(t)
	c := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	t.Cleanup(func() { _ = c.Close() })
	const n = 20
	var reads sync.WaitGroup
	reads.Add(n)
	got := storecontract.AdmitConcurrently(t, throttle.NewRacyStore(c, &reads), "racy", throttle.Request{Interval: time.Minute, Limit: 1}, n)
	assert.Greater(t, got, 1, "a read-then-write store under %d concurrent Takes admitted %d, want more than 1", n, got)
}
