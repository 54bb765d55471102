package benchmarks

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"testing"
	"text/tabwriter"
	"time"

	"github.com/dthrottle/throttle"
	"github.com/dthrottle/throttle/rueidisthrottle"
	"github.com/redis/go-redis/v9"
	"github.com/redis/rueidis"

	"github.com/dthrottle/throttle/benchmarks/internal/server"
)

// The accuracy comparison re-executes the test binary as worker processes,
// each with its own go-redis client, all hammering one key of one library:
// TestMain runs runWorker instead of the tests when workerEnv is set.
const workerEnv = "DTHROTTLE_BENCH_WORKER"

var (
	accDuration = flag.Duration("accuracy.duration", defaultAccDuration(), "how long the workers of TestAccuracy hammer each key (default 2s, 1s under -race)")
	accWorkers  = flag.Int("accuracy.workers", 4, "worker processes per library in TestAccuracy")
)

// defaultAccDuration is 2 s, or 1 s in a race-enabled binary (CI's), whose
// workers run several times slower.
func defaultAccDuration() time.Duration {
	if raceEnabled {
		return time.Second
	}
	return 2 * time.Second
}

func TestMain(m *testing.M) {
	if spec := os.Getenv(workerEnv); spec != "" {
		if err := runWorker(spec); err != nil {
			fmt.Fprintln(os.Stderr, "worker:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// libraries are the ones TestAccuracy compares, ours first.
var libraries = []string{"dthrottle", "dthrottle-rueidis", "redis_rate", "throttled", "ulule"}

// allowerFor returns how a worker process of lib decides on key: ours is a
// Throttle with default options (deny cache on), the peers as in the
// benchmarks.
func allowerFor(lib string, c redis.UniversalClient, key string, l Limit) (Allower, error) {
	switch lib {
	case "dthrottle":
		th, err := NewDthrottle(c, key, l, throttle.WithTimeout(time.Second))
		if err != nil {
			return nil, err
		}
		return DthrottleAllower(th), nil
	case "dthrottle-rueidis":
		// The same throttle on a rueidis client of the same server
		// (rueidisthrottle), which pipelines the goroutines' commands.
		rc, err := rueidis.NewClient(rueidis.ClientOption{InitAddress: []string{c.(*redis.Client).Options().Addr}})
		if err != nil {
			return nil, err
		}
		th, err := throttle.New(key, l.Interval, throttle.WithStore(rueidisthrottle.NewStore(rc)),
			throttle.WithLimit(l.N), throttle.WithTimeout(time.Second))
		if err != nil {
			rc.Close()
			return nil, err
		}
		return DthrottleAllower(th), nil
	case "redis_rate":
		return Bind(NewRedisRate(c, l), key), nil
	case "throttled":
		rl, err := NewThrottled(c, l)
		if err != nil {
			return nil, err
		}
		return Bind(rl, key), nil
	case "ulule":
		rl, err := NewUlule(c, l)
		if err != nil {
			return nil, err
		}
		return Bind(rl, key), nil
	}
	return nil, fmt.Errorf("unknown library %q", lib)
}

// workerSpec is what one worker process is told through its environment.
type workerSpec struct {
	Addr     string        `json:"addr"`
	Lib      string        `json:"lib"`
	Key      string        `json:"key"`
	Limit    Limit         `json:"limit"`
	StartNs  int64         `json:"start_ns"` // Unix ns at which all workers begin
	Duration time.Duration `json:"duration"`
	// Goroutines is the number of goroutines that call the key in each
	// worker, sharing its Throttle (default 1).
	Goroutines int `json:"goroutines,omitempty"`
}

// workerLine is one line of a worker's output: an admission (Asked and
// Started, Unix ns on the shared machine clock), or, last, the totals.
type workerLine struct {
	Asked    int64  `json:"asked,omitempty"`
	Started  int64  `json:"started,omitempty"`
	Calls    int    `json:"calls,omitempty"`
	Errors   int    `json:"errors,omitempty"`
	FirstErr string `json:"first_err,omitempty"`
	Done     bool   `json:"done,omitempty"`
}

// runWorker calls the library as fast as it is allowed to until the
// duration ends, from spec.Goroutines goroutines, and prints a line per
// admitted call with the time it began asking and the time it was told to
// start. After a denial a goroutine sleeps a random time below 1 ms, so
// that workers do not call in lockstep.
func runWorker(specJSON string) error {
	var spec workerSpec
	if err := json.Unmarshal([]byte(specJSON), &spec); err != nil {
		return err
	}
	c := server.NewClient(spec.Addr)
	defer c.Close()
	allow, err := allowerFor(spec.Lib, c, spec.Key, spec.Limit)
	if err != nil {
		return err
	}
	out := bufio.NewWriter(os.Stdout)
	defer out.Flush()
	enc := json.NewEncoder(out)
	start := time.Unix(0, spec.StartNs)
	time.Sleep(time.Until(start))
	end := start.Add(spec.Duration)
	var mu sync.Mutex // guards enc and sum
	var sum workerLine
	var wg sync.WaitGroup
	for range max(spec.Goroutines, 1) {
		wg.Go(func() {
			var mine workerLine
			var lines []workerLine
			for time.Now().Before(end) {
				asked := time.Now()
				ctx, cancel := context.WithTimeout(context.Background(), time.Second)
				ok, err := allow(ctx)
				cancel()
				started := time.Now()
				mine.Calls++
				switch {
				case err != nil:
					if mine.Errors == 0 {
						mine.FirstErr = err.Error()
					}
					mine.Errors++
				case ok:
					lines = append(lines, workerLine{Asked: asked.UnixNano(), Started: started.UnixNano()})
					continue
				}
				time.Sleep(time.Duration(rand.Int64N(int64(time.Millisecond))))
			}
			mu.Lock()
			defer mu.Unlock()
			for _, l := range lines {
				_ = enc.Encode(l)
			}
			sum.Calls += mine.Calls
			if sum.Errors == 0 {
				sum.FirstErr = mine.FirstErr
			}
			sum.Errors += mine.Errors
		})
	}
	wg.Wait()
	sum.Done = true
	return enc.Encode(sum)
}

// admission is one admitted call: when it began asking and when it was
// told to start, in Unix ns.
type admission struct{ asked, started int64 }

// runWorkers runs n worker processes of spec and returns their admissions
// and totals.
func runWorkers(t *testing.T, n int, spec workerSpec) ([]admission, workerLine) {
	t.Helper()
	type proc struct {
		cmd      *exec.Cmd
		out, err bytes.Buffer
	}
	spec.StartNs = time.Now().Add(150 * time.Millisecond).UnixNano() // once every process is up
	b, err := json.Marshal(spec)
	if err != nil {
		t.Fatal(err)
	}
	procs := make([]*proc, n)
	for i := range procs {
		p := &proc{cmd: exec.Command(os.Args[0], "-test.run=^$")}
		// A race-enabled binary sleeps 1 s at exit unless told not to.
		p.cmd.Env = append(os.Environ(), workerEnv+"="+string(b), "GORACE=atexit_sleep_ms=0 "+os.Getenv("GORACE"))
		p.cmd.Stdout, p.cmd.Stderr = &p.out, &p.err
		if err := p.cmd.Start(); err != nil {
			t.Fatalf("starting worker %d: %v", i, err)
		}
		procs[i] = p
	}
	var as []admission
	var sum workerLine
	for i, p := range procs {
		if err := p.cmd.Wait(); err != nil {
			t.Fatalf("worker %d of %s: %v: %s", i, spec.Lib, err, p.err.String())
		}
		dec := json.NewDecoder(&p.out)
		done := false
		for {
			var l workerLine
			if err := dec.Decode(&l); err != nil {
				if errors.Is(err, io.EOF) {
					break
				}
				t.Fatalf("worker %d of %s output: %v", i, spec.Lib, err)
			}
			if l.Done {
				done = true
				sum.Calls += l.Calls
				sum.Errors += l.Errors
				if sum.FirstErr == "" {
					sum.FirstErr = l.FirstErr
				}
				continue
			}
			as = append(as, admission{l.Asked, l.Started})
		}
		if !done {
			t.Fatalf("worker %d of %s: no totals line: %s", i, spec.Lib, p.err.String())
		}
	}
	return as, sum
}

// accuracy is the check of a run's admissions against limit per interval.
type accuracy struct {
	admitted int
	ideal    float64
	// maxInWindow is the most starts in any half-open window of the
	// interval, judged by start times (raw: a late start can inflate it).
	maxInWindow int
	// violations counts the groups of limit+1 admissions, consecutive by
	// start, whose decisions provably lie within less than the interval:
	// the latest start minus the earliest ask is below it. Delay between a
	// decision and its start cannot cause one.
	violations int
}

func check(as []admission, l Limit, span time.Duration) accuracy {
	as = slices.Clone(as)
	slices.SortFunc(as, func(a, b admission) int { return cmp.Compare(a.started, b.started) })
	r := accuracy{admitted: len(as), ideal: float64(l.N) * span.Seconds() / l.Interval.Seconds()}
	iv := int64(l.Interval)
	lo := 0
	for hi := range as {
		for as[hi].started-as[lo].started >= iv {
			lo++
		}
		r.maxInWindow = max(r.maxInWindow, hi-lo+1)
	}
	for i := 0; i+l.N < len(as); i++ {
		group := as[i : i+l.N+1]
		earliest := group[0].asked
		for _, a := range group {
			earliest = min(earliest, a.asked)
		}
		if group[l.N].started-earliest < iv {
			r.violations++
		}
	}
	return r
}

// TestAccuracy compares how exactly each library keeps a limit when
// several processes hammer one key. It logs a table; it asserts only that
// ours has no provable violation, since the peers' algorithms may exceed
// the limit by design (GCRA with burst N admits up to 2N-1 in a window; a
// fixed window admits up to 2N across a boundary when demand is bursty).
func TestAccuracy(t *testing.T) {
	if testing.Short() {
		t.Skip("accuracy comparison skipped in -short mode")
	}
	srv := server.Start(t)
	cases := []struct {
		name       string
		l          Limit
		workers    int // worker processes (default: -accuracy.workers)
		goroutines int // per worker (default 1)
	}{
		{"1 per 50ms", Limit{N: 1, Interval: 50 * time.Millisecond}, 0, 0},
		{"10 per 1s", Limit{N: 10, Interval: time.Second}, 0, 0},
		// Above 64 ours keeps counts per time bucket (the window script).
		{"100 per 1s", Limit{N: 100, Interval: time.Second}, 0, 0},
		// A hot key: ours takes leased permits in batches.
		{"20000 per 1s, 8x8", Limit{N: 20000, Interval: time.Second}, 8, 8},
		{"2000 per 100ms, 8x8", Limit{N: 2000, Interval: 100 * time.Millisecond}, 8, 8},
	}
	var table strings.Builder
	tw := tabwriter.NewWriter(&table, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "limit\tlibrary\tadmitted\tideal\tadmitted/ideal\tmax in window (raw)\tprovable violations\tstore errors/calls\t\n")
	for ci, c := range cases {
		for _, lib := range libraries {
			spec := workerSpec{Addr: srv.Addr, Lib: lib, Key: fmt.Sprintf("accuracy:%d", ci), Limit: c.l,
				Duration: *accDuration, Goroutines: c.goroutines}
			workers := *accWorkers
			if c.workers > 0 {
				workers = c.workers
			}
			as, sum := runWorkers(t, workers, spec)
			r := check(as, c.l, *accDuration)
			fmt.Fprintf(tw, "%s\t%s\t%d\t%.0f\t%.2f\t%d\t%d\t%d/%d\t\n",
				c.name, lib, r.admitted, r.ideal, float64(r.admitted)/r.ideal, r.maxInWindow, r.violations, sum.Errors, sum.Calls)
			if strings.HasPrefix(lib, "dthrottle") {
				if r.violations != 0 {
					t.Errorf("%s, %s: %d provable violations", lib, c.name, r.violations)
				}
				if sum.Errors != 0 {
					t.Errorf("%s, %s: %d store errors, first: %s", lib, c.name, sum.Errors, sum.FirstErr)
				}
				if r.admitted == 0 {
					t.Errorf("%s, %s: nothing admitted", lib, c.name)
				}
			} else if sum.Errors != 0 {
				t.Logf("%s, %s: %d store errors, first: %s", lib, c.name, sum.Errors, sum.FirstErr)
			}
		}
	}
	tw.Flush()
	t.Logf("%d worker processes per library (8 of 8 goroutines where the limit says 8x8), each with its own go-redis client, for %v:\n%s", *accWorkers, *accDuration, table.String())
}

// TestCheckCatchesOverAdmission shows that check reports provable
// violations, and none where a late start explains a short gap.
func TestCheckCatchesOverAdmission(t *testing.T) {
	const ms = int64(time.Millisecond)
	l := Limit{N: 1, Interval: 100 * time.Millisecond}
	tests := []struct {
		name       string
		as         []admission
		n          int
		violations int
	}{
		{"spaced", []admission{{0, 0}, {99 * ms, 100 * ms}, {199 * ms, 200 * ms}}, 1, 0},
		{"late start is not a violation", []admission{{0, 5 * ms}, {90 * ms, 100 * ms}}, 1, 0},
		{"both decided within the interval", []admission{{0, 10 * ms}, {20 * ms, 50 * ms}}, 1, 1},
		{"limit 2, three close", []admission{{0, 1 * ms}, {2 * ms, 3 * ms}, {4 * ms, 5 * ms}}, 2, 1},
		{"limit 2, two close", []admission{{0, 1 * ms}, {2 * ms, 3 * ms}, {100 * ms, 101 * ms}}, 2, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l.N = tt.n
			if got := check(tt.as, l, time.Second).violations; got != tt.violations {
				t.Errorf("violations = %d, want %d", got, tt.violations)
			}
		})
	}
}
