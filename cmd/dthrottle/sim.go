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
	"os/exec"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/alicebob/miniredis/v2"

	"github.com/dthrottle/throttle"
)

const (
	// maxWorkers bounds --workers: each worker is a process.
	maxWorkers = 256
	// readyTimeout bounds how long the workers may take to start and
	// connect to Redis.
	readyTimeout = 60 * time.Second
	// stopGrace is how long workers have to exit once asked to stop (at
	// the end of the run or on Ctrl-C) before they are killed.
	stopGrace = 5 * time.Second
)

// simConfig holds the flags of dthrottle sim.
type simConfig struct {
	workers  int
	interval time.Duration
	limit    int
	// concurrency is --concurrency: at most this many calls in flight (0:
	// no cap); leaseTTL is --lease-ttl.
	concurrency int
	leaseTTL    time.Duration
	duration    time.Duration
	wait        time.Duration
	apiTime     time.Duration
	think       time.Duration
	timeout     time.Duration
	redisURL    string
	key         string
	events      string
	svg         string
	seed        uint64
	quiet       bool
	width       int
	// limitPer holds the windows of --limit-per (throttle.WithLimitPer).
	limitPer limitPer
}

const simAbout = `Starts W worker processes (this program, re-executed) that share one throttle
in one Redis: each calls a fake API through throttle.WrapErr at random times,
for --duration. It prints every start, finish, throttled call and store error
as it happens, then a timeline and a summary that checks the guarantee: at
most --limit starts in any window of --interval, across all the workers, and
with --concurrency K at most K calls in flight at any instant (a call holds a
lease from before its start until after its finish). --interval 0 with
--concurrency is a cap without a rate.
With no --redis it starts an embedded Redis (miniredis) on a loopback port.

Exit status: 0 the guarantee held, 1 it did not, 2 bad flags or unreachable
store. Ctrl-C stops the workers and still prints the summary.`

// parseSim parses and checks the flags of dthrottle sim. A status >= 0
// means stop with it.
func parseSim(args []string, stderr io.Writer) (simConfig, int) {
	var c simConfig
	fs := newFlagSet("sim", "[flags]", simAbout, stderr)
	fs.IntVar(&c.workers, "workers", 4, "number of worker processes, each with its own Redis client")
	fs.DurationVar(&c.interval, "interval", time.Second, "the throttle's interval: at most --limit starts per interval")
	fs.IntVar(&c.limit, "limit", 1, "starts allowed in any window of the interval")
	fs.IntVar(&c.concurrency, "concurrency", 0, "at most K calls in flight across the workers (throttle.WithConcurrency); 0: no cap")
	fs.DurationVar(&c.leaseTTL, "lease-ttl", throttle.DefaultLeaseTTL, "how long a lease outlives a worker that died (throttle.WithLeaseTTL)")
	fs.DurationVar(&c.duration, "duration", 10*time.Second, "how long the workers keep calling")
	fs.DurationVar(&c.wait, "wait", 0, "wait up to this long for a turn (throttle.WithWait); 0 drops throttled calls")
	fs.DurationVar(&c.apiTime, "api-time", 1500*time.Millisecond, "mean duration of the fake API call (random, 0.5x to 1.5x); may exceed the interval")
	fs.DurationVar(&c.think, "think", 0, "mean pause of a worker between its calls (random, exponential); 0 means half the interval")
	fs.DurationVar(&c.timeout, "timeout", throttle.DefaultTimeout, "bound on each store decision (throttle.WithTimeout)")
	fs.StringVar(&c.redisURL, "redis", "", "Redis `URL`, such as redis://127.0.0.1:6379/0 (default: an embedded miniredis)")
	fs.StringVar(&c.key, "key", "sim", "the throttle's key (Redis keys \""+throttle.DefaultKeyPrefix+"{KEY}\" and more: see dthrottle inspect -h)")
	fs.StringVar(&c.events, "events", "", "write every event as a JSON line to `FILE`")
	fs.StringVar(&c.svg, "svg", "", "write the timeline as an SVG picture to `FILE`")
	fs.Uint64Var(&c.seed, "seed", 0, "seed of the workers' random pauses and API times (0: a random seed, printed)")
	fs.BoolVar(&c.quiet, "quiet", false, "do not print one line per event")
	fs.IntVar(&c.width, "width", 0, "columns of the ASCII timeline (0: $COLUMNS or 80)")
	fs.Var(&c.limitPer, "limit-per", "one more window, `N/DURATION` such as 20/1s: at most N starts in any window of DURATION too (throttle.WithLimitPer; repeatable)")
	pos, err := parseArgs(fs, args)
	if err != nil {
		return c, flagError(err)
	}
	switch {
	case len(pos) > 0:
		return c, badUsage(fs, "unexpected argument %q", pos[0])
	case c.workers < 1 || c.workers > maxWorkers:
		return c, badUsage(fs, "--workers %d: must be between 1 and %d", c.workers, maxWorkers)
	case c.concurrency < 0 || c.concurrency > throttle.MaxLimit:
		return c, badUsage(fs, "--concurrency %d: must be between 0 (no cap) and %d", c.concurrency, throttle.MaxLimit)
	case c.concurrency > 0 && (c.leaseTTL < throttle.MinLeaseTTL || c.leaseTTL > throttle.MaxInterval):
		return c, badUsage(fs, "--lease-ttl %v: must be between %v and %v", c.leaseTTL, throttle.MinLeaseTTL, throttle.MaxInterval)
	case c.concurrency > 0 && c.interval > 0 && c.limit > 64 && len(c.limitPer) == 0:
		return c, badUsage(fs, "--limit %d: --concurrency needs a limit of at most 64", c.limit)
	case c.interval == 0 && c.concurrency > 0:
		// A cap without a rate.
	case c.interval < time.Millisecond || c.interval > throttle.MaxInterval:
		return c, badUsage(fs, "--interval %v: must be between 1ms and %v", c.interval, throttle.MaxInterval)
	case c.limit < 1 || c.limit > throttle.MaxLimit:
		return c, badUsage(fs, "--limit %d: must be between 1 and %d", c.limit, throttle.MaxLimit)
	case c.duration <= 0 || c.duration > throttle.MaxInterval:
		return c, badUsage(fs, "--duration %v: must be above 0 and at most %v", c.duration, throttle.MaxInterval)
	case c.wait < 0 || c.wait > throttle.MaxInterval:
		return c, badUsage(fs, "--wait %v: must be between 0 (drop) and %v", c.wait, throttle.MaxInterval)
	case c.apiTime < 0:
		return c, badUsage(fs, "--api-time %v: must not be negative", c.apiTime)
	case c.think < 0:
		return c, badUsage(fs, "--think %v: must not be negative", c.think)
	case c.timeout < 0:
		return c, badUsage(fs, "--timeout %v: must not be negative", c.timeout)
	case c.key == "":
		return c, badUsage(fs, "--key: must not be empty")
	case c.width < 0:
		return c, badUsage(fs, "--width %d: must not be negative", c.width)
	}
	if len(c.limitPer) > 0 {
		opts := append(c.limitPer.options(), throttle.WithLimit(c.limit), throttle.WithStore(throttle.NewMemoryStore()))
		if c.concurrency > 0 {
			opts = append(opts, throttle.WithConcurrency(c.concurrency))
		}
		if _, err := throttle.New(c.key, c.interval, opts...); err != nil {
			return c, badUsage(fs, "--limit-per %v: %v", c.limitPer.String(), strings.TrimPrefix(err.Error(), "throttle: "))
		}
	}
	if c.think == 0 {
		c.think = max(c.interval/2, time.Millisecond)
		if c.interval == 0 {
			c.think = max(c.apiTime/2, time.Millisecond)
		}
	}
	if c.timeout == 0 {
		c.timeout = throttle.DefaultTimeout
	}
	if c.seed == 0 {
		c.seed = rand.Uint64()%1_000_000 + 1
	}
	if c.width == 0 {
		c.width = 80
		if n, err := strconv.Atoi(os.Getenv("COLUMNS")); err == nil && n >= 40 {
			c.width = n
		}
	}
	c.width = max(c.width, 40)
	return c, -1
}

// worker is one worker process, seen from the parent.
type worker struct {
	id    int
	cmd   *exec.Cmd
	stdin io.WriteCloser
	pid   int
}

// message is what a worker's reader goroutine reports to the parent.
type message struct {
	id    int
	ready bool    // the worker is ready
	rec   *record // an event
	bad   string  // a line that is not a record
	exit  bool    // the worker exited, with err
	err   error
}

// runSim is dthrottle sim.
func runSim(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	c, status := parseSim(args, stderr)
	if status >= 0 {
		return status
	}
	// The workers' stderr goes to stderr too, copied by one goroutine per
	// worker unless stderr is a file.
	if _, ok := stderr.(*os.File); !ok {
		stderr = &lockedWriter{w: stderr}
	}
	storeDesc := "Redis at " + c.redisURL
	if c.redisURL == "" {
		mr := miniredis.NewMiniRedis()
		if err := mr.StartAddr("127.0.0.1:0"); err != nil {
			fmt.Fprintf(stderr, "dthrottle sim: cannot start the embedded Redis: %v\n", err)
			return exitUsage
		}
		defer mr.Close()
		mr.ClockTTL(true) // keys expire as real time passes, as in Redis
		c.redisURL = "redis://" + mr.Addr()
		storeDesc = "embedded miniredis at " + mr.Addr() + " (--redis URL for a real server)"
	} else {
		client, err := connect(ctx, c.redisURL)
		if err != nil {
			fmt.Fprintf(stderr, "dthrottle sim: %v\n", err)
			return exitUsage
		}
		client.Close()
	}
	exe, err := os.Executable()
	if err != nil {
		fmt.Fprintf(stderr, "dthrottle sim: cannot find this program to start the workers: %v\n", err)
		return exitUsage
	}

	mode := "throttled calls are dropped (--wait D to wait for a turn)"
	if c.wait > 0 {
		mode = fmt.Sprintf("throttled calls wait up to %v for a turn", c.wait)
	}
	limits := fmt.Sprintf("at most %d start(s) per %v", c.limit, c.interval)
	switch {
	case c.concurrency > 0 && c.interval == 0:
		limits = fmt.Sprintf("at most %d call(s) in flight", c.concurrency)
	case c.concurrency > 0:
		limits += fmt.Sprintf(" and %d call(s) in flight", c.concurrency)
	}
	for _, w := range c.limitPer {
		limits += fmt.Sprintf(" and %d per %v", w.Limit, w.Interval)
	}
	fmt.Fprintf(stdout, "dthrottle sim: %d worker processes share one throttle: key %q, %s\n", c.workers, c.key, limits)
	fmt.Fprintf(stdout, "  store: %s\n", storeDesc)
	fmt.Fprintf(stdout, "  each worker pauses ~%v (random) between calls; the fake API takes ~%v (random)\n", c.think, c.apiTime)
	fmt.Fprintf(stdout, "  %s; running for %v; seed %d\n", mode, c.duration, c.seed)

	// Start the workers.
	msgs := make(chan message, 64)
	workers := make([]*worker, 0, c.workers)
	stopAll := func(sig syscall.Signal) {
		for _, w := range workers {
			_ = w.stdin.Close()
			if sig != 0 {
				_ = w.cmd.Process.Signal(sig)
			}
		}
	}
	killAll := func() {
		for _, w := range workers {
			_ = w.cmd.Process.Kill()
		}
	}
	running := 0
	drain := func() { // wait for every started worker's reader to finish
		for running > 0 {
			if m := <-msgs; m.exit {
				running--
			}
		}
	}
	for id := 1; id <= c.workers; id++ {
		w, err := startWorker(exe, workerConfig{
			id: id, redisURL: c.redisURL, key: c.key, interval: c.interval, limit: c.limit,
			concurrency: c.concurrency, leaseTTL: c.leaseTTL, limitPer: c.limitPer,
			wait: c.wait, apiTime: c.apiTime, think: c.think, timeout: c.timeout, seed: c.seed,
		}, stderr, msgs)
		if err != nil {
			fmt.Fprintf(stderr, "dthrottle sim: cannot start worker %d: %v\n", id, err)
			killAll()
			drain()
			return exitUsage
		}
		workers = append(workers, w)
		running++
	}
	pids := make(map[int]int, len(workers))
	for _, w := range workers {
		pids[w.id] = w.pid
	}

	// Wait until every worker is connected and ready.
	readyTimer := time.NewTimer(readyTimeout)
	defer readyTimer.Stop()
	for ready := 0; ready < len(workers); {
		select {
		case m := <-msgs:
			switch {
			case m.ready:
				ready++
			case m.exit:
				running--
				fmt.Fprintf(stderr, "dthrottle sim: worker %d exited before it was ready: %v\n", m.id, exitText(m.err))
				killAll()
				drain()
				return exitUsage
			}
		case <-readyTimer.C:
			fmt.Fprintf(stderr, "dthrottle sim: the workers were not ready after %v\n", readyTimeout)
			killAll()
			drain()
			return exitUsage
		case <-ctx.Done():
			fmt.Fprintln(stderr, "dthrottle sim: interrupted before the workers were ready")
			killAll()
			drain()
			return exitFail
		}
	}

	// Go.
	begin := time.Now()
	end := begin.Add(c.duration)
	line := fmt.Sprintf("%s%d\n", goPrefix, end.UnixNano())
	for _, w := range workers {
		_, _ = io.WriteString(w.stdin, line)
	}
	var b strings.Builder
	for i, w := range workers {
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "w%d pid %d", w.id, w.pid)
	}
	fmt.Fprintf(stdout, "  workers: %s\n\n", b.String())

	// Collect events until every worker has exited.
	p := newPrinter(stdout, begin.UnixNano(), c.workers)
	var recs []record
	var failures []string
	interrupted := false
	var stoppedAt time.Time
	endTimer := time.NewTimer(c.duration + stopGrace)
	defer endTimer.Stop()
	var killTimer <-chan time.Time
	done := ctx.Done()
	for running > 0 {
		select {
		case m := <-msgs:
			switch {
			case m.rec != nil:
				recs = append(recs, *m.rec)
				if !c.quiet {
					p.event(*m.rec)
				}
			case m.bad != "":
				fmt.Fprintf(stderr, "dthrottle sim: worker %d wrote %q\n", m.id, m.bad)
			case m.exit:
				running--
				if m.err != nil && !interrupted {
					failures = append(failures, fmt.Sprintf("worker %d (pid %d) %s", m.id, pids[m.id], exitText(m.err)))
				}
			}
		case <-done:
			done = nil
			interrupted = true
			stoppedAt = time.Now()
			fmt.Fprintf(stdout, "%s  interrupted: stopping the workers\n", p.stamp(stoppedAt.UnixNano()))
			stopAll(syscall.SIGTERM)
			killTimer = time.After(stopGrace)
		case <-endTimer.C:
			fmt.Fprintf(stderr, "dthrottle sim: workers still running %v after the end; killing them\n", stopGrace)
			killAll()
		case <-killTimer:
			fmt.Fprintln(stderr, "dthrottle sim: workers did not stop; killing them")
			killAll()
		}
	}
	stopAll(0)

	span := c.duration
	if interrupted && stoppedAt.Before(end) {
		span = stoppedAt.Sub(begin)
	}
	sort.SliceStable(recs, func(i, j int) bool { return recs[i].TUnixNs < recs[j].TUnixNs })
	res := simResult{
		cfg: c, begin: begin.UnixNano(), span: span, pids: pids, recs: recs,
		interrupted: interrupted, failures: failures,
	}
	status = res.report(stdout)

	if c.events != "" {
		if err := writeEvents(c.events, recs); err != nil {
			fmt.Fprintf(stderr, "dthrottle sim: %v\n", err)
			status = max(status, exitFail)
		} else {
			fmt.Fprintf(stdout, "events: %d lines written to %s\n", len(recs), c.events)
		}
	}
	if c.svg != "" {
		if err := os.WriteFile(c.svg, []byte(res.svg()), 0o644); err != nil {
			fmt.Fprintf(stderr, "dthrottle sim: writing the SVG: %v\n", err)
			status = max(status, exitFail)
		} else {
			fmt.Fprintf(stdout, "timeline: written to %s\n", c.svg)
		}
	}
	return status
}

// startWorker starts one worker process. Its reader goroutine sends its
// ready line, its records and finally its exit to msgs.
func startWorker(exe string, wc workerConfig, stderr io.Writer, msgs chan<- message) (*worker, error) {
	cmd := exec.Command(exe, wc.args()...)
	// A race-enabled build (the tests') otherwise sleeps 1 s at exit;
	// GORACE options already set come after, and win.
	cmd.Env = append(os.Environ(), execEnv+"=1", "GORACE=atexit_sleep_ms=0 "+os.Getenv("GORACE"))
	cmd.Stderr = stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	w := &worker{id: wc.id, cmd: cmd, stdin: stdin, pid: cmd.Process.Pid}
	go func() {
		sc := bufio.NewScanner(stdout)
		sc.Buffer(make([]byte, 0, 4096), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			if line == readyLine {
				msgs <- message{id: wc.id, ready: true}
				continue
			}
			var r record
			if err := json.Unmarshal([]byte(line), &r); err != nil || r.Event.Event == "" {
				msgs <- message{id: wc.id, bad: line}
				continue
			}
			msgs <- message{id: wc.id, rec: &r}
		}
		_, _ = io.Copy(io.Discard, stdout) // after a too long line
		err := cmd.Wait()
		msgs <- message{id: wc.id, exit: true, err: err}
	}()
	return w, nil
}

// lockedWriter serializes writes to w.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// exitText describes a worker's exit error.
func exitText(err error) string {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ProcessState.String()
	}
	if err == nil {
		return "exited"
	}
	return err.Error()
}

// writeEvents writes recs as JSON lines to path.
func writeEvents(path string, recs []record) error {
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("writing the events: %v", err)
	}
	w := bufio.NewWriter(f)
	enc := json.NewEncoder(w)
	for _, r := range recs {
		if err := enc.Encode(r); err != nil {
			f.Close()
			return fmt.Errorf("writing the events: %v", err)
		}
	}
	if err := w.Flush(); err != nil {
		f.Close()
		return fmt.Errorf("writing the events: %v", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("writing the events: %v", err)
	}
	return nil
}

// printer prints one line per event, as they arrive.
type printer struct {
	w       io.Writer
	begin   int64
	idWidth int
	started map[int]int64 // worker → its running call's start
}

func newPrinter(w io.Writer, begin int64, workers int) *printer {
	return &printer{w: w, begin: begin, idWidth: len(strconv.Itoa(workers)), started: make(map[int]int64)}
}

// stamp formats t as seconds since the beginning of the run.
func (p *printer) stamp(t int64) string {
	return fmt.Sprintf("%+8.3fs", time.Duration(t-p.begin).Seconds())
}

func (p *printer) event(r record) {
	var detail string
	switch r.Event.Event {
	case "start":
		p.started[r.Worker] = r.TUnixNs
		if r.WaitedNs > 0 {
			detail = fmt.Sprintf("  waited %v", fmtDur(time.Duration(r.WaitedNs)))
		}
	case "finish":
		if s, ok := p.started[r.Worker]; ok {
			detail = fmt.Sprintf("  api %v", fmtDur(time.Duration(r.TUnixNs-s)))
			delete(p.started, r.Worker)
		}
	case "throttled":
		detail = fmt.Sprintf("  retry in %v", fmtDur(time.Duration(r.RetryAfterNs)))
	case "error":
		detail = "  " + r.Err
	}
	line := fmt.Sprintf("%s  w%-*d pid %-7d %-9s%s", p.stamp(r.TUnixNs), p.idWidth, r.Worker, r.PID, r.Event.Event, detail)
	fmt.Fprintln(p.w, strings.TrimRight(line, " "))
}

// fmtDur rounds d for people: to 0.1 ms below 10 ms, to 1 ms above.
func fmtDur(d time.Duration) string {
	if d < 10*time.Millisecond && d > -10*time.Millisecond {
		return d.Round(100 * time.Microsecond).String()
	}
	return d.Round(time.Millisecond).String()
}
