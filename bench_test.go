package throttle

import (
	"context"
	"runtime"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/dthrottle/throttle/internal/faultproxy"
	"github.com/dthrottle/throttle/internal/redistest"
)

// Benchmarks of the library's own hot paths. The Redis ones compare an
// allowed decision with the floor: a bare SET NX PX on the same client.
// Run with: go test -run '^$' -bench . -benchmem -count 5

func BenchmarkMemoryStore(b *testing.B) {
	ctx := context.Background()
	for _, bc := range []struct {
		name string
		req  Request
	}{
		// An interval of 1 ns has always passed: every Take is admitted.
		{"allowed/limit1", Request{Interval: 1, Limit: 1}},
		{"allowed/limit10", Request{Interval: 1, Limit: 10}},
		{"denied/limit1", Request{Interval: time.Hour, Limit: 1}},
		{"denied/limit10", Request{Interval: time.Hour, Limit: 10}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			m := NewMemoryStore()
			b.ReportAllocs()
			for b.Loop() {
				_, _ = m.Take(ctx, "key", bc.req)
			}
		})
		b.Run(bc.name+"/parallel", func(b *testing.B) {
			m := NewMemoryStore()
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					_, _ = m.Take(ctx, "key", bc.req)
				}
			})
		})
	}
}

func BenchmarkDenyCache(b *testing.B) {
	ctx := context.Background()
	th, err := New("key", time.Hour)
	if err != nil {
		b.Fatal(err)
	}
	_, _ = th.Allow(ctx) // admitted; the key is now closed for an hour
	b.Run("serial", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if d, _ := th.Allow(ctx); d.Allowed {
				b.Fatal("admitted")
			}
		}
	})
	b.Run("parallel", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				_, _ = th.Allow(ctx)
			}
		})
	})
}

// BenchmarkRedis measures allowed decisions (a fresh key per call) and
// denied ones against a redis-server it starts, next to the floor.
func BenchmarkRedis(b *testing.B) {
	srv := redistest.Start(b)
	c := srv.Client(b) // with ContextTimeoutEnabled
	plain := srv.Client(b, func(o *redis.Options) { o.ContextTimeoutEnabled = false })
	ctx := context.Background()
	s := NewRedisStore(c)
	sPlain := NewRedisStore(plain)
	var seq atomic.Int64
	key := func() string { return "bench:" + strconv.FormatInt(seq.Add(1), 36) }
	cases := []struct {
		name string
		op   func() error
	}{
		{"floor/SETNX", func() error { return c.SetNX(ctx, key(), "1", time.Minute).Err() }},
		{"allowed/limit1", func() error {
			_, err := s.Take(ctx, key(), Request{Interval: time.Minute, Limit: 1})
			return err
		}},
		// A client without ContextTimeoutEnabled: each decision runs in a
		// goroutine that the caller can leave at the timeout.
		{"allowed/limit1/noctxtimeout", func() error {
			_, err := sPlain.Take(ctx, key(), Request{Interval: time.Minute, Limit: 1})
			return err
		}},
		{"allowed/limit10", func() error {
			_, err := s.Take(ctx, key(), Request{Interval: time.Minute, Limit: 10})
			return err
		}},
		// The cost of Lua itself, for comparison with the floor and with
		// allowed/limit10 (take.lua makes 4 redis.calls on a fresh key).
		{"script/return1", func() error { return benchReturn1.Run(ctx, c, []string{key()}).Err() }},
		{"script/1call", func() error { return benchOneCall.Run(ctx, c, []string{key()}, 60000).Err() }},
		{"script/3calls", func() error { return benchThreeCalls.Run(ctx, c, []string{key()}, 60000).Err() }},
		// N = 10 keys taken with SET NX PX, and the count of the taken ones
		// that Remaining would need.
		{"script/1call+exists10", func() error {
			return benchExists10.Run(ctx, c, []string{"{" + key() + "}:3"}, 60000).Err()
		}},
		{"denied/limit1/nocache", denied(b, c, 1)},
		{"denied/limit10/nocache", denied(b, c, 10)},
	}
	for _, bc := range cases {
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if err := bc.op(); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(bc.name+"/parallel64", func(b *testing.B) {
			b.ReportAllocs()
			b.SetParallelism(max(1, 64/runtimeProcs()))
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if err := bc.op(); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
	b.Cleanup(func() { c.FlushAll(context.Background()) }) // the server is the benchmark's own
}

// Scripts that measure what Lua costs: none, one and three redis.calls.
var (
	benchReturn1    = redis.NewScript(`return 1`)
	benchOneCall    = redis.NewScript(`return redis.call('SET', KEYS[1], '1', 'NX', 'PX', ARGV[1])`)
	benchThreeCalls = redis.NewScript(`local t = redis.call('TIME')
redis.call('RPUSH', KEYS[1], t[1] .. t[2])
return redis.call('PEXPIRE', KEYS[1], ARGV[1])`)
	benchExists10 = redis.NewScript(`local ok = redis.call('SET', KEYS[1], '1', 'NX', 'PX', ARGV[1])
local b = string.sub(KEYS[1], 1, -2)
return redis.call('EXISTS', b..'0', b..'1', b..'2', b..'3', b..'4', b..'5', b..'6', b..'7', b..'8', b..'9')`)
)

// denied returns a decision on a key that is closed for an hour, through a
// Throttle with the deny cache off, so every call asks Redis.
func denied(b *testing.B, c redis.UniversalClient, limit int) func() error {
	th, err := New("bench:denied:"+strconv.Itoa(limit), time.Hour, WithStore(NewRedisStore(c)),
		WithLimit(limit), WithDenyCache(false))
	if err != nil {
		b.Fatal(err)
	}
	for range limit {
		if _, err := th.Allow(context.Background()); err != nil {
			b.Fatal(err)
		}
	}
	return func() error {
		d, err := th.Allow(context.Background())
		if err == nil && d.Allowed {
			b.Fatal("admitted")
		}
		return err
	}
}

func runtimeProcs() int { return runtime.GOMAXPROCS(0) }

// BenchmarkHotKey: 64 goroutines call Allow on one key of a Throttle on
// Redis, with the deny cache. It reports the store calls per admission and
// the admissions against the ideal (1.0: limit per interval, all the time).
//
// The rtt500us cases reach Redis through a proxy that adds 250 µs each way,
// as a network would; the others over loopback, where a round trip takes
// tens of microseconds.
func BenchmarkHotKey(b *testing.B) {
	srv := redistest.Start(b)
	proxy := faultproxy.Start(b, srv.Addr)
	proxy.SetLatency(250*time.Microsecond, 250*time.Microsecond)
	clients := map[string]redis.UniversalClient{
		"loopback": srv.Client(b),
		"rtt500us": redis.NewClient(&redis.Options{Addr: proxy.Addr, ContextTimeoutEnabled: true}),
	}
	b.Cleanup(func() { _ = clients["rtt500us"].Close() })
	var seq atomic.Int64
	for _, lc := range []struct {
		name     string
		limit    int
		interval time.Duration
		link     string
	}{
		{"limit1per10ms", 1, 10 * time.Millisecond, "loopback"},
		{"limit10per10ms", 10, 10 * time.Millisecond, "loopback"},
		{"limit1per10ms/rtt500us", 1, 10 * time.Millisecond, "rtt500us"},
		{"limit10per10ms/rtt500us", 10, 10 * time.Millisecond, "rtt500us"},
	} {
		b.Run(lc.name, func(b *testing.B) {
			s := &countingStore{Store: NewRedisStore(clients[lc.link])}
			th, err := New("bench:hot:"+strconv.FormatInt(seq.Add(1), 36), lc.interval,
				WithStore(s), WithLimit(lc.limit))
			if err != nil {
				b.Fatal(err)
			}
			var admitted atomic.Int64
			b.ReportAllocs()
			b.SetParallelism(max(1, 64/runtimeProcs()))
			begin := time.Now()
			b.RunParallel(func(pb *testing.PB) {
				ctx := context.Background()
				for pb.Next() {
					d, err := th.Allow(ctx)
					if err != nil {
						b.Error(err)
						return
					}
					if d.Allowed {
						admitted.Add(1)
					}
				}
			})
			elapsed := time.Since(begin)
			if n := admitted.Load(); n > 0 {
				b.ReportMetric(float64(s.takes.Load())/float64(n), "storecalls/admission")
				ideal := float64(lc.limit) * float64(elapsed) / float64(lc.interval)
				b.ReportMetric(float64(n)/ideal, "admitted/ideal")
			}
		})
	}
}
