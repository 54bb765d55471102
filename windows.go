package throttle

import (
	"cmp"
	"fmt"
	"slices"
	"time"
)

// MaxLimitPer is the most windows that WithLimitPer may add to a throttle,
// besides the one of its interval and limit. Every window costs each
// decision a part of its script's work and a Redis key of its own, and real
// APIs publish two or three limits per key (per second, per minute, per
// hour or day), so four windows in all cover them at a bounded cost.
const MaxLimitPer = 3

// A Window is one limit of a throttle besides its interval and limit: at
// most Limit starts in any half-open window of length Interval.
type Window struct {
	Interval time.Duration
	Limit    int
}

// WithLimitPer adds a window to the throttle: besides its limit per
// interval, at most n starts in any half-open window of length per, judged
// by the store's clock, across every process that shares the store. A start
// is admitted only when every window admits it, decided in one atomic step,
// and a call that one window refuses uses nothing of the others. For
// example, 10 calls per second and 5000 per hour:
//
//	New("github", time.Second, WithLimit(10), WithLimitPer(5000, time.Hour))
//
// A denial's RetryAfter is when every window admits again; Wait books the
// earliest start that every window admits; Hold and Reset cover every
// window. A per equal to the interval (or to another window's) is the
// tighter of the two limits. Unlike the other options, WithLimitPer adds
// up: give it once per window, at most MaxLimitPer distinct windows. n must
// be between 1 and MaxLimit, per between 1 ms and MaxInterval.
//
// The windows are part of what the callers sharing a key must agree on,
// as the interval and limit are: on a RedisStore, callers with other
// windows keep other Redis keys (see RedisStore.KeysFor) and do not limit
// each other.
//
// The store must be a WindowStore (RedisStore, MemoryStore and
// throttletest.Store are), or New returns an error. On a RedisStore, a
// throttle with windows keeps each window in a bucket window (see
// RedisStore), whatever its limit.
//
// A start booked ahead (WithWait, Wait) can be at most about three of the
// shortest window's intervals away (the interval's own, or a shorter
// per): 2.98 of them, the part of the bucket ring that a booking may use.
// A Wait that would wait longer is refused at once, whatever WithWait
// allows, with a RetryAfter that ends when the booking fits.
//
// With WithConcurrency, the lease and a start in every window are taken
// in one atomic step (Acquire): a call refused by the cap uses no start of
// any window, and a call refused by a window takes no lease. The interval
// must then be above 0, and the limit may be above 64.
// With WithFallback, the process-local limit used while the store fails is
// per interval only, and a throttle with windows never leases permits
// (WithPermitBatch).
func WithLimitPer(n int, per time.Duration) Option {
	return optionFunc(func(c *config) { c.windows = append(c.windows, Window{Interval: per, Limit: n}) })
}

// A WindowStore is a Store that keeps the windows of Request.Windows
// (WithLimitPer): its Take admits a start only when req's own window and
// every window of req.Windows admit it, in one atomic step, and its Cancel,
// and Reset and Hold when it has them, cover every window. RedisStore,
// MemoryStore and throttletest.Store are WindowStores.
//
// A Store that is not one is never given windows: New and NewKeyed return
// an error for a throttle with WithLimitPer on it. This keeps a Store
// written before windows existed, which would ignore Request.Windows and
// admit more than they allow, from being used with them by mistake. A
// Store that wraps a WindowStore and passes each Request on unchanged may
// implement WindowStore too.
type WindowStore interface {
	Store
	// KeepsWindows marks the store as keeping Request.Windows. It does
	// nothing.
	KeepsWindows()
}

// KeepsWindows implements WindowStore.
func (*MemoryStore) KeepsWindows() {}

// KeepsWindows implements WindowStore.
func (*RedisStore) KeepsWindows() {}

// mergeWindows validates c's windows against interval and the limit, and
// merges them: a window with the interval's length tightens the limit, and
// windows of the same length keep the tightest. It leaves the distinct
// extra windows in c.windows, by length, or nil.
func mergeWindows(interval time.Duration, c *config) error {
	if len(c.windows) == 0 {
		return nil
	}
	for _, w := range c.windows {
		switch {
		case w.Limit < 1:
			return fmt.Errorf("throttle: WithLimitPer limit %d is below 1", w.Limit)
		case w.Limit > MaxLimit:
			return fmt.Errorf("throttle: WithLimitPer limit %d is above %d", w.Limit, MaxLimit)
		case w.Interval < time.Millisecond:
			return fmt.Errorf("throttle: WithLimitPer interval %v is below 1ms", w.Interval)
		case w.Interval > MaxInterval:
			return fmt.Errorf("throttle: WithLimitPer interval %v is above %v", w.Interval, MaxInterval)
		}
	}
	var merged []Window
	c.limit, merged = mergedWindows(interval, c.limit, c.windows)
	switch {
	case len(merged) > MaxLimitPer:
		return fmt.Errorf("throttle: %d windows of WithLimitPer, at most %d", len(merged), MaxLimitPer)
	case len(merged) > 0 && interval == 0:
		return fmt.Errorf("throttle: WithLimitPer needs an interval: give the shortest window as the interval and limit")
	case len(merged) > 0 && !c.storeSet:
		// The default MemoryStore keeps windows.
	case len(merged) > 0 && !isNil(c.store):
		if _, ok := c.store.(WindowStore); !ok {
			return fmt.Errorf("throttle: store %T cannot keep the windows of WithLimitPer: it is not a WindowStore", c.store)
		}
	}
	c.windows = merged
	return nil
}

// mergedWindows returns the limit of interval and the distinct windows,
// by length, that limit and windows come to: a window of the interval's
// length tightens the limit, and of windows of one length the tightest
// stays.
func mergedWindows(interval time.Duration, limit int, windows []Window) (int, []Window) {
	var merged []Window
	for _, w := range windows {
		if w.Interval == interval {
			limit = min(limit, w.Limit)
			continue
		}
		if i := slices.IndexFunc(merged, func(m Window) bool { return m.Interval == w.Interval }); i >= 0 {
			merged[i].Limit = min(merged[i].Limit, w.Limit)
			continue
		}
		merged = append(merged, w)
	}
	slices.SortFunc(merged, func(a, b Window) int { return cmp.Compare(a.Interval, b.Interval) })
	return limit, merged
}

// longest returns the longest interval of req's windows.
func (req Request) longest() time.Duration {
	d := req.Interval
	for _, w := range req.Windows {
		d = max(d, w.Interval)
	}
	return d
}
