package throttle

import (
	"context"
	"sync"
	"sync/atomic"
	"time"
)

// deadlines bounds store decisions by the timeout without a timer per
// decision where it can. The decisions on context.Background or
// context.TODO (as Wrap uses), which carry nothing and are never
// cancelled, share one context with every such decision that begins
// within one tick, ending timeout + tick after the tick began, so never
// less than the timeout after any of them began. Other contexts that are
// never cancelled but carry values (WithValue, WithoutCancel) get a
// context with their own values and the shared deadline, for one small
// allocation; the rest get a timer of their own.
//
// A shared context lives timeout + tick and one is made per tick at most,
// so at most timeout/tick + 2 are alive at once: the tick is at least
// timeout/maxShared, which bounds that count whatever the timeout.
type deadlines struct {
	timeout time.Duration
	tick    time.Duration
	cur     atomic.Pointer[tickContext]
}

// maxShared bounds timeout/tick, and so the shared contexts (and their
// timers) alive at once for one timeout, at maxShared + 2.
const maxShared = 64

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
	tick := max(min(timeout/8, 10*time.Millisecond), timeout/maxShared, time.Microsecond)
	return &deadlines{timeout: timeout, tick: tick}
}

// bound returns a context for one store decision on behalf of ctx, ending
// at the latest timeout (plus at most one tick) from now, with ctx's
// values, and the function to call when the decision is made.
func (d *deadlines) bound(ctx context.Context) (context.Context, context.CancelFunc) {
	if ctx == context.Background() || ctx == context.TODO() {
		return d.shared(), noop
	}
	if ctx.Done() == nil {
		// Never cancelled, but it may carry values (a trace span for the
		// client's hooks): keep them, borrow the shared deadline.
		return &valuesContext{Context: d.shared(), values: ctx}, noop
	}
	if deadline, ok := ctx.Deadline(); ok && time.Until(deadline) <= d.timeout {
		return ctx, noop // ctx ends first anyway
	}
	return context.WithTimeout(ctx, d.timeout)
}

// shared returns the shared context of the current tick, made if missing.
func (d *deadlines) shared() context.Context {
	for {
		now := mono()
		t := d.cur.Load()
		if t != nil && now < t.until {
			return t.ctx
		}
		// Cancelled only by its timer, timeout + tick from now: the
		// decisions that use it may still run when the tick ends.
		ctx, cancel := context.WithTimeout(context.Background(), d.timeout+d.tick)
		if d.cur.CompareAndSwap(t, &tickContext{ctx: ctx, cancel: cancel, until: now + int64(d.tick)}) {
			return ctx
		}
		cancel() // another decision made the tick's context first
	}
}

// valuesContext is a shared context (Deadline, Done, Err) with the values
// of a context that is never cancelled.
type valuesContext struct {
	context.Context
	values context.Context
}

func (c *valuesContext) Value(key any) any { return c.values.Value(key) }

// AfterFunc lets a context derived from c (context.WithCancel) end with
// it without a goroutine of its own, as it would on the shared context.
func (c *valuesContext) AfterFunc(f func()) func() bool { return context.AfterFunc(c.Context, f) }

func noop() {}
