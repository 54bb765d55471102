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
	"github.com/dthrottle/throttle/internal/workerproc"
)

// The cross-process tests re-execute the test binary as worker processes:
// TestMain runs runWorker instead of the tests when workerEnv is set.
const workerEnv = "THROTTLE_TEST_WORKER"

func TestMain(m *testing.M) {
	if os.Getenv(leaseWorkerEnv) != "" {
		os.Exit(runLeaseWorker())
	}
	if os.Getenv(workerEnv) != "" {
		if err := runWorker(); err != nil {
			fmt.Fprintln(os.Stderr, "worker:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// workerSpec is what one worker process is told through its environment.
type workerSpec struct {
	Addr string `json:"addr"`
	// Cluster, when not empty, holds the addresses of Redis Cluster nodes
	// to use instead of Addr.
	Cluster []string `json:"cluster,omitempty"`
	Key     string   `json:"key"`
	// Keys, when not empty, replaces Key: the worker calls one throttle per
	// key, each from its own goroutine, and tags each event with the
	// index of its key.
	Keys []string `json:"keys,omitempty"`
	// Keyed makes the worker call its keys through one Keyed instead of
	// one Throttle per key.
	Keyed bool `json:"keyed,omitempty"`
	// AutoPipeline makes the worker's store use go-redis auto-pipelining.
	AutoPipeline bool          `json:"autopipeline,omitempty"`
	Interval     time.Duration `json:"interval"`
	Limit        int           `json:"limit"`
	Wait         time.Duration `json:"wait"`
	Duration     time.Duration `json:"duration"`
	ID           int           `json:"id"`
	// Goroutines is the number of goroutines that call each key (default 1).
	Goroutines int `json:"goroutines,omitempty"`
	// Hoard makes the worker call until a leased permit answers, print
	// one line, and then sleep holding the rest of its batch unspent.
	Hoard bool `json:"hoard,omitempty"`
	// Windows are the windows of WithLimitPer, if any.
	Windows []Window `json:"windows,omitempty"`
}

// workerEvent is one event line of a worker: a simevent line plus the index
// of its key in workerSpec.Keys.
type workerEvent struct {
	simevent.Event
	KeyIndex int `json:"key_index"`
}

// runWorker calls one throttle per key as fast as it is allowed to until the
// duration ends, and prints one event line per admitted call, with the time
// the call began asking the store and the time it was told to start.
func runWorker() error {
	var spec workerSpec
	if err := json.Unmarshal([]byte(os.Getenv(workerEnv)), &spec); err != nil {
		return err
	}
	var c redis.UniversalClient
	if len(spec.Cluster) > 0 {
		c = redis.NewClusterClient(&redis.ClusterOptions{Addrs: spec.Cluster, ContextTimeoutEnabled: true})
	} else {
		c = redis.NewClient(&redis.Options{Addr: spec.Addr, ContextTimeoutEnabled: true})
	}
	defer c.Close()
	if spec.AutoPipeline {
		ap, err := c.(*redis.Client).AutoPipeline()
		if err != nil {
			return err
		}
		defer ap.Close()
		c = ap
	}
	keys := spec.Keys
	if len(keys) == 0 {
		keys = []string{spec.Key}
	}
	var mu sync.Mutex
	enc := json.NewEncoder(os.Stdout)
	emit := func(e workerEvent) {
		mu.Lock()
		defer mu.Unlock()
		_ = enc.Encode(e)
	}
	opts := []Option{WithStore(NewRedisStore(c)), WithLimit(spec.Limit), WithWait(spec.Wait), WithTimeout(time.Second)}
	for _, w := range spec.Windows {
		opts = append(opts, WithLimitPer(w.Limit, w.Interval))
	}
	if spec.Hoard {
		return hoard(spec, opts)
	}
	var keyed *Keyed
	if spec.Keyed {
		var err error
		if keyed, err = NewKeyed(spec.Interval, opts...); err != nil {
			return err
		}
	}
	g := max(spec.Goroutines, 1)
	errc := make(chan error, g*len(keys))
	for i, key := range keys {
		var d decider
		if keyed != nil {
			d = keyedDecider{keyed, key}
		} else {
			th, err := New(key, spec.Interval, opts...)
			if err != nil {
				return err
			}
			d = th
		}
		for range g {
			go func() { errc <- runWorkerKey(d, spec, i, emit) }()
		}
	}
	var errs []error
	for range g * len(keys) {
		errs = append(errs, <-errc)
	}
	return errors.Join(errs...)
}

// hoard is a worker that calls until it holds a batch of at least a
// quarter of the limit in leased permits, printing its admitted starts,
// then prints "hoarding" with the permits it holds and sleeps until it is
// killed.
func hoard(spec workerSpec, opts []Option) error {
	opts = append(opts, WithPermitBatch(spec.Limit/2))
	th, err := New(spec.Key, spec.Interval, opts...)
	if err != nil {
		return err
	}
	held := func() int64 {
		if p := th.e.permits.Load(); p != nil {
			if b := p.batch.Load(); b != nil && mono() < b.until {
				return b.left.Load()
			}
		}
		return 0
	}
	enc := json.NewEncoder(os.Stdout)
	for end := time.Now().Add(30 * time.Second); held() < int64(spec.Limit/4); {
		if time.Now().After(end) {
			return fmt.Errorf("no batch of %d permits in 30 s", spec.Limit/4)
		}
		asked := time.Now()
		d, err := th.Allow(context.Background())
		if err != nil {
			return err
		}
		if d.Allowed {
			now := time.Now()
			_ = enc.Encode(workerEvent{Event: simevent.Event{TUnixNs: now.UnixNano(), AskedUnixNs: asked.UnixNano(),
				Worker: spec.ID, PID: os.Getpid(), Event: simevent.Start}})
		}
	}
	fmt.Printf(`{"event":"hoarding","key_index":%d}`+"\n", held())
	time.Sleep(time.Hour)
	return nil
}

// decider is a Throttle, or one key of a Keyed.
type decider interface {
	Allow(ctx context.Context) (Decision, error)
	Wait(ctx context.Context) error
}

type keyedDecider struct {
	k   *Keyed
	key string
}

func (d keyedDecider) Allow(ctx context.Context) (Decision, error) { return d.k.Allow(ctx, d.key) }
func (d keyedDecider) Wait(ctx context.Context) error              { return d.k.Wait(ctx, d.key) }

// runWorkerKey is runWorker's loop for one key.
func runWorkerKey(th decider, spec workerSpec, index int, emit func(workerEvent)) error {
	ctx := context.Background()
	pid := os.Getpid()
	end := time.Now().Add(spec.Duration)
	for time.Now().Before(end) {
		asked := time.Now()
		ok, err := decide(ctx, th, spec.Wait > 0)
		started := time.Now()
		if err != nil {
			emit(workerEvent{simevent.Event{TUnixNs: started.UnixNano(), Worker: spec.ID, PID: pid, Event: simevent.Error, Err: err.Error()}, index})
			continue
		}
		if ok {
			emit(workerEvent{simevent.Event{TUnixNs: started.UnixNano(), AskedUnixNs: asked.UnixNano(), Worker: spec.ID, PID: pid, Event: simevent.Start}, index})
		} else {
			// Throttled: try again soon, at a random offset so that the
			// workers do not call in lockstep.
			time.Sleep(time.Duration(rand.Int64N(int64(time.Millisecond))))
		}
	}
	return nil
}

// decide makes one call of th, waiting for a turn when wait is set, and
// reports whether it was admitted. A call that was not admitted is not an
// error; a store failure is.
func decide(ctx context.Context, th decider, wait bool) (ok bool, err error) {
	if wait {
		err = th.Wait(ctx)
		if errors.Is(err, ErrThrottled) {
			return false, nil
		}
		return err == nil, err
	}
	d, err := th.Allow(ctx)
	return d.Allowed && err == nil, err
}

// runWorkers starts n worker processes on spec and returns their events.
func runWorkers(t *testing.T, n int, spec workerSpec) []simevent.Event {
	t.Helper()
	var evs []simevent.Event
	for _, e := range runKeyedWorkers(t, n, spec) {
		evs = append(evs, e.Event)
	}
	return evs
}

// runKeyedWorkers starts n worker processes on spec and returns their
// events, each tagged with the index of its key in spec.Keys.
func runKeyedWorkers(t *testing.T, n int, spec workerSpec) []workerEvent {
	t.Helper()
	return runProcesses[workerEvent](t, n, workerEnv, func(id int) any { spec.ID = id; return spec })
}

// workerCmd returns the command that re-executes the test binary as a
// worker: TestMain sees env set to the JSON of spec.
func workerCmd(t *testing.T, env string, spec any) *exec.Cmd {
	t.Helper()
	b, err := json.Marshal(spec)
	require.NoError(t, err)
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = workerproc.Environ(env + "=" + string(b))
	return cmd
}

// runProcesses starts n workers (workerCmd with env and spec(i) for the
// i-th), waits for them all, and returns the JSON lines they printed,
// decoded as E.
func runProcesses[E any](t *testing.T, n int, env string, spec func(i int) any) []E {
	t.Helper()
	type proc struct {
		cmd      *exec.Cmd
		out, err bytes.Buffer
	}
	procs := make([]*proc, n)
	for i := range procs {
		p := &proc{cmd: workerCmd(t, env, spec(i))}
		p.cmd.Stdout, p.cmd.Stderr = &p.out, &p.err
		require.NoError(t, p.cmd.Start(), "starting worker %d", i)
		procs[i] = p
	}
	var evs []E
	for i, p := range procs {
		require.NoError(t, p.cmd.Wait(), "worker %d: %s", i, p.err.String())
		sc := bufio.NewScanner(&p.out)
		sc.Buffer(make([]byte, 0, 64*1024), 1<<20)
		for sc.Scan() {
			var e E
			require.NoError(t, json.Unmarshal(sc.Bytes(), &e), "worker %d output line %q", i, sc.Text())
			evs = append(evs, e)
		}
		require.NoError(t, sc.Err(), "worker %d output", i)
	}
	return evs
}

// checkWorkerEvents asserts that events of one key hold limit starts per
// interval over duration, and logs the numbers.
func checkWorkerEvents(t *testing.T, evs []simevent.Event, workers int, interval time.Duration, limit int, duration time.Duration) {
	t.Helper()
	for _, e := range evs {
		assert.NotEqual(t, simevent.Error, e.Event, "worker %d store error: %s", e.Worker, e.Err)
	}
	as := simevent.Admissions(evs)
	r := simevent.Check(as, interval, limit, duration)
	perWorker := map[int]int{}
	for _, e := range evs {
		if e.Event == simevent.Start {
			perWorker[e.Worker]++
		}
	}
	t.Logf("%d workers, %v: %d starts (per worker %v), ideal %.0f, admitted/ideal %.2f, raw min gap %v, raw max in window %d, provable violations %d",
		workers, duration, r.Starts, perWorker, r.Ideal, r.AdmittedRatio(), r.MinGap, r.MaxInWindow, r.Violations)
	assert.Zero(t, r.Violations, "provable violations of %d per %v", limit, interval)
	// Liveness: demand is continuous, so most of the allowed starts must
	// be taken; the bound is loose because the machine may be busy.
	assert.GreaterOrEqual(t, r.AdmittedRatio(), 0.6, "admitted/ideal")
	assert.Greater(t, len(perWorker), 1, "more than one worker was admitted")
}

func TestCrossProcess(t *testing.T) {
	if testing.Short() {
		t.Skip("cross-process test skipped in -short mode")
	}
	type server struct {
		name string
		addr string
	}
	mr := miniredis.RunT(t)
	mr.ClockTTL(true) // expire keys on the real clock, as Redis does
	servers := []server{{"miniredis", mr.Addr()}}
	if redistest.Available() || requireRedis() {
		servers = append(servers, server{"redis", redistest.Start(t).Addr})
	} else {
		t.Log("redis-server not found: cross-process test runs on miniredis only")
	}
	cases := []struct {
		name     string
		interval time.Duration
		limit    int
		wait     time.Duration
	}{
		{"limit 1 per 50ms", 50 * time.Millisecond, 1, 0},
		{"limit 3 per 100ms", 100 * time.Millisecond, 3, 0},
		{"limit 1 per 40ms waiting", 40 * time.Millisecond, 1, time.Second},
		{"limit 2 per 60ms waiting", 60 * time.Millisecond, 2, time.Second},
		// 200 starts a second: within what miniredis (in this process,
		// under -race) serves on a busy machine.
		{"limit 100 per 500ms", 500 * time.Millisecond, 100, 0},
		{"limit 100 per 500ms waiting", 500 * time.Millisecond, 100, time.Second},
	}
	// Leased permits: a limit of 2000 per 200 ms, eight goroutines per
	// worker on one key (see TestCrossProcessPermits for more).
	permitCases := []struct {
		name     string
		interval time.Duration
		limit    int
	}{
		{"permits limit 2000 per 200ms, 8 goroutines", 200 * time.Millisecond, 2000},
	}
	const workers = 4
	const duration = 1500 * time.Millisecond
	for _, srv := range servers {
		for _, c := range cases {
			t.Run(srv.name+"/"+c.name, func(t *testing.T) {
				spec := workerSpec{Addr: srv.addr, Key: "xproc:" + t.Name(), Interval: c.interval,
					Limit: c.limit, Wait: c.wait, Duration: duration}
				evs := runWorkers(t, workers, spec)
				checkWorkerEvents(t, evs, workers, c.interval, c.limit, duration)
			})
		}
	}
	for _, srv := range servers {
		for _, c := range permitCases {
			t.Run(srv.name+"/"+c.name, func(t *testing.T) {
				spec := workerSpec{Addr: srv.addr, Key: "xproc:" + t.Name(), Interval: c.interval,
					Limit: c.limit, Duration: duration, Goroutines: 8}
				evs := runWorkers(t, workers, spec)
				checkWorkerEvents(t, evs, workers, c.interval, c.limit, duration)
			})
		}
	}
	// One Keyed per process over several keys: each key holds its limit on
	// its own, and keys do not slow each other down.
	keyedCases := []struct {
		name     string
		interval time.Duration
		limit    int
		wait     time.Duration
		autopipe bool // go-redis auto-pipelining: a worker's keys share round trips
	}{
		{"keyed limit 1 per 50ms", 50 * time.Millisecond, 1, 0, false},
		{"keyed limit 3 per 100ms waiting", 100 * time.Millisecond, 3, time.Second, false},
		{"autopipeline limit 1 per 50ms", 50 * time.Millisecond, 1, 0, true},
		{"autopipeline limit 2 per 60ms waiting", 60 * time.Millisecond, 2, time.Second, true},
		{"autopipeline limit 100 per 500ms", 500 * time.Millisecond, 100, 0, true},
	}
	for _, srv := range servers {
		for _, c := range keyedCases {
			if c.autopipe && srv.name == "miniredis" {
				continue
			}
			t.Run(srv.name+"/"+c.name, func(t *testing.T) {
				keys := []string{"keyed:a:" + t.Name(), "keyed:b:" + t.Name(), "keyed:c:" + t.Name()}
				spec := workerSpec{Addr: srv.addr, Keys: keys, Keyed: true, AutoPipeline: c.autopipe,
					Interval: c.interval, Limit: c.limit, Wait: c.wait, Duration: duration}
				byKey := map[int][]simevent.Event{}
				for _, e := range runKeyedWorkers(t, workers, spec) {
					byKey[e.KeyIndex] = append(byKey[e.KeyIndex], e.Event)
				}
				for i, key := range keys {
					t.Run(fmt.Sprint("key ", i), func(t *testing.T) {
						t.Logf("key %q", key)
						checkWorkerEvents(t, byKey[i], workers, c.interval, c.limit, duration)
					})
				}
			})
		}
	}
	if !redistest.Available() && !requireRedis() {
		return
	}
	// A 3-master Redis Cluster: every worker process calls keys that live in
	// different slots on different masters, one goroutine per key, through
	// a cluster client. Each key must hold its limit on its own.
	t.Run("cluster", func(t *testing.T) {
		cl := redistest.StartCluster(t, 3) // skips without redis-cli
		for _, ci := range []int{0, 3} {   // limit 1 by SET NX, limit 2 by script with waiting
			c := cases[ci]
			// Keys of their own per case: a key written with limit 1 may
			// still live when the next case uses limit 2.
			keys := clusterKeys(t, cl, fmt.Sprintf("xproc:cluster:%d:", ci), 2*len(cl.Nodes))
			t.Run(c.name+"/"+fmt.Sprint(len(keys))+" keys", func(t *testing.T) {
				spec := workerSpec{Cluster: cl.Addrs, Keys: keys, Interval: c.interval,
					Limit: c.limit, Wait: c.wait, Duration: duration}
				byKey := map[int][]simevent.Event{}
				for _, e := range runKeyedWorkers(t, workers, spec) {
					byKey[e.KeyIndex] = append(byKey[e.KeyIndex], e.Event)
				}
				for i, key := range keys {
					t.Run(key, func(t *testing.T) {
						checkWorkerEvents(t, byKey[i], workers, c.interval, c.limit, duration)
					})
				}
			})
		}
	})
}

// clusterKeys returns n throttle keys starting with prefix, in n different
// hash slots (of their Redis keys, under the default prefix), spread so that
// every master of cl serves at least one of them.
func clusterKeys(t *testing.T, cl *redistest.Cluster, prefix string, n int) []string {
	t.Helper()
	require.GreaterOrEqual(t, n, len(cl.Nodes))
	slots := map[int]bool{}
	owners := map[string]int{} // master addr -> keys chosen on it
	var keys []string
	for i := 0; len(keys) < n && i < 10000; i++ {
		key := fmt.Sprintf("%s%d", prefix, i)
		slot, err := cl.KeySlot(NewRedisStore(nil).name(key, ""))
		require.NoError(t, err)
		owner, err := cl.SlotOwner(slot)
		require.NoError(t, err)
		// Take a key only from a master that has fewer than its share.
		if slots[slot] || owners[owner.Addr] >= (n+len(cl.Nodes)-1)/len(cl.Nodes) {
			continue
		}
		slots[slot] = true
		owners[owner.Addr]++
		keys = append(keys, key)
	}
	require.Len(t, keys, n, "keys in distinct slots")
	require.Len(t, owners, len(cl.Nodes), "masters serving the keys")
	return keys
}

// TestCrossProcessCheckCatchesOverAdmission feeds the check the starts of
// two independent throttles (as if the store were not shared) to show that
// it reports violations.
func TestCrossProcessCheckCatchesOverAdmission(t *testing.T) {
	if testing.Short() {
		t.Skip("cross-process test skipped in -short mode")
	}
	a := miniredis.RunT(t)
	a.ClockTTL(true)
	b := miniredis.RunT(t)
	b.ClockTTL(true)
	spec := workerSpec{Key: "xproc:unshared", Interval: 50 * time.Millisecond, Limit: 1, Duration: 500 * time.Millisecond}
	spec.Addr = a.Addr()
	evs := runWorkers(t, 1, spec)
	spec.Addr = b.Addr()
	evs = append(evs, runWorkers(t, 1, spec)...)
	// Shift the second run onto the first so they overlap in time.
	as := simevent.Admissions(evs)
	n := len(as) / 2
	require.Positive(t, n)
	first, second := as[:n], as[n:]
	shift := second[0].Asked - first[0].Asked
	for i := range second {
		second[i].Asked -= shift
		second[i].Started -= shift
	}
	r := simevent.Check(append(first, second...), spec.Interval, 1, spec.Duration)
	assert.Positive(t, r.Violations, "two unshared throttles over %d starts: violations", len(as))
}

// TestCrossProcessPermitHolderKilled SIGKILLs a worker process that holds
// unspent leased permits, then runs workers on the same key: no window of
// the hoarder's and the workers' starts provably exceeds the limit, and the
// capacity the dead process held comes back once its batch leaves the
// window, one interval and the validity after it was taken.
func TestCrossProcessPermitHolderKilled(t *testing.T) {
	if testing.Short() {
		t.Skip("cross-process test skipped in -short mode")
	}
	srv := redistest.Start(t)
	interval, limit := time.Second, 2000
	spec := workerSpec{Addr: srv.Addr, Key: "xproc:hoard", Interval: interval, Limit: limit, Hoard: true}
	cmd := workerCmd(t, workerEnv, spec)
	out, err := cmd.StdoutPipe()
	require.NoError(t, err)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	require.NoError(t, cmd.Start())
	var evs []simevent.Event
	sc := bufio.NewScanner(out)
	hoarding := false
	for sc.Scan() {
		var e workerEvent
		require.NoError(t, json.Unmarshal(sc.Bytes(), &e), "hoarder line %q", sc.Text())
		if e.Event.Event == "hoarding" {
			hoarding = true
			t.Logf("the hoarder holds %d permits", e.KeyIndex)
			break
		}
		evs = append(evs, e.Event)
	}
	if !hoarding {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		t.Fatalf("the hoarder took no batch: %s", stderr.String())
	}
	require.NoError(t, cmd.Process.Signal(syscall.SIGKILL))
	killed := time.Now()
	_ = cmd.Wait()
	hoarded := len(evs)

	workers := runWorkers(t, 2, workerSpec{Addr: srv.Addr, Key: spec.Key, Interval: interval, Limit: limit,
		Duration: 2 * interval, Goroutines: 4})
	evs = append(evs, workers...)
	as := simevent.Admissions(evs)
	r := simevent.Check(as, interval, limit, 2*interval)
	// The batch the hoarder holds was counted at most one validity (at most
	// a sixteenth of the interval) and a bucket after it was taken, before
	// the kill; it has left the window one interval later. Allow the
	// workers a generous time to fill it.
	freed := killed.Add(interval + interval/16 + interval/160 + 300*time.Millisecond)
	soon := 0
	for _, e := range workers {
		if e.Event == simevent.Start && time.Unix(0, e.TUnixNs).Before(freed) {
			soon++
		}
	}
	t.Logf("hoarder spent %d before the kill; workers: %d starts, %d before %v after the kill; provable violations %d",
		hoarded, len(workers), soon, freed.Sub(killed), r.Violations)
	assert.Zero(t, r.Violations, "provable violations of %d per %v", limit, interval)
	assert.GreaterOrEqual(t, soon, limit*9/10, "workers' starts within %v of the kill", freed.Sub(killed))
}
