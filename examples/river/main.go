// Command river shows package riverthrottle: it inserts jobs of one kind,
// runs three River clients that throttle that kind together, and prints
// every start and every snooze, then a summary. It exits when every job
// has completed.
//
// Each client has its own Redis client and its own limiter, as separate
// processes would; only the database and the Redis server are shared. A
// job that the limit does not admit is not run: River snoozes it, and it
// runs later without using up an attempt.
//
// It needs a PostgreSQL server (River keeps its jobs there). By default it
// connects to postgres://postgres@127.0.0.1:5432/test and works in a schema
// of its own, which it creates and drops; for the throttle it starts an
// embedded Redis (miniredis), so nothing else is needed:
//
//	go run .
//	go run . -jobs 20 -interval 500ms -limit 2
//	go run . -postgres postgres://user:pass@db.example:5432/app -redis redis://127.0.0.1:6380/0
//
// It exits with status 0 when every job ran exactly once and none was
// discarded or used more than one attempt, 1 otherwise (also when no
// PostgreSQL answers: the message says which URL it tried).
package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"
	"github.com/riverqueue/river/rivermigrate"
	"github.com/riverqueue/river/rivertype"

	"github.com/dthrottle/throttle"
	"github.com/dthrottle/throttle/riverthrottle"
)

// defaultPostgres is the database the example uses unless -postgres says
// otherwise.
const defaultPostgres = "postgres://postgres@127.0.0.1:5432/test?sslmode=disable"

func main() {
	if err := run(context.Background(), os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "river example:", err)
		os.Exit(1)
	}
}

// options are the command line flags.
type options struct {
	postgresURL string
	redisURL    string
	jobs        int
	clients     int
	interval    time.Duration
	limit       int
	wait        time.Duration
	jitter      time.Duration
	timeout     time.Duration
}

func parse(args []string) (options, error) {
	var o options
	fs := flag.NewFlagSet("river", flag.ContinueOnError)
	fs.StringVar(&o.postgresURL, "postgres", defaultPostgres, "PostgreSQL URL; the example creates and drops a schema of its own there")
	fs.StringVar(&o.redisURL, "redis", "", "Redis URL for the throttle, such as redis://127.0.0.1:6380/0 (default: an embedded miniredis)")
	fs.IntVar(&o.jobs, "jobs", 30, "number of jobs to insert")
	fs.IntVar(&o.clients, "clients", 3, "number of River clients")
	fs.DurationVar(&o.interval, "interval", time.Second, "throttle interval")
	fs.IntVar(&o.limit, "limit", 5, "jobs allowed to start per interval, across all clients")
	fs.DurationVar(&o.wait, "wait", 0, "let a throttled job wait this long in the middleware before it is snoozed")
	fs.DurationVar(&o.jitter, "jitter", 200*time.Millisecond, "bound of the random delay added to each snooze")
	fs.DurationVar(&o.timeout, "timeout", 5*time.Minute, "give up if the jobs have not all run by then")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if o.jobs < 1 || o.clients < 1 {
		return o, errors.New("-jobs and -clients must be at least 1")
	}
	return o, nil
}

// ReportArgs are the example job's arguments.
type ReportArgs struct {
	N int `json:"n"`
}

// Kind is the job kind, which is also the throttle key.
func (ReportArgs) Kind() string { return "build_report" }

// ReportWorker is the example job: it reports its start and does 10 ms of
// work.
type ReportWorker struct {
	river.WorkerDefaults[ReportArgs]
	client int
	lg     *printer
	tl     *tally
}

// Work implements river.Worker.
func (w *ReportWorker) Work(ctx context.Context, job *river.Job[ReportArgs]) error {
	now := time.Now()
	w.lg.printf("client %d: start job %02d (attempt %d)", w.client, job.Args.N, job.Attempt)
	w.tl.started(job.Args.N, w.client, now)
	time.Sleep(10 * time.Millisecond)
	return nil
}

// run runs the example with args and writes its log to w.
func run(ctx context.Context, args []string, w io.Writer) error {
	o, err := parse(args)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	pool, err := connect(ctx, o.postgresURL)
	if err != nil {
		return err
	}
	defer pool.Close()
	schema, drop, err := makeSchema(ctx, pool)
	if err != nil {
		return err
	}
	defer drop()

	ropt, stopRedis, err := redisOptions(o.redisURL)
	if err != nil {
		return err
	}
	defer stopRedis()

	lg := &printer{w: w, start: time.Now()}
	done := make(chan struct{})
	tl := &tally{runs: map[int]int{}, byClient: map[int]int{}, done: done, want: o.jobs}
	lg.printf("postgres schema %s; redis %s; %d clients; %q throttled to %d per %v; inserting %d jobs",
		schema, ropt.Addr, o.clients, ReportArgs{}.Kind(), o.limit, o.interval, o.jobs)

	for i := range o.clients {
		stop, err := startClient(ctx, pool, schema, i+1, ropt, o, lg, tl)
		if err != nil {
			return err
		}
		defer stop()
	}

	inserter, err := river.NewClient(riverpgxv5.New(pool), &river.Config{Schema: schema, Logger: warnLogger()})
	if err != nil {
		return err
	}
	params := make([]river.InsertManyParams, o.jobs)
	for i := range params {
		params[i] = river.InsertManyParams{Args: ReportArgs{N: i}, InsertOpts: &river.InsertOpts{MaxAttempts: 3}}
	}
	if _, err := inserter.InsertMany(ctx, params); err != nil {
		return fmt.Errorf("insert: %w", err)
	}

	select {
	case <-done:
	case <-time.After(o.timeout):
		return fmt.Errorf("not all jobs ran within %v", o.timeout)
	case <-ctx.Done():
		return ctx.Err()
	}
	elapsed := time.Since(lg.start)
	// River completes jobs in batches: wait until it wrote them all.
	if err := waitCompleted(ctx, pool, schema, o.jobs, 10*time.Second); err != nil {
		return err
	}
	return summary(ctx, w, o, tl, pool, schema, elapsed)
}

// connect opens a pool on url and checks that PostgreSQL answers.
func connect(ctx context.Context, url string) (*pgxpool.Pool, error) {
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	pool, err := pgxpool.New(cctx, url)
	if err == nil {
		if err = pool.Ping(cctx); err != nil {
			pool.Close()
		}
	}
	if err != nil {
		return nil, fmt.Errorf("this example needs a PostgreSQL server, and none answered at %s (start one, or pass -postgres URL): %w", redactURL(url), err)
	}
	return pool, nil
}

// redactURL hides a password in url for messages.
func redactURL(url string) string {
	if i := strings.Index(url, "://"); i >= 0 {
		if at := strings.Index(url[i+3:], "@"); at >= 0 {
			if colon := strings.Index(url[i+3:i+3+at], ":"); colon >= 0 {
				return url[:i+3+colon] + ":xxxxx" + url[i+3+at:]
			}
		}
	}
	return url
}

// makeSchema creates a schema of the example's own with River's tables in
// it; drop drops it.
func makeSchema(ctx context.Context, pool *pgxpool.Pool) (schema string, drop func(), err error) {
	var b [4]byte
	_, _ = rand.Read(b[:])
	schema = "riverthrottle_example_" + hex.EncodeToString(b[:])
	if _, err := pool.Exec(ctx, "CREATE SCHEMA "+schema); err != nil {
		return "", nil, fmt.Errorf("creating schema %s: %w", schema, err)
	}
	drop = func() {
		if _, err := pool.Exec(context.WithoutCancel(ctx), "DROP SCHEMA "+schema+" CASCADE"); err != nil {
			fmt.Fprintf(os.Stderr, "river example: dropping schema %s: %v\n", schema, err)
		}
	}
	m, err := rivermigrate.New(riverpgxv5.New(pool), &rivermigrate.Config{Schema: schema, Logger: warnLogger()})
	if err == nil {
		_, err = m.Migrate(ctx, rivermigrate.DirectionUp, nil)
	}
	if err != nil {
		drop()
		return "", nil, fmt.Errorf("migrating River's tables into %s: %w", schema, err)
	}
	return schema, drop, nil
}

// redisOptions returns the client options for url, or starts a miniredis
// when url is empty; stop stops it.
func redisOptions(url string) (opt *redis.Options, stop func(), err error) {
	if url != "" {
		if !strings.Contains(url, "://") {
			url = "redis://" + url
		}
		opt, err := redis.ParseURL(url)
		return opt, func() {}, err
	}
	mr := miniredis.NewMiniRedis()
	mr.ClockTTL(true) // expire keys on the real clock, as Redis does
	if err := mr.StartAddr("127.0.0.1:0"); err != nil {
		return nil, nil, err
	}
	return &redis.Options{Addr: mr.Addr()}, mr.Close, nil
}

// startClient starts one River client with the throttle middleware.
func startClient(ctx context.Context, pool *pgxpool.Pool, schema string, id int, ropt *redis.Options, o options, lg *printer, tl *tally) (stop func(), err error) {
	rdb := redis.NewClient(ropt)
	lim, err := throttle.NewKeyed(o.interval,
		throttle.WithStore(throttle.NewRedisStore(rdb)), throttle.WithLimit(o.limit), throttle.WithTimeout(time.Second))
	if err != nil {
		rdb.Close()
		return nil, err
	}
	workers := river.NewWorkers()
	river.AddWorker(workers, &ReportWorker{client: id, lg: lg, tl: tl})
	client, err := river.NewClient(riverpgxv5.New(pool), &river.Config{
		Schema:  schema,
		Queues:  map[string]river.QueueConfig{river.QueueDefault: {MaxWorkers: 4}},
		Workers: workers,
		Middleware: []rivertype.Middleware{
			// Reports each snooze: the throttle's answer to River.
			river.WorkerMiddlewareFunc(func(ctx context.Context, job *rivertype.JobRow, doInner func(context.Context) error) error {
				err := doInner(ctx)
				var te *riverthrottle.ThrottledError
				if errors.As(err, &te) {
					tl.snoozed()
					lg.printf("client %d: snooze job id %d (retry-after %v, back in %v)", id, job.ID,
						te.RetryAfter.Round(time.Millisecond), te.Delay.Round(time.Millisecond))
				}
				return err
			}),
			riverthrottle.New(lim, riverthrottle.WithWait(o.wait), riverthrottle.WithJitter(o.jitter)),
		},
		// Snoozed jobs come back at River's next fetch: poll often.
		FetchCooldown:     20 * time.Millisecond,
		FetchPollInterval: 50 * time.Millisecond,
		Logger:            warnLogger(),
	})
	if err == nil {
		err = client.Start(ctx)
	}
	if err != nil {
		rdb.Close()
		return nil, err
	}
	return func() {
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		_ = client.Stop(sctx)
		rdb.Close()
	}, nil
}

// warnLogger logs River's warnings and errors to stderr.
func warnLogger() *slog.Logger {
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

// printer prints the program's lines with the time since the start.
type printer struct {
	mu    sync.Mutex
	w     io.Writer
	start time.Time
}

func (l *printer) printf(format string, args ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	fmt.Fprintf(l.w, "%7.3fs  ", time.Since(l.start).Seconds())
	fmt.Fprintf(l.w, format+"\n", args...)
}

// tally counts what the clients did.
type tally struct {
	mu       sync.Mutex
	runs     map[int]int // job number -> runs
	starts   []time.Time
	byClient map[int]int
	snoozes  int
	done     chan struct{}
	want     int
}

func (t *tally) started(n, client int, at time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.runs[n]++
	t.starts = append(t.starts, at)
	t.byClient[client]++
	if len(t.runs) == t.want && t.done != nil {
		close(t.done)
		t.done = nil
	}
}

func (t *tally) snoozed() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.snoozes++
}

// waitCompleted waits until n jobs of schema are completed, or for d.
func waitCompleted(ctx context.Context, pool *pgxpool.Pool, schema string, n int, d time.Duration) error {
	deadline := time.Now().Add(d)
	for {
		var completed int
		if err := pool.QueryRow(ctx, "SELECT count(*) FROM "+schema+".river_job WHERE state = 'completed'").Scan(&completed); err != nil {
			return err
		}
		if completed >= n || time.Now().After(deadline) {
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// summary prints what happened and returns an error if a job did not run
// exactly once, or River discarded one or counted more than one attempt.
func summary(ctx context.Context, w io.Writer, o options, tl *tally, pool *pgxpool.Pool, schema string, elapsed time.Duration) error {
	tl.mu.Lock()
	defer tl.mu.Unlock()
	var problems []string
	for i := range o.jobs {
		if tl.runs[i] != 1 {
			problems = append(problems, fmt.Sprintf("job %d ran %d times", i, tl.runs[i]))
		}
	}
	var completed, other, maxAttempt, snoozes int
	err := pool.QueryRow(ctx, `SELECT count(*) FILTER (WHERE state = 'completed'), count(*) FILTER (WHERE state <> 'completed'),
		coalesce(max(attempt), 0), coalesce(sum((metadata->>'snoozes')::int), 0) FROM `+schema+`.river_job`).
		Scan(&completed, &other, &maxAttempt, &snoozes)
	if err != nil {
		return err
	}
	if completed != o.jobs || other != 0 {
		problems = append(problems, fmt.Sprintf("River completed %d jobs, %d are in another state", completed, other))
	}
	if maxAttempt > 1 {
		problems = append(problems, fmt.Sprintf("a job used %d attempts", maxAttempt))
	}

	// The most starts seen in any window of one interval (as observed by
	// this process's clock, after the decisions).
	starts := append([]time.Time(nil), tl.starts...)
	sort.Slice(starts, func(i, j int) bool { return starts[i].Before(starts[j]) })
	most := 0
	for i := range starts {
		j := i
		for j < len(starts) && starts[j].Sub(starts[i]) < o.interval {
			j++
		}
		most = max(most, j-i)
	}
	span := time.Duration(0)
	if len(starts) > 1 {
		span = starts[len(starts)-1].Sub(starts[0])
	}
	ideal := float64(o.limit) * (span + o.interval).Seconds() / o.interval.Seconds()
	fmt.Fprintf(w, "summary: %d jobs ran in %v on %d clients %v; %d snoozes (%.1f per job; River counted %d); attempts at most %d; discarded or other %d\n",
		len(tl.starts), elapsed.Round(time.Millisecond), len(tl.byClient), tl.byClient, tl.snoozes,
		float64(tl.snoozes)/float64(o.jobs), snoozes, maxAttempt, other)
	fmt.Fprintf(w, "summary: at most %d starts seen in one %v window (limit %d); %.0f%% of the limit's starts over the run\n",
		most, o.interval, o.limit, 100*float64(len(starts))/ideal)
	if len(problems) > 0 {
		return errors.New(strings.Join(problems, "; "))
	}
	return nil
}
