module github.com/dthrottle/throttle/benchmarks

go 1.26.8

replace github.com/dthrottle/throttle => ../

replace github.com/dthrottle/throttle/rueidisthrottle => ../rueidisthrottle

require (
	github.com/dthrottle/throttle v0.0.0-00010101000000-000000000000
	github.com/dthrottle/throttle/rueidisthrottle v0.0.0-00010101000000-000000000000
	github.com/go-redis/redis_rate/v10 v10.0.1
	github.com/redis/go-redis/v9 v9.23.0
	github.com/redis/rueidis v1.0.80
	github.com/throttled/throttled/v2 v2.15.0
	github.com/ulule/limiter/v3 v3.11.2
)

require (
	github.com/cespare/xxhash/v2 v2.3.0 // indirect
	github.com/pkg/errors v0.9.1 // indirect
	go.uber.org/atomic v1.12.0 // indirect
	golang.org/x/sys v0.50.0 // indirect
)
