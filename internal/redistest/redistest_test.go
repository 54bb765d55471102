package redistest_test

import (
	"errors"
	"fmt"
	"net"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/dthrottle/throttle/internal/redistest"
)

func TestServerStopRestart(t *testing.T) {
	s := redistest.Start(t)
	require.NotEqual(t, 6379, s.Port)
	require.Equal(t, fmt.Sprintf("127.0.0.1:%d", s.Port), s.Addr)
	require.NotZero(t, s.PID)

	ctx := t.Context()
	c := s.Client(t)
	require.NoError(t, c.Set(ctx, "greeting", "hello", 0).Err())
	got, err := c.Get(ctx, "greeting").Result()
	require.NoError(t, err)
	require.Equal(t, "hello", got)

	oldPID := s.PID
	s.Stop()
	s.Stop() // idempotent

	// The process is gone and reaped: a zombie would still accept signal 0.
	p, err := os.FindProcess(oldPID)
	if err == nil {
		err = p.Signal(syscall.Signal(0))
	}
	require.Error(t, err, "redis-server pid %d still exists after Stop", oldPID)

	// Nothing answers on the port any more.
	conn, err := net.DialTimeout("tcp", s.Addr, 500*time.Millisecond)
	if err == nil {
		conn.Close()
	}
	require.Error(t, err, "port %d still accepts connections after Stop", s.Port)

	s.Restart(t)
	require.Equal(t, fmt.Sprintf("127.0.0.1:%d", s.Port), s.Addr)
	require.NotEqual(t, oldPID, s.PID)

	c2 := s.Client(t)
	require.NoError(t, c2.Ping(ctx).Err())
	// Persistence is off, so the restarted server starts empty.
	require.True(t, errors.Is(c2.Get(ctx, "greeting").Err(), redis.Nil))
	require.NoError(t, c2.Set(ctx, "greeting", "again", 0).Err())
}

func TestCluster(t *testing.T) {
	start := time.Now()
	cl := redistest.StartCluster(t, 3)
	t.Logf("3-node cluster ready in %v", time.Since(start))
	require.Len(t, cl.Nodes, 3)
	require.Len(t, cl.Addrs, 3)
	for i, n := range cl.Nodes {
		require.Equal(t, n.Addr, cl.Addrs[i])
		require.NotEqual(t, 6379, n.Port)
	}

	ctx := t.Context()
	cc := cl.Client(t)

	// Pick keys until every master owns at least one of them.
	owners := map[string]string{} // master addr -> key
	for i := 0; len(owners) < len(cl.Nodes) && i < 1000; i++ {
		key := fmt.Sprintf("key:%d", i)
		m, err := cc.MasterForKey(ctx, key)
		require.NoError(t, err)
		if _, ok := owners[m.Options().Addr]; !ok {
			owners[m.Options().Addr] = key
		}
	}
	require.Len(t, owners, len(cl.Nodes), "keys should spread over all masters")

	for addr, key := range owners {
		require.NoError(t, cc.Set(ctx, key, addr, 0).Err())
	}
	for addr, key := range owners {
		got, err := cc.Get(ctx, key).Result()
		require.NoError(t, err)
		require.Equal(t, addr, got)
	}
}

func TestServerKill(t *testing.T) {
	s := redistest.Start(t)
	oldPID := s.PID
	s.Kill()
	s.Kill() // idempotent
	p, err := os.FindProcess(oldPID)
	if err == nil {
		err = p.Signal(syscall.Signal(0))
	}
	require.Error(t, err, "redis-server pid %d still exists after Kill", oldPID)
	_, err = s.Do("PING")
	require.Error(t, err, "PING after Kill")

	s.Restart(t)
	got, err := s.Do("PING")
	require.NoError(t, err, "PING after Restart")
	require.Equal(t, "PONG", got)
}

func TestStartTLS(t *testing.T) {
	s := redistest.StartTLS(t)
	require.Equal(t, "rediss://"+s.Addr, s.URL())
	got, err := s.Do("PING") // Do speaks TLS to this server
	require.NoError(t, err)
	require.Equal(t, "PONG", got)
	require.NoError(t, s.Client(t).Ping(t.Context()).Err(), "PING through Client, which sets TLSConfig")

	plain := redis.NewClient(&redis.Options{Addr: s.Addr, MaxRetries: -1, DialTimeout: time.Second, ReadTimeout: time.Second})
	t.Cleanup(func() { _ = plain.Close() })
	require.Error(t, plain.Ping(t.Context()).Err(), "a plain-text PING to a TLS-only server")
}
