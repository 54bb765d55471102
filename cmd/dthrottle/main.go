// Command dthrottle shows, on your own machine, the problem package throttle
// solves, and inspects throttles kept in Redis.
//
//	dthrottle sim [flags]                       simulate a pool of worker processes
//	dthrottle inspect KEY --redis URL [flags]   show a throttle's state
//	dthrottle reset KEY --redis URL [flags]     delete a throttle's state
//
// # sim
//
// dthrottle sim starts W real worker processes (this binary, re-executed),
// each with its own Redis client and its own throttle.WrapErr around a fake
// API call, all sharing one throttle key in one Redis. Every worker calls the
// API at random times, and the fake call may take longer than the interval,
// as real APIs do. Each worker reports every start, finish, throttled call
// and store error as a JSON line (see internal/simevent); the parent prints
// them as they arrive, then draws a timeline and checks the guarantee from
// the recorded times: at most --limit starts in any window of --interval.
//
// With no --redis it starts an embedded Redis (miniredis) on a loopback port
// that all its workers share, so it runs on a fresh machine:
//
//	go run ./cmd/dthrottle sim
//	go run ./cmd/dthrottle sim --workers 8 --interval 500ms --limit 3 --svg timeline.svg
//	go run ./cmd/dthrottle sim --redis redis://127.0.0.1:6379/0 --events events.jsonl
//
// Exit status: 0 when the run held the guarantee, 1 when it did not, 2 for
// bad flags or a store it cannot reach. Ctrl-C stops every worker and still
// prints the summary of what happened.
//
// # inspect and reset
//
// Both take the throttle's limit (--limit N, default 1), which sets the
// names of its Redis keys (throttle.RedisStore.Keys): for a limit up to 64,
// one slot key per unit of the limit, "throttle:{KEY}", "throttle:{KEY}:1"
// and so on; above 64, the list "throttle:{KEY}:list"; and the hold record
// "throttle:{KEY}:hold". dthrottle inspect KEY shows each slot, free or held
// (by a start, a booked start or a hold) with its expiry, or the list's start
// times, then any hold and when the next start is free. dthrottle reset KEY
// deletes those keys, ending any hold, so the next call is admitted. Flags
// may come before or after KEY.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"
)

// Exit statuses.
const (
	exitOK    = 0 // the guarantee held (or the command succeeded)
	exitFail  = 1 // the guarantee did not hold
	exitUsage = 2 // bad flags, or a store that cannot be reached
)

// execEnv is set in the environment of the worker processes. The binary
// itself does not need it (workers get the hidden "worker" subcommand), but
// a test binary re-executed as a worker uses it to run main instead of the
// tests.
const execEnv = "DTHROTTLE_EXEC"

// pingTimeout bounds the check that a Redis server answers.
const pingTimeout = 2 * time.Second

func main() {
	os.Exit(mainArgs(os.Args[1:]))
}

// mainArgs runs the command line args with the process's standard streams,
// stopping on SIGINT and SIGTERM, and returns the exit status.
func mainArgs(args []string) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return run(ctx, args, os.Stdin, os.Stdout, os.Stderr)
}

// run dispatches to the subcommand named by args[0]. Ending ctx stops a
// simulation (as Ctrl-C does) and still prints its summary.
func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	redis.SetLogger(quietLogger{})
	if len(args) == 0 {
		usage(stderr)
		return exitUsage
	}
	switch args[0] {
	case "sim":
		return runSim(ctx, args[1:], stdout, stderr)
	case "worker": // hidden: one worker process of a simulation
		return runWorker(ctx, args[1:], stdin, stdout, stderr)
	case "inspect":
		return runInspect(ctx, args[1:], stdout, stderr)
	case "reset":
		return runReset(ctx, args[1:], stdout, stderr)
	case "help", "-h", "-help", "--help":
		usage(stdout)
		return exitOK
	}
	fmt.Fprintf(stderr, "dthrottle: unknown command %q\n\n", args[0])
	usage(stderr)
	return exitUsage
}

func usage(w io.Writer) {
	fmt.Fprint(w, `dthrottle: a function that runs at most N times per interval across every
worker process sharing a Redis server, shown and inspected.

Usage:
  dthrottle sim [flags]                      simulate W worker processes calling a
                                             throttled API; check the guarantee
  dthrottle inspect KEY --redis URL [flags]  show a throttle's state in Redis
  dthrottle reset KEY --redis URL [flags]    delete a throttle's state in Redis

Run "dthrottle COMMAND -h" for a command's flags. Flags take one or two
dashes (-workers 8 or --workers 8).
`)
}

// newFlagSet returns a flag set that reports errors instead of exiting, and
// prints its usage as "Usage: dthrottle NAME SYNOPSIS", about, the flags.
func newFlagSet(name, synopsis, about string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("dthrottle "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		out := fs.Output()
		fmt.Fprintf(out, "Usage: dthrottle %s %s\n\n%s\n\nFlags (one or two dashes):\n", name, synopsis, about)
		fs.PrintDefaults()
	}
	return fs
}

// parseArgs parses flags that may come before and after positional
// arguments, and returns the positional ones. Its error has already been
// reported by fs (flag.ErrHelp for -h).
func parseArgs(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		args = fs.Args()
		if len(args) == 0 {
			return pos, nil
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
}

// badUsage reports a usage error: the message, then fs's usage. It returns
// exitUsage.
func badUsage(fs *flag.FlagSet, format string, a ...any) int {
	fmt.Fprintf(fs.Output(), "%s: %s\n\n", fs.Name(), fmt.Sprintf(format, a...))
	fs.Usage()
	return exitUsage
}

// flagError turns the error of parseArgs into an exit status: 0 for -h,
// exitUsage otherwise (fs has printed the message and usage).
func flagError(err error) int {
	if errors.Is(err, flag.ErrHelp) {
		return exitOK
	}
	return exitUsage
}

// redisOptions parses a Redis URL ("redis://[user:pass@]host:port/db",
// "rediss://..." or a bare "host:port") into client options that honour
// context deadlines.
func redisOptions(url string) (*redis.Options, error) {
	if !strings.Contains(url, "://") {
		url = "redis://" + url
	}
	opts, err := redis.ParseURL(url)
	if err != nil {
		return nil, err
	}
	opts.ContextTimeoutEnabled = true
	return opts, nil
}

// connect returns a client for url once it answers PING within pingTimeout.
// The PING is tried once, without go-redis's retries, so that a server that
// is down is reported at once.
func connect(ctx context.Context, url string) (*redis.Client, error) {
	opts, err := redisOptions(url)
	if err != nil {
		return nil, fmt.Errorf("bad --redis URL %q: %v", url, err)
	}
	probeOpts := *opts
	probeOpts.MaxRetries, probeOpts.DialerRetries, probeOpts.PoolSize = -1, 1, 1
	probe := redis.NewClient(&probeOpts)
	defer probe.Close()
	pctx, cancel := context.WithTimeout(ctx, pingTimeout)
	defer cancel()
	if err := probe.Ping(pctx).Err(); err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, fmt.Errorf("cannot reach Redis at %s: %v", opts.Addr, err)
	}
	return redis.NewClient(opts), nil
}

// quietLogger drops go-redis's own log lines (such as failed dials): the
// commands report store failures themselves.
type quietLogger struct{}

func (quietLogger) Printf(context.Context, string, ...any) {}
