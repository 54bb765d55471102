// Package benchmarks holds only benchmarks, and an accuracy comparison,
// of dthrottle (github.com/dthrottle/throttle) against the Redis rate
// limiters it is measured against: github.com/go-redis/redis_rate/v10,
// github.com/throttled/throttled/v2 and github.com/ulule/limiter/v3, next
// to the floor, a bare SET NX PX on the same go-redis client.
//
// It is a module of its own so that the library's go.mod stays small;
// nothing here is meant to be imported. Every benchmark starts its own
// redis-server on a free loopback port (see internal/server). Run
//
//	./run.sh                # -count 6, then the table of ratios
//	go test -run '^$' -bench . -benchmem -count 6 > bench.txt
//	go run ./cmd/ratios bench.txt
//	go test -run TestAccuracy -v   # admissions under contention, per library
//
// Ours is measured through its public API only: Keyed.Allow(ctx, key) on
// one Keyed per workload, and Throttle.Allow on a Throttle made beforehand
// for each key. One file per library holds its constructor (dthrottle.go
// for ours, peer_*.go for the others); scenario_bench_test.go has the
// workloads.
package benchmarks
