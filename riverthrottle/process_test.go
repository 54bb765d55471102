package riverthrottle_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dthrottle/throttle/internal/redistest"
	"github.com/dthrottle/throttle/internal/simevent"
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
	var mu sync.Mutex
	enc := json.NewEncoder(os.Stdout)
	stop, err := startClient(pool, cfg, func(e event) {
		mu.Lock()
		defer mu.Unlock()
		_ = enc.Encode(e)
	}, nil, nil, nil)
	if err != nil {
		return err
	}
	done := make(chan struct{})
	go func() {
		_, _ = io.Copy(io.Discard, os.Stdin)
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(2 * liveness):
	}
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
			stopAll := startProcesses(t, workers, &evs, func(i int) clientConfig {
				return clientConfig{Schema: schema, Redis: srv.Addr, Interval: c.interval, Limit: c.limit,
					Jitter: c.jitter, Wait: c.wait, Workers: 4, Worker: i}
			})
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
			for _, e := range evs.snapshot() {
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

// startProcesses starts n worker processes whose events go to evs, and
// returns a function that stops them and checks that they exited cleanly
// (safe to call more than once).
func startProcesses(t *testing.T, n int, evs *events, spec func(i int) clientConfig) (stopAll func()) {
	t.Helper()
	type proc struct {
		cmd    *exec.Cmd
		stdin  io.WriteCloser
		stderr *lockedBuffer
		read   chan error
	}
	procs := make([]*proc, n)
	for i := range procs {
		b, err := json.Marshal(spec(i))
		require.NoError(t, err)
		p := &proc{cmd: exec.Command(os.Args[0], "-test.run=^$"), stderr: &lockedBuffer{}, read: make(chan error, 1)}
		p.cmd.Env = append(os.Environ(), workerEnv+"="+string(b))
		p.cmd.Stderr = p.stderr
		p.stdin, err = p.cmd.StdinPipe()
		require.NoError(t, err)
		stdout, err := p.cmd.StdoutPipe()
		require.NoError(t, err)
		require.NoError(t, p.cmd.Start(), "starting worker %d", i)
		go func() {
			sc := bufio.NewScanner(stdout)
			for sc.Scan() {
				var e event
				if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
					p.read <- fmt.Errorf("worker %d line %q: %w", i, sc.Text(), err)
					_, _ = io.Copy(io.Discard, stdout)
					return
				}
				evs.add(e)
			}
			p.read <- sc.Err()
		}()
		procs[i] = p
	}
	stopped := false
	return func() {
		if stopped {
			return
		}
		stopped = true
		for _, p := range procs {
			_ = p.stdin.Close()
		}
		for i, p := range procs {
			assert.NoError(t, <-p.read, "worker %d output", i)
			assert.NoError(t, p.cmd.Wait(), "worker %d: %s", i, p.stderr.String())
			if s := p.stderr.String(); s != "" {
				t.Logf("worker %d stderr:\n%s", i, s)
			}
		}
	}
}

// lockedBuffer is a bytes buffer safe for a writer and a reader on
// different goroutines.
type lockedBuffer struct {
	mu sync.Mutex
	b  []byte
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.b = append(l.b, p...)
	return len(p), nil
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return string(l.b)
}
