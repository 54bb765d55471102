// Package valkeythrottle runs dthrottle's Redis store on a valkey-go client
// (github.com/valkey-io/valkey-go), for Valkey (or Redis) servers:
//
//	client, err := valkey.NewClient(valkey.ClientOption{InitAddress: []string{"127.0.0.1:6379"}})
//	...
//	t, err := throttle.New("api", time.Second, throttle.WithStore(valkeythrottle.NewStore(client)))
//
// valkey-go is a fork of rueidis with the same API under other names, so
// this package is module rueidisthrottle's adapter with the names
// rewritten: conn.go and store.go are generated from rueidisthrottle's by
// go generate (internal/gen); a test fails when they are not current. See
// rueidisthrottle for the behaviour, which is the same.
package valkeythrottle

//go:generate go run ./internal/gen
