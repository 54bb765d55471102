package throttle

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dthrottle/throttle/internal/redistest"
)

// BenchmarkAcquireWindows measures Acquire then Release on a throttle with
// a cap (WithConcurrency), every call admitted, on a redis-server: with
// one rate of 64 per ms (leasetake.lua over slot keys) and with that rate
// plus a window of 1000 per second (leasewindows.lua over two bucket
// windows). Each op is two round trips, the take and the release; 1024
// keys per goroutine keep every rate from binding.
func BenchmarkAcquireWindows(b *testing.B) {
	c := redistest.Start(b).Client(b)
	ctx := context.Background()
	for _, tc := range []struct {
		name string
		opts []Option
	}{
		{"rate", nil},
		{"rate+window", []Option{WithLimitPer(1000, time.Second)}},
	} {
		k, err := NewKeyed(time.Millisecond, append([]Option{WithStore(NewRedisStore(c, WithKeyPrefix("bench:"+tc.name+":"))),
			WithLimit(64), WithConcurrency(1000), WithLeaseTTL(time.Minute)}, tc.opts...)...)
		if err != nil {
			b.Fatal(err)
		}
		keys := make([]string, 64*1024)
		for i := range keys {
			keys[i] = fmt.Sprint("k", i)
		}
		acquire := func(key string) {
			l, err := k.Acquire(ctx, key)
			if err != nil {
				panic(fmt.Sprintf("Acquire(%q): %v", key, err))
			}
			l.Release()
		}
		b.Run(tc.name+"/serial", func(b *testing.B) {
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				acquire(keys[i%1024])
				i++
			}
		})
		b.Run(tc.name+"/parallel64", func(b *testing.B) {
			b.ReportAllocs()
			b.SetParallelism(32) // 64 goroutines on 2 cores
			var g atomic.Int64
			b.RunParallel(func(pb *testing.PB) {
				base := int(g.Add(1)-1) % 64 * 1024
				i := 0
				for pb.Next() {
					acquire(keys[base+i%1024])
					i++
				}
			})
		})
	}
}
