package throttle

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"
)

// Leased permits: for a limit above maxSlots, a process asks the store for
// several starts at once and spends them locally, each at most once, within
// a short validity timed from before the request was sent (see
// scripts/window.lua for why the limit still holds exactly, across every
// process). The batch size follows this process's own demand for the key:
// 1 while it is low, which is an ordinary decision with nothing wasted.

// permitShare is the validity of leased permits as a share of the interval:
// each permit counts as if it lasted interval + interval/permitShare, so
// about 1/permitShare of the capacity is the cost of batching.
const permitShare = 64

// minPermitValidity is the shortest validity of leased permits: a batch is
// spent only when its reply comes within it, and on a busy machine a round
// trip can take milliseconds. Intervals below 16 times it do not batch.
const minPermitValidity = 4 * time.Millisecond

// permitPolicy is a core's use of leased permits; nil when it has none.
type permitPolicy struct {
	validity time.Duration // the shortest validity
	longest  time.Duration // the longest, for slow round trips
	max      int           // the largest batch asked for
}

// newPermitPolicy returns the permit policy of a throttle, or nil when it
// does not batch: a limit of at most maxSlots, a store that never blocks,
// a store with a clock of its own (throttletest), WithPermitBatch(1),
// WithConcurrency, windows of WithLimitPer, or an interval too short.
func newPermitPolicy(interval time.Duration, cfg *config, local bool) *permitPolicy {
	_, clock := cfg.store.(Clock)
	if cfg.limit <= maxSlots || local || clock || cfg.permitBatch == 1 || cfg.concurrencySet || len(cfg.windows) > 0 {
		return nil
	}
	d, ok := permitValidity(interval)
	if !ok {
		return nil
	}
	most := cfg.permitBatch
	if most == 0 {
		most = max(cfg.limit/8, 2)
	}
	return &permitPolicy{validity: d, longest: interval / 16, max: most}
}

// alone decides one start of key with an ordinary decision, with a
// timeout of its own, for a caller whose ctx ended while it waited for
// other callers' refills. That happens on a machine so busy that the
// waiter runs long after the refill it waited for (goroutines that spend
// permits without blocking keep the CPUs), and an error would blame the
// store for it. If the caller's own ctx was cancelled, that is its answer.
func (c *core) alone(ctx context.Context, key string, req Request) (Reservation, error) {
	if errors.Is(context.Cause(ctx), context.Canceled) {
		return Reservation{}, ctx.Err()
	}
	rctx, cancel := c.deadlines.bound(context.WithoutCancel(ctx))
	defer cancel()
	return c.cfg.store.Take(rctx, key, req)
}

// permitValidity returns the validity of the leased permits of a throttle
// of interval, and false when it does not batch (an interval below 64 ms).
func permitValidity(interval time.Duration) (time.Duration, bool) {
	d := max(interval/permitShare, minPermitValidity)
	return d, d <= interval/16
}

// permitPool holds one key's leased permits in this process.
type permitPool struct {
	batch atomic.Pointer[permitBatch]

	misses atomic.Int64 // calls that found no permit since the last refill
	held   atomic.Int64 // mono ns before which no permit is spent (Hold)

	mu     sync.Mutex
	flight *permitFlight // the refill in flight, if any
	sent   int64         // mono when the last refill was sent
	got    int64         // permits that refill gave this process
	rtt    int64         // a moving average of the refills' round trips, ns
	late   bool          // the last batch came after its validity
}

// validity returns the validity to ask for: the policy's, or four round
// trips when they are slow (a busy machine), so that replies seldom come
// after it, up to a sixteenth of the interval.
func (p *permitPool) validity(pol *permitPolicy) time.Duration {
	return min(max(pol.validity, 4*time.Duration(p.rtt)), pol.longest)
}

// permitBatch is the permits of one grant: each is spent by taking one off
// left, and only before until (ns on mono).
type permitBatch struct {
	left  atomic.Int64
	until int64
}

// permitFlight is one refill in flight; done is closed when it has ended,
// and res and err are its outcome then. The callers that wait for it
// count themselves in waiters; a batch keeps one permit for each of them
// in reserved, spendable before until, so that the callers still running
// cannot take them all first.
type permitFlight struct {
	done     chan struct{}
	res      Reservation
	err      error
	waiters  int // guarded by the pool's mu
	reserved atomic.Int64
	until    int64
}

// spend takes one permit of b, if b has one that is still valid and no
// hold of this process (before held, ns on mono) forbids it. The clock is
// read after the permit is taken, so the start it admits is never later
// than the check.
func (b *permitBatch) spend(held *atomic.Int64) bool {
	if b == nil || b.left.Add(-1) < 0 {
		return false
	}
	now := mono()
	return now < b.until && now >= held.Load()
}

// pool returns e's permit pool, made if missing.
func (e *entry) pool() *permitPool {
	if p := e.permits.Load(); p != nil {
		return p
	}
	e.permits.CompareAndSwap(nil, new(permitPool))
	return e.permits.Load()
}

// spendPermit spends one of e's leased permits, if it has one.
func (e *entry) spendPermit() bool {
	p := e.permits.Load()
	return p != nil && p.batch.Load().spend(&p.held)
}

// dropPermits stops e's permits from being spent, those of a refill still
// in flight included, for d (a hold) or at once (a reset, d = 0).
func (e *entry) dropPermits(d time.Duration) {
	if p := e.permits.Load(); p != nil {
		for until := mono() + int64(d); d > 0; {
			if old := p.held.Load(); old >= until || p.held.CompareAndSwap(old, until) {
				break
			}
		}
		p.batch.Store(nil)
	}
}

// permitsLive reports whether e holds permits or a refill, which a sweep
// of Keyed's entries must keep.
func (e *entry) permitsLive() bool {
	p := e.permits.Load()
	if p == nil {
		return false
	}
	if b := p.batch.Load(); b != nil && mono() < b.until {
		return true
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.flight != nil
}

// want returns the batch to ask for at now, from the demand since the last
// refill was sent (the permits spent and the calls that found none), at
// that rate over twice the validity v, between 1 and pol.max.
// The first refill asks for 1.
func (p *permitPool) want(pol *permitPolicy, v time.Duration, now int64) int {
	demand := p.misses.Swap(0)
	if p.sent == 0 || p.late {
		return 1
	}
	demand += p.got - 1 // the refill's own call is among the misses
	if b := p.batch.Load(); b != nil {
		demand -= max(b.left.Load(), 0)
	}
	elapsed := max(now-p.sent, 1)
	k := float64(demand) * float64(v) / float64(elapsed) * 2
	return int(min(max(k, 1), float64(pol.max)))
}

// takePermit decides one start of key with leased permits: a permit of a
// refill that another goroutine has in flight, or a refill of its own. A
// refill of one permit is an ordinary decision. req is the request of an
// ordinary decision (no wait). ctx bounds the waiting for other callers'
// refills; a refill of its own, or the ordinary decision of a caller that
// waited that long, has the throttle's timeout, so a call takes at most
// twice the timeout.
func (c *core) takePermit(ctx context.Context, key string, e *entry, req Request) (Reservation, error) {
	p := e.pool()
	for {
		p.misses.Add(1)
		p.mu.Lock()
		if f := p.flight; f != nil {
			f.waiters++
			p.mu.Unlock()
			select {
			case <-f.done:
			case <-ctx.Done():
				select {
				case <-f.done: // both: a caller scheduled late takes its answer
				default:
					return c.alone(ctx, key, req)
				}
			}
			if f.reserved.Add(-1) >= 0 {
				if now := mono(); now < f.until && now >= p.held.Load() {
					return Reservation{OK: true}, nil
				}
			}
			if p.batch.Load().spend(&p.held) {
				return Reservation{OK: true}, nil
			}
			if f.err != nil || !f.res.OK {
				return f.res, f.err // the same answer for every waiter
			}
			if ctx.Err() != nil {
				// Others spent the batch first, and this caller, which
				// ran too late for its reserved permit, has no time left
				// to wait for another refill.
				return c.alone(ctx, key, req)
			}
			continue // others spent the batch first: refill again
		}
		f := &permitFlight{done: make(chan struct{})}
		p.flight = f
		now := mono()
		v := p.validity(c.permits)
		k := p.want(c.permits, v, now)
		p.sent = now
		p.mu.Unlock()

		r := req
		if k > 1 {
			r.Permits, r.Validity = k, v
		}
		// The refill serves the callers waiting for it too, so it has a
		// timeout of its own rather than what is left of this caller's.
		rctx, cancel := c.deadlines.bound(context.WithoutCancel(ctx))
		res, err := c.cfg.store.Take(rctx, key, r)
		cancel()
		back := mono()
		// The local validity ends a little early: this process's monotonic
		// clock may run slower than the store's, by far less than 1/256.
		until := now + int64(v-v/256)
		got := int64(0)
		p.mu.Lock()
		// The pool holds this refill's batch or none, so that want
		// counts what was spent of the latest one.
		p.batch.Store(nil)
		if err == nil && res.OK {
			got = 1
			if res.Permits > 1 {
				got = int64(res.Permits)
				if back < until {
					// One is this call's, one for each caller waiting.
					kept := min(got-1, int64(f.waiters))
					f.reserved.Store(kept)
					f.until = until
					b := &permitBatch{until: until}
					b.left.Store(got - 1 - kept)
					p.batch.Store(b)
				}
			}
		}
		p.got = got
		if err == nil {
			p.rtt += (back - now - p.rtt) / 4
		}
		p.late = got > 1 && back >= until
		late := p.late
		f.res, f.err = res, err
		p.flight = nil
		p.mu.Unlock()
		close(f.done)
		if late {
			// The reply came after the permits' validity: none is spent.
			// The next refill, this call's own, is an ordinary decision
			// (one start now), which no validity limits; the callers that
			// waited for this one try again too.
			continue
		}
		return res, err
	}
}
