package main

import (
	"context"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/dthrottle/throttle"
)

// keyFlags are the flags of inspect and reset.
type keyFlags struct {
	redisURL string
	prefix   string
	limit    int
	interval time.Duration
	key      string
}

// parseKeyCmd parses "KEY --redis URL [flags]" for inspect (withLimit) and
// reset. A status >= 0 means stop with it.
func parseKeyCmd(name, about string, withLimit bool, args []string, stderr io.Writer) (keyFlags, int) {
	var k keyFlags
	fs := newFlagSet(name, "KEY --redis URL [flags]", about, stderr)
	fs.StringVar(&k.redisURL, "redis", "", "Redis `URL`, such as redis://127.0.0.1:6379/0 (required)")
	fs.StringVar(&k.prefix, "prefix", throttle.DefaultKeyPrefix, "the store's key prefix (throttle.WithKeyPrefix)")
	if withLimit {
		fs.IntVar(&k.limit, "limit", 0, "the throttle's limit, to tell when the next start is free (optional)")
		fs.DurationVar(&k.interval, "interval", 0, "the throttle's interval (optional: inferred from the key's expiry)")
	}
	pos, err := parseArgs(fs, args)
	if err != nil {
		return k, flagError(err)
	}
	switch {
	case len(pos) == 0:
		return k, badUsage(fs, "missing KEY, the throttle's key (as given to throttle.New)")
	case len(pos) > 1:
		return k, badUsage(fs, "unexpected argument %q after KEY %q", pos[1], pos[0])
	case pos[0] == "":
		return k, badUsage(fs, "empty KEY")
	case k.redisURL == "":
		return k, badUsage(fs, "missing --redis URL")
	case k.limit < 0:
		return k, badUsage(fs, "--limit %d: must not be negative", k.limit)
	case k.interval < 0:
		return k, badUsage(fs, "--interval %v: must not be negative", k.interval)
	}
	k.key = pos[0]
	return k, -1
}

const inspectAbout = `Shows the state of throttle KEY in Redis: its Redis key (the prefix and KEY),
the key's type and expiry, and, for a limit above 1, the recorded start times
(server microseconds), relative to the server's TIME.`

// holdSuffix follows a throttle's Redis key in the name of the marker key
// of a hold set by Throttle.Block (see RedisStore.Block).
const holdSuffix = "\x00block"

// runInspect is dthrottle inspect.
func runInspect(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	k, status := parseKeyCmd("inspect", inspectAbout, true, args, stderr)
	if status >= 0 {
		return status
	}
	client, err := connect(ctx, k.redisURL)
	if err != nil {
		fmt.Fprintf(stderr, "dthrottle inspect: %v\n", err)
		return exitUsage
	}
	defer client.Close()
	if err := inspect(ctx, client, k, stdout); err != nil {
		fmt.Fprintf(stderr, "dthrottle inspect: %v\n", err)
		return exitUsage
	}
	return exitOK
}

func inspect(ctx context.Context, client *redis.Client, k keyFlags, w io.Writer) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	rkey := throttle.NewRedisStore(client, throttle.WithKeyPrefix(k.prefix)).Key(k.key)
	pipe := client.Pipeline()
	typ := pipe.Type(ctx, rkey)
	pttl := pipe.PTTL(ctx, rkey)
	now := pipe.Time(ctx)
	if _, err := pipe.Exec(ctx); err != nil {
		return err
	}
	// A hold set by Throttle.Block (after a 429, say) is recorded in a
	// marker key next to the throttle's key, expiring with the hold.
	hold, err := client.PTTL(ctx, rkey+holdSuffix).Result()
	if err != nil {
		return err
	}
	serverNow := now.Val()
	nowUs := serverNow.UnixMicro()
	ttl := pttl.Val()

	row := func(name, format string, a ...any) {
		fmt.Fprintf(w, "%-13s %s\n", name, fmt.Sprintf(format, a...))
	}
	row("key", "%s", strconv.Quote(k.key))
	row("redis key", "%s", strconv.Quote(rkey))
	row("server time", "%s (Redis TIME)", serverNow.UTC().Format("2006-01-02 15:04:05.000000 MST"))
	if hold > 0 {
		row("hold", "%s left (Throttle.Block, such as after a 429 with Retry-After)", fmtDur(hold))
	}
	ttlText := func() string {
		switch {
		case ttl == -1:
			return "none (not written by dthrottle: its keys always expire)"
		case ttl < 0:
			return "-"
		}
		return fmtDur(ttl)
	}

	switch t := typ.Val(); t {
	case "none":
		row("type", "none: no state (never used, or idle for a whole interval)")
		row("next start", "free now")
		return nil
	case "string":
		v, err := client.Get(ctx, rkey).Result()
		if err != nil && err != redis.Nil {
			return err
		}
		row("type", "string (limit 1: the key exists while the last start's interval runs)")
		row("ttl", "%s", ttlText())
		if ms, err := strconv.ParseInt(v, 10, 64); err == nil && ms > 1_000_000_000_000 {
			row("value", "%s: the newest start (server ms), booked by a waiting call: %s",
				v, relative(time.Duration(ms*1000-nowUs)*time.Microsecond))
		} else {
			row("value", "%s", strconv.Quote(v))
		}
		if ttl >= 0 {
			row("next start", "free in %s (the ttl)", fmtDur(ttl))
		}
		if k.limit > 1 {
			fmt.Fprintf(w, "note: --limit %d, but a string key is what limit 1 writes; throttles sharing a key must use the same limit\n", k.limit)
		}
		return nil
	case "list":
		vals, err := client.LRange(ctx, rkey, 0, -1).Result()
		if err != nil {
			return err
		}
		row("type", "list (limit above 1: start times in server microseconds, oldest first)")
		row("ttl", "%s", ttlText())
		starts := make([]int64, 0, len(vals))
		row("starts", "%d recorded, relative to the server time:", len(vals))
		for _, v := range vals {
			us, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				fmt.Fprintf(w, "%-13s %s  (not a time)\n", "", strconv.Quote(v))
				continue
			}
			starts = append(starts, us)
			note := ""
			if us > nowUs {
				note = "  (booked by a waiting call)"
			}
			fmt.Fprintf(w, "%-13s %d  %s%s\n", "", us, relative(time.Duration(us-nowUs)*time.Microsecond), note)
		}
		if len(starts) == 0 {
			return nil
		}
		interval := k.interval
		how := "--interval"
		if interval == 0 && ttl >= 0 {
			// The key expires one interval after its newest start.
			newest := starts[len(starts)-1]
			// Expiries are whole milliseconds and TIME has microseconds,
			// so this is exact to within 1 ms; snap to a round value.
			interval = (ttl + time.Duration(nowUs-newest)*time.Microsecond).Round(time.Millisecond)
			if r := interval.Round(10 * time.Millisecond); r > 0 && (r-interval).Abs() <= time.Millisecond {
				interval = r
			}
			how = "inferred from the ttl, to within 1ms"
		}
		if interval <= 0 {
			return nil
		}
		in := 0
		for _, s := range starts {
			if s > nowUs-interval.Microseconds() && s <= nowUs {
				in++
			}
		}
		row("interval", "%v (%s)", interval, how)
		if k.limit == 0 {
			row("in window", "%d started in the last %v (give --limit N for the next free start)", in, interval)
			return nil
		}
		row("in window", "%d of limit %d started in the last %v", in, k.limit, interval)
		next := nowUs
		n := len(starts)
		next = max(next, starts[n-1])
		if n >= k.limit {
			next = max(next, starts[n-k.limit]+interval.Microseconds())
		}
		if next <= nowUs {
			row("next start", "free now")
		} else {
			row("next start", "free in %s", fmtDur(time.Duration(next-nowUs)*time.Microsecond))
		}
		return nil
	default:
		row("type", "%s (not written by dthrottle)", t)
		row("ttl", "%s", ttlText())
		return nil
	}
}

// relative formats d as a signed offset from now: "-1.234s", "+20ms", "now".
func relative(d time.Duration) string {
	if d == 0 {
		return "now"
	}
	s := fmtDur(d)
	if !strings.HasPrefix(s, "-") {
		s = "+" + s
	}
	return s
}

const resetAbout = `Deletes the state of throttle KEY in Redis, so its next call is admitted.
Processes that were denied recently may still deny from their local cache
until their retry-after ends (see throttle.WithDenyCache).`

// runReset is dthrottle reset.
func runReset(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	k, status := parseKeyCmd("reset", resetAbout, false, args, stderr)
	if status >= 0 {
		return status
	}
	client, err := connect(ctx, k.redisURL)
	if err != nil {
		fmt.Fprintf(stderr, "dthrottle reset: %v\n", err)
		return exitUsage
	}
	defer client.Close()
	store := throttle.NewRedisStore(client, throttle.WithKeyPrefix(k.prefix))
	rkey := store.Key(k.key)
	dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	// What there is to reset: the throttle's key and the marker of a hold.
	n, err := client.Exists(dctx, rkey, rkey+holdSuffix).Result()
	if err == nil {
		err = store.Reset(dctx, k.key)
	}
	if err != nil {
		fmt.Fprintf(stderr, "dthrottle reset: deleting %s: %v\n", strconv.Quote(rkey), err)
		return exitUsage
	}
	if n == 0 {
		fmt.Fprintf(stdout, "nothing to reset: %s does not exist\n", strconv.Quote(rkey))
	} else {
		fmt.Fprintf(stdout, "reset: deleted %s and any hold; the next call of %s is admitted\n", strconv.Quote(rkey), strconv.Quote(k.key))
	}
	return exitOK
}
