package rueidisthrottle_test

import (
	"context"
	"errors"
	"log"
	"time"

	"github.com/redis/rueidis"

	throttle "github.com/dthrottle/throttle"
	"github.com/dthrottle/throttle/rueidisthrottle"
)

// This example shares one limit, 10 calls a second, among every process
// that uses the Redis server, on a rueidis client: the decisions of
// concurrent goroutines share round trips. For a Cluster, give the
// addresses of several nodes. It needs a Redis server, so it is only
// compiled.
func ExampleNewStore() {
	client, err := rueidis.NewClient(rueidis.ClientOption{InitAddress: []string{"127.0.0.1:6379"}})
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()

	callAPI, err := throttle.New("partner-api", time.Second,
		throttle.WithLimit(10), throttle.WithStore(rueidisthrottle.NewStore(client)))
	if err != nil {
		log.Fatal(err)
	}
	d, err := callAPI.Allow(context.Background())
	switch {
	case errors.Is(err, throttle.ErrStoreUnavailable):
		log.Print("Redis unavailable: not calling")
	case d.Allowed:
		log.Print("calling the API")
	default:
		log.Printf("throttled, retry in %v", d.RetryAfter)
	}
}
