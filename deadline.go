package throttle

import (
	"context"
	"sync"
	"sync/atomic"
	"time"
)

// deadlines bounds store decisions by the timeout without a timer per
// decision where it can: a caller's ctx that can never be cancelled
// (context.Background, as Wrap uses) shares one context with all the
// decisions that begin within one tick, ending timeout + tick after the
// tick began, so never less than the timeout after any of them began.
type deadlines struct {
	timeout time.Duration
	tick    time.Duration
	cur     atomic.Pointer[tickContext]
}

// tickContext is a shared context, handed out until until (ns on the
// monotonic clock of mono).
type tickContext struct {
	ctx    context.Context
	cancel context.CancelFunc // its own timer calls it at the deadline
	until  int64
}

// monoEpoch is the origin of mono.
var monoEpoch = time.Now()

// mono returns the time on this process's monotonic clock, in ns.
func mono() int64 { return int64(time.Since(monoEpoch)) }

// allDeadlines holds one *deadlines per timeout, shared by every throttle
// with that timeout, so that a process with many throttles (one per key,
// say) still makes one shared context per tick.
var allDeadlines sync.Map // time.Duration → *deadlines

// deadlinesFor returns the deadlines of timeout.
func deadlinesFor(timeout time.Duration) *deadlines {
	if d, ok := allDeadlines.Load(timeout); ok {
		return d.(*deadlines)
	}
	d, _ := allDeadlines.LoadOrStore(timeout, newDeadlines(timeout))
	return d.(*deadlines)
}

func newDeadlines(timeout time.Duration) *deadlines {
	return &deadlines{timeout: timeout, tick: max(min(timeout/8, 10*time.Millisecond), time.Microsecond)}
}

// bound returns a context for one store decision on behalf of ctx, ending
// at the latest timeout (plus at most one tick) from now, and the function
// to call when the decision is made.
func (d *deadlines) bound(ctx context.Context) (context.Context, context.CancelFunc) {
	if ctx.Done() == nil {
		now := mono()
		if t := d.cur.Load(); t != nil && now < t.until {
			return t.ctx, noop
		}
		sctx, cancel := context.WithTimeout(context.Background(), d.timeout+d.tick)
		t := &tickContext{ctx: sctx, cancel: cancel, until: now + int64(d.tick)}
		d.cur.Store(t)
		return sctx, noop
	}
	if deadline, ok := ctx.Deadline(); ok && time.Until(deadline) <= d.timeout {
		return ctx, noop // ctx ends first anyway
	}
	return context.WithTimeout(ctx, d.timeout)
}

func noop() {}
