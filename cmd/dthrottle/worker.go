package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/dthrottle/throttle"
	"github.com/dthrottle/throttle/internal/simevent"
)

// record is one event line of a worker: the simevent.Event schema, plus what
// the simulator adds for people (simevent.Read ignores it).
type record struct {
	simevent.Event
	// RetryAfterNs is, for a throttled call, the store's retry-after.
	RetryAfterNs int64 `json:"retry_after_ns,omitempty"`
}

// The worker protocol, over the worker's standard streams:
//   - the worker connects to Redis, then writes readyLine to stdout;
//   - the parent writes "go END_UNIX_NS\n" to its stdin when every worker
//     is ready; the worker calls the API until that time;
//   - the worker writes one JSON record per event to stdout, and exits at
//     END, when its stdin closes, or on SIGINT/SIGTERM.
const (
	readyLine = "ready"
	goPrefix  = "go "
)

// workerConfig is what the parent passes to each worker.
type workerConfig struct {
	id       int
	redisURL string
	key      string
	interval time.Duration
	limit    int
	// concurrency and leaseTTL are throttle.WithConcurrency's and
	// WithLeaseTTL's (concurrency 0: no cap).
	concurrency int
	leaseTTL    time.Duration
	wait        time.Duration
	apiTime     time.Duration
	think       time.Duration
	timeout     time.Duration
	seed        uint64
	limitPer    limitPer
}

// args returns the command line of the hidden worker subcommand.
func (c workerConfig) args() []string {
	return append([]string{"worker",
		"--id", strconv.Itoa(c.id),
		"--redis", c.redisURL,
		"--key", c.key,
		"--interval", c.interval.String(),
		"--limit", strconv.Itoa(c.limit),
		"--concurrency", strconv.Itoa(c.concurrency),
		"--lease-ttl", c.leaseTTL.String(),
		"--wait", c.wait.String(),
		"--api-time", c.apiTime.String(),
		"--think", c.think.String(),
		"--timeout", c.timeout.String(),
		"--seed", strconv.FormatUint(c.seed, 10),
	}, c.limitPer.args()...)
}

// runWorker is one worker process of a simulation (see the protocol above).
func runWorker(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	var c workerConfig
	fs := newFlagSet("worker", "[flags]", "One worker process of dthrottle sim (internal).", stderr)
	fs.IntVar(&c.id, "id", 1, "worker id")
	fs.StringVar(&c.redisURL, "redis", "", "Redis URL")
	fs.StringVar(&c.key, "key", "sim", "throttle key")
	fs.DurationVar(&c.interval, "interval", time.Second, "interval")
	fs.IntVar(&c.limit, "limit", 1, "limit")
	fs.IntVar(&c.concurrency, "concurrency", 0, "concurrency cap (0: none)")
	fs.DurationVar(&c.leaseTTL, "lease-ttl", throttle.DefaultLeaseTTL, "lease TTL")
	fs.DurationVar(&c.wait, "wait", 0, "max wait")
	fs.DurationVar(&c.apiTime, "api-time", 1500*time.Millisecond, "mean API duration")
	fs.DurationVar(&c.think, "think", time.Second, "mean pause between calls")
	fs.DurationVar(&c.timeout, "timeout", throttle.DefaultTimeout, "store timeout")
	fs.Uint64Var(&c.seed, "seed", 1, "seed")
	fs.Var(&c.limitPer, "limit-per", "more windows")
	if _, err := parseArgs(fs, args); err != nil {
		return flagError(err)
	}
	if err := work(ctx, c, stdin, stdout); err != nil {
		fmt.Fprintf(stderr, "dthrottle worker %d: %v\n", c.id, err)
		return exitUsage
	}
	return exitOK
}

func work(ctx context.Context, c workerConfig, stdin io.Reader, stdout io.Writer) error {
	client, err := connect(ctx, c.redisURL)
	if err != nil {
		return err
	}
	defer client.Close()

	pid := os.Getpid()
	rng := rand.New(rand.NewPCG(c.seed, uint64(c.id)))
	emit := func(r record) error {
		r.Worker, r.PID = c.id, pid
		b, err := json.Marshal(r)
		if err != nil {
			return err
		}
		_, err = stdout.Write(append(b, '\n'))
		return err
	}

	// asked is when the current call began asking the store; delay is the
	// booked delay the store gave it (WithWait). The worker makes one call
	// at a time, in this goroutine, so they need no lock.
	var asked int64
	var delay time.Duration
	var emitErr error
	opts := []throttle.Option{
		throttle.WithStore(throttle.NewRedisStore(client)),
		throttle.WithLimit(c.limit),
		throttle.WithTimeout(c.timeout),
		throttle.WithObserver(func(e throttle.Event) {
			if e.Kind == throttle.EventDecision {
				delay = e.Delay
			}
		}),
	}
	if c.wait > 0 {
		opts = append(opts, throttle.WithWait(c.wait))
	}
	opts = append(opts, c.limitPer.options()...)
	if c.concurrency > 0 {
		// fn holds a lease from its start event to its finish event.
		opts = append(opts, throttle.WithConcurrency(c.concurrency), throttle.WithLeaseTTL(c.leaseTTL))
	}
	callAPI := throttle.WrapErr(c.key, c.interval, func(ctx context.Context) (struct{}, error) {
		started := time.Now().UnixNano() // first thing once admitted
		ev := record{Event: simevent.Event{TUnixNs: started, Event: simevent.Start, AskedUnixNs: asked}}
		if delay > 0 {
			ev.WaitedNs = started - asked
		}
		if err := emit(ev); err != nil {
			emitErr = err
			return struct{}{}, err
		}
		// The fake API: mean apiTime, uniform in [0.5, 1.5) times it. A
		// call still running when the run ends is cut short.
		d := time.Duration(float64(c.apiTime) * (0.5 + rng.Float64()))
		t := time.NewTimer(d)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
		}
		emitErr = emit(record{Event: simevent.Event{TUnixNs: time.Now().UnixNano(), Event: simevent.Finish}})
		return struct{}{}, emitErr
	}, opts...)

	// Ready; wait for the parent's go.
	if _, err := fmt.Fprintln(stdout, readyLine); err != nil {
		return err
	}
	in := bufio.NewReader(stdin)
	line, err := in.ReadString('\n')
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("waiting for go: %v", err)
	}
	end, err := strconv.ParseInt(strings.TrimSpace(strings.TrimPrefix(line, goPrefix)), 10, 64)
	if err != nil || !strings.HasPrefix(line, goPrefix) {
		return fmt.Errorf("bad go line %q", line)
	}
	ctx, cancel := context.WithDeadline(ctx, time.Unix(0, end))
	defer cancel()
	go func() {
		// The parent closes stdin to stop the workers (and when it dies).
		_, _ = io.Copy(io.Discard, in)
		cancel()
	}()

	for {
		// Pause a random time (exponential, mean think, at least 1 ms and
		// at most four times the mean), then call.
		pause := max(time.Duration(rng.ExpFloat64()*float64(c.think)), time.Millisecond)
		pause = min(pause, max(4*c.think, time.Millisecond))
		t := time.NewTimer(pause)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
		asked, delay = time.Now().UnixNano(), 0
		_, err := callAPI(ctx)
		if emitErr != nil {
			return emitErr // the parent is gone
		}
		var te *throttle.ThrottledError
		switch {
		case err == nil:
		case errors.As(err, &te):
			ev := record{Event: simevent.Event{TUnixNs: time.Now().UnixNano(), Event: simevent.Throttled, AskedUnixNs: asked},
				RetryAfterNs: int64(te.RetryAfter)}
			if err := emit(ev); err != nil {
				return err
			}
		case errors.Is(err, throttle.ErrStoreUnavailable):
			ev := record{Event: simevent.Event{TUnixNs: time.Now().UnixNano(), Event: simevent.Error, AskedUnixNs: asked,
				Err: err.Error()}}
			if err := emit(ev); err != nil {
				return err
			}
		case ctx.Err() != nil:
			return nil // the run ended while the call waited for its turn
		default:
			return err
		}
	}
}
