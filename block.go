package throttle

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/redis/go-redis/v9"
)

var (
	//go:embed scripts/block1.lua
	block1Source string
	//go:embed scripts/block.lua
	blockSource string

	block1Script = redis.NewScript(block1Source)
	blockScript  = redis.NewScript(blockSource)
)

// blocker is implemented by stores that can hold off a key (see
// Throttle.Block). RedisStore and MemoryStore implement it.
type blocker interface {
	// Block makes the store admit no start of key, under req's interval
	// and limit, until d after the store's decision.
	Block(ctx context.Context, key string, req Request, d time.Duration) error
	// Blocked returns how long the latest hold set by Block on key still
	// lasts, or 0 when none does.
	Blocked(ctx context.Context, key string) (time.Duration, error)
}

// maxBlockLimit is the largest limit Block accepts: a hold writes one
// start per unit of the limit.
const maxBlockLimit = 1 << 16

// blockSuffix ends the name of the key that records the hold of a key for
// Blocked. A NUL byte keeps it apart from the keys users choose in practice;
// a throttle whose own key is another's followed by this suffix would share
// that record.
const blockSuffix = "\x00block"

// Block holds off the throttle's key for d: no process that shares the
// store is admitted a start until d has passed after the store recorded the
// hold, judged by the store's clock (the Redis server's TIME and expiries,
// never the caller's wall clock). Use it when the limited resource asks
// every caller to back off, such as an API that answers 429 Too Many
// Requests with a Retry-After; Transport does that on its own.
//
// A hold never shortens anything: a longer hold, the starts still in their
// interval and the bookings all keep their effect, and once d has passed
// the limit applies as before. Every key written keeps an expiry. This
// throttle's deny cache (see WithDenyCache) also answers "throttled" until
// d after Block began, even if the store fails or cannot hold keys.
//
// A call that Wait already booked before the hold keeps its turn, which may
// fall inside the hold: such a caller can learn of the hold with Blocked
// after Wait returns, as Transport does.
//
// With limit 1 the hold is whole milliseconds, rounded up. With a larger
// limit N the store records N starts at d minus the interval, so it costs
// as much memory as a full window; limits above 65536 cannot be held.
//
// Block with d = 0 does nothing. It returns an error for a negative d or one
// above MaxInterval, for a limit above 65536, for a store that cannot hold
// keys (RedisStore and MemoryStore can), ctx's error if ctx ended first, and
// an error matching ErrStoreUnavailable when the store failed or did not
// answer within the timeout (WithTimeout).
func (t *Throttle) Block(ctx context.Context, d time.Duration) error {
	switch {
	case d < 0:
		return fmt.Errorf("throttle: negative block %v", d)
	case d > MaxInterval:
		return fmt.Errorf("throttle: block %v is above %v", d, MaxInterval)
	case d == 0:
		return nil
	}
	if t.cfg.denyCache {
		// Before the store's checks: this process holds off in any case.
		t.denyUntil(t.now() + int64(d))
	}
	if t.cfg.limit > maxBlockLimit {
		return fmt.Errorf("throttle: cannot block a limit of %d, above %d", t.cfg.limit, maxBlockLimit)
	}
	b, ok := t.cfg.store.(blocker)
	if !ok {
		return fmt.Errorf("throttle: store %T cannot block keys", t.cfg.store)
	}
	req := t.request(0)
	if t.fallback != nil {
		// The process-local limit used while the store fails holds off too.
		_ = t.fallback.Block(ctx, t.key, Request{Interval: t.interval, Limit: t.cfg.fallback}, d)
	}
	cctx, cancel := context.WithTimeout(ctx, t.cfg.timeout)
	defer cancel()
	if err := b.Block(cctx, t.key, req, d); err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return &StoreError{Key: t.key, Err: err}
	}
	return nil
}

// Blocked returns how long the hold set by the latest Block on the
// throttle's key, in any process that shares the store, still lasts; 0 when
// there is none. It is one store round trip, bounded by the timeout
// (WithTimeout). A caller whose Wait returned after a long sleep can use it
// to learn whether a hold began while it slept, since its booked turn was
// not revoked (see Block).
//
// Reset ends a hold, in the store and for Blocked.
//
// Blocked returns an error for a store that cannot hold keys, ctx's error
// if ctx ended first, and an error matching ErrStoreUnavailable when the
// store failed or did not answer in time.
func (t *Throttle) Blocked(ctx context.Context) (time.Duration, error) {
	b, ok := t.cfg.store.(blocker)
	if !ok {
		return 0, fmt.Errorf("throttle: store %T cannot block keys", t.cfg.store)
	}
	cctx, cancel := context.WithTimeout(ctx, t.cfg.timeout)
	defer cancel()
	d, err := b.Blocked(cctx, t.key)
	if err != nil {
		if ctx.Err() != nil {
			return 0, ctx.Err()
		}
		return 0, &StoreError{Key: t.key, Err: err}
	}
	return d, nil
}

// Block implements the hold of Throttle.Block: no start of key is admitted
// until d after the decision, on the Redis server's clock. With limit 1 the
// key's expiry becomes at least d (whole milliseconds, rounded up). With a
// larger limit, req.Limit starts at d minus the interval are added to the
// key's list, so that the earliest free start is at least d away; they
// leave the window at d. A key that records the hold for Blocked is
// written first: the throttle key with the suffix "\x00block", expiring
// with the hold.
func (s *RedisStore) Block(ctx context.Context, key string, req Request, d time.Duration) error {
	if d <= 0 {
		return nil
	}
	if req.Interval < time.Millisecond || req.Limit < 1 || req.Limit > maxBlockLimit {
		return fmt.Errorf("throttle: cannot block with interval %v and limit %d", req.Interval, req.Limit)
	}
	return boundedErr(s, ctx, func(ctx context.Context) error { return s.block(ctx, key, req, d) })
}

func (s *RedisStore) block(ctx context.Context, key string, req Request, d time.Duration) error {
	hold := millis(ceilMillis(d))
	// The marker first: a caller that sees no marker after its booked
	// turn then knows that no hold was set before it looked.
	if err := block1Script.Run(ctx, s.client, []string{s.Key(key) + blockSuffix}, hold, hold).Err(); err != nil {
		return err
	}
	rkey := s.Key(key)
	if req.Limit == 1 {
		return block1Script.Run(ctx, s.client, []string{rkey}, hold, millis(ceilMillis(req.Interval))).Err()
	}
	return blockScript.Run(ctx, s.client, []string{rkey}, micros(req.Interval), req.Limit, micros(d)).Err()
}

// Blocked returns how long the latest hold set by Block on key still lasts,
// from the expiry of its marker key; 0 when there is none.
func (s *RedisStore) Blocked(ctx context.Context, key string) (time.Duration, error) {
	return bounded(s, ctx, func(ctx context.Context) (time.Duration, error) {
		d, err := s.client.PTTL(ctx, s.Key(key)+blockSuffix).Result()
		if errors.Is(err, redis.Nil) {
			return 0, nil
		}
		return max(d, 0), err
	})
}

// Block implements the hold of Throttle.Block on the store's clock, as
// RedisStore does: req.Limit starts at d minus the interval join the key's
// starts in their sorted place. It fails only for a limit above 65536.
func (m *MemoryStore) Block(_ context.Context, key string, req Request, d time.Duration) error {
	if req.Limit < 1 || req.Limit > maxBlockLimit {
		return fmt.Errorf("throttle: cannot block with limit %d", req.Limit)
	}
	if d <= 0 {
		return nil
	}
	interval := int64(req.Interval)
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.now()
	end := now + int64(d)
	mk := m.keyState(key+blockSuffix, now)
	mk.expires = max(mk.expires, end)

	k := m.keyState(key, now)
	k.forget(now - interval)
	k.compact()
	mark := end - interval
	i := len(k.times)
	for i > 0 && k.times[i-1] > mark {
		i--
	}
	marks := make([]int64, req.Limit)
	for j := range marks {
		marks[j] = mark
	}
	k.times = slices.Insert(k.times, i, marks...)
	k.expires = max(k.expires, k.times[len(k.times)-1]+interval)
	return nil
}

// Blocked returns how long the latest hold set by Block on key still
// lasts; 0 when there is none. It never fails.
func (m *MemoryStore) Blocked(_ context.Context, key string) (time.Duration, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if k := m.keys[key+blockSuffix]; k != nil {
		if now := m.now(); k.expires > now {
			return time.Duration(k.expires - now), nil
		}
	}
	return 0, nil
}
