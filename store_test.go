package throttle

import (
	"context"
	"fmt"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// fakeMemory returns a MemoryStore on a fake clock and the function that
// moves it.
func fakeMemory() (*MemoryStore, func(time.Duration)) {
	m := NewMemoryStore()
	var mu sync.Mutex
	var now int64 = 1 // not 0: a start at 0 must still count
	m.clock = func() int64 { mu.Lock(); defer mu.Unlock(); return now }
	return m, func(d time.Duration) { mu.Lock(); now += int64(d); mu.Unlock() }
}

// fakeMiniredis starts a miniredis whose TIME and TTLs both move only with
// the returned function.
func fakeMiniredis(tb testing.TB) (*miniredis.Miniredis, func(time.Duration)) {
	tb.Helper()
	m := miniredis.RunT(tb)
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	m.SetTime(now)
	var mu sync.Mutex
	return m, func(d time.Duration) {
		mu.Lock()
		defer mu.Unlock()
		now = now.Add(d)
		m.SetTime(now)
		m.FastForward(d)
	}
}

// redisTick is the harness tick of the Redis stores: up to 3 chained
// bookings of 1 ms each (storecontract.RedisTick).
const redisTick = 3 * time.Millisecond

func requireRedis() bool { return os.Getenv("THROTTLE_REQUIRE_REDIS") == "1" }

func sleep(d time.Duration) { time.Sleep(d + 2*time.Millisecond) }

// racyStore decides limit 1 with EXISTS, then SET: the non-atomic design
// the contract must reject. reads holds every Take between its read and
// its write until all callers have read, the interleaving that such a
// store cannot survive.
type racyStore struct {
	c     *redis.Client
	reads *sync.WaitGroup
}

func (s racyStore) Take(ctx context.Context, key string, req Request) (Reservation, error) {
	n, err := s.c.Exists(ctx, key).Result()
	s.reads.Done()
	s.reads.Wait()
	if err != nil || n > 0 {
		return Reservation{RetryAfter: req.Interval}, err
	}
	return Reservation{OK: true}, s.c.Set(ctx, key, "1", req.Interval).Err()
}

func (s racyStore) Cancel(context.Context, string, Request, Reservation) error { return nil }

func TestMemoryStoreSweepsExpiredKeys(t *testing.T) {
	m, advance := fakeMemory()
	req := Request{Interval: time.Second, Limit: 1}
	for i := range 1000 {
		_, err := m.Take(context.Background(), fmt.Sprint("k", i), req)
		require.NoError(t, err)
		advance(10 * time.Millisecond)
	}
	// Keys live one second and one is added every 10 ms: about 100 are
	// live at a time, and sweeping keeps the map within twice that.
	assert.LessOrEqual(t, m.len(), 2*101+minSweep, "keys held after 1000 short-lived keys")
	advance(2 * time.Second)
	_, err := m.Take(context.Background(), "last", req)
	require.NoError(t, err)
	for i := range minSweep * 4 {
		_, err := m.Take(context.Background(), fmt.Sprint("again", i), req)
		require.NoError(t, err)
	}
	assert.LessOrEqual(t, m.len(), minSweep*4+1+minSweep, "keys held after all old keys expired")
}

func TestRedisStoreReset(t *testing.T) {
	mr, _ := fakeMiniredis(t)
	c := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	t.Cleanup(func() { _ = c.Close() })
	s := NewRedisStore(c, WithKeyPrefix("p:"))
	req := Request{Interval: time.Hour, Limit: 1}
	ctx := context.Background()
	res, err := s.Take(ctx, "k", req)
	require.NoError(t, err)
	require.True(t, res.OK)
	assert.True(t, mr.Exists("p:{k}"), "key p:{k} written under the prefix")
	require.NoError(t, s.Reset(ctx, "k", req))
	assert.False(t, mr.Exists("p:{k}"), "key after Reset")
	res, err = s.Take(ctx, "k", req)
	require.NoError(t, err)
	assert.True(t, res.OK, "Take after Reset")
}

func TestRedisStoreScriptCacheLoss(t *testing.T) {
	mr, _ := fakeMiniredis(t)
	c := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	t.Cleanup(func() { _ = c.Close() })
	s := NewRedisStore(c)
	req := Request{Interval: time.Hour, Limit: 2}
	ctx := context.Background()
	res, err := s.Take(ctx, "k", req)
	require.NoError(t, err)
	require.True(t, res.OK)
	require.NoError(t, c.ScriptFlush(ctx).Err())
	res, err = s.Take(ctx, "k", req)
	require.NoError(t, err, "Take after SCRIPT FLUSH")
	assert.True(t, res.OK, "second of limit 2 after SCRIPT FLUSH")
}
