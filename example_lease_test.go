package throttle_test

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/dthrottle/throttle"
)

// At most one call in flight: a second call made while the first holds its
// lease is refused, and admitted once the lease is released.
func ExampleWithConcurrency() {
	th, err := throttle.New("api:export", 0, throttle.WithConcurrency(1))
	if err != nil {
		panic(err)
	}
	ctx := context.Background()
	lease, err := th.Acquire(ctx)
	if err != nil {
		panic(err)
	}
	_, err = th.Acquire(ctx)
	fmt.Println("second call:", errors.Is(err, throttle.ErrAtCapacity))
	lease.Release()
	again, err := th.Acquire(ctx)
	fmt.Println("after release:", err == nil)
	again.Release()
	// Output:
	// second call: true
	// after release: true
}

// Two calls per second and three at once, for every process that shares
// the Redis store; fn's ctx ends if its lease is lost. The example needs a
// Redis server, so it is only compiled.
func ExampleWithConcurrency_redis() {
	client := redis.NewClient(&redis.Options{Addr: "127.0.0.1:6379", ContextTimeoutEnabled: true})
	defer client.Close()
	search := func(ctx context.Context) (string, error) { return "result", nil }
	call := throttle.WrapErr("api:search", time.Second, search,
		throttle.WithStore(throttle.NewRedisStore(client)),
		throttle.WithLimit(2),
		throttle.WithConcurrency(3),
		throttle.WithLeaseTTL(10*time.Second),
		throttle.WithWait(5*time.Second))
	res, err := call(context.Background())
	fmt.Println(res, err)
}
