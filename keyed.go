package throttle

import (
	"context"
	"hash/maphash"
	"sync"
	"time"
)

// A Keyed is a set of throttles with one interval and one set of options,
// one per key: each key of an open set (a customer, an account, a host) gets
// the limit and the guarantee of a Throttle of its own, and keys are
// independent (a denial of one never delays another). Use it when the key
// is known only per call.
//
// A Keyed keeps local state (the deny cache) only for the keys whose
// retry-after is still running, and drops the others as new keys arrive,
// without a goroutine: its memory follows the keys active within about one
// interval (at least 100 ms), not every key ever seen. The same holds for
// a MemoryStore.
//
// A Keyed is safe for concurrent use by many goroutines. It starts no
// goroutine of its own.
type Keyed struct {
	c       *core
	entries [entryShards]entryShard
	seed    maphash.Seed
}

// entryShards spreads a Keyed's entries over locks, for many goroutines.
const entryShards = 32

// entryShard holds the entries of some keys, swept of those whose deny
// cache ran out (see sweeper).
type entryShard struct {
	mu sync.RWMutex
	m  map[string]*entry
	sw sweeper
}

// NewKeyed returns a Keyed whose keys each admit at most one call (or the
// limit set with WithLimit) per interval. It takes the options of New and
// returns New's errors for them. As with New, without WithStore the limits
// hold only for the calls made through this Keyed in this process.
func NewKeyed(interval time.Duration, opts ...Option) (*Keyed, error) {
	c, err := newCore(interval, opts)
	if err != nil {
		return nil, err
	}
	k := &Keyed{c: c, seed: maphash.MakeSeed()}
	for i := range k.entries {
		k.entries[i].m = make(map[string]*entry)
		// At least 100 ms: with a shorter period, the entries of keys used
		// a few times a second would be swept and made again on each use.
		k.entries[i].sw.period = int64(max(interval, 100*time.Millisecond))
	}
	return k, nil
}

// Allow decides whether one call of key may start now, as Throttle.Allow
// does. An empty key is an error, and no decision.
func (k *Keyed) Allow(ctx context.Context, key string) (Decision, error) {
	if key == "" {
		return Decision{}, errEmptyKey
	}
	return k.c.allow(ctx, key, k.entry(key))
}

// Wait blocks until a call of key may start, as Throttle.Wait does. An
// empty key is an error.
func (k *Keyed) Wait(ctx context.Context, key string) error {
	if key == "" {
		return errEmptyKey
	}
	return k.c.wait(ctx, key, k.entry(key), k.c.maxWait())
}

// Reset forgets the recorded starts and any hold of key in the store, as
// Throttle.Reset does.
func (k *Keyed) Reset(ctx context.Context, key string) error {
	if key == "" {
		return errEmptyKey
	}
	return k.c.reset(ctx, key, k.entry(key))
}

// entry returns the local state of key, made if missing.
func (k *Keyed) entry(key string) *entry {
	sh := &k.entries[maphash.String(k.seed, key)%entryShards]
	sh.mu.RLock()
	e := sh.m[key]
	sh.mu.RUnlock()
	if e != nil {
		return e
	}
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if e = sh.m[key]; e == nil {
		if now := k.c.now(); sh.sw.due(len(sh.m), now) {
			// An entry whose deny cache ran out and that holds no
			// leased permits holds nothing that a new one would not.
			sh.m = sweep(&sh.sw, sh.m, now, func(e *entry) bool { return e.deniedUntil.Load() <= now && !e.permitsLive() })
		}
		e = new(entry)
		sh.m[key] = e
	}
	return e
}

// WrapKeyed returns a function that calls fn(ctx, a) when the throttle of
// keyOf(a) admits the call, and returns fn's results; otherwise it returns
// T's zero value and an error, as WrapErr does. The throttles are those of
// NewKeyed(interval, opts...); WrapKeyed panics with its message when that
// fails, and when keyOf or fn is nil. A call whose keyOf(a) is empty does
// not run fn and returns an error.
//
// With WithWait the returned function waits for its turn, up to the wait
// and never past ctx. With WithConcurrency, fn runs holding a lease of its
// key, as with WrapErr. A panic in fn reaches the caller unchanged.
func WrapKeyed[A, T any](interval time.Duration, keyOf func(A) string, fn func(context.Context, A) (T, error), opts ...Option) func(context.Context, A) (T, error) {
	if keyOf == nil {
		panic("throttle: nil keyOf")
	}
	if fn == nil {
		panic("throttle: nil fn")
	}
	k, err := NewKeyed(interval, opts...)
	if err != nil {
		panic(err.Error())
	}
	if k.c.capped() {
		return func(ctx context.Context, a A) (T, error) {
			key := keyOf(a)
			if key == "" {
				var zero T
				return zero, errEmptyKey
			}
			return runLeased(ctx, k.c, key, k.entry(key), func(ctx context.Context) (T, error) { return fn(ctx, a) })
		}
	}
	return func(ctx context.Context, a A) (T, error) {
		key := keyOf(a)
		var err error
		if key == "" {
			err = errEmptyKey
		} else {
			err = k.c.admit(ctx, key, k.entry(key))
		}
		if err != nil {
			var zero T
			return zero, err
		}
		return fn(ctx, a)
	}
}
