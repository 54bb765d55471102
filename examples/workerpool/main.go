// Command workerpool shows the guarantee of package throttle: a pool of
// workers calls a slow API through throttle.WrapErr, and across all of them
// no two calls start less than one interval apart.
//
// Each worker has its own Redis client and its own throttle, as separate
// processes would; only the Redis server and the throttle key are shared.
// The fake API takes 50 to 400 ms, sometimes longer than the interval: the
// throttle limits how often calls start, not how many run at once.
//
// By default the program starts an embedded Redis (miniredis), so it needs
// nothing else:
//
//	go run ./examples/workerpool
//	go run ./examples/workerpool -workers 16 -interval 100ms -duration 5s
//
// To use a real Redis server instead:
//
//	go run ./examples/workerpool -redis 127.0.0.1:6379
//
// It exits with status 0 when the guarantee held, 1 otherwise.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/dthrottle/throttle"
)

func main() {
	if err := run(os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "workerpool:", err)
		os.Exit(1)
	}
}

// run parses args, runs the worker pool and writes the log and the summary
// to stdout. It returns an error if the guarantee did not hold.
func run(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("workerpool", flag.ContinueOnError)
	workers := fs.Int("workers", 8, "number of workers, each with its own Redis client")
	interval := fs.Duration("interval", 200*time.Millisecond, "at most one call starts per interval")
	duration := fs.Duration("duration", 2*time.Second, "how long the workers keep calling")
	addr := fs.String("redis", "", "Redis address, such as 127.0.0.1:6379 (default: an embedded miniredis)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	switch {
	case *workers < 1:
		return fmt.Errorf("-workers %d: need at least 1", *workers)
	case *interval < time.Millisecond:
		return fmt.Errorf("-interval %v: need at least 1ms", *interval)
	case *duration <= 0:
		return fmt.Errorf("-duration %v: need more than 0", *duration)
	}

	server := "Redis at " + *addr
	if *addr == "" {
		mr, err := miniredis.Run() // listens on 127.0.0.1, on a free port
		if err != nil {
			return err
		}
		defer mr.Close()
		mr.ClockTTL(true) // expire keys as real time passes, like Redis
		*addr = mr.Addr()
		server = "embedded miniredis at " + *addr
	}
	if err := ping(*addr); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "%d workers, at most one call per %v, for %v, %s\n",
		*workers, *interval, *duration, server)

	ctx, stop := context.WithTimeout(context.Background(), *duration)
	defer stop()
	log := &recorder{w: stdout, begin: time.Now()}
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		firstErr error
	)
	for id := 1; id <= *workers; id++ {
		wg.Go(func() {
			if err := work(ctx, id, *addr, *interval, log); err != nil {
				mu.Lock()
				if firstErr == nil {
					firstErr = fmt.Errorf("worker %d: %w", id, err)
				}
				mu.Unlock()
				stop() // end the run for every worker
			}
		})
	}
	wg.Wait()
	if firstErr != nil {
		return firstErr
	}
	return log.summary(*workers, *interval, *duration)
}

// work is one worker: until ctx ends, it pauses for a random time of up to
// two intervals and calls the API through the shared throttle.
func work(ctx context.Context, id int, addr string, interval time.Duration, log *recorder) error {
	client := redis.NewClient(&redis.Options{Addr: addr, ContextTimeoutEnabled: true})
	defer client.Close()

	// Every worker builds the same throttle: same key, same interval, same
	// Redis. The fn passed to WrapErr runs only when Redis admitted the call.
	var asked time.Duration // when the current call began asking Redis
	callAPI := throttle.WrapErr("fake-api", interval, func(ctx context.Context) (string, error) {
		log.start(id, asked)
		return fakeAPI(ctx)
	}, throttle.WithStore(throttle.NewRedisStore(client)))

	for {
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(rand.N(2 * interval)):
		}
		asked = log.since()
		_, err := callAPI(ctx)
		var te *throttle.ThrottledError
		switch {
		case errors.As(err, &te):
			log.throttled(id, te.RetryAfter)
		case ctx.Err() != nil:
			return nil // the run is over, maybe in the middle of a call
		case err != nil:
			return err // Redis failed (ErrStoreUnavailable) or the API did
		}
	}
}

// fakeAPI stands for a slow remote call: it takes 50 to 400 ms.
func fakeAPI(ctx context.Context) (string, error) {
	select {
	case <-time.After(50*time.Millisecond + rand.N(350*time.Millisecond)):
		return "ok", nil
	case <-ctx.Done():
		return "", ctx.Err()
	}
}

// ping checks that Redis answers at addr, to fail early with a clear error.
func ping(addr string) error {
	client := redis.NewClient(&redis.Options{Addr: addr})
	defer client.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := client.Ping(ctx).Err(); err != nil {
		return fmt.Errorf("redis at %s: %w", addr, err)
	}
	return nil
}

// recorder logs the workers' starts and throttled calls, and keeps the start
// times for the summary. It is safe for concurrent use.
type recorder struct {
	w     io.Writer
	begin time.Time

	mu      sync.Mutex
	starts  []start
	denials int // throttled calls
}

// start is one admitted call: when it began asking Redis and when fn
// started, since the recorder's begin. Redis decided in between.
type start struct{ asked, at time.Duration }

func (r *recorder) since() time.Duration { return time.Since(r.begin) }

func (r *recorder) start(worker int, asked time.Duration) {
	at := time.Since(r.begin) // before the lock, which may be contended
	r.mu.Lock()
	defer r.mu.Unlock()
	r.starts = append(r.starts, start{asked, at})
	fmt.Fprintf(r.w, "%6dms  worker %2d  start\n", at.Milliseconds(), worker)
}

func (r *recorder) throttled(worker int, retryAfter time.Duration) {
	at := time.Since(r.begin)
	r.mu.Lock()
	defer r.mu.Unlock()
	r.denials++
	fmt.Fprintf(r.w, "%6dms  worker %2d  throttled, retry in %v\n",
		at.Milliseconds(), worker, retryAfter.Round(time.Millisecond))
}

// summary writes the counts and the smallest gap between two starts, and
// returns an error if two calls provably started less than an interval
// apart.
//
// A start is noted in the worker after Redis's answer has come back, so on
// a loaded machine a gap between two noted starts can look shorter than
// the interval although Redis admitted them an interval apart. What is
// certain is that Redis decided each call between its asked and at times:
// two calls were admitted too close only if the later start minus the
// earlier of the two asks is below the interval.
func (r *recorder) summary(workers int, interval, duration time.Duration) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	starts := slices.Clone(r.starts)
	slices.SortFunc(starts, func(a, b start) int { return int(a.at - b.at) })

	minGap := time.Duration(-1)
	violations := 0
	for i := 1; i < len(starts); i++ {
		gap := starts[i].at - starts[i-1].at
		if minGap < 0 || gap < minGap {
			minGap = gap
		}
		if starts[i].at-min(starts[i].asked, starts[i-1].asked) < interval {
			violations++
		}
	}

	fmt.Fprintf(r.w, "\nsummary: %d workers, %v, interval %v\n", workers, duration, interval)
	fmt.Fprintf(r.w, "  starts:    %d\n", len(starts))
	fmt.Fprintf(r.w, "  throttled: %d\n", r.denials)
	if minGap >= 0 {
		fmt.Fprintf(r.w, "  min gap between starts: %v\n", minGap.Round(100*time.Microsecond))
	} else {
		fmt.Fprintf(r.w, "  min gap between starts: none (fewer than 2 starts)\n")
	}
	if violations > 0 {
		fmt.Fprintf(r.w, "guarantee VIOLATED: %d pair(s) of calls admitted less than %v apart\n", violations, interval)
		return fmt.Errorf("%d call(s) admitted less than %v after the one before", violations, interval)
	}
	fmt.Fprintf(r.w, "guarantee held: no two calls admitted less than %v apart\n", interval)
	return nil
}
