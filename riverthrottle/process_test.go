package riverthrottle_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/assert"

	"github.com/dthrottle/throttle/internal/redistest"
	"github.com/dthrottle/throttle/internal/simevent"
	"github.com/dthrottle/throttle/internal/workerproc"
)

// The cross-process test re-executes the test binary as River worker
// processes: TestMain runs runWorkerProcess instead of the tests when
// workerEnv is set.
const workerEnv = "RIVERTHROTTLE_TEST_WORKER"

func TestMain(m *testing.M) {
	if spec := os.Getenv(workerEnv); spec != "" {
		if err := runWorkerProcess(spec); err != nil {
			fmt.Fprintln(os.Stderr, "worker:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// runWorkerProcess is a worker process: one River client that prints its
// events as JSON lines on stdout until its stdin is closed.
func runWorkerProcess(spec string) error {
	var cfg clientConfig
	if err := json.Unmarshal([]byte(spec), &cfg); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	pool, err := pgxpool.New(ctx, postgresURL())
	if err != nil {
		return err
	}
	defer pool.Close()
	emit := workerproc.Emitter()
	stop, err := startClient(pool, cfg, func(e event) { emit(e) }, nil, nil, nil)
	if err != nil {
		return err
	}
	workerproc.WaitStdin(2 * liveness)
	stop()
	return nil
}

// TestWorkerProcesses runs three River worker processes, each one client
// with its own Keyed and Redis client, on one database and one
// redis-server, and many jobs of one kind: every job runs exactly once,
// none fails or is discarded, no two starts provably break the limit, and
// the log says how close to the limit the jobs ran and how often each was
// snoozed.
func TestWorkerProcesses(t *testing.T) {
	if testing.Short() {
		t.Skip("cross-process test skipped in -short mode")
	}
	cases := []struct {
		name     string
		interval time.Duration
		limit    int
		jobs     int
		jitter   time.Duration
		wait     time.Duration
	}{
		{"1 per 100ms", 100 * time.Millisecond, 1, 40, 100 * time.Millisecond, 0},
		{"1 per 100ms with waits", 100 * time.Millisecond, 1, 40, 100 * time.Millisecond, 500 * time.Millisecond},
		{"5 per second", time.Second, 5, 40, 200 * time.Millisecond, 0},
	}
	pool := openPostgres(t)
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			const workers = 3
			srv := redistest.Start(t)
			schema := riverSchema(t, pool)
			var evs events
			specs := make([]any, workers)
			for i := range specs {
				specs[i] = clientConfig{Schema: schema, Redis: srv.Addr, Interval: c.interval, Limit: c.limit,
					Jitter: c.jitter, Wait: c.wait, Workers: 4, Worker: i}
			}
			stopAll := workerproc.Start(t, workerEnv, specs, evs.Add)
			defer stopAll()

			insertJobs(t, pool, schema, c.jobs, nil)
			states := waitJobs(t, pool, schema, c.jobs, c.jobs, &evs)
			stopAll()

			snoozes := 0
			for _, s := range states {
				assert.Equal(t, "completed", s.State, "job %d", s.ID)
				assert.Equal(t, 1, s.Attempt, "job %d attempt", s.ID)
				assert.Zero(t, s.Errors, "job %d errors", s.ID)
				snoozes += s.Snoozes
			}
			runs := map[int]int{}
			pids := map[int]bool{}
			var as []simevent.Admission
			first, last := int64(0), int64(0)
			for _, e := range evs.Snapshot() {
				if e.Kind != "start" {
					continue
				}
				runs[e.N]++
				pids[e.PID] = true
				as = append(as, simevent.Admission{Asked: e.Asked, Started: e.Started})
				if first == 0 || e.Started < first {
					first = e.Started
				}
				last = max(last, e.Started)
			}
			for i := range c.jobs {
				assert.Equal(t, 1, runs[i], "job n=%d runs", i)
			}
			assert.Len(t, runs, c.jobs)
			// The ideal over the span from the first start to the last is
			// limit per interval, plus the limit that may start at once.
			span := time.Duration(last - first)
			r := simevent.Check(as, c.interval, c.limit, span+c.interval)
			assert.Zero(t, r.Violations, "provable violations of %d per %v", c.limit, c.interval)
			t.Logf("%s: %d jobs on %d processes: %d snoozes (%.1f per job); starts over %v: %.2f per second against a limit of %.2f (%.0f%% of the ideal %.1f); min gap %v, at most %d in a window; violations %d",
				c.name, c.jobs, len(pids), snoozes, float64(snoozes)/float64(c.jobs), span.Round(time.Millisecond),
				float64(len(as)-1)/span.Seconds(), float64(c.limit)/c.interval.Seconds(),
				100*r.AdmittedRatio(), r.Ideal, r.MinGap.Round(time.Millisecond), r.MaxInWindow, r.Violations)
		})
	}
}
