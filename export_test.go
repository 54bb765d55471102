package throttle

import (
	"sync"

	"github.com/redis/go-redis/v9"
)

// Exported for the external tests (package throttle_test), which run the
// shared Store contract (internal/storecontract) without an import cycle.
var (
	FakeMemory    = fakeMemory
	FakeMiniredis = fakeMiniredis
)

// NewRacyStore returns a racyStore, a Store that is not atomic, for the
// check that the contract catches one.
func NewRacyStore(c *redis.Client, reads *sync.WaitGroup) Store { return racyStore{c: c, reads: reads} }
