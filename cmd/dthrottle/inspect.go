package main

import (
	"context"
	"errors"
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

// parseKeyCmd parses "KEY --redis URL [flags]" for inspect (withInterval)
// and reset. A status >= 0 means stop with it.
func parseKeyCmd(name, about string, withInterval bool, args []string, stderr io.Writer) (keyFlags, int) {
	var k keyFlags
	fs := newFlagSet(name, "KEY --redis URL [flags]", about, stderr)
	fs.StringVar(&k.redisURL, "redis", "", "Redis `URL`, such as redis://127.0.0.1:6379/0 (required)")
	fs.StringVar(&k.prefix, "prefix", throttle.DefaultKeyPrefix, "the store's key prefix (throttle.WithKeyPrefix)")
	fs.IntVar(&k.limit, "limit", 1, "the throttle's limit (throttle.WithLimit), which sets the names of its Redis keys")
	if withInterval {
		fs.DurationVar(&k.interval, "interval", 0, "the throttle's interval, for a limit above 64 (optional: inferred from the key's expiry)")
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
	case k.limit < 1 || k.limit > throttle.MaxLimit:
		return k, badUsage(fs, "--limit %d: must be between 1 and %d", k.limit, throttle.MaxLimit)
	case k.interval < 0:
		return k, badUsage(fs, "--interval %v: must not be negative", k.interval)
	case strings.ContainsAny(k.prefix, "{}"):
		return k, badUsage(fs, "--prefix %q: must not contain '{' or '}'", k.prefix)
	}
	k.key = pos[0]
	return k, -1
}

const inspectAbout = `Shows the state of throttle KEY in Redis, under the names that
throttle.RedisStore.Keys gives for the limit (--limit, default 1).

A limit N up to 64 is N slot keys, prefix{KEY}, prefix{KEY}:1 ... prefix{KEY}:N-1.
A start holds one free slot for an interval, so a slot is free exactly when a
start is allowed. inspect shows each slot: free, or held with its expiry and
what holds it (a start, a start booked by a waiting call, in server ms relative
to the server's TIME, or a hold). The next start is free now when a slot is
free, and otherwise 1 ms after the first slot expires (Redis keeps a key through
its expiry millisecond).

A limit above 64 is a list, prefix{KEY}:list, of start times in server
microseconds; inspect shows them relative to TIME.

prefix{KEY}:hold records a hold (Throttle.Hold, such as after a 429 with
Retry-After) while it lasts.`

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

// keyState is what inspect reads of one Redis key.
type keyState struct {
	name string
	typ  *redis.StatusCmd
	pttl *redis.DurationCmd
	get  *redis.StringCmd      // slots only
	list *redis.StringSliceCmd // the list only
}

// stateKeys returns the names of the keys that hold the starts of a
// throttle of key under limit (its slots, or its list), and the name of its
// hold record.
func stateKeys(store *throttle.RedisStore, key string, limit int) (state []string, hold string) {
	keys := store.Keys(key, limit)
	return keys[:len(keys)-1], keys[len(keys)-1]
}

// isList reports whether state, from stateKeys for limit, is a list rather
// than slots: a limit above 64 keeps one list.
func isList(state []string, limit int) bool { return len(state) != limit }

// strayKeys returns the names of keys of key that a throttle of another
// limit than limit would write: the list (or the first slot, for a limit
// that keeps a list), and the slot after the last one.
func strayKeys(store *throttle.RedisStore, key string, limit int) []string {
	state, _ := stateKeys(store, key, limit)
	if isList(state, limit) {
		first, _ := stateKeys(store, key, 1)
		return first
	}
	list, _ := stateKeys(store, key, throttle.MaxLimit)
	stray := list[:1]
	if more, _ := stateKeys(store, key, limit+1); !isList(more, limit+1) {
		stray = append(stray, more[limit])
	}
	return stray
}

func inspect(ctx context.Context, client *redis.Client, k keyFlags, w io.Writer) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	store := throttle.NewRedisStore(client, throttle.WithKeyPrefix(k.prefix))
	names, holdName := stateKeys(store, k.key, k.limit)
	list := isList(names, k.limit)
	stray := strayKeys(store, k.key, k.limit)

	// One transaction: the keys share a hash tag, and a snapshot shows
	// them as they were at one instant of the server's clock.
	var (
		states []keyState
		now    *redis.TimeCmd
		hold   *redis.DurationCmd
		exists []*redis.IntCmd
	)
	_, err := client.TxPipelined(ctx, func(pipe redis.Pipeliner) error {
		now = pipe.Time(ctx)
		for _, name := range names {
			st := keyState{name: name, typ: pipe.Type(ctx, name), pttl: pipe.PTTL(ctx, name)}
			if list {
				st.list = pipe.LRange(ctx, name, 0, -1)
			} else {
				st.get = pipe.Get(ctx, name)
			}
			states = append(states, st)
		}
		hold = pipe.PTTL(ctx, holdName)
		exists = existsEach(ctx, pipe, stray)
		return nil
	})
	// GET or LRANGE of a key of another type fails alone; TYPE reports it.
	if err != nil && !errors.Is(err, redis.Nil) && !strings.HasPrefix(err.Error(), "WRONGTYPE") {
		return err
	}
	if err := now.Err(); err != nil {
		return err
	}
	serverNow := now.Val()
	nowUs := serverNow.UnixMicro()

	row := func(name, format string, a ...any) {
		fmt.Fprintf(w, "%-13s %s\n", name, fmt.Sprintf(format, a...))
	}
	row("key", "%s", strconv.Quote(k.key))
	row("server time", "%s (Redis TIME)", serverNow.UTC().Format("2006-01-02 15:04:05.000000 MST"))
	switch {
	case list:
		row("limit", "%d (--limit): a list of start times", k.limit)
	case k.limit == 1:
		row("limit", "1 (--limit): 1 slot key, held for one interval by a start")
	default:
		row("limit", "%d (--limit): %d slot keys, each held for one interval by a start", k.limit, k.limit)
	}
	switch d := hold.Val(); {
	case d >= 0:
		row("hold", "%s  %s left (Throttle.Hold, such as after a 429 with Retry-After)", strconv.Quote(holdName), fmtDur(d))
	case d == -1:
		row("hold", "%s  %s", strconv.Quote(holdName), ttlText(d))
	default:
		row("hold", "%s  none", strconv.Quote(holdName))
	}
	var listErr error
	if list {
		listErr = showList(w, row, states[0], nowUs, k)
	} else {
		showSlots(w, row, states, nowUs)
	}
	if found := existing(stray, exists); len(found) > 0 {
		fmt.Fprintf(w, "note: %s of another limit exists; give the throttle's own --limit (throttles sharing a key must use the same limit)\n",
			strings.Join(quoteAll(found), " and "))
	}
	return listErr
}

// existsEach queues an EXISTS of each of names on pipe.
func existsEach(ctx context.Context, pipe redis.Pipeliner, names []string) []*redis.IntCmd {
	cmds := make([]*redis.IntCmd, len(names))
	for i, name := range names {
		cmds[i] = pipe.Exists(ctx, name)
	}
	return cmds
}

// existing returns the names whose EXISTS, from existsEach, found them.
func existing(names []string, cmds []*redis.IntCmd) []string {
	var found []string
	for i, c := range cmds {
		if c.Val() > 0 {
			found = append(found, names[i])
		}
	}
	return found
}

// ttlText describes a key's PTTL.
func ttlText(ttl time.Duration) string {
	switch {
	case ttl == -1:
		return "no expiry (not written by dthrottle: its keys always expire)"
	case ttl < 0:
		return "-"
	}
	return fmtDur(ttl)
}

// showSlots shows the slot keys of a limit up to 64 and the next free start.
func showSlots(w io.Writer, row func(string, string, ...any), states []keyState, nowUs int64) {
	width := 0
	for _, st := range states {
		width = max(width, len(strconv.Quote(st.name)))
	}
	free := false
	var first time.Duration = -1 // the smallest expiry of a held slot
	for i, st := range states {
		name := fmt.Sprintf("%-*s", width, strconv.Quote(st.name))
		typ, ttl := st.typ.Val(), st.pttl.Val()
		switch typ {
		case "none":
			free = true
			row(fmt.Sprintf("slot %d", i), "%s  free", name)
			continue
		case "string":
		default:
			row(fmt.Sprintf("slot %d", i), "%s  held: a %s, not written by dthrottle; ttl %s", name, typ, ttlText(ttl))
			continue
		}
		if ttl >= 0 && (first < 0 || ttl < first) {
			first = ttl
		}
		row(fmt.Sprintf("slot %d", i), "%s  held, ttl %s: %s", name, ttlText(ttl), slotValue(st.get.Val(), nowUs))
	}
	switch {
	case free:
		row("next start", "free now")
	case first >= 0:
		row("next start", "free in %s (the smallest slot ttl + 1ms)", fmtDur(first+time.Millisecond))
	default:
		row("next start", "unknown: no slot has an expiry")
	}
}

// slotValue describes the value of a held slot.
func slotValue(v string, nowUs int64) string {
	switch v {
	case "1":
		return "a start"
	case "h":
		return `a hold (value "h")`
	}
	if ms, err := strconv.ParseInt(v, 10, 64); err == nil && ms > 1_000_000_000_000 {
		return fmt.Sprintf("a start booked by a waiting call at %s (server ms), %s",
			v, relative(time.Duration(ms*1000-nowUs)*time.Microsecond))
	}
	return fmt.Sprintf("%s (not written by dthrottle)", strconv.Quote(v))
}

// showList shows the list of a limit above 64 and the next free start.
func showList(w io.Writer, row func(string, string, ...any), st keyState, nowUs int64, k keyFlags) error {
	ttl := st.pttl.Val()
	switch t := st.typ.Val(); t {
	case "none":
		row("list", "%s  none: no state (never used, or idle for a whole interval)", strconv.Quote(st.name))
		row("next start", "free now")
		return nil
	case "list":
	default:
		row("list", "%s  a %s (not written by dthrottle), ttl %s", strconv.Quote(st.name), t, ttlText(ttl))
		return nil
	}
	if err := st.list.Err(); err != nil {
		return err
	}
	vals := st.list.Val()
	row("list", "%s  ttl %s: start times in server microseconds, oldest first", strconv.Quote(st.name), ttlText(ttl))
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
			note = "  (booked by a waiting call, or a hold)"
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
	row("in window", "%d of limit %d started in the last %v", in, k.limit, interval)
	n := len(starts)
	next := max(nowUs, starts[n-1])
	if n >= k.limit {
		next = max(next, starts[n-k.limit]+interval.Microseconds())
	}
	if next <= nowUs {
		row("next start", "free now")
	} else {
		row("next start", "free in %s", fmtDur(time.Duration(next-nowUs)*time.Microsecond))
	}
	return nil
}

// quoteAll quotes each of ss.
func quoteAll(ss []string) []string {
	q := make([]string, len(ss))
	for i, s := range ss {
		q[i] = strconv.Quote(s)
	}
	return q
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

const resetAbout = `Deletes the state of throttle KEY in Redis, so its next call is admitted: the
keys that throttle.RedisStore.Keys names for the limit (--limit, default 1),
including the record of a hold, which ends the hold, as Throttle.Reset does.
Give the throttle's own --limit: with a smaller one, some of its slots stay.
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
	keys := store.Keys(k.key, k.limit)
	stray := strayKeys(store, k.key, k.limit)
	dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	// Deleting the keys is what RedisStore.Reset does, in one command that
	// also tells whether there was anything to reset.
	var del *redis.IntCmd
	var exists []*redis.IntCmd
	_, err = client.TxPipelined(dctx, func(pipe redis.Pipeliner) error {
		del = pipe.Del(dctx, keys...)
		exists = existsEach(dctx, pipe, stray)
		return nil
	})
	if err != nil {
		fmt.Fprintf(stderr, "dthrottle reset: deleting %s: %v\n", strings.Join(quoteAll(keys), ", "), err)
		return exitUsage
	}
	if n := del.Val(); n == 0 {
		fmt.Fprintf(stdout, "nothing to reset: none of %s exists\n", strings.Join(quoteAll(keys), ", "))
	} else {
		fmt.Fprintf(stdout, "reset: deleted %d of the %d keys %s; any hold has ended; the next call of %s is admitted\n",
			n, len(keys), strings.Join(quoteAll(keys), ", "), strconv.Quote(k.key))
	}
	if found := existing(stray, exists); len(found) > 0 {
		fmt.Fprintf(stdout, "note: %s of another limit exists and was kept; give the throttle's own --limit\n",
			strings.Join(quoteAll(found), " and "))
	}
	return exitOK
}
