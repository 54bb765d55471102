package throttle

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dthrottle/throttle/internal/faultproxy"
	"github.com/dthrottle/throttle/internal/redistest"
	"github.com/dthrottle/throttle/internal/simevent"
)

// faultBackend returns the address of a real redis-server when one is
// installed (or required by THROTTLE_REQUIRE_REDIS=1), and otherwise of a
// miniredis whose TTLs follow the real clock, for the tests that put a
// faultproxy in front of Redis.
func faultBackend(t *testing.T) string {
	t.Helper()
	if redistest.Available() || requireRedis() {
		return redistest.Start(t).Addr
	}
	t.Log("redis-server not found: the fault test runs on miniredis")
	mr := miniredis.RunT(t)
	mr.ClockTTL(true)
	return mr.Addr()
}

// proxyClient returns a client of the proxy, closed when the test ends.
func proxyClient(t *testing.T, p *faultproxy.Proxy, opts ...func(*redis.Options)) *redis.Client {
	t.Helper()
	o := &redis.Options{Addr: p.Addr, ContextTimeoutEnabled: true}
	for _, f := range opts {
		f(o)
	}
	c := redis.NewClient(o)
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// TestSlowLinkBoundedByTimeout puts 300 ms of latency each way (and then a
// stall that holds every byte) between the client and Redis, far above a
// 100 ms timeout: every kind of decision returns within 1 s, fails closed
// (or open with WithFailOpen) with ErrStoreUnavailable, both with and
// without ContextTimeoutEnabled; decisions succeed again once the link is
// fast, and no goroutine outlives the test.
func TestSlowLinkBoundedByTimeout(t *testing.T) {
	checkLeaks(t)
	p := faultproxy.Start(t, faultBackend(t))
	const timeout = 100 * time.Millisecond
	for _, kind := range faultClientKinds {
		t.Run(kind.name, func(t *testing.T) {
			c := proxyClient(t, p, kind.opts)
			store := NewRedisStore(c)
			prefix := "slow/" + kind.name
			ths := faultThrottles(t, store, prefix, time.Millisecond, timeout)
			open := faultThrottles(t, store, prefix+"/open", time.Millisecond, timeout, WithFailOpen())
			ctx := context.Background()
			for _, th := range ths {
				_, err := faultDecide(ctx, th)
				require.NoError(t, err, "%q on a fast link", th.key)
			}
			var mu sync.Mutex
			var slowest time.Duration
			check := func(fault string, th *Throttle, failOpen bool) {
				start := time.Now()
				ok, err := faultDecide(ctx, th)
				elapsed := time.Since(start)
				mu.Lock()
				slowest = max(slowest, elapsed)
				mu.Unlock()
				assert.ErrorIs(t, err, ErrStoreUnavailable, "%q with %s", th.key, fault)
				if failOpen {
					// Wait reports fail-open as nil, Allow as an error
					// with an admitting decision.
					assert.True(t, ok || err == nil, "%q with %s and WithFailOpen: not admitted", th.key, fault)
				} else {
					assert.False(t, ok, "%q with %s: admitted (want fail closed)", th.key, fault)
				}
				assert.Less(t, elapsed, time.Second, "%q with %s and a %v timeout took %v", th.key, fault, timeout, elapsed)
			}
			run := func(fault string) {
				for _, th := range ths {
					check(fault, th, false)
				}
				check(fault, open[0], true)
				// Many callers at once must not queue behind each other
				// for longer than the timeout either.
				var wg sync.WaitGroup
				for i := range 8 {
					wg.Add(1)
					go func() {
						defer wg.Done()
						check(fault+" (concurrent)", ths[i%len(ths)], false)
					}()
				}
				wg.Wait()
			}

			p.SetLatency(300*time.Millisecond, 300*time.Millisecond)
			run("300ms latency each way")
			p.SetLatency(0, 0)
			p.Stall()
			run("a stalled link")
			p.Resume()
			t.Logf("slowest decision under the faults: %v (timeout %v)", slowest, timeout)

			for _, th := range ths {
				d := faultWaitRecovered(t, ctx, th, 5*time.Second)
				t.Logf("%q decided again %v after the link was fast", th.key, d)
			}
		})
	}
	assert.Positive(t, p.Stats().Accepted, "connections through the proxy")
}

// TestSlowLinkKeepsGuarantee runs callers through a link whose latency
// changes every 50 ms (0 to 40 ms each way, so that a new connection's
// handshake and first command take at most about 250 ms, below the 1 s
// timeout), so that decisions reach Redis in another order than they were
// asked: the guarantee still holds for every kind of store call.
func TestSlowLinkKeepsGuarantee(t *testing.T) {
	checkLeaks(t)
	p := faultproxy.Start(t, faultBackend(t))
	c := proxyClient(t, p)
	store := NewRedisStore(c)
	const interval = 60 * time.Millisecond
	specs := []struct {
		limit int
		wait  bool
	}{{1, false}, {3, false}, {1, true}, {2, true}}
	logs := make([]*faultAdmissionLog, len(specs))
	var wg sync.WaitGroup
	stop := make(chan struct{})
	begin := time.Now()
	for i, sp := range specs {
		logs[i] = &faultAdmissionLog{}
		for range 4 { // each caller with its own throttle, like a process
			opts := []Option{WithStore(store), WithLimit(sp.limit), WithTimeout(time.Second)}
			if sp.wait {
				opts = append(opts, WithWait(time.Second))
			}
			th, err := New(fmt.Sprintf("latency/limit%d/wait%v", sp.limit, sp.wait), interval, opts...)
			require.NoError(t, err)
			faultHammer(&wg, stop, th, sp.wait, logs[i])
		}
	}
	var maxLatency time.Duration
	for end := time.Now().Add(1500 * time.Millisecond); time.Now().Before(end); {
		up := time.Duration(rand.Int64N(int64(40 * time.Millisecond)))
		down := time.Duration(rand.Int64N(int64(40 * time.Millisecond)))
		maxLatency = max(maxLatency, up+down)
		p.SetLatency(up, down)
		time.Sleep(50 * time.Millisecond)
	}
	close(stop)
	wg.Wait()
	span := time.Since(begin)
	for i, sp := range specs {
		l := logs[i]
		r := simevent.Check(l.starts, interval, sp.limit, span)
		t.Logf("limit %d per %v (wait %v) over a link of up to %v round trip: %d starts, admitted/ideal %.2f, provable violations %d, errors %d",
			sp.limit, interval, sp.wait, maxLatency, r.Starts, r.AdmittedRatio(), r.Violations, len(l.errs))
		assert.Empty(t, faultFirstErrors(l.errs, 3), "errors with a link faster than the timeout (%d in all)", len(l.errs))
		assert.Zero(t, r.Violations, "provable violations of %d per %v", sp.limit, interval)
		assert.Positive(t, r.Starts, "starts of limit %d", sp.limit)
	}
}

// TestDroppedConnectionsNeverRunFnTwice loses replies (the server executed
// the command, the client never hears back, go-redis retries on a new
// connection) and drops every connection every 50 ms while goroutines call
// WrapErr on many keys with a limit of 1 or 3 per hour. For every key, fn
// runs at most as often as the store admitted it: a lost reply can cost an
// admission but never runs fn twice for one. Once the link heals, every
// call decides again. It runs on a plain client and through go-redis
// auto-pipelining, which retries a whole batch after a dropped connection,
// so a SET NX may run twice and deny its own winner: that costs admissions,
// never an extra run.
func TestDroppedConnectionsNeverRunFnTwice(t *testing.T) {
	for _, autopipe := range []bool{false, true} {
		name := "plain"
		if autopipe {
			name = "autopipeline"
		}
		t.Run(name, func(t *testing.T) { testDroppedConnections(t, autopipe) })
	}
}

func testDroppedConnections(t *testing.T, autopipe bool) {
	checkLeaks(t)
	backend := faultBackend(t)
	p := faultproxy.Start(t, backend)
	c := proxyClient(t, p, func(o *redis.Options) { o.DialTimeout = time.Second })
	var client redis.UniversalClient = c
	if autopipe {
		ap, err := c.AutoPipeline()
		require.NoError(t, err)
		t.Cleanup(func() { _ = ap.Close() })
		client = ap
	}
	store := NewRedisStore(client, WithKeyPrefix("drop:"))
	direct := redis.NewClient(&redis.Options{Addr: backend})
	t.Cleanup(func() { _ = direct.Close() })

	type key struct {
		name  string
		limit int
		runs  atomic.Int64
	}
	var keys []*key
	for i := range 80 {
		limit := 1
		if i%4 == 0 {
			limit = 3
		}
		keys = append(keys, &key{name: fmt.Sprintf("k%d/limit%d", i, limit), limit: limit})
	}
	const goroutines = 4
	// Each goroutine has its own wrapped function per key, as separate
	// processes would.
	calls := make([][]func(context.Context) (int, error), goroutines)
	for g := range calls {
		for _, k := range keys {
			calls[g] = append(calls[g], WrapErr(k.name, time.Hour, func(context.Context) (int, error) {
				k.runs.Add(1)
				return 1, nil
			}, WithStore(store), WithLimit(k.limit), WithTimeout(time.Second)))
		}
	}
	var storeErrs, otherErrs atomic.Int64
	var callCount atomic.Int64
	// pass calls every key once, in random order, until end.
	pass := func(g int, errs *atomic.Int64, end time.Time) {
		for _, i := range rand.Perm(len(keys)) {
			if time.Now().After(end) {
				return
			}
			callCount.Add(1)
			_, err := calls[g][i](context.Background())
			switch {
			case err == nil, errors.Is(err, ErrThrottled):
			case errors.Is(err, ErrStoreUnavailable):
				errs.Add(1)
			default:
				otherErrs.Add(1)
			}
		}
	}

	p.SetReplyLoss(5)
	stopDrops := make(chan struct{})
	dropsDone := make(chan struct{})
	go func() {
		defer close(dropsDone)
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stopDrops:
				return
			case <-tick.C:
				p.Drop()
			}
		}
	}()
	var wg sync.WaitGroup
	faultsEnd := time.Now().Add(1500 * time.Millisecond)
	for g := range goroutines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			pass(g, &storeErrs, faultsEnd)
		}()
	}
	wg.Wait()
	close(stopDrops)
	<-dropsDone
	p.SetReplyLoss(0)
	stats := p.Stats()
	faultCalls := callCount.Load()

	// Healed: every call decides again (after at most a few failures while
	// go-redis replaces the connections it lost).
	probe, err := New("healed", time.Hour, WithStore(store))
	require.NoError(t, err)
	recovery := faultWaitRecovered(t, context.Background(), probe, 5*time.Second)
	var healedErrs atomic.Int64
	for g := range goroutines {
		wg.Add(1)
		go func() { defer wg.Done(); pass(g, &healedErrs, time.Now().Add(time.Hour)) }()
	}
	wg.Wait()
	assert.Zero(t, healedErrs.Load(), "store errors in a pass over every key after the link healed")
	assert.Zero(t, otherErrs.Load(), "errors other than throttled or store unavailable")

	// Compare fn runs with what the store admitted.
	ctx := context.Background()
	var runs, admitted, lost int64
	for _, k := range keys {
		// Each admitted start holds one slot for the hour.
		slots := store.slots(k.name, k.limit)
		n, err := direct.Exists(ctx, slots...).Result()
		require.NoError(t, err, "reading %q", slots)
		r := k.runs.Load()
		assert.LessOrEqual(t, r, int64(k.limit), "fn runs of %q with limit %d per hour", k.name, k.limit)
		assert.LessOrEqual(t, r, n, "fn runs of %q against the store's admissions", k.name)
		runs += r
		admitted += n
		lost += n - r
	}
	t.Logf("%d keys, %d goroutines, %d calls during the faults: %d replies lost and %d connections dropped by the proxy; %d store errors; "+
		"store admitted %d starts, fn ran %d times (%d admissions lost with their replies, fn never ran twice for one); recovered %v after healing",
		len(keys), goroutines, faultCalls, stats.LostReplies, stats.Dropped, storeErrs.Load(), admitted, runs, lost, recovery)
	assert.Positive(t, stats.LostReplies, "replies the proxy lost (the test must exercise lost replies)")
}

// TestUnreachableStoreBoundedByTimeout decides with a store that cannot be
// reached: a closed port (every dial refused at once) and a host that never
// answers a dial (a dialer that blocks until its context ends): every kind
// of decision returns within 1 s of a 100 ms timeout and fails closed, with
// and without ContextTimeoutEnabled, and no goroutine outlives the test.
func TestUnreachableStoreBoundedByTimeout(t *testing.T) {
	checkLeaks(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	closed := l.Addr().String()
	require.NoError(t, l.Close())
	const timeout = 100 * time.Millisecond
	for _, kind := range faultClientKinds {
		for _, fault := range []string{"closed port", "unanswered dial"} {
			t.Run(kind.name+"/"+fault, func(t *testing.T) {
				o := &redis.Options{Addr: closed}
				kind.opts(o)
				if fault == "unanswered dial" {
					o.Dialer = func(ctx context.Context, _, _ string) (net.Conn, error) {
						<-ctx.Done()
						return nil, ctx.Err()
					}
				}
				c := redis.NewClient(o)
				t.Cleanup(func() { _ = c.Close() })
				ths := faultThrottles(t, NewRedisStore(c), "unreachable/"+kind.name, time.Millisecond, timeout)
				for _, th := range ths {
					for range 3 {
						start := time.Now()
						ok, err := faultDecide(context.Background(), th)
						elapsed := time.Since(start)
						assert.ErrorIs(t, err, ErrStoreUnavailable, "%q with a %s", th.key, fault)
						assert.False(t, ok, "%q with a %s: admitted (want fail closed)", th.key, fault)
						assert.Less(t, elapsed, time.Second, "%q with a %s and a %v timeout took %v", th.key, fault, timeout, elapsed)
					}
				}
			})
		}
	}
}
