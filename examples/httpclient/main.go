// Command httpclient shows httpthrottle.Transport: a pool of workers shares
// one http.Client whose Transport throttles every request to an API,
// through Redis, and backs off for the whole pool when the API answers 429
// Too Many Requests with a Retry-After.
//
// The fake API (an httptest server) allows 5 requests per second in fixed
// windows and answers the rest with 429 and a Retry-After of the seconds
// until its next window. The client allows itself one request per 150 ms,
// about 6.7 per second, so now and then it sends one request too many: the
// 429 that follows holds off every worker (and would hold off every process
// sharing the Redis server) until the Retry-After has passed, instead of
// each worker finding out for itself.
//
// By default the program starts an embedded Redis (miniredis), so it needs
// nothing else:
//
//	go run ./examples/httpclient
//	go run ./examples/httpclient -workers 16 -duration 5s -wait 2s
//
// To use a real Redis server instead:
//
//	go run ./examples/httpclient -redis 127.0.0.1:6379
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/dthrottle/throttle"
	"github.com/dthrottle/throttle/httpthrottle"
)

func main() {
	if err := run(os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "httpclient:", err)
		os.Exit(1)
	}
}

// run parses args, runs the worker pool against the fake API and writes a
// summary to stdout.
func run(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("httpclient", flag.ContinueOnError)
	workers := fs.Int("workers", 8, "number of workers sharing one http.Client")
	duration := fs.Duration("duration", 3*time.Second, "how long the workers keep sending")
	interval := fs.Duration("interval", 150*time.Millisecond, "the client allows itself -limit requests per interval")
	limit := fs.Int("limit", 1, "requests per interval the client allows itself")
	apiLimit := fs.Int("api-limit", 5, "requests per second the fake API accepts")
	wait := fs.Duration("wait", 0, "how long a request may wait for its turn (0: drop it)")
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
	case *duration <= 0:
		return fmt.Errorf("-duration %v: need more than 0", *duration)
	case *interval < time.Millisecond:
		return fmt.Errorf("-interval %v: need at least 1ms", *interval)
	case *limit < 1:
		return fmt.Errorf("-limit %d: need at least 1", *limit)
	case *apiLimit < 1:
		return fmt.Errorf("-api-limit %d: need at least 1", *apiLimit)
	case *wait < 0:
		return fmt.Errorf("-wait %v: need 0 or more", *wait)
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
	rdb := redis.NewClient(&redis.Options{Addr: *addr, ContextTimeoutEnabled: true})
	defer rdb.Close()
	ctx, stop := context.WithTimeout(context.Background(), *duration)
	defer stop()
	if err := rdb.Ping(ctx).Err(); err != nil {
		return fmt.Errorf("redis at %s: %w", *addr, err)
	}

	api := newAPI(*apiLimit, time.Second)
	defer api.Close()

	// The whole point: one Transport, shared through Redis. Every process
	// built this way, with the same Redis, shares the limit and the backoff.
	k, err := throttle.NewKeyed(*interval,
		throttle.WithStore(throttle.NewRedisStore(rdb)),
		throttle.WithLimit(*limit))
	if err != nil {
		return err
	}
	rt, err := httpthrottle.NewTransport(nil, k, httpthrottle.WithWait(*wait))
	if err != nil {
		return err
	}
	client := &http.Client{Transport: rt, Timeout: 10 * time.Second}

	fmt.Fprintf(stdout, "%d workers for %v; the client allows %d request(s) per %v, the API %d per second; %s\n",
		*workers, *duration, *limit, *interval, *apiLimit, server)
	var c counts
	var wg sync.WaitGroup
	for range *workers {
		wg.Go(func() { work(ctx, client, api.URL+"/items", &c) })
	}
	wg.Wait()

	fmt.Fprintf(stdout, "requests sent:     %d\n", c.ok.Load()+c.tooMany.Load()+c.other.Load())
	fmt.Fprintf(stdout, "  200 OK:          %d\n", c.ok.Load())
	fmt.Fprintf(stdout, "  429 Too Many:    %d (each one held off every worker for its Retry-After)\n", c.tooMany.Load())
	if n := c.other.Load(); n > 0 {
		fmt.Fprintf(stdout, "  other statuses:  %d\n", n)
	}
	fmt.Fprintf(stdout, "throttled locally: %d (not sent)\n", c.throttled.Load())
	fmt.Fprintf(stdout, "API received:      %d\n", api.received.Load())
	if n := c.failed.Load(); n > 0 {
		return fmt.Errorf("%d request(s) failed", n)
	}
	return nil
}

// counts are the outcomes of the workers' requests.
type counts struct {
	ok, tooMany, other, throttled, failed atomic.Int64
}

// work sends requests through client until ctx ends. A request the
// Transport throttled was not sent; the worker sleeps until the retry-after
// (plus a little jitter) and tries again.
func work(ctx context.Context, client *http.Client, url string, c *counts) {
	for ctx.Err() == nil {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			c.failed.Add(1)
			return
		}
		resp, err := client.Do(req)
		var te *throttle.ThrottledError
		switch {
		case errors.As(err, &te):
			c.throttled.Add(1)
			sleep(ctx, te.RetryAfter+rand.N(10*time.Millisecond))
		case ctx.Err() != nil:
			return // the run is over
		case err != nil:
			c.failed.Add(1)
			fmt.Fprintln(os.Stderr, "httpclient:", err)
			return
		default:
			_, _ = io.Copy(io.Discard, resp.Body)
			_ = resp.Body.Close()
			switch resp.StatusCode {
			case http.StatusOK:
				c.ok.Add(1)
			case http.StatusTooManyRequests:
				// Nothing to do: the Transport already holds off every
				// worker until the Retry-After.
				c.tooMany.Add(1)
			default:
				c.other.Add(1)
			}
		}
	}
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// api is the fake API: it accepts limit requests per window (fixed windows
// from its start) and answers the others with 429 and the seconds until
// the next window in Retry-After.
type api struct {
	*httptest.Server
	received atomic.Int64

	mu     sync.Mutex
	start  time.Time
	window int64 // number of the current window
	used   int   // requests accepted in it
}

func newAPI(limit int, window time.Duration) *api {
	a := &api{start: time.Now()}
	a.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		a.received.Add(1)
		a.mu.Lock()
		since := time.Since(a.start)
		if n := int64(since / window); n != a.window {
			a.window, a.used = n, 0
		}
		ok := a.used < limit
		if ok {
			a.used++
		}
		a.mu.Unlock()
		if !ok {
			next := time.Duration(a.window+1)*window - since
			w.Header().Set("Retry-After", strconv.Itoa(int((next+time.Second-1)/time.Second)))
			http.Error(w, "too many requests", http.StatusTooManyRequests)
			return
		}
		fmt.Fprintln(w, `{"items": []}`)
	}))
	return a
}
