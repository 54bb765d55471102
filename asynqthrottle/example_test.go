package asynqthrottle_test

import (
	"context"
	"encoding/json"
	"log"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/dthrottle/throttle"
	"github.com/dthrottle/throttle/asynqthrottle"
)

// Every worker server that runs this throttles "email:send" tasks to 2 per
// second together. It needs a Redis, so it is compiled but not run.
func Example() {
	rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:6380"})
	defer rdb.Close()

	lim, err := throttle.NewKeyed(time.Second,
		throttle.WithStore(throttle.NewRedisStore(rdb)), throttle.WithLimit(2))
	if err != nil {
		log.Fatal(err)
	}

	mux := asynq.NewServeMux()
	mux.Use(asynqthrottle.Middleware(lim))
	mux.HandleFunc("email:send", func(ctx context.Context, t *asynq.Task) error {
		log.Printf("sending %s", t.Payload())
		return nil
	})

	// Configure adds the hooks that re-queue throttled tasks without
	// counting a failure.
	srv := asynq.NewServerFromRedisClient(rdb, asynqthrottle.Configure(asynq.Config{
		Concurrency:              10,
		DelayedTaskCheckInterval: time.Second,
	}))
	if err := srv.Run(mux); err != nil {
		log.Fatal(err)
	}
}

// Throttle reports per tenant, with the tenant taken from the payload.
func ExampleWithKeyFunc() {
	byTenant := asynqthrottle.WithKeyFunc(func(t *asynq.Task) (string, error) {
		var p struct {
			Tenant string `json:"tenant"`
		}
		if err := json.Unmarshal(t.Payload(), &p); err != nil {
			return "", err // a failure: asynq retries it as usual
		}
		return "report:" + p.Tenant, nil
	})

	rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:6380"})
	defer rdb.Close()
	// One report per tenant per minute.
	lim, err := throttle.NewKeyed(time.Minute, throttle.WithStore(throttle.NewRedisStore(rdb)))
	if err != nil {
		log.Fatal(err)
	}
	mux := asynq.NewServeMux()
	mux.Handle("report:build", asynqthrottle.Middleware(lim, byTenant)(asynq.HandlerFunc(buildReport)))
	// ... asynq.NewServerFromRedisClient(rdb, asynqthrottle.Configure(cfg)).Run(mux)
}

func buildReport(ctx context.Context, t *asynq.Task) error { return nil }
