package riverthrottle_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"
	"github.com/riverqueue/river/rivermigrate"
	"github.com/riverqueue/river/rivertype"
	"github.com/stretchr/testify/require"

	"github.com/dthrottle/throttle"
	"github.com/dthrottle/throttle/internal/workerproc"
	"github.com/dthrottle/throttle/riverthrottle"
)

const (
	// postgresURLEnv overrides defaultPostgresURL.
	postgresURLEnv = "THROTTLE_POSTGRES_URL"
	// defaultPostgresURL is the PostgreSQL the tests use: trust auth on
	// loopback, database test. Each test makes its own schema in it.
	defaultPostgresURL = "postgres://postgres@127.0.0.1:5432/test?sslmode=disable"
	// requirePostgresEnv set to 1 makes an unreachable PostgreSQL a test
	// failure instead of a skip (CI sets it).
	requirePostgresEnv = "THROTTLE_REQUIRE_POSTGRES"

	// liveness bounds how long all jobs of one test may take to finish.
	liveness = 60 * time.Second
	// workKind is the kind of every test job.
	workKind = "throttled_work"
)

func postgresURL() string {
	if u := os.Getenv(postgresURLEnv); u != "" {
		return u
	}
	return defaultPostgresURL
}

// openPostgres connects to the test PostgreSQL, or skips the test (fails it
// under THROTTLE_REQUIRE_POSTGRES=1) when none answers.
func openPostgres(tb testing.TB) *pgxpool.Pool {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	pool, err := pgxpool.New(ctx, postgresURL())
	if err == nil {
		err = pool.Ping(ctx)
		if err != nil {
			pool.Close()
		}
	}
	if err != nil {
		msg := fmt.Sprintf("PostgreSQL not reachable at %s (set %s to another URL): %v", postgresURL(), postgresURLEnv, err)
		if os.Getenv(requirePostgresEnv) == "1" {
			tb.Fatalf("%s; %s=1 requires it", msg, requirePostgresEnv)
		}
		tb.Skip(msg)
	}
	tb.Cleanup(pool.Close)
	return pool
}

// riverSchema makes a fresh schema with River's tables in it, dropped at
// cleanup, and returns its name.
func riverSchema(tb testing.TB, pool *pgxpool.Pool) string {
	tb.Helper()
	var b [5]byte
	_, _ = rand.Read(b[:])
	schema := "riverthrottle_" + hex.EncodeToString(b[:])
	ctx := context.Background()
	_, err := pool.Exec(ctx, "CREATE SCHEMA "+schema)
	require.NoError(tb, err, "creating schema %s", schema)
	tb.Cleanup(func() {
		if _, err := pool.Exec(context.Background(), "DROP SCHEMA "+schema+" CASCADE"); err != nil {
			tb.Errorf("dropping schema %s: %v", schema, err)
		}
	})
	m, err := rivermigrate.New(riverpgxv5.New(pool), &rivermigrate.Config{Schema: schema, Logger: quietLogger()})
	require.NoError(tb, err)
	_, err = m.Migrate(ctx, rivermigrate.DirectionUp, nil)
	require.NoError(tb, err, "migrating River's tables into %s", schema)
	return schema
}

// quietLogger logs River's warnings and errors to stderr.
func quietLogger() *slog.Logger {
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

// workArgs are the arguments of every test job.
type workArgs struct {
	N      int    `json:"n"`
	Tenant string `json:"tenant,omitempty"`
}

func (workArgs) Kind() string { return workKind }

// event is one line of what a client saw: a job that started (with the
// time just before its admitting decision was asked, and the times it
// started and finished), or a job that was snoozed (Started is then when
// the middleware returned the snooze).
type event struct {
	Kind     string `json:"kind"` // "start" or "snooze"
	JobID    int64  `json:"job_id"`
	N        int    `json:"n"`
	Key      string `json:"key"`
	Attempt  int    `json:"attempt"`
	Asked    int64  `json:"asked"`
	Started  int64  `json:"started"`
	Finished int64  `json:"finished"`
	Snooze   int64  `json:"snooze"` // ns, for a snooze
	Worker   int    `json:"worker"`
	PID      int    `json:"pid"`
}

// events collects events from every client.
type events struct {
	workerproc.Log[event]
}

func (e *events) count(kind string) int {
	n := 0
	for _, ev := range e.Snapshot() {
		if ev.Kind == kind {
			n++
		}
	}
	return n
}

type jobKey struct{}

// askRecorder wraps a Limiter and remembers, per job id (from the
// recorder's context value), when the job last asked: for a job that runs,
// that is just before its admitting decision.
type askRecorder struct {
	inner riverthrottle.Limiter
	mu    sync.Mutex
	asked map[int64]time.Time
}

func newAskRecorder(inner riverthrottle.Limiter) *askRecorder {
	return &askRecorder{inner: inner, asked: map[int64]time.Time{}}
}

func (r *askRecorder) note(ctx context.Context) {
	id, _ := ctx.Value(jobKey{}).(int64)
	r.mu.Lock()
	r.asked[id] = time.Now()
	r.mu.Unlock()
}

func (r *askRecorder) last(id int64) time.Time {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.asked[id]
}

func (r *askRecorder) Allow(ctx context.Context, key string) (throttle.Decision, error) {
	r.note(ctx)
	return r.inner.Allow(ctx, key)
}

func (r *askRecorder) Concurrency() int { return r.inner.Concurrency() }

func (r *askRecorder) AcquireWithin(ctx context.Context, key string, max time.Duration) (*throttle.Lease, error) {
	r.note(ctx)
	return r.inner.AcquireWithin(ctx, key, max)
}

func (r *askRecorder) Hold(ctx context.Context, key string, d time.Duration) error {
	return r.inner.Hold(ctx, key, d)
}

// recorder is the outermost middleware of a test client: it puts the job's
// id in the context for the askRecorder, and reports every snooze the
// throttle hands to River.
type recorder struct {
	river.MiddlewareDefaults
	emit   func(event)
	worker int
	key    riverthrottle.KeyFunc
}

func (r *recorder) Work(ctx context.Context, job *rivertype.JobRow, doInner func(context.Context) error) error {
	err := doInner(context.WithValue(ctx, jobKey{}, job.ID))
	if snooze, ok := snoozeOf(err); ok {
		key, _ := r.key(job)
		r.emit(event{Kind: "snooze", JobID: job.ID, Key: key, Attempt: job.Attempt, Snooze: snooze.Nanoseconds(),
			Started: time.Now().UnixNano(),
			Worker:  r.worker, PID: os.Getpid()})
	}
	return err
}

// worker is the test job: it reports its start and finish.
type worker struct {
	river.WorkerDefaults[workArgs]
	emit   func(event)
	id     int
	key    riverthrottle.KeyFunc
	asks   *askRecorder
	sleep  time.Duration
	result func(job *river.Job[workArgs]) error
}

func (w *worker) Work(ctx context.Context, job *river.Job[workArgs]) error {
	started := time.Now()
	asked := w.asks.last(job.ID)
	if w.sleep > 0 {
		select {
		case <-time.After(w.sleep):
		case <-ctx.Done():
		}
	}
	var err error
	if w.result != nil {
		err = w.result(job)
	}
	key, _ := w.key(job.JobRow)
	w.emit(event{Kind: "start", JobID: job.ID, N: job.Args.N, Key: key, Attempt: job.Attempt,
		Asked: asked.UnixNano(), Started: started.UnixNano(), Finished: time.Now().UnixNano(), Worker: w.id, PID: os.Getpid()})
	return err
}

// tenantKey throttles by the tenant in the job's arguments.
func tenantKey(job *rivertype.JobRow) (string, error) {
	var a workArgs
	if err := json.Unmarshal(job.EncodedArgs, &a); err != nil {
		return "", err
	}
	return job.Kind + ":" + a.Tenant, nil
}

// clientConfig describes one River client under test.
type clientConfig struct {
	Schema   string        `json:"schema"`
	Redis    string        `json:"redis"`
	Interval time.Duration `json:"interval"`
	Limit    int           `json:"limit"`
	Cap      int           `json:"cap"` // WithConcurrency, if > 0
	Jitter   time.Duration `json:"jitter"`
	Capacity time.Duration `json:"capacity"` // WithCapacityDelay
	Wait     time.Duration `json:"wait"`     // WithWait
	Sleep    time.Duration `json:"sleep"`    // each job's run time
	ByTenant bool          `json:"by_tenant"`
	Workers  int           `json:"workers"` // River MaxWorkers
	Worker   int           `json:"worker"`
}

// startClient starts one River client on pool whose jobs are throttled by
// a Keyed of its own on its own Redis client, as a separate process would
// have; it reports every start and snooze to emit. lim, if not nil,
// replaces the Keyed, and result, if not nil, is each job's result.
func startClient(pool *pgxpool.Pool, cfg clientConfig, emit func(event), lim riverthrottle.Limiter, result func(*river.Job[workArgs]) error, rc *river.Config) (stop func(), err error) {
	var closeRedis func() error
	if lim == nil {
		opts := []throttle.Option{throttle.WithLimit(max(cfg.Limit, 1)), throttle.WithTimeout(2 * time.Second)}
		if cfg.Cap > 0 {
			opts = append(opts, throttle.WithConcurrency(cfg.Cap))
		}
		rdb := redis.NewClient(&redis.Options{Addr: cfg.Redis})
		closeRedis = rdb.Close
		k, err := throttle.NewKeyed(cfg.Interval, append(opts, throttle.WithStore(throttle.NewRedisStore(rdb)))...)
		if err != nil {
			rdb.Close()
			return nil, err
		}
		lim = k
	}
	key := riverthrottle.KeyFunc(riverthrottle.KindKey)
	if cfg.ByTenant {
		key = tenantKey
	}
	mwOpts := []riverthrottle.Option{riverthrottle.WithKeyFunc(key), riverthrottle.WithJitter(cfg.Jitter)}
	if cfg.Capacity > 0 {
		mwOpts = append(mwOpts, riverthrottle.WithCapacityDelay(cfg.Capacity))
	}
	if cfg.Wait > 0 {
		mwOpts = append(mwOpts, riverthrottle.WithWait(cfg.Wait))
	}
	asks := newAskRecorder(lim)
	workers := river.NewWorkers()
	river.AddWorker(workers, &worker{emit: emit, id: cfg.Worker, key: key, asks: asks, sleep: cfg.Sleep, result: result})
	config := river.Config{}
	if rc != nil {
		config = *rc
	}
	config.Schema = cfg.Schema
	config.Queues = map[string]river.QueueConfig{river.QueueDefault: {MaxWorkers: max(cfg.Workers, 1)}}
	config.Workers = workers
	config.Middleware = []rivertype.Middleware{
		&recorder{emit: emit, worker: cfg.Worker, key: key},
		riverthrottle.New(asks, mwOpts...),
	}
	config.FetchCooldown = 5 * time.Millisecond
	config.FetchPollInterval = 20 * time.Millisecond
	config.Logger = quietLogger()
	client, err := river.NewClient(riverpgxv5.New(pool), &config)
	if err != nil {
		if closeRedis != nil {
			closeRedis()
		}
		return nil, err
	}
	if err := client.Start(context.Background()); err != nil {
		if closeRedis != nil {
			closeRedis()
		}
		return nil, err
	}
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := client.Stop(ctx); err != nil {
			fmt.Fprintln(os.Stderr, "stopping river client:", err)
		}
		if closeRedis != nil {
			closeRedis()
		}
	}, nil
}

// insertJobs inserts n jobs; tenants alternate between two.
func insertJobs(tb testing.TB, pool *pgxpool.Pool, schema string, n int, opts *river.InsertOpts) {
	tb.Helper()
	client, err := river.NewClient(riverpgxv5.New(pool), &river.Config{Schema: schema, Logger: quietLogger()})
	require.NoError(tb, err)
	params := make([]river.InsertManyParams, n)
	for i := range params {
		params[i] = river.InsertManyParams{Args: workArgs{N: i, Tenant: []string{"acme", "globex"}[i%2]}, InsertOpts: opts}
	}
	_, err = client.InsertMany(context.Background(), params)
	require.NoError(tb, err, "inserting %d jobs", n)
}

// jobState is a job's row as the tests check it.
type jobState struct {
	ID          int64
	Kind        string
	State       string
	Attempt     int
	MaxAttempts int
	Snoozes     int
	Errors      int
}

// jobStates reads every job of schema.
func jobStates(tb testing.TB, pool *pgxpool.Pool, schema string) []jobState {
	tb.Helper()
	rows, err := pool.Query(context.Background(), `SELECT id, kind, state::text, attempt, max_attempts,
		coalesce((metadata->>'snoozes')::int, 0), coalesce(array_length(errors, 1), 0)
		FROM `+schema+`.river_job ORDER BY id`)
	require.NoError(tb, err)
	defer rows.Close()
	var out []jobState
	for rows.Next() {
		var s jobState
		require.NoError(tb, rows.Scan(&s.ID, &s.Kind, &s.State, &s.Attempt, &s.MaxAttempts, &s.Snoozes, &s.Errors))
		out = append(out, s)
	}
	require.NoError(tb, rows.Err())
	return out
}

// waitJobs waits until every one of n jobs is in a final state (completed,
// discarded or cancelled) and evs holds at least starts start events,
// failing the test after the liveness bound.
func waitJobs(tb testing.TB, pool *pgxpool.Pool, schema string, n, starts int, evs *events) []jobState {
	tb.Helper()
	deadline := time.Now().Add(liveness)
	for {
		states := jobStates(tb, pool, schema)
		final := 0
		for _, s := range states {
			switch s.State {
			case "completed", "discarded", "cancelled":
				final++
			}
		}
		if len(states) == n && final == n && evs.count("start") >= starts {
			return states
		}
		if time.Now().After(deadline) {
			tb.Fatalf("not all of %d jobs done within %v: %d final, %d starts; jobs %+v", n, liveness, final, evs.count("start"), states)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
