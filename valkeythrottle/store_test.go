package valkeythrottle

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	valkey "github.com/valkey-io/valkey-go"

	throttle "github.com/dthrottle/throttle"
	"github.com/dthrottle/throttle/internal/redistest"
	"github.com/dthrottle/throttle/internal/storecontract"
	"github.com/dthrottle/throttle/valkeythrottle/internal/rewrite"
)

var _ throttle.RedisConn = (*conn)(nil)

// TestGeneratedFilesAreCurrent fails when a file made of rueidisthrottle's
// (conn.go, store.go) differs from what go generate writes now.
func TestGeneratedFilesAreCurrent(t *testing.T) {
	for _, name := range rewrite.Files {
		src, err := os.ReadFile(filepath.Join("..", "rueidisthrottle", name))
		require.NoError(t, err)
		want, err := rewrite.Rewrite(name, src)
		require.NoError(t, err)
		got, err := os.ReadFile(name)
		require.NoError(t, err)
		assert.True(t, bytes.Equal(got, want), "%s is not what go generate makes of ../rueidisthrottle/%s: run go generate in valkeythrottle/", name, name)
	}
}

func requireRedis(t *testing.T) {
	t.Helper()
	if !redistest.Available() && os.Getenv("THROTTLE_REQUIRE_REDIS") != "1" {
		t.Skip("redis-server not found")
	}
}

func newClient(tb testing.TB, addrs ...string) valkey.Client {
	tb.Helper()
	c, err := valkey.NewClient(valkey.ClientOption{InitAddress: addrs})
	require.NoError(tb, err, "valkey.NewClient(%v)", addrs)
	tb.Cleanup(c.Close)
	return c
}

func ttlOf(tb testing.TB, c valkey.Client, s *throttle.RedisStore) func(string, int) time.Duration {
	return storecontract.RedisTTL(tb, s, func(ctx context.Context, name string) (time.Duration, error) {
		n, err := c.Do(ctx, c.B().Pttl().Key(name).Build()).AsInt64()
		if n < 0 {
			return time.Duration(n), err
		}
		return time.Duration(n) * time.Millisecond, err
	})
}

// TestStoreContract runs the Store and Hold contracts on valkey-go, on a
// redis-server and on a 3-master Cluster (Valkey speaks the same protocol
// and runs the same scripts).
func TestStoreContract(t *testing.T) {
	requireRedis(t)
	rc := newClient(t, redistest.Start(t).Addr)
	rs := NewStore(rc, throttle.WithKeyPrefix("contract:"))
	cc := newClient(t, redistest.StartCluster(t, 3).Addrs...)
	require.Greater(t, len(cc.Nodes()), 1, "valkey-go client of the Cluster: nodes")
	cs := NewStore(cc, throttle.WithKeyPrefix("contract:"))
	hs := []storecontract.Harness{
		{Name: "valkey-go", Store: rs, Advance: storecontract.Sleep, TTL: ttlOf(t, rc, rs), Tick: storecontract.RedisTick},
		{Name: "valkey-go-cluster", Store: cs, Advance: storecontract.Sleep, TTL: ttlOf(t, cc, cs), Tick: storecontract.RedisTick},
	}
	storecontract.Run(t, hs, storecontract.Cases, "contract/")
	storecontract.Run(t, hs, storecontract.HoldCases, "block/")
}

// TestSharedWithGoRedis checks that a valkey-go store and a go-redis store
// on one server decide one throttle together: what one admits, the other
// counts.
func TestSharedWithGoRedis(t *testing.T) {
	requireRedis(t)
	srv := redistest.Start(t)
	vs := NewStore(newClient(t, srv.Addr))
	gs := throttle.NewRedisStore(srv.Client(t, func(o *redis.Options) { o.ContextTimeoutEnabled = true }))
	ctx := context.Background()
	for _, limit := range []int{1, 3, 100} {
		req := throttle.Request{Interval: time.Hour, Limit: limit}
		key := fmt.Sprint("shared/", limit)
		admitted := 0
		for i := range 2 * limit {
			s := vs
			if i%2 == 1 {
				s = gs
			}
			res, err := s.Take(ctx, key, req)
			require.NoError(t, err)
			if res.OK {
				admitted++
			}
		}
		assert.Equal(t, limit, admitted, "limit %d: admitted by both stores together out of %d", limit, 2*limit)
	}
}
