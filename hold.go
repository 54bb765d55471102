package throttle

import (
	"context"
	"fmt"
	"time"
)

// Hold holds off the throttle's key for d: no process that shares the
// store is admitted a start until d has passed after the store recorded
// the hold, judged by the store's clock. Use it when the limited resource
// asks every caller to back off, such as an API that answers 429 Too Many
// Requests with a Retry-After (package httpthrottle does that on its own).
//
// A hold never shortens anything: a longer hold, the starts still in their
// interval and the bookings keep their effect; a call that Wait booked
// before the hold keeps its turn (Held tells it that a hold began). This
// throttle's deny cache also denies until d after Hold began, even if the
// store fails. With RedisStore a hold is whole milliseconds, rounded up.
//
// Hold with d = 0 does nothing. It returns an error for a negative d or
// one above MaxInterval, for a limit above 65536, for a store that is not
// a Holder, ctx's error if ctx ended first, and an error matching
// ErrStoreUnavailable when the store failed or did not answer in time.
func (t *Throttle) Hold(ctx context.Context, d time.Duration) error {
	return t.c.hold(ctx, t.key, &t.e, d)
}

// Held returns how long the latest hold of the throttle's key, set by any
// process that shares the store, still lasts; 0 when there is none. It is
// one store round trip, bounded by the timeout. Reset ends a hold.
//
// Held returns an error for a store that is not a Holder, ctx's error if
// ctx ended first, and an error matching ErrStoreUnavailable when the
// store failed or did not answer in time.
func (t *Throttle) Held(ctx context.Context) (time.Duration, error) {
	return t.c.held(ctx, t.key)
}

// Hold holds off key for d, as Throttle.Hold does.
func (k *Keyed) Hold(ctx context.Context, key string, d time.Duration) error {
	if key == "" {
		return errEmptyKey
	}
	return k.c.hold(ctx, key, k.entry(key), d)
}

// Held returns how long the latest hold of key still lasts, as
// Throttle.Held does.
func (k *Keyed) Held(ctx context.Context, key string) (time.Duration, error) {
	if key == "" {
		return 0, errEmptyKey
	}
	return k.c.held(ctx, key)
}

func (c *core) hold(ctx context.Context, key string, e *entry, d time.Duration) error {
	switch {
	case d < 0:
		return fmt.Errorf("throttle: negative hold %v", d)
	case d > MaxInterval:
		return fmt.Errorf("throttle: hold %v is above %v", d, MaxInterval)
	case d == 0:
		return nil
	}
	if c.cfg.denyCache {
		// Before the store's checks: this process holds off in any case.
		e.raise(c.now() + int64(d))
	}
	e.dropPermits(d)
	h, ok := c.cfg.store.(Holder)
	if !ok {
		return fmt.Errorf("throttle: store %T cannot hold keys: it is not a Holder", c.cfg.store)
	}
	if c.fallback != nil {
		// The process-local limit used while the store fails holds off too.
		_ = c.fallback.Hold(ctx, key, Request{Interval: c.interval, Limit: c.cfg.fallback}, d)
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	start := time.Now()
	cctx, cancel := context.WithTimeout(ctx, c.cfg.timeout)
	defer cancel()
	err := h.Hold(cctx, key, c.request(0), d)
	if err != nil {
		if ctx.Err() != nil {
			err = ctx.Err()
		} else {
			err = &StoreError{Key: key, Err: err}
		}
	}
	if c.cfg.observer != nil {
		c.cfg.observer(Event{Kind: EventHold, Key: key, RetryAfter: d, Err: err, Latency: time.Since(start)})
	}
	return err
}

func (c *core) held(ctx context.Context, key string) (time.Duration, error) {
	h, ok := c.cfg.store.(Holder)
	if !ok {
		return 0, fmt.Errorf("throttle: store %T cannot hold keys: it is not a Holder", c.cfg.store)
	}
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	cctx, cancel := context.WithTimeout(ctx, c.cfg.timeout)
	defer cancel()
	d, err := h.Held(cctx, key)
	if err != nil {
		if ctx.Err() != nil {
			return 0, ctx.Err()
		}
		return 0, &StoreError{Key: key, Err: err}
	}
	return d, nil
}

// Hold implements Holder: no start of key is admitted until d after the
// decision, on the Redis server's clock, in whole milliseconds rounded up.
// With a limit up to 64 every slot key is kept at least that long; with a
// larger limit the window records the end of the hold. P{key}:hold records
// the hold for Held.
func (s *RedisStore) Hold(ctx context.Context, key string, req Request, d time.Duration) error {
	if d <= 0 {
		return nil
	}
	if req.Interval < time.Millisecond || req.Limit < 1 {
		return fmt.Errorf("throttle: cannot hold with interval %v and limit %d", req.Interval, req.Limit)
	}
	return boundedErr(s, ctx, func(ctx context.Context) error { return s.hold(ctx, key, req, d) })
}

func (s *RedisStore) hold(ctx context.Context, key string, req Request, d time.Duration) error {
	if len(req.Windows) > 0 {
		return s.holdMulti(ctx, key, req, d)
	}
	hold := millis(ceilMillis(d))
	interval := millis(ceilMillis(req.Interval))
	marker := s.name(key, holdSuffix)
	if req.Limit <= maxSlots {
		keys := append(s.slots(key, req.Limit), marker)
		_, err := s.run(ctx, holdScript, keys, hold, interval)
		return err
	}
	// The window and the marker in one script, which ends both on the
	// same whole millisecond.
	_, err := s.run(ctx, windowScript, []string{s.name(key, windowSuffix), marker}, "h", micros(req.Interval), req.Limit, micros(d))
	return err
}

// Held implements Holder, from the expiry of the key's hold record.
func (s *RedisStore) Held(ctx context.Context, key string) (time.Duration, error) {
	return bounded(s, ctx, func(ctx context.Context) (time.Duration, error) {
		ms, err := s.conn.PTTL(ctx, s.name(key, holdSuffix))
		return time.Duration(max(ms, 0)) * time.Millisecond, err
	})
}

// Hold implements Holder on the store's clock, as RedisStore does: no
// start of key is admitted, or booked, before d from now.
func (m *MemoryStore) Hold(_ context.Context, key string, req Request, d time.Duration) error {
	if d <= 0 {
		return nil
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.now()
	k := m.keyState(key, now, req.Interval)
	k.hold = max(k.hold, now+int64(d))
	k.expires = max(k.expires, k.hold)
	return nil
}

// Held implements Holder. It never fails.
func (m *MemoryStore) Held(_ context.Context, key string) (time.Duration, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if k := m.keys[key]; k != nil {
		if now := m.now(); k.hold > now {
			return time.Duration(k.hold - now), nil
		}
	}
	return 0, nil
}
