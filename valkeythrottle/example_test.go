package valkeythrottle_test

import (
	"context"
	"log"
	"time"

	valkey "github.com/valkey-io/valkey-go"

	throttle "github.com/dthrottle/throttle"
	"github.com/dthrottle/throttle/valkeythrottle"
)

// This example shares one limit, 10 calls a second, among every process
// that uses the Valkey server. It needs a server, so it is only compiled.
func ExampleNewStore() {
	client, err := valkey.NewClient(valkey.ClientOption{InitAddress: []string{"127.0.0.1:6379"}})
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()

	callAPI, err := throttle.New("partner-api", time.Second,
		throttle.WithLimit(10), throttle.WithStore(valkeythrottle.NewStore(client)))
	if err != nil {
		log.Fatal(err)
	}
	if d, err := callAPI.Allow(context.Background()); err == nil && d.Allowed {
		log.Print("calling the API")
	}
}
