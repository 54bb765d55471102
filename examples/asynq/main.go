// Command asynq shows package asynqthrottle: it enqueues tasks of one type,
// runs three asynq worker servers that throttle that type together, and
// prints every start and every re-queue, then a summary. It exits when
// every task has run.
//
// Each server has its own Redis client and its own limiter, as separate
// processes would; only the Redis server is shared. A task that the
// limit does not admit is not run: it goes back to the queue and runs
// later, without counting as a failure or using up a retry.
//
// By default the program starts an embedded Redis (miniredis), so it needs
// nothing else:
//
//	go run .
//	go run . -tasks 20 -interval 500ms -limit 2
//
// To use a real Redis server instead (it must not hold other asynq queues
// named "default" that matter: the program enqueues into it):
//
//	go run . -redis redis://127.0.0.1:6380/0
//
// It exits with status 0 when every task ran exactly once and none was
// archived or counted as failed, 1 otherwise.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/dthrottle/throttle"
	"github.com/dthrottle/throttle/asynqthrottle"
)

const (
	taskType = "report:build"
	queue    = "default"
)

func main() {
	if err := run(context.Background(), os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "asynq example:", err)
		os.Exit(1)
	}
}

// options are the command line flags.
type options struct {
	redisURL string
	tasks    int
	servers  int
	interval time.Duration
	limit    int
	wait     time.Duration
	timeout  time.Duration
}

func parse(args []string) (options, error) {
	var o options
	fs := flag.NewFlagSet("asynq", flag.ContinueOnError)
	fs.StringVar(&o.redisURL, "redis", "", "Redis URL, such as redis://127.0.0.1:6380/0 (default: an embedded miniredis)")
	fs.IntVar(&o.tasks, "tasks", 50, "number of tasks to enqueue")
	fs.IntVar(&o.servers, "servers", 3, "number of asynq worker servers")
	fs.DurationVar(&o.interval, "interval", time.Second, "throttle interval")
	fs.IntVar(&o.limit, "limit", 5, "tasks allowed to start per interval, across all servers")
	fs.DurationVar(&o.wait, "wait", 0, "let a throttled task wait this long in its handler before it is re-queued")
	fs.DurationVar(&o.timeout, "timeout", 5*time.Minute, "give up if the tasks have not all run by then")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if o.tasks < 1 || o.servers < 1 {
		return o, errors.New("-tasks and -servers must be at least 1")
	}
	return o, nil
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

// tally counts what the servers did.
type tally struct {
	mu       sync.Mutex
	runs     map[int]int // task number -> runs
	starts   []time.Time
	byServer map[int]int
	requeues int
	held     map[int]bool
	done     chan struct{}
	want     int
}

func (t *tally) started(n, server int, at time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.runs[n]++
	t.starts = append(t.starts, at)
	t.byServer[server]++
	if len(t.runs) == t.want && t.done != nil {
		close(t.done)
		t.done = nil
	}
}

func (t *tally) requeued() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.requeues++
}

type payload struct {
	N int `json:"n"`
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
	ropt, stopRedis, err := redisOptions(o.redisURL)
	if err != nil {
		return err
	}
	defer stopRedis()

	lg := &printer{w: w, start: time.Now()}
	done := make(chan struct{})
	tl := &tally{runs: map[int]int{}, byServer: map[int]int{}, done: done, want: o.tasks}
	lg.printf("redis %s; %d servers; %q throttled to %d per %v; enqueuing %d tasks", ropt.Addr, o.servers, taskType, o.limit, o.interval, o.tasks)

	// Start the servers first, each with its own client and limiter.
	for i := range o.servers {
		stop, err := startServer(i+1, ropt, o, lg, tl)
		if err != nil {
			return err
		}
		defer stop()
	}

	client := asynq.NewClient(asynq.RedisClientOpt{Addr: ropt.Addr, Username: ropt.Username, Password: ropt.Password, DB: ropt.DB})
	defer client.Close()
	for i := range o.tasks {
		b, _ := json.Marshal(payload{N: i})
		// Every fifth task may not be retried at all: a throttle must not
		// archive it.
		opts := []asynq.Option{asynq.Queue(queue)}
		if i%5 == 0 {
			opts = append(opts, asynq.MaxRetry(0))
		}
		if _, err := client.EnqueueContext(ctx, asynq.NewTask(taskType, b), opts...); err != nil {
			return fmt.Errorf("enqueue: %w", err)
		}
	}

	select {
	case <-done:
	case <-time.After(o.timeout):
		return fmt.Errorf("not all tasks ran within %v", o.timeout)
	case <-ctx.Done():
		return ctx.Err()
	}
	elapsed := time.Since(lg.start)
	return summary(w, o, tl, ropt, elapsed)
}

// startServer starts one asynq worker server with the throttle middleware.
func startServer(id int, ropt *redis.Options, o options, lg *printer, tl *tally) (stop func(), err error) {
	rdb := redis.NewClient(ropt)
	lim, err := throttle.NewKeyed(o.interval,
		throttle.WithStore(throttle.NewRedisStore(rdb)), throttle.WithLimit(o.limit), throttle.WithTimeout(time.Second))
	if err != nil {
		rdb.Close()
		return nil, err
	}
	mux := asynq.NewServeMux()
	mux.Use(
		// Reports each re-queue: the throttle's answer to asynq.
		func(next asynq.Handler) asynq.Handler {
			return asynq.HandlerFunc(func(ctx context.Context, t *asynq.Task) error {
				err := next.ProcessTask(ctx, t)
				var te *asynqthrottle.ThrottledError
				if errors.As(err, &te) {
					tl.requeued()
					lg.printf("server %d: re-queue task %s (retry-after %v, back in %v)", id, number(t), te.RetryAfter.Round(time.Millisecond), te.Delay.Round(time.Millisecond))
				}
				return err
			})
		},
		asynqthrottle.Middleware(lim, asynqthrottle.WithWait(o.wait)),
	)
	mux.HandleFunc(taskType, func(ctx context.Context, t *asynq.Task) error {
		var p payload
		if err := json.Unmarshal(t.Payload(), &p); err != nil {
			return err
		}
		now := time.Now()
		lg.printf("server %d: start task %02d", id, p.N)
		tl.started(p.N, id, now)
		time.Sleep(10 * time.Millisecond) // the work
		return nil
	})
	srv := asynq.NewServerFromRedisClient(rdb, asynqthrottle.Configure(asynq.Config{
		Concurrency:              4,
		Queues:                   map[string]int{queue: 1},
		TaskCheckInterval:        100 * time.Millisecond,
		DelayedTaskCheckInterval: 200 * time.Millisecond,
		ShutdownTimeout:          2 * time.Second,
		LogLevel:                 asynq.WarnLevel,
	}))
	if err := srv.Start(mux); err != nil {
		rdb.Close()
		return nil, err
	}
	return func() {
		srv.Shutdown()
		rdb.Close()
	}, nil
}

// number returns the task's number for the log.
func number(t *asynq.Task) string {
	var p payload
	if json.Unmarshal(t.Payload(), &p) != nil {
		return "?"
	}
	return fmt.Sprintf("%02d", p.N)
}

// summary prints what happened and returns an error if a task did not run
// exactly once, or asynq archived or counted a failure.
func summary(w io.Writer, o options, tl *tally, ropt *redis.Options, elapsed time.Duration) error {
	tl.mu.Lock()
	defer tl.mu.Unlock()
	var problems []string
	for i := range o.tasks {
		if tl.runs[i] != 1 {
			problems = append(problems, fmt.Sprintf("task %d ran %d times", i, tl.runs[i]))
		}
	}
	insp := asynq.NewInspector(asynq.RedisClientOpt{Addr: ropt.Addr, Username: ropt.Username, Password: ropt.Password, DB: ropt.DB})
	defer insp.Close()
	qi, err := insp.GetQueueInfo(queue)
	if err != nil {
		return err
	}
	if qi.Archived > 0 || qi.FailedTotal > 0 {
		problems = append(problems, fmt.Sprintf("asynq archived %d and counted %d failed", qi.Archived, qi.FailedTotal))
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
	servers := make([]string, 0, len(tl.byServer))
	for id := 1; id <= o.servers; id++ {
		servers = append(servers, fmt.Sprintf("server %d: %d", id, tl.byServer[id]))
	}
	fmt.Fprintf(w, "\nsummary: %d tasks ran in %v (%s); %d re-queues; most starts in one %v window: %d (limit %d); asynq: archived %d, failed %d\n",
		len(tl.runs), elapsed.Round(time.Millisecond), strings.Join(servers, ", "), tl.requeues, o.interval, most, o.limit, qi.Archived, qi.FailedTotal)
	if len(problems) > 0 {
		return errors.New(strings.Join(problems, "; "))
	}
	return nil
}
