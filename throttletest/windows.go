package throttletest

import "github.com/dthrottle/throttle"

var _ throttle.WindowStore = (*Store)(nil)

// KeepsWindows implements throttle.WindowStore: a Store passes the windows
// of throttle.WithLimitPer to the RedisStore on the miniredis server, so
// that the fake clock moves every window.
func (*Store) KeepsWindows() {}

// KeysFor returns the names of the Redis keys that a throttle of key under
// req may write on the miniredis server, as throttle.RedisStore.KeysFor does
// with the default key prefix.
func (s *Store) KeysFor(key string, req throttle.Request) []string { return s.redis.KeysFor(key, req) }
