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

// tolerance is how much shorter than the interval a measured gap between
// two starts may be before it counts as a violation. The store decides on
// its own clock, but this program notes a start in the worker, after the
// decision has come back over the network: on a loaded machine one reply
// may reach its worker a little later than the next one, and the gap looks
// short by that much.
const tolerance = 5 * time.Millisecond

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
	callAPI := throttle.WrapErr("fake-api", interval, func(ctx context.Context) (string, error) {
		log.start(id)
		return fakeAPI(ctx)
	}, throttle.WithStore(throttle.NewRedisStore(client)))

	for {
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(rand.N(2 * interval)):
		}
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
	starts  []time.Duration // since begin
	denials int             // throttled calls
}

func (r *recorder) start(worker int) {
	at := time.Since(r.begin) // before the lock, which may be contended
	r.mu.Lock()
	defer r.mu.Unlock()
	r.starts = append(r.starts, at)
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
// returns an error if a gap was shorter than the interval (less tolerance).
func (r *recorder) summary(workers int, interval, duration time.Duration) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	starts := slices.Clone(r.starts)
	slices.Sort(starts) // workers may have noted them slightly out of order

	minGap := time.Duration(-1)
	violations := 0
	for i := 1; i < len(starts); i++ {
		gap := starts[i] - starts[i-1]
		if minGap < 0 || gap < minGap {
			minGap = gap
		}
		if gap < interval-tolerance {
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
		fmt.Fprintf(r.w, "guarantee VIOLATED: %d gap(s) below %v\n", violations, interval-tolerance)
		return fmt.Errorf("%d start(s) came less than %v after the one before", violations, interval-tolerance)
	}
	fmt.Fprintf(r.w, "guarantee held: no two starts less than %v apart (%v less %v tolerance)\n",
		interval-tolerance, interval, tolerance)
	return nil
}
