package rueidisthrottle

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
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/redis/rueidis"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	throttle "github.com/dthrottle/throttle"
	"github.com/dthrottle/throttle/internal/redistest"
	"github.com/dthrottle/throttle/internal/simevent"
	"github.com/dthrottle/throttle/internal/workerproc"
)

// The cross-process test re-executes the test binary as worker processes:
// TestMain runs runWorker instead of the tests when workerEnv is set.
const workerEnv = "RUEIDISTHROTTLE_TEST_WORKER"

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
	// GoRedis makes the worker use throttle.NewRedisStore on go-redis
	// instead of NewStore on rueidis.
	GoRedis bool `json:"goredis"`
	// Addrs are the server's address, or the Cluster's nodes.
	Addrs      []string      `json:"addrs"`
	Cluster    bool          `json:"cluster"`
	Key        string        `json:"key"`
	Interval   time.Duration `json:"interval"`
	Limit      int           `json:"limit"`
	Wait       time.Duration `json:"wait"`
	Duration   time.Duration `json:"duration"`
	Goroutines int           `json:"goroutines"`
	ID         int           `json:"id"`
}

// runWorker calls one throttle from spec.Goroutines goroutines as fast as
// it is allowed to until the duration ends, and prints one event line per
// admitted call, with the time the call began asking the store and the
// time it was told to start.
func runWorker() error {
	var spec workerSpec
	if err := json.Unmarshal([]byte(os.Getenv(workerEnv)), &spec); err != nil {
		return err
	}
	var store *throttle.RedisStore
	if spec.GoRedis {
		var c redis.UniversalClient
		if spec.Cluster {
			c = redis.NewClusterClient(&redis.ClusterOptions{Addrs: spec.Addrs, ContextTimeoutEnabled: true})
		} else {
			c = redis.NewClient(&redis.Options{Addr: spec.Addrs[0], ContextTimeoutEnabled: true})
		}
		defer c.Close()
		store = throttle.NewRedisStore(c)
	} else {
		c, err := rueidis.NewClient(rueidis.ClientOption{InitAddress: spec.Addrs})
		if err != nil {
			return err
		}
		defer c.Close()
		store = NewStore(c)
	}
	th, err := throttle.New(spec.Key, spec.Interval, throttle.WithStore(store), throttle.WithLimit(spec.Limit),
		throttle.WithWait(spec.Wait), throttle.WithTimeout(time.Second))
	if err != nil {
		return err
	}
	var mu sync.Mutex
	enc := json.NewEncoder(os.Stdout)
	emit := func(e simevent.Event) {
		mu.Lock()
		defer mu.Unlock()
		_ = enc.Encode(e)
	}
	pid := os.Getpid()
	end := time.Now().Add(spec.Duration)
	var wg sync.WaitGroup
	for range max(spec.Goroutines, 1) {
		wg.Go(func() {
			for time.Now().Before(end) {
				asked := time.Now()
				ok, err := decide(th, spec.Wait > 0)
				started := time.Now()
				switch {
				case err != nil:
					emit(simevent.Event{TUnixNs: started.UnixNano(), Worker: spec.ID, PID: pid, Event: simevent.Error, Err: err.Error()})
				case ok:
					emit(simevent.Event{TUnixNs: started.UnixNano(), AskedUnixNs: asked.UnixNano(), Worker: spec.ID, PID: pid, Event: simevent.Start})
				default:
					// Throttled: try again soon, at a random offset so
					// that the workers do not call in lockstep.
					time.Sleep(time.Duration(rand.Int64N(int64(time.Millisecond))))
				}
			}
		})
	}
	wg.Wait()
	return nil
}

// decide makes one call of th, waiting for a turn when wait is set, and
// reports whether it was admitted; a store failure is an error.
func decide(th *throttle.Throttle, wait bool) (bool, error) {
	ctx := context.Background()
	if wait {
		err := th.Wait(ctx)
		if errors.Is(err, throttle.ErrThrottled) {
			return false, nil
		}
		return err == nil, err
	}
	d, err := th.Allow(ctx)
	return d.Allowed && err == nil, err
}

// runWorkers starts one worker process per spec, waits for them all, and
// returns their events.
func runWorkers(t *testing.T, specs []workerSpec) []simevent.Event {
	t.Helper()
	type proc struct {
		cmd      *exec.Cmd
		out, err bytes.Buffer
	}
	procs := make([]*proc, len(specs))
	for i, spec := range specs {
		b, err := json.Marshal(spec)
		require.NoError(t, err)
		p := &proc{cmd: exec.Command(os.Args[0], "-test.run=^$")}
		p.cmd.Env = workerproc.Environ(workerEnv + "=" + string(b))
		p.cmd.Stdout, p.cmd.Stderr = &p.out, &p.err
		require.NoError(t, p.cmd.Start(), "starting worker %d", i)
		procs[i] = p
	}
	var evs []simevent.Event
	for i, p := range procs {
		require.NoError(t, p.cmd.Wait(), "worker %d: %s", i, p.err.String())
		sc := bufio.NewScanner(&p.out)
		sc.Buffer(make([]byte, 0, 64*1024), 1<<20)
		for sc.Scan() {
			var e simevent.Event
			require.NoError(t, json.Unmarshal(sc.Bytes(), &e), "worker %d output line %q", i, sc.Text())
			evs = append(evs, e)
		}
		require.NoError(t, sc.Err(), "worker %d output", i)
	}
	return evs
}

// TestCrossProcessMixedClients runs go-redis worker processes and rueidis
// worker processes on one key (two of each, on one redis-server and on a
// Cluster): the starts of all of them hold the limit, with 0 provable
// violations (two admissions i, j are provably too close only when
// s_j - b_i < interval, b being when the call began asking and s when it
// started), and workers of both clients are admitted.
func TestCrossProcessMixedClients(t *testing.T) {
	if testing.Short() {
		t.Skip("cross-process test skipped in -short mode")
	}
	requireRedis(t)
	single := []string{redistest.Start(t).Addr}
	cases := []struct {
		name       string
		cluster    bool
		interval   time.Duration
		limit      int
		wait       time.Duration
		goroutines int
	}{
		{"limit 1 per 50ms", false, 50 * time.Millisecond, 1, 0, 1},
		{"limit 1 per 40ms waiting", false, 40 * time.Millisecond, 1, time.Second, 1},
		{"limit 10 per 100ms", false, 100 * time.Millisecond, 10, 0, 4},
		{"limit 10 per 100ms waiting", false, 100 * time.Millisecond, 10, time.Second, 4},
		// Above 64: leased permits (on by default), 8 goroutines a worker.
		{"limit 1000 per 200ms permits", false, 200 * time.Millisecond, 1000, 0, 8},
		{"cluster limit 1 per 50ms", true, 50 * time.Millisecond, 1, 0, 1},
		{"cluster limit 10 per 100ms waiting", true, 100 * time.Millisecond, 10, time.Second, 4},
	}
	cluster := redistest.StartCluster(t, 3).Addrs
	const duration = 1500 * time.Millisecond
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			addrs := single
			if c.cluster {
				addrs = cluster
			}
			var specs []workerSpec
			for i := range 4 {
				specs = append(specs, workerSpec{GoRedis: i%2 == 0, Addrs: addrs, Cluster: c.cluster,
					Key: "xproc:" + t.Name(), Interval: c.interval, Limit: c.limit, Wait: c.wait,
					Duration: duration, Goroutines: c.goroutines, ID: i})
			}
			evs := runWorkers(t, specs)
			for _, e := range evs {
				assert.NotEqual(t, simevent.Error, e.Event, "worker %d store error: %s", e.Worker, e.Err)
			}
			r := simevent.Check(simevent.Admissions(evs), c.interval, c.limit, duration)
			perWorker := map[int]int{}
			for _, e := range evs {
				if e.Event == simevent.Start {
					perWorker[e.Worker]++
				}
			}
			t.Logf("%d starts (per worker, even ids on go-redis: %v), ideal %.0f, admitted/ideal %.2f, raw min gap %v, raw max in window %d, provable violations %d",
				r.Starts, perWorker, r.Ideal, r.AdmittedRatio(), r.MinGap, r.MaxInWindow, r.Violations)
			assert.Zero(t, r.Violations, "provable violations of %d per %v", c.limit, c.interval)
			assert.GreaterOrEqual(t, r.AdmittedRatio(), 0.6, "admitted/ideal")
			assert.True(t, perWorker[0]+perWorker[2] > 0, "go-redis workers admitted: %v", perWorker)
			assert.True(t, perWorker[1]+perWorker[3] > 0, "rueidis workers admitted: %v", perWorker)
		})
	}
}
