package rueidisthrottle

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/rueidis"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	throttle "github.com/dthrottle/throttle"
	"github.com/dthrottle/throttle/internal/faultproxy"
	"github.com/dthrottle/throttle/internal/redistest"
)

// checkLeaks makes the test fail if a goroutine started after this call
// still runs 10 s after the test and its cleanups (which close the rueidis
// clients) ended.
func checkLeaks(t *testing.T) {
	t.Helper()
	ignore := goleak.IgnoreCurrent()
	t.Cleanup(func() {
		deadline := time.Now().Add(10 * time.Second)
		for {
			err := goleak.Find(ignore, goleak.IgnoreTopFunction(redistest.PermanentGoroutine))
			if err == nil {
				return
			}
			if time.Now().After(deadline) {
				t.Errorf("goroutines started by %s still run after it ended: %v", t.Name(), err)
				return
			}
			time.Sleep(50 * time.Millisecond)
		}
	})
}

// decider is one kind of store call, through the public API.
type decider struct {
	name   string
	decide func(ctx context.Context) (admitted bool, err error)
}

// deciders returns one of each kind of decision on s, with a timeout of
// timeout, on keys under prefix: SET NX PX (limit 1), the slots script
// (limit 3, after its first start), a booking (WithWait), leased permits
// (limit 1000), a lease (WithConcurrency) and a Reset.
func deciders(t *testing.T, s *throttle.RedisStore, prefix string, timeout time.Duration, opts ...throttle.Option) []decider {
	t.Helper()
	mk := func(name string, interval time.Duration, o ...throttle.Option) *throttle.Throttle {
		th, err := throttle.New(prefix+"/"+name, interval, append(append([]throttle.Option{throttle.WithStore(s), throttle.WithTimeout(timeout)}, o...), opts...)...)
		require.NoError(t, err)
		return th
	}
	allow := func(th *throttle.Throttle) func(context.Context) (bool, error) {
		return func(ctx context.Context) (bool, error) {
			d, err := th.Allow(ctx)
			return d.Allowed, err
		}
	}
	l1 := mk("limit1", time.Millisecond)
	l3 := mk("limit3", time.Millisecond, throttle.WithLimit(3))
	wait := mk("wait", time.Millisecond, throttle.WithLimit(2), throttle.WithWait(time.Second))
	permits := mk("permits", time.Second, throttle.WithLimit(1000))
	capped := mk("lease", time.Millisecond, throttle.WithConcurrency(2))
	reset := mk("reset", time.Millisecond, throttle.WithLimit(3))
	return []decider{
		{"limit 1", allow(l1)},
		{"limit 3", allow(l3)},
		{"wait", func(ctx context.Context) (bool, error) { err := wait.Wait(ctx); return err == nil, err }},
		{"permits", allow(permits)},
		{"lease", func(ctx context.Context) (bool, error) {
			l, err := capped.Acquire(ctx)
			if err != nil {
				return false, err
			}
			l.Release()
			return true, nil
		}},
		{"reset", func(ctx context.Context) (bool, error) { err := reset.Reset(ctx); return err == nil, err }},
	}
}

// recovered calls d until it succeeds, for at most within.
func recovered(t *testing.T, d decider, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		_, err := d.decide(context.Background())
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("%s: still failing %v after the fault ended: %v", d.name, within, err)
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestHungServerBoundedByTimeout puts a stall (every byte held, on open
// and on new connections) and then 300 ms of latency each way between
// rueidis and Redis, far above a 100 ms timeout: every kind of decision
// returns within 1 s and fails closed with ErrStoreUnavailable (or open
// with WithFailOpen), alone and with 64 concurrent callers on the same
// client; decisions succeed again once the link is fast, and no goroutine
// outlives the test.
func TestHungServerBoundedByTimeout(t *testing.T) {
	requireRedis(t)
	checkLeaks(t)
	p := faultproxy.Start(t, redistest.Start(t).Addr)
	c := newClient(t, p.Addr)
	s := NewStore(c)
	const timeout = 100 * time.Millisecond
	ds := deciders(t, s, "hung", timeout)
	open := deciders(t, s, "hung-open", timeout, throttle.WithFailOpen())
	for _, d := range ds {
		_, err := d.decide(context.Background())
		require.NoError(t, err, "%s on a fast link", d.name)
	}
	var mu sync.Mutex
	var slowest time.Duration
	check := func(fault string, d decider, failOpen bool) {
		start := time.Now()
		ok, err := d.decide(context.Background())
		elapsed := time.Since(start)
		mu.Lock()
		slowest = max(slowest, elapsed)
		mu.Unlock()
		assert.Less(t, elapsed, time.Second, "%s with %s and a %v timeout took %v", d.name, fault, timeout, elapsed)
		if d.name == "reset" {
			assert.Error(t, err, "%s with %s", d.name, fault)
			return
		}
		if failOpen {
			// Wait and Acquire report fail-open as success, Allow as an
			// error with an admitting decision.
			if err != nil {
				assert.ErrorIs(t, err, throttle.ErrStoreUnavailable, "%s with %s and WithFailOpen", d.name, fault)
			}
			assert.True(t, ok, "%s with %s and WithFailOpen: not admitted", d.name, fault)
		} else {
			assert.ErrorIs(t, err, throttle.ErrStoreUnavailable, "%s with %s", d.name, fault)
			assert.False(t, ok, "%s with %s: admitted (want fail closed)", d.name, fault)
		}
	}
	run := func(fault string) {
		for i, d := range ds {
			check(fault, d, false)
			check(fault, open[i], true)
		}
		var wg sync.WaitGroup
		for i := range 64 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				check(fault+" (64 concurrent)", ds[i%len(ds)], false)
			}()
		}
		wg.Wait()
	}

	p.Stall()
	run("a stalled link")
	p.Drop() // rueidis dials anew, into the stall
	run("a stalled link on new connections")
	p.Resume()
	p.SetLatency(300*time.Millisecond, 300*time.Millisecond)
	run("300ms latency each way")
	p.SetLatency(0, 0)
	t.Logf("slowest decision under the faults: %v (timeout %v)", slowest, timeout)
	for _, d := range ds {
		recovered(t, d, 10*time.Second)
	}
}

// TestOutageAndRestart stops Redis under the store (decisions fail closed
// within 1 s), then restarts it on the same port: rueidis reconnects and
// every kind of decision succeeds again, scripts loaded anew (NOSCRIPT)
// into the empty server.
func TestOutageAndRestart(t *testing.T) {
	requireRedis(t)
	checkLeaks(t)
	srv := redistest.Start(t)
	c := newClient(t, srv.Addr)
	ds := deciders(t, NewStore(c), "outage", 100*time.Millisecond)
	for _, d := range ds {
		_, err := d.decide(context.Background())
		require.NoError(t, err, "%s before the outage", d.name)
	}
	srv.Kill()
	for _, d := range ds {
		start := time.Now()
		ok, err := d.decide(context.Background())
		assert.Less(t, time.Since(start), time.Second, "%s with Redis down", d.name)
		assert.Error(t, err, "%s with Redis down", d.name)
		assert.False(t, ok && d.name != "reset", "%s with Redis down: admitted", d.name)
	}
	srv.Restart(t)
	for _, d := range ds {
		recovered(t, d, 10*time.Second)
	}
}

// TestDroppedConnections drops every connection between rueidis and Redis
// every 20 ms while 32 callers decide on a limit of 5 per hour: no call
// outlives its timeout by much, the limit is never exceeded (rueidis
// resends no write whose reply was lost), and once the drops stop every
// call is decided again.
func TestDroppedConnections(t *testing.T) {
	requireRedis(t)
	checkLeaks(t)
	p := faultproxy.Start(t, redistest.Start(t).Addr)
	c := newClientWith(t, rueidis.ClientOption{}, p.Addr)
	s := NewStore(c)
	for _, limit := range []int{1, 5, 1000} {
		t.Run(fmt.Sprint("limit ", limit), func(t *testing.T) {
			th, err := throttle.New(fmt.Sprint("dropped/", limit), time.Hour, throttle.WithStore(s),
				throttle.WithLimit(limit), throttle.WithTimeout(200*time.Millisecond))
			require.NoError(t, err)
			stop := make(chan struct{})
			var dropper sync.WaitGroup
			dropper.Go(func() {
				for {
					select {
					case <-stop:
						return
					case <-time.After(20 * time.Millisecond):
						p.Drop()
					}
				}
			})
			var admitted, failed, slow atomic.Int64
			var wg sync.WaitGroup
			end := time.Now().Add(time.Second)
			for range 32 {
				wg.Go(func() {
					for time.Now().Before(end) {
						start := time.Now()
						d, err := th.Allow(context.Background())
						if took := time.Since(start); took > time.Second {
							slow.Add(1)
							t.Logf("a call took %v: allowed %v, %v", took, d.Allowed, err)
						}
						switch {
						case err != nil && !errors.Is(err, throttle.ErrStoreUnavailable):
							t.Errorf("Allow: %v", err)
						case err != nil:
							failed.Add(1)
						case d.Allowed:
							admitted.Add(1)
						}
					}
				})
			}
			wg.Wait()
			close(stop)
			dropper.Wait()
			t.Logf("limit %d: %d admitted, %d failed with the store unavailable", limit, admitted.Load(), failed.Load())
			assert.Zero(t, slow.Load(), "calls that took over 1 s with a 200 ms timeout")
			assert.LessOrEqual(t, admitted.Load(), int64(limit), "admitted under dropped connections, limit %d per hour", limit)
			// The link is whole again: a fresh key is decided.
			fresh, err := throttle.New(fmt.Sprint("dropped/fresh/", limit), time.Hour, throttle.WithStore(s), throttle.WithLimit(limit))
			require.NoError(t, err)
			recovered(t, decider{"fresh", func(ctx context.Context) (bool, error) { d, err := fresh.Allow(ctx); return d.Allowed, err }}, 10*time.Second)
		})
	}
	assert.Positive(t, p.Stats().Accepted, "connections through the proxy")
}

// TestCancelBeforeDeadline cancels a decision's context 100 ms into a
// stall, well before its 1.5 s deadline. rueidis honours a cancellation
// only for a command it pipelines, and not always then (with
// ClientOption.AlwaysPipelining a command after an earlier cancelled one
// has been seen to run until its deadline); a command of a lone caller
// runs outside the pipeline with the connection's deadline. What holds in
// every mode is the deadline, the throttle's timeout (WithTimeout): the
// decision never runs past it.
func TestCancelBeforeDeadline(t *testing.T) {
	requireRedis(t)
	p := faultproxy.Start(t, redistest.Start(t).Addr)
	const deadline = 1500 * time.Millisecond
	for _, always := range []bool{false, true} {
		t.Run(fmt.Sprint("AlwaysPipelining=", always), func(t *testing.T) {
			s := NewStore(newClientWith(t, rueidis.ClientOption{AlwaysPipelining: always}, p.Addr))
			for _, limit := range []int{1, 1000} {
				req := throttle.Request{Interval: time.Second, Limit: limit}
				_, err := s.Take(context.Background(), "cancel/first", req)
				require.NoError(t, err, "limit %d: Take on a fast link", limit)
				p.Stall()
				ctx, cancel := context.WithTimeout(context.Background(), deadline)
				time.AfterFunc(100*time.Millisecond, cancel)
				start := time.Now()
				_, err = s.Take(ctx, fmt.Sprint("cancel/", limit), req)
				elapsed := time.Since(start)
				p.Resume()
				cancel()
				assert.Error(t, err, "limit %d: Take cancelled in a stall", limit)
				assert.Less(t, elapsed, deadline+time.Second, "limit %d: Take cancelled 100 ms into a stall, deadline %v", limit, deadline)
				t.Logf("limit %d: returned %v after the start, %v", limit, elapsed, err)
			}
		})
	}
}
