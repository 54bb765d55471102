package benchmarks

import (
	"context"
	"fmt"
	"runtime"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dthrottle/throttle"
	"github.com/redis/go-redis/v9"

	"github.com/dthrottle/throttle/benchmarks/internal/server"
)

// The workloads, each on a redis-server of its own, with one b.Run per
// library and, under it, "serial" (for b.Loop) and "parallel64" (64
// goroutines with RunParallel). Every group holds the floor: a bare
// SET NX PX on a fresh key, on the same go-redis client as the libraries.
//
// Library names: floor; ours as dthrottle (Store.Take, as the root module's
// benchmarks measure it), dthrottle-allow (throttle.New plus Allow for each
// key: the whole public path), dthrottle-nocache and dthrottle (a Throttle
// on the hot key with the deny cache off and on); the peers as redis_rate,
// throttled and ulule. cmd/ratios reads these names.
//
// Run with ./run.sh, or: go test -run '^$' -bench . -benchmem -count 6

// BenchmarkAllowed1PerMinute: an allowed decision, limit 1 per minute, on a
// fresh key each op.
func BenchmarkAllowed1PerMinute(b *testing.B) {
	benchAllowed(b, Limit{N: 1, Interval: time.Minute})
}

// BenchmarkAllowed10PerSecond: an allowed decision, limit 10 per second,
// on a fresh key each op.
func BenchmarkAllowed10PerSecond(b *testing.B) {
	benchAllowed(b, Limit{N: 10, Interval: time.Second})
}

// BenchmarkDeniedHotKey1PerHour: a denied decision on one key whose only
// start of the hour is taken.
func BenchmarkDeniedHotKey1PerHour(b *testing.B) {
	benchDenied(b, Limit{N: 1, Interval: time.Hour})
}

// BenchmarkDeniedHotKey10PerHour: a denied decision on one key whose ten
// starts of the hour are taken.
func BenchmarkDeniedHotKey10PerHour(b *testing.B) {
	benchDenied(b, Limit{N: 10, Interval: time.Hour})
}

// lib is one library's decision in a workload. op fails when the decision
// is not the workload's (a fresh key denied, a hot key admitted).
type lib struct {
	name string
	op   func(ctx context.Context) error
}

var seq atomic.Int64

// freshKey returns a key no library has seen in this process.
func freshKey() string { return "bench:" + strconv.FormatInt(seq.Add(1), 36) }

func floor(c *redis.Client) lib {
	return lib{"floor", func(ctx context.Context) error {
		return c.SetNX(ctx, freshKey(), "1", time.Minute).Err()
	}}
}

// allowedOn makes a lib that decides a fresh key each op with l.
func allowedOn(name string, l Limiter) lib {
	return lib{name, func(ctx context.Context) error {
		ok, err := l.Allow(ctx, freshKey())
		if err == nil && !ok {
			err = fmt.Errorf("%s denied a fresh key", name)
		}
		return err
	}}
}

// deniedOn makes a lib that decides on one hot key, after taking every
// start it allows.
func deniedOn(b *testing.B, name string, l Limit, allow Allower) lib {
	ctx := context.Background()
	for i := range l.N {
		if ok, err := allow(ctx); err != nil || !ok {
			b.Fatalf("%s: call %d on the hot key: allowed %v, err %v", name, i+1, ok, err)
		}
	}
	return lib{name, func(ctx context.Context) error {
		ok, err := allow(ctx)
		if err == nil && ok {
			err = fmt.Errorf("%s admitted a call on the hot key", name)
		}
		return err
	}}
}

func benchAllowed(b *testing.B, l Limit) {
	c := server.Start(b).Client(b)
	libs := []lib{
		floor(c),
		allowedOn("dthrottle", NewDthrottleStore(c, l)),
		allowedOn("dthrottle-allow", NewDthrottlePerKey(c, l)),
		allowedOn("redis_rate", NewRedisRate(c, l)),
		allowedOn("throttled", must(NewThrottled(c, l))),
		allowedOn("ulule", must(NewUlule(c, l))),
	}
	run(b, libs)
}

func benchDenied(b *testing.B, l Limit) {
	c := server.Start(b).Client(b)
	const key = "hot"
	libs := []lib{
		floor(c),
		deniedOn(b, "dthrottle-nocache", l, DthrottleAllower(must(NewDthrottle(c, key+":nocache", l, throttle.WithDenyCache(false))))),
		deniedOn(b, "dthrottle", l, DthrottleAllower(must(NewDthrottle(c, key+":cache", l)))),
		deniedOn(b, "redis_rate", l, Bind(NewRedisRate(c, l), key)),
		deniedOn(b, "throttled", l, Bind(must(NewThrottled(c, l)), key)),
		deniedOn(b, "ulule", l, Bind(must(NewUlule(c, l)), key)),
	}
	run(b, libs)
}

func run(b *testing.B, libs []lib) {
	ctx := context.Background()
	for _, l := range libs {
		b.Run(l.name, func(b *testing.B) {
			b.Run("serial", func(b *testing.B) {
				b.ReportAllocs()
				for b.Loop() {
					if err := l.op(ctx); err != nil {
						b.Fatal(err)
					}
				}
			})
			b.Run("parallel64", func(b *testing.B) {
				b.ReportAllocs()
				b.SetParallelism(max(1, 64/runtime.GOMAXPROCS(0)))
				b.RunParallel(func(pb *testing.PB) {
					for pb.Next() {
						if err := l.op(ctx); err != nil {
							b.Error(err)
							return
						}
					}
				})
			})
		})
	}
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}
