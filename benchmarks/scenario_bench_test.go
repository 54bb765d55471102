package benchmarks

import (
	"context"
	"fmt"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dthrottle/throttle"
	"github.com/redis/go-redis/v9"
	"github.com/redis/rueidis"

	"github.com/dthrottle/throttle/benchmarks/internal/server"
)

// The workloads, each on a redis-server of its own, with one b.Run per
// library and, under it, one per mode:
//
//   - serial: one goroutine (b.Loop) cycling through 1024 keys of its own;
//   - parallel64: 64 goroutines (RunParallel), each cycling through 1024
//     keys of its own;
//   - hotkey64: 64 goroutines on one key.
//
// In the Allowed workloads the limits are such that every call of every
// library must be admitted (a key comes back long after its interval, or
// far below its limit), and a denial fails the benchmark. In the Denied
// workloads every call is on one key whose limit is used up, and an
// admission fails the benchmark.
//
// Libraries, all on the same go-redis client (but the -default ones) and
// the same key schedule:
//
//   - floor: a bare SET key 1 NX PX interval (go-redis SetNX) on each key;
//     its answer is not checked (on a hot key it is "not set");
//   - dthrottle: one throttle.Keyed per workload, Keyed.Allow(ctx, key),
//     default options;
//   - dthrottle-throttle: a *throttle.Throttle made beforehand for each key,
//     Throttle.Allow(ctx);
//   - floor-default, dthrottle-default, dthrottle-throttle-default
//     (Allowed workloads): the floor, dthrottle and dthrottle-throttle on
//     a client with go-redis's default options (no ContextTimeoutEnabled);
//   - dthrottle-nocache (Denied workloads): a Keyed with
//     throttle.WithDenyCache(false), so every call asks Redis;
//   - redis_rate, throttled, ulule: the peers, keyed per call;
//   - floor-rueidis, dthrottle-rueidis (Allowed workloads): the floor and
//     dthrottle (rueidisthrottle.NewStore) on a rueidis client, which
//     pipelines the commands of concurrent goroutines by default.
//
// Within one run of a workload benchmark the libraries follow one another,
// so with -count N they alternate N times. cmd/ratios reads these names.
//
// Run with ./run.sh, or: go test -run '^$' -bench . -benchmem -count 6

// BenchmarkAllowed1Per1ms: allowed decisions, limit 1 per millisecond.
func BenchmarkAllowed1Per1ms(b *testing.B) {
	benchAllowed(b, Limit{N: 1, Interval: time.Millisecond}, false)
}

// BenchmarkAllowed10Per1ms: allowed decisions, limit 10 per millisecond
// (ours: 10 slot keys).
func BenchmarkAllowed10Per1ms(b *testing.B) {
	benchAllowed(b, Limit{N: 10, Interval: time.Millisecond}, false)
}

// BenchmarkAllowed1e6PerSecond: allowed decisions, limit 1,000,000 per
// second (ours: the window script), also with 64 goroutines on one key.
func BenchmarkAllowed1e6PerSecond(b *testing.B) {
	benchAllowed(b, Limit{N: 1_000_000, Interval: time.Second}, true)
}

// BenchmarkAllowed1e8PerSecond: allowed decisions, limit 100,000,000 per
// second, which never binds: ours takes leased permits in batches on the
// hot key (and on keys called often enough), the peers decide per call.
func BenchmarkAllowed1e8PerSecond(b *testing.B) {
	benchAllowed(b, Limit{N: 100_000_000, Interval: time.Second}, true)
}

// BenchmarkDeniedHotKey1PerHour: denied decisions on one key whose only
// start of the hour is taken.
func BenchmarkDeniedHotKey1PerHour(b *testing.B) {
	benchDenied(b, Limit{N: 1, Interval: time.Hour})
}

// BenchmarkDeniedHotKey10PerHour: denied decisions on one key whose ten
// starts of the hour are taken.
func BenchmarkDeniedHotKey10PerHour(b *testing.B) {
	benchDenied(b, Limit{N: 10, Interval: time.Hour})
}

const (
	goroutines       = 64   // of the parallel64 and hotkey64 modes
	keysPerGoroutine = 1024 // keys each goroutine cycles through
)

// A decider decides calls on a list of keys fixed when it was made:
// decide(ctx, i) decides one call on the i-th key.
type decider func(ctx context.Context, i int) (bool, error)

// lib is one library in a workload: bind returns its decider for keys.
type lib struct {
	name string
	bind func(keys []string) decider
}

// want is the decision every call of a workload must get.
type want int

const (
	wantAny want = iota // the floor: SET NX answers either way
	wantAdmit
	wantDeny
)

// check returns what fails the benchmark for one call's outcome: a decision
// other than w, or an error of ours or of the floor. It reports a peer's
// error (throttled gives up a compare-and-swap after 10 attempts on a hot
// key) as counted, not fatal: such runs report it as errors/op.
func (w want) check(name string, ok bool, err error) (counted bool, fatal error) {
	switch {
	case err != nil && isPeer(name):
		return true, nil
	case err != nil:
		return false, fmt.Errorf("%s: %w", name, err)
	case w == wantAdmit && !ok:
		return false, fmt.Errorf("%s denied a call that its limit admits", name)
	case w == wantDeny && ok:
		return false, fmt.Errorf("%s admitted a call on a key whose limit is used up", name)
	}
	return false, nil
}

func isPeer(name string) bool {
	return !strings.HasPrefix(name, "floor") && !strings.HasPrefix(name, "dthrottle")
}

// reportErrors reports a peer's errors per op, when there were any.
func reportErrors(b *testing.B, errs int64) {
	if errs > 0 {
		b.ReportMetric(float64(errs)/float64(b.N), "errors/op")
	}
}

// keys returns the keys of one goroutine (g) of lib: distinct per library,
// so that no two libraries share a key in Redis.
func keys(lib, g string, n int) []string {
	ks := make([]string, n)
	for i := range ks {
		ks[i] = lib + ":" + g + ":" + strconv.Itoa(i)
	}
	return ks
}

// floorLib is a SET key 1 NX PX interval per call, on c.
func floorLib(c redis.UniversalClient, l Limit) lib { return floorLibNamed("floor", c, l) }

func floorLibNamed(name string, c redis.UniversalClient, l Limit) lib {
	return lib{name, func(keys []string) decider {
		return func(ctx context.Context, i int) (bool, error) {
			return c.SetNX(ctx, keys[i], "1", l.Interval).Result()
		}
	}}
}

// limiterLib decides each call with l.Allow(ctx, key).
func limiterLib(name string, l Limiter) lib {
	return lib{name, func(keys []string) decider {
		return func(ctx context.Context, i int) (bool, error) { return l.Allow(ctx, keys[i]) }
	}}
}

// throttleLib makes a *throttle.Throttle for each key beforehand and decides
// each call with its Allow.
func throttleLib(c *redis.Client, l Limit) lib { return throttleLibNamed("dthrottle-throttle", c, l) }

func throttleLibNamed(name string, c *redis.Client, l Limit) lib {
	return lib{name, func(keys []string) decider {
		ths := make([]*throttle.Throttle, len(keys))
		for i, k := range keys {
			ths[i] = must(NewDthrottle(c, k, l))
		}
		return func(ctx context.Context, i int) (bool, error) {
			d, err := ths[i].Allow(ctx)
			return d.Allowed, err
		}
	}}
}

func benchAllowed(b *testing.B, l Limit, hot bool) {
	c := server.Start(b).Client(b)
	var cmds cmdCounter
	c.AddHook(&cmds)
	// go-redis auto-pipelining (experimental in v9.23): the commands of
	// concurrent goroutines share round trips.
	ap := must(c.AutoPipeline())
	b.Cleanup(func() { _ = ap.Close() })
	// A client with go-redis's default options: no ContextTimeoutEnabled.
	dc := redis.NewClient(&redis.Options{Addr: c.Options().Addr})
	b.Cleanup(func() { _ = dc.Close() })
	libs := []lib{
		floorLib(c, l),
		limiterLib("dthrottle", KeyedLimiter(must(NewDthrottleKeyed(c, l)))),
		throttleLib(c, l),
		floorLibNamed("floor-default", dc, l),
		limiterLib("dthrottle-default", KeyedLimiter(must(NewDthrottleKeyed(dc, l)))),
		throttleLibNamed("dthrottle-throttle-default", dc, l),
		limiterLib("redis_rate", NewRedisRate(c, l)),
		limiterLib("throttled", must(NewThrottled(c, l))),
		limiterLib("ulule", must(NewUlule(c, l))),
		floorLibNamed("floor-autopipeline", ap, l),
		limiterLib("dthrottle-autopipeline", KeyedLimiter(must(NewDthrottleKeyed(ap, l)))),
	}
	// rueidis, which pipelines concurrent commands by default: its bare
	// SET NX PX and ours on it (rueidisthrottle).
	rc := must(rueidis.NewClient(rueidis.ClientOption{InitAddress: []string{c.Options().Addr}}))
	b.Cleanup(rc.Close)
	libs = append(libs,
		lib{"floor-rueidis", func(keys []string) decider {
			return func(ctx context.Context, i int) (bool, error) { return RueidisSetNX(ctx, rc, keys[i], l.Interval) }
		}},
		limiterLib("dthrottle-rueidis", KeyedLimiter(must(NewDthrottleKeyedRueidis(rc, l)))),
	)
	runAllowed(b, l, libs, &cmds, hot)
}

// runAllowed runs the modes of an Allowed workload of limit l for each of
// libs.
func runAllowed(b *testing.B, l Limit, libs []lib, cmds *cmdCounter, hot bool) {
	for _, lb := range libs {
		w := wantAdmit
		if strings.HasPrefix(lb.name, "floor") {
			w = wantAny
		}
		b.Run(lb.name, func(b *testing.B) {
			b.Run("serial", cmds.counted(serial(lb, w, keys(lb.name, "s", keysPerGoroutine))))
			sets := make([][]string, goroutines)
			for g := range sets {
				sets[g] = keys(lb.name, strconv.Itoa(g), keysPerGoroutine)
			}
			b.Run("parallel64", cmds.counted(parallel(lb, w, sets, false)))
			if hot {
				// On one key a limit of a million per second binds once
				// decisions take under a microsecond (leased permits):
				// there every answer is accepted, and admitted/op says
				// how many were admissions.
				hw := w
				if l.N < 100_000_000 {
					hw = wantAny
				}
				b.Run("hotkey64", cmds.counted(parallel(lb, hw, [][]string{{lb.name + ":hot"}}, true)))
				b.Run("hotkey1", cmds.counted(serial(lb, hw, []string{lb.name + ":hot1"})))
			}
		})
	}
}

func benchDenied(b *testing.B, l Limit) {
	c := server.Start(b).Client(b)
	libs := []lib{
		floorLib(c, l),
		limiterLib("dthrottle", KeyedLimiter(must(NewDthrottleKeyed(c, l)))),
		throttleLib(c, l),
		limiterLib("dthrottle-nocache", KeyedLimiter(must(NewDthrottleKeyed(c, l, throttle.WithDenyCache(false))))),
		limiterLib("redis_rate", NewRedisRate(c, l)),
		limiterLib("throttled", must(NewThrottled(c, l))),
		limiterLib("ulule", must(NewUlule(c, l))),
	}
	ctx := context.Background()
	for _, lb := range libs {
		// One decider on the hot key, shared by both modes and every
		// goroutine, after the limit's starts are taken.
		d := lb.bind([]string{lb.name + ":hot"})
		for i := range l.N {
			if ok, err := d(ctx, 0); err != nil || (!ok && lb.name != "floor") {
				b.Fatalf("%s: call %d on the hot key: allowed %v, err %v", lb.name, i+1, ok, err)
			}
		}
		bound := lib{lb.name, func([]string) decider { return d }}
		w := wantDeny
		if lb.name == "floor" {
			w = wantAny
		}
		b.Run(lb.name, func(b *testing.B) {
			b.Run("serial", serial(bound, w, []string{lb.name + ":hot"}))
			b.Run("parallel64", parallel(bound, w, [][]string{{lb.name + ":hot"}}, true))
		})
	}
}

// serial returns a benchmark of one goroutine cycling through keys.
func serial(lb lib, w want, keys []string) func(*testing.B) {
	var d decider // made once, at the first of the calls with growing b.N
	// i goes on where the previous call (of a smaller b.N) left it, so
	// that a run does not start on a key the previous run just used.
	i := 0
	return func(b *testing.B) {
		if d == nil {
			d = lb.bind(keys)
		}
		ctx := context.Background()
		b.ReportAllocs()
		var errs, admitted int64
		for b.Loop() {
			ok, err := d(ctx, i)
			if ok {
				admitted++
			}
			if counted, err := w.check(lb.name, ok, err); err != nil {
				b.Fatal(err)
			} else if counted {
				errs++
			}
			if i++; i == len(keys) {
				i = 0
			}
		}
		reportErrors(b, errs)
		if w == wantAny && !strings.HasPrefix(lb.name, "floor") {
			b.ReportMetric(float64(admitted)/float64(b.N), "admitted/op")
		}
	}
}

// parallel returns a benchmark of 64 goroutines (RunParallel with
// SetParallelism), goroutine g cycling through sets[g % len(sets)]. With
// shared, every goroutine uses one decider made for sets[0], as goroutines
// of one process share one Throttle or Keyed for a hot key.
func parallel(lb lib, w want, sets [][]string, shared bool) func(*testing.B) {
	var ds []decider
	// pos[g] is where goroutine g's keys go on from in the next call (of a
	// larger b.N), so that a run does not start on a key the previous run
	// just used (a limit of 1 per ms would deny it).
	pos := make([]int, len(sets))
	return func(b *testing.B) {
		if ds == nil {
			if shared {
				ds = []decider{lb.bind(sets[0])}
			} else {
				for _, ks := range sets {
					ds = append(ds, lb.bind(ks))
				}
			}
		}
		ctx := context.Background()
		var next, errs, admitted atomic.Int64
		b.ReportAllocs()
		b.SetParallelism(max(1, goroutines/runtime.GOMAXPROCS(0)))
		b.ResetTimer()
		b.RunParallel(func(pb *testing.PB) {
			slot := int(next.Add(1) - 1)
			g := slot % len(sets)
			d, n := ds[g%len(ds)], len(sets[g])
			i := 0
			if slot < len(sets) { // the only goroutine on sets[g]
				i = pos[g]
				defer func() { pos[g] = i }()
			}
			var mine int64 // counted here: a shared counter would slow the fast paths
			defer func() { admitted.Add(mine) }()
			for pb.Next() {
				ok, err := d(ctx, i)
				if ok {
					mine++
				}
				if counted, err := w.check(lb.name, ok, err); err != nil {
					b.Error(err)
					return
				} else if counted {
					errs.Add(1)
				}
				if i++; i == n {
					i = 0
				}
			}
		})
		reportErrors(b, errs.Load())
		if w == wantAny && !strings.HasPrefix(lb.name, "floor") {
			b.ReportMetric(float64(admitted.Load())/float64(b.N), "admitted/op")
		}
	}
}

// cmdCounter is a go-redis hook that counts the commands sent on the
// plain client (auto-pipelined ones are not counted), so that a benchmark
// can report Redis commands per decision.
type cmdCounter struct{ n atomic.Int64 }

func (h *cmdCounter) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h *cmdCounter) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		h.n.Add(1)
		return next(ctx, cmd)
	}
}

func (h *cmdCounter) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		h.n.Add(int64(len(cmds)))
		return next(ctx, cmds)
	}
}

// counted wraps bench so that it reports the commands sent per op.
func (h *cmdCounter) counted(bench func(*testing.B)) func(*testing.B) {
	return func(b *testing.B) {
		before := h.n.Load()
		bench(b)
		b.ReportMetric(float64(h.n.Load()-before)/float64(b.N), "cmds/op")
	}
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

// BenchmarkAllowedTwoWindows: allowed decisions, 10 per millisecond and
// 1000 per second on each key (ours: throttle.WithLimitPer, one script over
// both windows; the floor is the same bare SET NX as in the other rows).
func BenchmarkAllowedTwoWindows(b *testing.B) {
	c := server.Start(b).Client(b)
	var cmds cmdCounter
	c.AddHook(&cmds)
	l := Limit{N: 10, Interval: time.Millisecond}
	runAllowed(b, l, []lib{
		floorLib(c, l),
		limiterLib("dthrottle", KeyedLimiter(must(NewDthrottleKeyed(c, l, throttle.WithLimitPer(1000, time.Second))))),
	}, &cmds, false)
}
