package riverthrottle_test

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"
	"github.com/riverqueue/river/rivertype"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dthrottle/throttle"
	"github.com/dthrottle/throttle/internal/redistest"
	"github.com/dthrottle/throttle/internal/simevent"
	"github.com/dthrottle/throttle/riverthrottle"
)

// denyFirst is a Limiter that denies the first n asks of each job (found
// by the recorder's job id in the context) with a retry-after of 0, then
// admits it.
type denyFirst struct {
	n    int
	mu   sync.Mutex
	asks map[int64]int
}

func (d *denyFirst) Allow(ctx context.Context, key string) (throttle.Decision, error) {
	id, _ := ctx.Value(jobKey{}).(int64)
	d.mu.Lock()
	defer d.mu.Unlock()
	d.asks[id]++
	if d.asks[id] <= d.n {
		return throttle.Decision{}, nil
	}
	return throttle.Decision{Allowed: true}, nil
}

func (d *denyFirst) Concurrency() int { return 0 }

func (d *denyFirst) AcquireWithin(context.Context, string, time.Duration) (*throttle.Lease, error) {
	return nil, errors.New("denyFirst: no leases")
}

func (d *denyFirst) Hold(context.Context, string, time.Duration) error { return nil }

// retryNow retries a failed job at once.
type retryNow struct{}

func (retryNow) NextRetry(*rivertype.JobRow) time.Time { return time.Now() }

// TestSnoozeKeepsAttempts checks on PostgreSQL what the middleware relies
// on in River: a job snoozed 20 times still completes with MaxAttempts 3,
// with its Attempt at 1 and no error recorded, while the same number of
// errors discards it after 3 attempts.
func TestSnoozeKeepsAttempts(t *testing.T) {
	t.Parallel()
	const (
		jobs     = 3
		throttle = 20
	)
	pool := openPostgres(t)

	t.Run("snoozed", func(t *testing.T) {
		t.Parallel()
		schema := riverSchema(t, pool)
		lim := &denyFirst{n: throttle, asks: map[int64]int{}}
		var evs events
		stop, err := startClient(pool, clientConfig{Schema: schema, Workers: 2}, evs.Add, lim, nil, nil)
		require.NoError(t, err)
		defer stop()
		insertJobs(t, pool, schema, jobs, &river.InsertOpts{MaxAttempts: 3})
		states := waitJobs(t, pool, schema, jobs, jobs, &evs)
		for _, s := range states {
			assert.Equal(t, "completed", s.State, "job %d", s.ID)
			assert.Equal(t, 1, s.Attempt, "job %d attempt after %d snoozes", s.ID, throttle)
			assert.Equal(t, 3, s.MaxAttempts, "job %d max attempts", s.ID)
			assert.Equal(t, throttle, s.Snoozes, "job %d snoozes recorded by River", s.ID)
			assert.Zero(t, s.Errors, "job %d errors", s.ID)
		}
		assert.Equal(t, jobs, evs.count("start"), "runs")
		assert.Equal(t, jobs*throttle, evs.count("snooze"), "snoozes seen by the recorder")
		lim.mu.Lock()
		for id, n := range lim.asks {
			assert.Equal(t, throttle+1, n, "job %d asks", id)
		}
		lim.mu.Unlock()
	})

	t.Run("failed instead", func(t *testing.T) {
		// The control: the same job failing instead of being throttled
		// uses its attempts and is discarded, so the checks above can fail.
		t.Parallel()
		schema := riverSchema(t, pool)
		lim := &denyFirst{asks: map[int64]int{}}
		var evs events
		fail := func(*river.Job[workArgs]) error { return errors.New("failing on purpose") }
		stop, err := startClient(pool, clientConfig{Schema: schema, Workers: 2}, evs.Add, lim, fail, &river.Config{RetryPolicy: retryNow{}})
		require.NoError(t, err)
		defer stop()
		insertJobs(t, pool, schema, jobs, &river.InsertOpts{MaxAttempts: 3})
		states := waitJobs(t, pool, schema, jobs, 3*jobs, &evs)
		for _, s := range states {
			assert.Equal(t, "discarded", s.State, "job %d", s.ID)
			assert.Equal(t, 3, s.Attempt, "job %d attempt", s.ID)
			assert.Equal(t, 3, s.Errors, "job %d errors", s.ID)
		}
	})
}

// TestHoldAcrossClients: the first job to run answers HoldOff(700 ms); two
// clients, each with its own Keyed and Redis client, on one Redis and one
// database, snooze every job of the key until the hold ends, then run them
// all.
func TestHoldAcrossClients(t *testing.T) {
	t.Parallel()
	const (
		jobs = 16
		hold = 700 * time.Millisecond
	)
	pool := openPostgres(t)
	srv := redistest.Start(t)
	schema := riverSchema(t, pool)

	var (
		evs      events
		held     atomic.Bool
		heldJob  atomic.Int64
		holdFrom atomic.Int64 // when the holding job's body returned
	)
	result := func(job *river.Job[workArgs]) error {
		if held.CompareAndSwap(false, true) {
			heldJob.Store(job.ID)
			holdFrom.Store(time.Now().UnixNano())
			return riverthrottle.HoldOff(hold, errors.New("429 Too Many Requests"))
		}
		return nil
	}
	for w := range 2 {
		cfg := clientConfig{Schema: schema, Redis: srv.Addr, Interval: 20 * time.Millisecond, Limit: 1,
			Jitter: 30 * time.Millisecond, Workers: 4, Worker: w}
		stop, err := startClient(pool, cfg, evs.Add, nil, result, nil)
		require.NoError(t, err)
		defer stop()
	}
	insertJobs(t, pool, schema, jobs, nil)
	states := waitJobs(t, pool, schema, jobs, jobs+1, &evs)
	for _, s := range states {
		assert.Equal(t, "completed", s.State, "job %d", s.ID)
		assert.Equal(t, 1, s.Attempt, "job %d attempt", s.ID)
		assert.Zero(t, s.Errors, "job %d errors", s.ID)
	}

	// holdSet is when the holding job's snooze came back to River, after
	// the middleware's Hold returned: a decision that began later saw it.
	var holdSet int64
	all := evs.Snapshot()
	for _, e := range all {
		if e.Kind == "snooze" && e.JobID == heldJob.Load() && holdSet == 0 {
			holdSet = e.Started
		}
	}
	require.NotZero(t, holdSet, "the holding job was snoozed")
	holdEnd := holdFrom.Load() + int64(hold) // no earlier than the store's end of the hold
	snoozedBy := map[int]int{}
	for _, e := range all {
		switch {
		case e.Kind == "start" && e.Asked > holdSet:
			assert.GreaterOrEqual(t, e.Started, holdEnd, "job %d (worker %d) asked %v after the hold was set and started %v before it ended",
				e.JobID, e.Worker, time.Duration(e.Asked-holdSet), time.Duration(holdEnd-e.Started))
		case e.Kind == "snooze" && e.Started > holdSet && e.Started < holdEnd:
			snoozedBy[e.Worker]++
		}
	}
	assert.Len(t, snoozedBy, 2, "both clients snoozed jobs during the hold: %v", snoozedBy)
	t.Logf("hold of %v: snoozes during it per client %v; %d jobs completed", hold, snoozedBy, jobs)
}

// TestConcurrencyCapAcrossClients: a Keyed with WithConcurrency(2) and no
// rate, shared by two clients of 4 workers each: at most 2 jobs run at any
// instant, the others are snoozed and run later, none fails.
func TestConcurrencyCapAcrossClients(t *testing.T) {
	t.Parallel()
	const (
		jobs = 16
		k    = 2
	)
	pool := openPostgres(t)
	srv := redistest.Start(t)
	schema := riverSchema(t, pool)
	var evs events
	for w := range 2 {
		cfg := clientConfig{Schema: schema, Redis: srv.Addr, Cap: k, Jitter: 20 * time.Millisecond,
			Capacity: 20 * time.Millisecond, Sleep: 40 * time.Millisecond, Workers: 4, Worker: w}
		stop, err := startClient(pool, cfg, evs.Add, nil, nil, nil)
		require.NoError(t, err)
		defer stop()
	}
	insertJobs(t, pool, schema, jobs, nil)
	states := waitJobs(t, pool, schema, jobs, jobs, &evs)
	snoozes := 0
	for _, s := range states {
		assert.Equal(t, "completed", s.State, "job %d", s.ID)
		assert.Equal(t, 1, s.Attempt, "job %d attempt", s.ID)
		assert.Zero(t, s.Errors, "job %d errors", s.ID)
		snoozes += s.Snoozes
	}
	var calls [][2]int64
	workers := map[int]bool{}
	for _, e := range evs.Snapshot() {
		if e.Kind == "start" {
			calls = append(calls, [2]int64{e.Started, e.Finished})
			workers[e.Worker] = true
		}
	}
	peak, _ := simevent.InFlight(calls, 0)
	assert.LessOrEqual(t, peak, k, "jobs in flight at once")
	assert.Positive(t, snoozes, "the cap refused no job: the test did not exercise it")
	t.Logf("cap %d: %d jobs on %d clients, peak in flight %d, %d snoozes (%.1f per job)",
		k, jobs, len(workers), peak, snoozes, float64(snoozes)/jobs)
}

// plainArgs are the arguments of a job kind that a per-worker middleware
// does not throttle.
type plainArgs struct{}

func (plainArgs) Kind() string { return "plain_work" }

// throttledWorker installs the middleware (behind a recorder) for its own
// jobs only.
type throttledWorker struct {
	river.WorkerDefaults[workArgs]
	mw   []rivertype.WorkerMiddleware
	runs atomic.Int32
}

func (w *throttledWorker) Middleware(*rivertype.JobRow) []rivertype.WorkerMiddleware { return w.mw }

func (w *throttledWorker) Work(context.Context, *river.Job[workArgs]) error {
	w.runs.Add(1)
	return nil
}

type plainWorker struct {
	river.WorkerDefaults[plainArgs]
	runs atomic.Int32
}

func (w *plainWorker) Work(context.Context, *river.Job[plainArgs]) error {
	w.runs.Add(1)
	return nil
}

// TestPerWorkerMiddleware: returned from a worker's Middleware method, the
// middleware throttles that worker's jobs and no other kind's.
func TestPerWorkerMiddleware(t *testing.T) {
	t.Parallel()
	pool := openPostgres(t)
	schema := riverSchema(t, pool)
	// denyFirst finds the job by the recorder's context value.
	lim := &denyFirst{n: 2, asks: map[int64]int{}}
	var evs, global events
	tw := &throttledWorker{mw: []rivertype.WorkerMiddleware{
		&recorder{emit: evs.Add, key: riverthrottle.KindKey},
		riverthrottle.New(lim, riverthrottle.WithJitter(0)),
	}}
	pw := &plainWorker{}
	workers := river.NewWorkers()
	river.AddWorker(workers, tw)
	river.AddWorker(workers, pw)
	client, err := river.NewClient(riverpgxv5.New(pool), &river.Config{
		Schema:  schema,
		Queues:  map[string]river.QueueConfig{river.QueueDefault: {MaxWorkers: 4}},
		Workers: workers,
		// River runs a worker's own middleware outside Config.Middleware:
		// this one never sees the snoozes.
		Middleware:        []rivertype.Middleware{&recorder{emit: global.Add, key: riverthrottle.KindKey}},
		FetchCooldown:     5 * time.Millisecond,
		FetchPollInterval: 20 * time.Millisecond,
		Logger:            quietLogger(),
	})
	require.NoError(t, err)
	require.NoError(t, client.Start(context.Background()))
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		assert.NoError(t, client.Stop(ctx))
	}()
	_, err = client.InsertMany(context.Background(), []river.InsertManyParams{
		{Args: workArgs{N: 0}}, {Args: workArgs{N: 1}}, {Args: plainArgs{}}, {Args: plainArgs{}},
	})
	require.NoError(t, err)

	deadline := time.Now().Add(liveness)
	for tw.runs.Load() < 2 || pw.runs.Load() < 2 {
		require.True(t, time.Now().Before(deadline), "jobs not done within %v: throttled %d, plain %d", liveness, tw.runs.Load(), pw.runs.Load())
		time.Sleep(20 * time.Millisecond)
	}
	assert.Equal(t, 4, evs.count("snooze"), "snoozes: 2 for each throttled job")
	assert.Zero(t, global.count("snooze"), "snoozes seen by Config.Middleware")
	kinds := map[string]int{}
	for _, s := range waitJobs(t, pool, schema, 4, 0, &evs) {
		assert.Equal(t, "completed", s.State, "job %d", s.ID)
		assert.Equal(t, 1, s.Attempt, "job %d attempt", s.ID)
		kinds[s.Kind] += s.Snoozes
	}
	assert.Equal(t, map[string]int{workKind: 4, plainArgs{}.Kind(): 0}, kinds, "snoozes per kind")
	lim.mu.Lock()
	assert.Len(t, lim.asks, 2, "the limiter was asked for the throttled kind's jobs only")
	lim.mu.Unlock()
}
