package throttle

import (
	"context"
	"fmt"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/dthrottle/throttle/internal/faultproxy"
	"github.com/dthrottle/throttle/internal/redistest"
)

// Benchmarks of the library's own hot paths. The Redis ones compare an
// allowed decision with the floor: a bare SET NX PX on the same client.
// Run with: go test -run '^$' -bench 'Redis|MemoryStore|DenyCache|AllowOverhead' -benchmem -count 6

// BenchmarkMemoryStore measures decisions on the MemoryStore through the
// public API, as a throttle without WithStore makes them: Keyed.Allow on
// keys whose interval has passed (limit 1), Throttle.Allow on one key with
// a limit no call reaches (limit 1<<20 per ms: the sliding window's list),
// and denials with the deny cache off, so that the store answers.
func BenchmarkMemoryStore(b *testing.B) {
	ctx := context.Background()
	admitted := func(d Decision, err error) error {
		if err != nil || !d.Allowed {
			return fmt.Errorf("not admitted: %+v, %v", d, err)
		}
		return nil
	}
	denied := func(d Decision, err error) error {
		if err != nil || d.Allowed {
			return fmt.Errorf("not denied: %+v, %v", d, err)
		}
		return nil
	}
	const memKeys = 1 << 15 // a key comes back after 32k calls: more than 1 ms
	cases := []struct {
		name string
		bind func(b *testing.B) func(i int) error // the i-th call of one goroutine
	}{
		{"allowed/limit1", func(b *testing.B) func(int) error {
			k, err := NewKeyed(time.Millisecond)
			if err != nil {
				b.Fatal(err)
			}
			keys := benchKeys("mem:", memKeys)
			return func(i int) error { return admitted(k.Allow(ctx, keys[i%memKeys])) }
		}},
		{"allowed/limit1M", func(b *testing.B) func(int) error {
			th, err := New("mem", time.Millisecond, WithLimit(1<<20))
			if err != nil {
				b.Fatal(err)
			}
			return func(int) error { return admitted(th.Allow(ctx)) }
		}},
		{"denied/limit1", deniedMemory(ctx, 1, denied)},
		{"denied/limit10", deniedMemory(ctx, 10, denied)},
	}
	for _, bc := range cases {
		b.Run(bc.name, func(b *testing.B) {
			call := bc.bind(b)
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				if err := call(i); err != nil {
					b.Fatal(err)
				}
				i++
			}
		})
		b.Run(bc.name+"/parallel", func(b *testing.B) {
			b.ReportAllocs()
			var mu sync.Mutex
			b.RunParallel(func(pb *testing.PB) {
				mu.Lock()
				call := bc.bind(b) // each goroutine its own throttle and keys
				mu.Unlock()
				i := 0
				for pb.Next() {
					if err := call(i); err != nil {
						b.Error(err)
						return
					}
					i++
				}
			})
		})
	}
}

// deniedMemory binds a Throttle of limit on its MemoryStore whose hour is
// used up, with the deny cache off.
func deniedMemory(ctx context.Context, limit int, check func(Decision, error) error) func(*testing.B) func(int) error {
	return func(b *testing.B) func(int) error {
		th, err := New("mem", time.Hour, WithLimit(limit), WithDenyCache(false))
		if err != nil {
			b.Fatal(err)
		}
		for range limit {
			if _, err := th.Allow(ctx); err != nil {
				b.Fatal(err)
			}
		}
		return func(int) error { return check(th.Allow(ctx)) }
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

// BenchmarkRedis measures allowed decisions through the public API, as a
// user makes them (Keyed.Allow with a key per call, and Throttle.Allow on a
// Throttle made beforehand for each key), against a redis-server it
// starts, next to the floor: a bare SET key 1 NX PX interval (go-redis
// SetNX) on the same client and the same keys. The interval is 1 ms and
// every key comes back long after it, so every call is admitted (a denial
// fails the benchmark); "serial" cycles one goroutine through
// serialKeys keys, "parallel64" runs 64 goroutines with 1024 keys each.
//
// Limits 1 and 10 take one SET NX PX on a slot key; limit 100 runs
// window.lua. The script rows give the cost of Lua itself: a script that
// makes no redis.call, one (a SET NX PX), and three (as window.lua makes).
// The denied rows ask Redis on every call (deny cache off) on a key whose
// hour is used up.
func BenchmarkRedis(b *testing.B) {
	srv := redistest.Start(b)
	c := srv.Client(b) // with ContextTimeoutEnabled
	plain := srv.Client(b, func(o *redis.Options) { o.ContextTimeoutEnabled = false })
	cases := []benchCase{
		floorCase(c),
		keyedCase(b, "keyed/limit1", c, 1),
		keyedCase(b, "keyed/limit10", c, 10),
		keyedCase(b, "keyed/limit100", c, 100),
		throttleCase(b, "throttle/limit1", c, 1),
		throttleCase(b, "throttle/limit10", c, 10),
		throttleCase(b, "throttle/limit100", c, 100),
		// A client without ContextTimeoutEnabled (go-redis's default): the
		// commands run on a WithTimeout clone (redis_timeout.go).
		keyedCase(b, "keyed/limit1/noctxtimeout", plain, 1),
		keyedCase(b, "keyed/limit10/noctxtimeout", plain, 10),
		throttleCase(b, "throttle/limit1/noctxtimeout", plain, 1),
		throttleCase(b, "throttle/limit10/noctxtimeout", plain, 10),
		scriptCase("script/return1", c, benchReturn1),
		scriptCase("script/1call", c, benchOneCall),
		scriptCase("script/3calls", c, benchThreeCalls),
		denied(b, "denied/limit1/nocache", c, 1),
		denied(b, "denied/limit10/nocache", c, 10),
		denied(b, "denied/limit100/nocache", c, 100),
	}
	runCases(b, cases, true)
}

// BenchmarkAllowOverhead measures what Keyed.Allow and Throttle.Allow cost
// on top of the command they send, without the network: the client's hook
// answers every command itself (SET NX: set), so the rows differ from the
// floor (SetNX through the same hook) only by this package's own work.
// Serial only: without a network a goroutine of RunParallel can cycle
// through its keys within the 1 ms that limit 1's deny cache closes each
// key for, and be denied.
func BenchmarkAllowOverhead(b *testing.B) {
	c := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1", ContextTimeoutEnabled: true})
	b.Cleanup(func() { _ = c.Close() })
	c.AddHook(answerSetNX{})
	// go-redis's default options (no ContextTimeoutEnabled): the commands go
	// through the clones' routing (redis_timeout.go).
	dc := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1"})
	b.Cleanup(func() { _ = dc.Close() })
	dc.AddHook(answerSetNX{})
	runCases(b, []benchCase{
		floorCase(c),
		keyedCase(b, "keyed/limit1", c, 1),
		keyedCase(b, "keyed/limit10", c, 10),
		throttleCase(b, "throttle/limit1", c, 1),
		throttleCase(b, "throttle/limit10", c, 10),
		keyedCase(b, "keyed/limit1/default", dc, 1),
		throttleCase(b, "throttle/limit1/default", dc, 1),
	}, false)
}

// answerSetNX is a go-redis hook that answers SET ... NX with "set" and
// sends nothing.
type answerSetNX struct{}

func (answerSetNX) DialHook(next redis.DialHook) redis.DialHook { return next }
func (answerSetNX) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}
func (answerSetNX) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if bc, ok := cmd.(*redis.BoolCmd); ok {
			bc.SetVal(true)
			return nil
		}
		return next(ctx, cmd)
	}
}

const (
	benchInterval = time.Millisecond
	serialKeys    = 1 << 14 // a key comes back after 16k calls: > 1 ms even without a network
	parallelKeys  = 1 << 10 // per goroutine, 64 goroutines
	goroutines    = 64
)

// benchCase is one row. bind returns the decision on the i-th of keys;
// admit says whether every call must be admitted (false: denied, for the
// denied rows; the floor and the scripts are not checked).
type benchCase struct {
	name  string
	bind  func(keys []string) func(ctx context.Context, i int) (ok bool, err error)
	check bool
	admit bool
	hot   bool // one key for every call and goroutine
}

func floorCase(c *redis.Client) benchCase {
	return benchCase{name: "floor/SETNX", bind: func(keys []string) func(context.Context, int) (bool, error) {
		return func(ctx context.Context, i int) (bool, error) {
			return c.SetNX(ctx, keys[i], "1", benchInterval).Result()
		}
	}}
}

func keyedCase(b *testing.B, name string, c redis.UniversalClient, limit int) benchCase {
	k, err := NewKeyed(benchInterval, WithStore(NewRedisStore(c)), WithLimit(limit))
	if err != nil {
		b.Fatal(err)
	}
	return benchCase{name: name, check: true, admit: true, bind: func(keys []string) func(context.Context, int) (bool, error) {
		return func(ctx context.Context, i int) (bool, error) {
			d, err := k.Allow(ctx, keys[i])
			return d.Allowed, err
		}
	}}
}

func throttleCase(b *testing.B, name string, c redis.UniversalClient, limit int) benchCase {
	store := NewRedisStore(c)
	return benchCase{name: name, check: true, admit: true, bind: func(keys []string) func(context.Context, int) (bool, error) {
		ths := make([]*Throttle, len(keys))
		for i, key := range keys {
			var err error
			if ths[i], err = New(key, benchInterval, WithStore(store), WithLimit(limit)); err != nil {
				b.Fatal(err)
			}
		}
		return func(ctx context.Context, i int) (bool, error) {
			d, err := ths[i].Allow(ctx)
			return d.Allowed, err
		}
	}}
}

func scriptCase(name string, c redis.UniversalClient, script *redis.Script) benchCase {
	return benchCase{name: name, bind: func(keys []string) func(context.Context, int) (bool, error) {
		return func(ctx context.Context, i int) (bool, error) {
			return true, script.Run(ctx, c, []string{keys[i]}, millis(benchInterval)).Err()
		}
	}}
}

// runCases runs each case serially (b.Loop, serialKeys keys) and, with
// parallel, with 64 goroutines (RunParallel, parallelKeys keys each, or one
// shared key).
func runCases(b *testing.B, cases []benchCase, parallel bool) {
	for _, bc := range cases {
		prefix := "bench:" + bc.name + ":"
		var serial func(context.Context, int) (bool, error)
		b.Run(bc.name, func(b *testing.B) {
			keys := benchKeys(prefix+"s:", serialKeys)
			if bc.hot {
				keys = keys[:1]
			}
			if serial == nil {
				serial = bc.bind(keys)
			}
			ctx := context.Background()
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				ok, err := serial(ctx, i)
				if err := bc.verdict(ok, err); err != nil {
					b.Fatal(err)
				}
				if i++; i == len(keys) {
					i = 0
				}
			}
		})
		if !parallel {
			continue
		}
		var par [][]string
		var ops []func(context.Context, int) (bool, error)
		b.Run(bc.name+"/parallel64", func(b *testing.B) {
			if ops == nil {
				if bc.hot {
					par = [][]string{{prefix + "s:0"}}
					op := serial
					if op == nil {
						op = bc.bind(par[0])
					}
					ops = []func(context.Context, int) (bool, error){op}
				} else {
					for g := range goroutines {
						ks := benchKeys(prefix+strconv.Itoa(g)+":", parallelKeys)
						par = append(par, ks)
						ops = append(ops, bc.bind(ks))
					}
				}
			}
			ctx := context.Background()
			var next atomic.Int64
			b.ReportAllocs()
			b.SetParallelism(max(1, goroutines/runtimeProcs()))
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				g := int(next.Add(1)-1) % len(ops)
				op, n := ops[g], len(par[g])
				i := 0
				for pb.Next() {
					ok, err := op(ctx, i)
					if err := bc.verdict(ok, err); err != nil {
						b.Error(err)
						return
					}
					if i++; i == n {
						i = 0
					}
				}
			})
		})
	}
}

func (bc benchCase) verdict(ok bool, err error) error {
	switch {
	case err != nil:
		return err
	case bc.check && ok != bc.admit:
		return fmt.Errorf("%s: allowed %v, want %v", bc.name, ok, bc.admit)
	}
	return nil
}

func benchKeys(prefix string, n int) []string {
	keys := make([]string, n)
	for i := range keys {
		keys[i] = prefix + strconv.Itoa(i)
	}
	return keys
}

// Scripts that measure what Lua costs: none, one and three redis.calls.
var (
	benchReturn1    = redis.NewScript(`return 1`)
	benchOneCall    = redis.NewScript(`return redis.call('SET', KEYS[1], '1', 'NX', 'PX', ARGV[1])`)
	benchThreeCalls = redis.NewScript(`local t = redis.call('TIME')
redis.call('RPUSH', KEYS[1], t[1] .. t[2])
return redis.call('PEXPIRE', KEYS[1], ARGV[1])`)
)

// denied returns a case of decisions on a key that is closed for an hour,
// through a Throttle with the deny cache off, so every call asks Redis.
func denied(b *testing.B, name string, c redis.UniversalClient, limit int) benchCase {
	th, err := New("bench:denied:"+strconv.Itoa(limit), time.Hour, WithStore(NewRedisStore(c)),
		WithLimit(limit), WithDenyCache(false))
	if err != nil {
		b.Fatal(err)
	}
	for range limit {
		if d, err := th.Allow(context.Background()); err != nil || !d.Allowed {
			b.Fatalf("%s: filling the hour: allowed %v, err %v", name, d.Allowed, err)
		}
	}
	return benchCase{name: name, check: true, admit: false, hot: true, bind: func([]string) func(context.Context, int) (bool, error) {
		return func(ctx context.Context, _ int) (bool, error) {
			d, err := th.Allow(ctx)
			return d.Allowed, err
		}
	}}
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
