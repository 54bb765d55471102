package throttle

import (
	"context"
	"math/bits"
	"runtime"
	"sync"
	"sync/atomic"
	"time"
	"weak"

	"github.com/redis/go-redis/v9"
)

// timeoutClients bounds the commands of a *redis.Client made without
// ContextTimeoutEnabled, which go-redis runs with the client's own read and
// write timeouts whatever the context's deadline. A command whose context
// ends r from now runs on a clone of the client made by
// redis.Client.WithTimeout (the same pool and dialer, read and write
// timeouts of its own) whose timeouts are r rounded up by at most 1/16 (at
// least 1 ms): each socket read or write of the command then ends by the
// context's deadline plus that rounding, and a read that runs out does so
// after the deadline, so go-redis does not retry it (it retries only while
// the context lasts). Waiting for a pooled connection, dialling one, and
// the pauses between retries end at the context's deadline in go-redis.
//
// The clones are made when first needed and kept, at most 17 per doubling
// of the timeout (the decisions of one throttle use one or two).
//
// go-redis's clones have none of the client's hooks (v9.23), so the command
// is sent on the client itself, through its hooks, in a context that names
// the clone (routedContext), and routeHook, added to the client after the
// hooks it had, sends it on the clone.
//
// The clones of a client are shared by every store that uses it (a store
// per throttle is common), and dropped with the client.
type timeoutClients struct {
	hook   sync.Once // adds routeHook to the client
	clones [timeoutSlots]atomic.Pointer[redis.Client]
}

// The timeouts of the clones are m << e ns, with m in [16, 32] and e from
// minTimeoutShift (about 1 ms) to maxTimeoutShift (about 13 days).
const (
	minTimeoutShift = 16
	maxTimeoutShift = 46
	timeoutSlots    = (maxTimeoutShift - minTimeoutShift + 1) * 17
	minCloneTimeout = 16 << minTimeoutShift // 1.05 ms
	maxCloneTimeout = 16 << maxTimeoutShift // 13 days
)

// allTimeouts holds the timeoutClients of each client, which does not keep
// the client alive: an entry goes when its client is collected.
var allTimeouts sync.Map // weak.Pointer[redis.Client] → *timeoutClients

// timeoutsFor returns the timeoutClients of c, made (and routeHook added
// to c) if missing.
func timeoutsFor(c *redis.Client) *timeoutClients {
	p := weak.Make(c)
	v, ok := allTimeouts.Load(p)
	if !ok {
		var loaded bool
		if v, loaded = allTimeouts.LoadOrStore(p, new(timeoutClients)); !loaded {
			runtime.AddCleanup(c, func(p weak.Pointer[redis.Client]) { allTimeouts.Delete(p) }, p)
		}
	}
	t := v.(*timeoutClients)
	t.hook.Do(func() { c.AddHook(routeHook{}) })
	return t
}

// roundTimeout returns the timeout of the clone for r and its slot: r,
// clamped to [minCloneTimeout, maxCloneTimeout], rounded up to a multiple
// of 1/16 of its highest power of two.
func roundTimeout(r time.Duration) (time.Duration, int) {
	r = min(max(r, minCloneTimeout), maxCloneTimeout)
	e := bits.Len64(uint64(r)) - 5 // r >> e is in [16, 32)
	m := (uint64(r) + 1<<e - 1) >> e
	return time.Duration(m << e), (e-minTimeoutShift)*17 + int(m-16)
}

// forTimeout returns the clone of c whose read and write timeouts are at
// least r and at most 1/16 more (within [minCloneTimeout,
// maxCloneTimeout]).
func (t *timeoutClients) forTimeout(c *redis.Client, r time.Duration) *redis.Client {
	d, i := roundTimeout(r)
	if c := t.clones[i].Load(); c != nil {
		return c
	}
	c = c.WithTimeout(d)
	if t.clones[i].CompareAndSwap(nil, c) {
		return c
	}
	return t.clones[i].Load() // another call made it first
}

// on returns the context to send a command of the store with on behalf of
// ctx. For a *redis.Client without ContextTimeoutEnabled, when ctx has a
// deadline, it routes the command to the clone that ends with ctx (ctx
// itself when it already routes there). Take and bounded route every
// store call on entry; a command sent later in the call routes again, to
// the clone of the time then left.
func (g *goRedisConn) on(ctx context.Context) context.Context {
	if g.timeouts == nil {
		return ctx
	}
	deadline, ok := ctx.Deadline()
	if !ok {
		return ctx
	}
	c := g.timeouts.forTimeout(g.client.(*redis.Client), time.Until(deadline))
	if r, ok := ctx.(*routedContext); ok {
		if r.client == c {
			return ctx
		}
		ctx = r.Context
	}
	return &routedContext{Context: ctx, client: c}
}

// routedContext is a command's context that names the clone to send it on.
type routedContext struct {
	context.Context
	client *redis.Client
}

// routeKey is the key under which a routedContext gives its clone.
type routeKey struct{}

func (c *routedContext) Value(key any) any {
	if key == (routeKey{}) {
		return c.client
	}
	return c.Context.Value(key)
}

// routeHook sends a command whose context names a clone (routedContext) on
// that clone, once the hooks added to the client before it have seen it.
// Other commands pass through.
type routeHook struct{}

func (routeHook) DialHook(next redis.DialHook) redis.DialHook { return next }

func (routeHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if c, ok := ctx.Value(routeKey{}).(*redis.Client); ok {
			return c.Process(ctx, cmd)
		}
		return next(ctx, cmd)
	}
}

func (routeHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}
