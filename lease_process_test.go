package throttle

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dthrottle/throttle/internal/redistest"
	"github.com/dthrottle/throttle/internal/simevent"
)

// leaseWorkerEnv makes TestMain run runLeaseWorker: one worker process of
// the cross-process concurrency tests.
const leaseWorkerEnv = "THROTTLE_TEST_LEASE_WORKER"

// leaseSpec is what a lease worker is told through its environment.
type leaseSpec struct {
	Addr        string        `json:"addr"`
	Cluster     []string      `json:"cluster,omitempty"`
	Key         string        `json:"key"`
	Interval    time.Duration `json:"interval"`
	Limit       int           `json:"limit"`
	Concurrency int           `json:"concurrency"`
	LeaseTTL    time.Duration `json:"lease_ttl"`
	Wait        time.Duration `json:"wait"`
	Duration    time.Duration `json:"duration"`
	Goroutines  int           `json:"goroutines"`
	ID          int           `json:"id"`
	// Windows are WithLimitPer's, besides Interval and Limit.
	Windows []Window `json:"windows,omitempty"`
	// Hold makes the worker take one lease, print "held", and keep it
	// (renewing) until it is killed.
	Hold bool `json:"hold,omitempty"`
}

// leaseCall is one call of fn in a lease worker, in Unix ns on the
// worker's wall clock: asked before Acquire, start just after admission,
// end just before the lease was released.
type leaseCall struct {
	Worker int   `json:"worker"`
	Asked  int64 `json:"asked"`
	Start  int64 `json:"start"`
	End    int64 `json:"end"`
}

func runLeaseWorker() int {
	var spec leaseSpec
	if err := json.Unmarshal([]byte(os.Getenv(leaseWorkerEnv)), &spec); err != nil {
		fmt.Fprintln(os.Stderr, "lease worker:", err)
		return 1
	}
	var c redis.UniversalClient
	if len(spec.Cluster) > 0 {
		c = redis.NewClusterClient(&redis.ClusterOptions{Addrs: spec.Cluster, ContextTimeoutEnabled: true})
	} else {
		c = redis.NewClient(&redis.Options{Addr: spec.Addr, ContextTimeoutEnabled: true, PoolSize: 4 * spec.Goroutines})
	}
	defer c.Close()
	opts := []Option{WithStore(NewRedisStore(c)), WithLimit(max(spec.Limit, 1)),
		WithConcurrency(spec.Concurrency), WithLeaseTTL(spec.LeaseTTL), WithWait(spec.Wait), WithTimeout(time.Second)}
	for _, w := range spec.Windows {
		opts = append(opts, WithLimitPer(w.Limit, w.Interval))
	}
	th, err := New(spec.Key, spec.Interval, opts...)
	if err != nil {
		fmt.Fprintln(os.Stderr, "lease worker:", err)
		return 1
	}
	if spec.Hold {
		l, err := th.Acquire(context.Background())
		if err != nil {
			fmt.Fprintln(os.Stderr, "lease worker:", err)
			return 1
		}
		fmt.Println("held")
		<-l.Done() // until killed, or the lease is lost
		fmt.Fprintln(os.Stderr, "lease worker: lease ended:", context.Cause(l.Context()))
		return 1
	}
	var mu sync.Mutex
	enc := json.NewEncoder(os.Stdout)
	var errs []error
	var wg sync.WaitGroup
	end := time.Now().Add(spec.Duration)
	for range spec.Goroutines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(end) {
				asked := time.Now().UnixNano()
				l, err := th.Acquire(context.Background())
				if err != nil {
					if !errors.Is(err, ErrThrottled) {
						mu.Lock()
						errs = append(errs, err)
						mu.Unlock()
					}
					time.Sleep(time.Duration(rand.Int64N(int64(2 * time.Millisecond))))
					continue
				}
				call := leaseCall{Worker: spec.ID, Asked: asked, Start: time.Now().UnixNano()}
				time.Sleep(time.Duration(5+rand.IntN(21)) * time.Millisecond)
				call.End = time.Now().UnixNano()
				l.Release()
				mu.Lock()
				_ = enc.Encode(call)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if len(errs) > 0 {
		fmt.Fprintln(os.Stderr, "lease worker:", len(errs), "errors, first:", errs[0])
		return 1
	}
	return 0
}

// leaseWorkerCmd returns the command of one lease worker on spec.
func leaseWorkerCmd(t *testing.T, spec leaseSpec) *exec.Cmd {
	t.Helper()
	return workerCmd(t, leaseWorkerEnv, spec)
}

// runLeaseWorkers runs n lease workers on spec and returns their calls.
func runLeaseWorkers(t *testing.T, n int, spec leaseSpec) []leaseCall {
	t.Helper()
	return runProcesses[leaseCall](t, n, leaseWorkerEnv, func(id int) any { spec.ID = id; return spec })
}

// maxInFlight returns the most calls whose [Start, End] overlap at one
// instant, and the mean number in flight over span.
func maxInFlight(calls []leaseCall, span time.Duration) (peak int, mean float64) {
	spans := make([][2]int64, len(calls))
	for i, c := range calls {
		spans[i] = [2]int64{c.Start, c.End}
	}
	return simevent.InFlight(spans, span)
}

// checkLeaseCalls asserts the cap (and the rate, when spec has one) on the
// calls of a run, and a loose liveness bound.
//
// The liveness bound is minMean*k calls in flight on average: loose, since
// each call also waits for two round trips, and miniredis, which runs in
// the test process under -race, is slow.
func checkLeaseCalls(t *testing.T, calls []leaseCall, spec leaseSpec, workers int, minMean float64) {
	t.Helper()
	peak, mean := maxInFlight(calls, spec.Duration)
	perWorker := map[int]int{}
	for _, c := range calls {
		perWorker[c.Worker]++
	}
	t.Logf("%d workers x %d goroutines, %v: %d calls (per worker %v), peak in flight %d of %d, mean in flight %.2f",
		workers, spec.Goroutines, spec.Duration, len(calls), perWorker, peak, spec.Concurrency, mean)
	assert.LessOrEqual(t, peak, spec.Concurrency, "calls in flight at one instant")
	assert.Greater(t, len(perWorker), 1, "more than one worker ran calls")
	if spec.Interval == 0 {
		assert.GreaterOrEqual(t, mean, minMean*float64(spec.Concurrency), "mean calls in flight under continuous demand")
		return
	}
	as := make([]simevent.Admission, len(calls))
	for i, c := range calls {
		as[i] = simevent.Admission{Asked: c.Asked, Started: c.Start}
	}
	r := simevent.Check(as, spec.Interval, spec.Limit, spec.Duration)
	t.Logf("rate: %d starts, ideal %.0f, admitted/ideal %.2f, provable violations %d", r.Starts, r.Ideal, r.AdmittedRatio(), r.Violations)
	assert.Zero(t, r.Violations, "provable violations of %d per %v", spec.Limit, spec.Interval)
	for _, w := range spec.Windows {
		wr := simevent.Check(as, w.Interval, w.Limit, spec.Duration)
		t.Logf("window %d per %v: %d starts, ideal %.0f, admitted/ideal %.2f, raw max in window %d, provable violations %d",
			w.Limit, w.Interval, wr.Starts, wr.Ideal, wr.AdmittedRatio(), wr.MaxInWindow, wr.Violations)
		assert.Zero(t, wr.Violations, "provable violations of %d per %v", w.Limit, w.Interval)
	}
	if len(spec.Windows) > 0 {
		return // the caller checks which window binds
	}
	// The cap binds too (at most k in flight for 5-25 ms each), so the
	// rate's ideal is an upper bound: only a loose check.
	assert.GreaterOrEqual(t, r.AdmittedRatio(), 0.3, "admitted/ideal")
}

func TestCrossProcessConcurrency(t *testing.T) {
	if testing.Short() {
		t.Skip("cross-process test skipped in -short mode")
	}
	type server struct {
		name    string
		addr    string
		minMean float64
	}
	mr := miniredis.RunT(t)
	mr.ClockTTL(true)
	servers := []server{{name: "miniredis", addr: mr.Addr(), minMean: 0.3}}
	if redistest.Available() || requireRedis() {
		servers = append(servers, server{name: "redis", addr: redistest.Start(t).Addr, minMean: 0.5})
	} else {
		t.Log("redis-server not found: cross-process concurrency test runs on miniredis only")
	}
	cases := []struct {
		name      string
		spec      leaseSpec
		redisOnly bool // to keep the test short
	}{
		{"cap 3", leaseSpec{Concurrency: 3}, false},
		{"cap 3 waiting", leaseSpec{Concurrency: 3, Wait: time.Second}, true},
		{"cap 4 and 2 per 50ms", leaseSpec{Concurrency: 4, Interval: 50 * time.Millisecond, Limit: 2}, true},
		{"cap 2 and 3 per 60ms waiting", leaseSpec{Concurrency: 2, Interval: 60 * time.Millisecond, Limit: 3, Wait: time.Second}, false},
	}
	const workers = 3
	for _, srv := range servers {
		for _, c := range cases {
			if c.redisOnly && srv.name != "redis" {
				continue
			}
			t.Run(srv.name+"/"+c.name, func(t *testing.T) {
				spec := c.spec
				spec.Addr, spec.Key = srv.addr, "xlease:"+t.Name()
				spec.Limit = max(spec.Limit, 1)
				spec.LeaseTTL, spec.Duration, spec.Goroutines = 2*time.Second, time.Second, 3
				checkLeaseCalls(t, runLeaseWorkers(t, workers, spec), spec, workers, srv.minMean)
			})
		}
	}
	if !redistest.Available() && !requireRedis() {
		return
	}
	t.Run("cluster/cap 3 and 2 per 50ms waiting", func(t *testing.T) {
		cl := redistest.StartCluster(t, 3)
		spec := leaseSpec{Cluster: cl.Addrs, Key: "xlease:cluster", Concurrency: 3, Interval: 50 * time.Millisecond, Limit: 2,
			Wait: time.Second, LeaseTTL: 2 * time.Second, Duration: time.Second, Goroutines: 3}
		checkLeaseCalls(t, runLeaseWorkers(t, workers, spec), spec, workers, 0.5)
	})
}

// TestCrossProcessCapCheckCatchesOverlap shows that the cap check reports
// calls of two unshared stores (as if the store were not shared).
func TestCrossProcessCapCheckCatchesOverlap(t *testing.T) {
	if testing.Short() {
		t.Skip("cross-process test skipped in -short mode")
	}
	var runs [2][]leaseCall
	for i := range runs {
		mr := miniredis.RunT(t)
		mr.ClockTTL(true)
		spec := leaseSpec{Addr: mr.Addr(), Key: "unshared", Concurrency: 1, LeaseTTL: time.Second, Duration: 300 * time.Millisecond, Goroutines: 2}
		runs[i] = runLeaseWorkers(t, 1, spec)
		require.NotEmpty(t, runs[i], "calls of run %d", i)
	}
	// Shift the second run onto the first so that they overlap in time.
	shift := runs[1][0].Start - runs[0][0].Start
	calls := runs[0]
	for _, c := range runs[1] {
		c.Start -= shift
		c.End -= shift
		calls = append(calls, c)
	}
	peak, _ := maxInFlight(calls, time.Second)
	assert.Greater(t, peak, 1, "two unshared caps of 1 over %d calls: peak in flight", len(calls))
}

// TestLeaseOfKilledHolder kills a worker process that holds the only
// lease: the others are refused until the lease's TTL after its last
// renewal, and admitted within a generous margin after that.
func TestLeaseOfKilledHolder(t *testing.T) {
	if testing.Short() {
		t.Skip("cross-process test skipped in -short mode")
	}
	addr, client := "", redis.UniversalClient(nil)
	if redistest.Available() || requireRedis() {
		srv := redistest.Start(t)
		addr, client = srv.Addr, srv.Client(t)
	} else {
		mr := miniredis.RunT(t)
		mr.ClockTTL(true)
		addr = mr.Addr()
		client = redis.NewClient(&redis.Options{Addr: addr})
		t.Cleanup(func() { _ = client.Close() })
	}
	const ttl = 500 * time.Millisecond
	spec := leaseSpec{Addr: addr, Key: "killed", Concurrency: 1, LeaseTTL: ttl, Hold: true, Goroutines: 1}
	cmd := leaseWorkerCmd(t, spec)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		_ = cmd.Wait()
		t.Fatalf("reading the holder's output: %v; its stderr: %s", err, stderr.String())
	}
	require.Equal(t, "held\n", line)
	// Let it renew a few times, then kill it.
	time.Sleep(2 * ttl)
	require.NoError(t, cmd.Process.Signal(syscall.SIGKILL))
	_ = cmd.Wait()
	killed := time.Now()

	store := NewRedisStore(client)
	ctx := context.Background()
	// The lease's remaining life, read from Redis after the kill.
	leases, err := client.ZRangeWithScores(ctx, store.name("killed", leasesSuffix), 0, -1).Result()
	require.NoError(t, err)
	require.Len(t, leases, 1, "leases after the kill")
	srvNow, err := client.Time(ctx).Result()
	require.NoError(t, err)
	remaining := time.Duration(int64(leases[0].Score)-srvNow.UnixMilli()) * time.Millisecond
	read := time.Now()
	t.Logf("lease left %v after the kill", remaining)
	assert.Positive(t, remaining, "the dead holder's lease still runs right after the kill")

	drop, err := New("killed", 0, WithStore(store), WithConcurrency(1), WithLeaseTTL(ttl))
	require.NoError(t, err)
	_, err = drop.Acquire(ctx)
	assert.ErrorIs(t, err, ErrAtCapacity, "Acquire right after the kill")

	waiter, err := New("killed", 0, WithStore(store), WithConcurrency(1), WithLeaseTTL(ttl), WithWait(10*time.Second))
	require.NoError(t, err)
	l, err := waiter.Acquire(ctx)
	admitted := time.Now()
	require.NoError(t, err, "waiting Acquire after the kill")
	l.Release()
	t.Logf("admitted %v after the kill", admitted.Sub(killed))
	assert.GreaterOrEqual(t, admitted.Sub(read), remaining-5*time.Millisecond, "admitted before the dead holder's lease expired")
	assert.Less(t, admitted.Sub(killed), ttl+5*time.Second, "admitted within the TTL and a margin")
}
