package asynqthrottle_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dthrottle/throttle"
	"github.com/dthrottle/throttle/asynqthrottle"
	"github.com/dthrottle/throttle/internal/redistest"
	"github.com/dthrottle/throttle/internal/workerproc"
)

// The cross-process test re-executes the test binary as asynq worker
// processes: TestMain runs runWorkerProcess instead of the tests when
// workerEnv is set.
const workerEnv = "ASYNQTHROTTLE_TEST_WORKER"

const (
	// liveness bounds how long all tasks of one test may take to finish.
	liveness = 60 * time.Second
	queue    = "default"
)

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

// event is one line of what a worker saw: a task that started (with the
// time just before its admitting decision was asked, and the time it
// started) or a task that was handed back to asynq as throttled.
type event struct {
	Kind    string `json:"kind"` // "start" or "requeue"
	TaskID  string `json:"task_id"`
	N       int    `json:"n"`
	Key     string `json:"key"`
	Asked   int64  `json:"asked"`
	Started int64  `json:"started"`
	Worker  int    `json:"worker"`
	PID     int    `json:"pid"`
}

// payload is what every test task carries.
type payload struct {
	N      int    `json:"n"`
	Tenant string `json:"tenant,omitempty"`
}

// askRecorder wraps a Limiter and remembers, per asynq task id, when the
// task last asked: for an admitted task that is the admitting decision.
type askRecorder struct {
	inner asynqthrottle.Limiter
	mu    sync.Mutex
	asked map[string]time.Time
}

func newAskRecorder(inner asynqthrottle.Limiter) *askRecorder {
	return &askRecorder{inner: inner, asked: map[string]time.Time{}}
}

func (r *askRecorder) Allow(ctx context.Context, key string) (throttle.Decision, error) {
	id, _ := asynq.GetTaskID(ctx)
	r.mu.Lock()
	r.asked[id] = time.Now()
	r.mu.Unlock()
	return r.inner.Allow(ctx, key)
}

func (r *askRecorder) lastAsk(id string) time.Time {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.asked[id]
}

// workerConfig describes one asynq server under test.
type workerConfig struct {
	Addr     string        `json:"addr"`
	Interval time.Duration `json:"interval"`
	Limit    int           `json:"limit"`
	ByTenant bool          `json:"by_tenant"`
	Wait     time.Duration `json:"wait"`
	Worker   int           `json:"worker"`
}

// tenantKey throttles by the tenant in the payload.
func tenantKey(t *asynq.Task) (string, error) {
	var p payload
	if err := json.Unmarshal(t.Payload(), &p); err != nil {
		return "", err
	}
	return t.Type() + ":" + p.Tenant, nil
}

// startServer starts one asynq server with the throttle middleware that
// reports every start and re-queue to emit. It uses its own redis client
// and its own limiter, as a separate process would.
func startServer(cfg workerConfig, emit func(event)) (stop func(), err error) {
	rc := redis.NewClient(&redis.Options{Addr: cfg.Addr})
	lim, err := throttle.NewKeyed(cfg.Interval,
		throttle.WithStore(throttle.NewRedisStore(rc)), throttle.WithLimit(cfg.Limit), throttle.WithTimeout(2*time.Second))
	if err != nil {
		rc.Close()
		return nil, err
	}
	rec := newAskRecorder(lim)
	opts := []asynqthrottle.Option{asynqthrottle.WithWait(cfg.Wait)}
	if cfg.ByTenant {
		opts = append(opts, asynqthrottle.WithKeyFunc(tenantKey))
	}
	pid := os.Getpid()
	mux := asynq.NewServeMux()
	// The outer middleware sees what the throttle hands back to asynq.
	mux.Use(func(next asynq.Handler) asynq.Handler {
		return asynq.HandlerFunc(func(ctx context.Context, t *asynq.Task) error {
			err := next.ProcessTask(ctx, t)
			var te *asynqthrottle.ThrottledError
			if errors.As(err, &te) {
				id, _ := asynq.GetTaskID(ctx)
				emit(event{Kind: "requeue", TaskID: id, Key: te.Key, Worker: cfg.Worker, PID: pid})
			}
			return err
		})
	}, asynqthrottle.Middleware(rec, opts...))
	work := func(ctx context.Context, t *asynq.Task) error {
		started := time.Now()
		id, _ := asynq.GetTaskID(ctx)
		var p payload
		if err := json.Unmarshal(t.Payload(), &p); err != nil {
			return err
		}
		key := t.Type()
		if cfg.ByTenant {
			key, _ = tenantKey(t)
		}
		emit(event{Kind: "start", TaskID: id, N: p.N, Key: key, Asked: rec.lastAsk(id).UnixNano(),
			Started: started.UnixNano(), Worker: cfg.Worker, PID: pid})
		time.Sleep(2 * time.Millisecond)
		return nil
	}
	mux.HandleFunc("work", work)
	srv := asynq.NewServerFromRedisClient(rc, asynqthrottle.Configure(asynq.Config{
		Concurrency:              4,
		Queues:                   map[string]int{queue: 1},
		TaskCheckInterval:        50 * time.Millisecond,
		DelayedTaskCheckInterval: 100 * time.Millisecond,
		ShutdownTimeout:          3 * time.Second,
		LogLevel:                 asynq.WarnLevel,
	}))
	if err := srv.Start(mux); err != nil {
		rc.Close()
		return nil, err
	}
	return func() {
		srv.Shutdown()
		rc.Close()
	}, nil
}

// runWorkerProcess is a worker process: one asynq server that prints its
// events as JSON lines on stdout until its stdin is closed.
func runWorkerProcess(spec string) error {
	var cfg workerConfig
	if err := json.Unmarshal([]byte(spec), &cfg); err != nil {
		return err
	}
	emit := workerproc.Emitter()
	stop, err := startServer(cfg, func(e event) { emit(e) })
	if err != nil {
		return err
	}
	workerproc.WaitStdin(2 * liveness)
	stop()
	return nil
}

// events collects events from every server.
type events = workerproc.Log[event]

// enqueue enqueues n "work" tasks; every third has MaxRetry(0), and tasks
// alternate between two tenants. It returns the ids of the MaxRetry(0)
// tasks.
func enqueue(t *testing.T, addr string, n int) map[string]bool {
	t.Helper()
	client := asynq.NewClient(asynq.RedisClientOpt{Addr: addr})
	defer client.Close()
	noRetry := map[string]bool{}
	for i := range n {
		b, err := json.Marshal(payload{N: i, Tenant: []string{"acme", "globex"}[i%2]})
		require.NoError(t, err)
		opts := []asynq.Option{asynq.Queue(queue), asynq.Retention(10 * time.Minute), asynq.MaxRetry(5)}
		if i%3 == 0 {
			opts = append(opts, asynq.MaxRetry(0))
		}
		info, err := client.Enqueue(asynq.NewTask("work", b), opts...)
		require.NoError(t, err)
		if i%3 == 0 {
			noRetry[info.ID] = true
		}
	}
	return noRetry
}

// waitCompleted waits until asynq reports n completed tasks and evs holds
// n starts, failing the test after the liveness bound.
func waitCompleted(t *testing.T, insp *asynq.Inspector, n int, evs *events) {
	t.Helper()
	deadline := time.Now().Add(liveness)
	for {
		qi, err := insp.GetQueueInfo(queue)
		starts := 0
		for _, e := range evs.Snapshot() {
			if e.Kind == "start" {
				starts++
			}
		}
		if err == nil && qi.Completed >= n && starts >= n {
			return
		}
		if err == nil && qi.Archived > 0 {
			archived, _ := insp.ListArchivedTasks(queue)
			for _, ti := range archived {
				t.Logf("archived: task %s max retry %d retried %d last error %q", ti.ID, ti.MaxRetry, ti.Retried, ti.LastErr)
			}
			t.Fatalf("asynq archived %d tasks", qi.Archived)
		}
		if time.Now().After(deadline) {
			t.Fatalf("not all tasks done within %v: queue %+v (err %v), %d starts", liveness, qi, err, starts)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// checkRun checks the outcome: every task ran exactly once, asynq archived
// none and counted no failure, no task's Retried grew, and the starts of
// each key keep limit per interval.
func checkRun(t *testing.T, insp *asynq.Inspector, n int, noRetry map[string]bool, evs []event, interval time.Duration, limit int) {
	t.Helper()
	runs := map[int]int{}
	byKey := map[string][]event{}
	requeues, workers := 0, map[int]bool{}
	for _, e := range evs {
		switch e.Kind {
		case "start":
			runs[e.N]++
			byKey[e.Key] = append(byKey[e.Key], e)
			workers[e.Worker] = true
		case "requeue":
			requeues++
			assert.False(t, noRetry[e.TaskID], "a MaxRetry(0) task %s was handed back to asynq, which archives it", e.TaskID)
		}
	}
	for i := range n {
		assert.Equal(t, 1, runs[i], "task %d runs", i)
	}
	assert.Len(t, runs, n)

	qi, err := insp.GetQueueInfo(queue)
	require.NoError(t, err)
	assert.Zero(t, qi.Archived, "archived")
	assert.Zero(t, qi.Retry, "in retry")
	assert.Zero(t, qi.Pending+qi.Active+qi.Scheduled, "pending, active or scheduled")
	assert.Zero(t, qi.Failed, "failed today")
	assert.Zero(t, qi.FailedTotal, "failed in total")
	assert.Equal(t, n, qi.Completed, "completed")
	assert.Equal(t, n, qi.ProcessedTotal, "processed in total: re-queues are not counted")

	completed, err := insp.ListCompletedTasks(queue, asynq.PageSize(10*n))
	require.NoError(t, err)
	assert.Len(t, completed, n)
	for _, ti := range completed {
		assert.Zero(t, ti.Retried, "task %s (max retry %d) retried", ti.ID, ti.MaxRetry)
		if noRetry[ti.ID] {
			assert.Zero(t, ti.MaxRetry)
		}
	}

	for key, starts := range byKey {
		v := violations(starts, interval, limit)
		assert.Empty(t, v, "key %s: provable violations of %d per %v", key, limit, interval)
	}
	t.Logf("%d tasks ran on %d workers; %d re-queues (throttled tasks handed back to asynq); keys %d; Retried all 0; archived %d, failed %d",
		n, len(workers), requeues, len(byKey), qi.Archived, qi.FailedTotal)
}

// violations returns the groups of limit+1 admissions that provably started
// within one interval. Each admission's decision was made at some time
// between its Asked and Started, so a group proves a violation only when
// its latest start minus its earliest ask is less than the interval. For
// each admission as the latest start of a group, the best group takes the
// limit other admissions that started no later and asked latest.
func violations(starts []event, interval time.Duration, limit int) [][]event {
	evs := append([]event(nil), starts...)
	sort.Slice(evs, func(i, j int) bool { return evs[i].Started < evs[j].Started })
	var out [][]event
	for j := limit; j < len(evs); j++ {
		prior := append([]event(nil), evs[:j]...)
		sort.Slice(prior, func(a, b int) bool { return prior[a].Asked > prior[b].Asked })
		group := append(prior[:limit:limit], evs[j])
		first := evs[j].Asked
		for _, e := range group {
			first = min(first, e.Asked)
		}
		if time.Duration(evs[j].Started-first) < interval {
			out = append(out, group)
		}
	}
	return out
}

func TestViolationsCheck(t *testing.T) {
	ms := func(asked, started int) event {
		return event{Asked: int64(asked) * int64(time.Millisecond), Started: int64(started) * int64(time.Millisecond)}
	}
	// Starts 200 ms apart keep 1 per 200 ms.
	assert.Empty(t, violations([]event{ms(0, 1), ms(199, 201), ms(399, 401)}, 200*time.Millisecond, 1))
	// A start 150 ms after the previous ask proves a violation.
	assert.Len(t, violations([]event{ms(0, 1), ms(140, 150)}, 200*time.Millisecond, 1), 1)
	// A slow decision makes it unprovable: the first may have decided late.
	assert.Empty(t, violations([]event{ms(0, 100), ms(150, 210)}, 200*time.Millisecond, 1))
	// 3 per 300 ms: four starts within 300 ms of the first ask prove it.
	assert.Empty(t, violations([]event{ms(0, 1), ms(1, 2), ms(2, 3), ms(300, 301)}, 300*time.Millisecond, 3))
	assert.Len(t, violations([]event{ms(0, 1), ms(1, 2), ms(2, 3), ms(250, 260)}, 300*time.Millisecond, 3), 1)
}

// TestServersInProcess runs three asynq servers, each with its own Redis
// client and limiter, in this process on one redis-server.
func TestServersInProcess(t *testing.T) {
	cases := []struct {
		name     string
		interval time.Duration
		limit    int
		tasks    int
	}{
		{"1 per 200ms", 200 * time.Millisecond, 1, 12},
		{"3 per 300ms", 300 * time.Millisecond, 3, 18},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			srv := redistest.Start(t)
			insp := asynq.NewInspector(asynq.RedisClientOpt{Addr: srv.Addr})
			defer insp.Close()
			var evs events
			for w := range 3 {
				stop, err := startServer(workerConfig{Addr: srv.Addr, Interval: c.interval, Limit: c.limit, Worker: w}, evs.Add)
				require.NoError(t, err)
				defer stop()
			}
			noRetry := enqueue(t, srv.Addr, c.tasks)
			waitCompleted(t, insp, c.tasks, &evs)
			checkRun(t, insp, c.tasks, noRetry, evs.Snapshot(), c.interval, c.limit)
		})
	}
}

// TestWorkerProcesses runs three asynq worker processes on one
// redis-server, throttling by tenant to 1 per 200 ms each, with short waits
// in the handler allowed.
func TestWorkerProcesses(t *testing.T) {
	if testing.Short() {
		t.Skip("cross-process test skipped in -short mode")
	}
	const (
		workers  = 3
		tasks    = 16
		interval = 200 * time.Millisecond
	)
	srv := redistest.Start(t)
	insp := asynq.NewInspector(asynq.RedisClientOpt{Addr: srv.Addr})
	defer insp.Close()

	var evs events
	specs := make([]any, workers)
	for i := range specs {
		specs[i] = workerConfig{Addr: srv.Addr, Interval: interval, Limit: 1, ByTenant: true,
			Wait: 250 * time.Millisecond, Worker: i}
	}
	stopAll := workerproc.Start(t, workerEnv, specs, evs.Add)
	defer stopAll()

	noRetry := enqueue(t, srv.Addr, tasks)
	waitCompleted(t, insp, tasks, &evs)
	stopAll()

	all := evs.Snapshot()
	pids := map[int]bool{}
	for _, e := range all {
		if e.Kind == "start" {
			pids[e.PID] = true
		}
	}
	t.Logf("tasks ran in %d processes", len(pids))
	checkRun(t, insp, tasks, noRetry, all, interval, 1)
}
