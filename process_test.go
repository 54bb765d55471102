package throttle

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dthrottle/throttle/internal/redistest"
	"github.com/dthrottle/throttle/internal/simevent"
)

// The cross-process tests re-execute the test binary as worker processes:
// TestMain runs runWorker instead of the tests when workerEnv is set.
const workerEnv = "THROTTLE_TEST_WORKER"

func TestMain(m *testing.M) {
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
	Addr     string        `json:"addr"`
	Key      string        `json:"key"`
	Interval time.Duration `json:"interval"`
	Limit    int           `json:"limit"`
	Wait     time.Duration `json:"wait"`
	Duration time.Duration `json:"duration"`
	ID       int           `json:"id"`
}

// runWorker calls one throttle as fast as it is allowed to until the
// duration ends, and prints one simevent line per admitted call, with the
// time the call began asking the store and the time it was told to start.
func runWorker() error {
	var spec workerSpec
	if err := json.Unmarshal([]byte(os.Getenv(workerEnv)), &spec); err != nil {
		return err
	}
	c := redis.NewClient(&redis.Options{Addr: spec.Addr, ContextTimeoutEnabled: true})
	defer c.Close()
	th, err := New(spec.Key, spec.Interval, WithStore(NewRedisStore(c)), WithLimit(spec.Limit),
		WithWait(spec.Wait), WithTimeout(time.Second))
	if err != nil {
		return err
	}
	ctx := context.Background()
	enc := json.NewEncoder(os.Stdout)
	pid := os.Getpid()
	end := time.Now().Add(spec.Duration)
	for time.Now().Before(end) {
		asked := time.Now()
		var ok bool
		if spec.Wait > 0 {
			err = th.Wait(ctx)
			ok = err == nil
			if errorsIsThrottled(err) {
				err = nil
			}
		} else {
			var d Decision
			d, err = th.Allow(ctx)
			ok = d.Allowed && err == nil
		}
		started := time.Now()
		if err != nil {
			_ = enc.Encode(simevent.Event{TUnixNs: started.UnixNano(), Worker: spec.ID, PID: pid, Event: simevent.Error, Err: err.Error()})
			continue
		}
		if ok {
			_ = enc.Encode(simevent.Event{TUnixNs: started.UnixNano(), AskedUnixNs: asked.UnixNano(), Worker: spec.ID, PID: pid, Event: simevent.Start})
		} else {
			// Throttled: try again soon, at a random offset so that the
			// workers do not call in lockstep.
			time.Sleep(time.Duration(rand.Int64N(int64(time.Millisecond))))
		}
	}
	return nil
}

func errorsIsThrottled(err error) bool {
	_, ok := err.(*ThrottledError)
	return ok
}

// runWorkers starts n worker processes on spec and returns their events.
func runWorkers(t *testing.T, n int, spec workerSpec) []simevent.Event {
	t.Helper()
	type proc struct {
		cmd *exec.Cmd
		out bytes.Buffer
		err bytes.Buffer
	}
	procs := make([]*proc, n)
	for i := range procs {
		spec.ID = i
		b, err := json.Marshal(spec)
		require.NoError(t, err)
		p := &proc{cmd: exec.Command(os.Args[0], "-test.run=^$")}
		p.cmd.Env = append(os.Environ(), workerEnv+"="+string(b))
		p.cmd.Stdout, p.cmd.Stderr = &p.out, &p.err
		require.NoError(t, p.cmd.Start(), "starting worker %d", i)
		procs[i] = p
	}
	var evs []simevent.Event
	for i, p := range procs {
		require.NoError(t, p.cmd.Wait(), "worker %d: %s", i, p.err.String())
		e, err := simevent.Read(&p.out)
		require.NoError(t, err, "worker %d output", i)
		evs = append(evs, e...)
	}
	return evs
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
	}
	const workers = 4
	const duration = 1500 * time.Millisecond
	for _, srv := range servers {
		for _, c := range cases {
			t.Run(srv.name+"/"+c.name, func(t *testing.T) {
				spec := workerSpec{Addr: srv.addr, Key: "xproc:" + t.Name(), Interval: c.interval,
					Limit: c.limit, Wait: c.wait, Duration: duration}
				evs := runWorkers(t, workers, spec)
				for _, e := range evs {
					assert.NotEqual(t, simevent.Error, e.Event, "worker %d store error: %s", e.Worker, e.Err)
				}
				as := simevent.Admissions(evs)
				r := simevent.Check(as, c.interval, c.limit, duration)
				perWorker := map[int]int{}
				for _, e := range evs {
					if e.Event == simevent.Start {
						perWorker[e.Worker]++
					}
				}
				t.Logf("%d workers, %v: %d starts (per worker %v), ideal %.0f, admitted/ideal %.2f, raw min gap %v, raw max in window %d, provable violations %d",
					workers, duration, r.Starts, perWorker, r.Ideal, r.AdmittedRatio(), r.MinGap, r.MaxInWindow, r.Violations)
				assert.Zero(t, r.Violations, "provable violations of %d per %v", c.limit, c.interval)
				// Liveness: demand is continuous, so most of the allowed
				// starts must be taken; the bound is loose because the
				// machine may be busy.
				assert.GreaterOrEqual(t, r.AdmittedRatio(), 0.6, "admitted/ideal")
				assert.Greater(t, len(perWorker), 1, "more than one worker was admitted")
			})
		}
	}
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
