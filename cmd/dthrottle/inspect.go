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
	redisURL    string
	prefix      string
	limit       int
	interval    time.Duration
	concurrency int
	limitPer    limitPer // the windows of WithLimitPer, if any
	key         string
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
		fs.IntVar(&k.concurrency, "concurrency", 0, "the throttle's cap (throttle.WithConcurrency), to show its leases against it")
	}
	if withInterval {
		fs.DurationVar(&k.interval, "interval", 0, "the throttle's interval: for a limit above 64, and to show when a booked slot starts (optional)")
	} else {
		fs.DurationVar(&k.interval, "interval", 0, "the throttle's interval: needed with --limit-per")
	}
	fs.Var(&k.limitPer, "limit-per", "a window of throttle.WithLimitPer, `N/DURATION` (repeat for each; needs --interval)")
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
	case len(k.limitPer) > 0 && k.interval == 0:
		return k, badUsage(fs, "--limit-per needs the throttle's --interval, which names its keys")
	}
	if len(k.limitPer) > 0 {
		// The throttle's own checks, and its merging of the windows.
		opts := append([]throttle.Option{throttle.WithLimit(k.limit)}, k.limitPer.options()...)
		if _, err := throttle.New(pos[0], k.interval, opts...); err != nil {
			return k, badUsage(fs, "%v", err)
		}
	}
	k.key = pos[0]
	return k, -1
}

const inspectAbout = `Shows the state of throttle KEY in Redis, under the names that
throttle.RedisStore.Keys gives for the limit (--limit, default 1).

A limit N up to 64 is N slot keys, prefix{KEY}, prefix{KEY}:1 ... prefix{KEY}:N-1.
A start holds one free slot for an interval, so a slot is free exactly when a
start is allowed. inspect shows each slot: free, or held with its expiry and
what holds it (a start, a start booked by a waiting call, with --interval
relative to the server's TIME, or a hold). The next start is free now when a slot is
free, and otherwise 1 ms after the first slot expires (Redis keeps a key through
its expiry millisecond).

A limit above 64 is a hash, prefix{KEY}:window, of counts of starts per time
bucket (1/160 of the interval); inspect shows the newest bucket, the count and
any hold, and with --interval the starts in the window.

A throttle with WithLimitPer keeps all its windows in one such hash,
prefix{KEY}:w:<interval in µs>:<limit> with :<interval>:<limit> for each more
window: give its --interval and each --limit-per N/DURATION, and inspect shows
the hash's ttl and fields and each window's count.

A throttle with a cap (throttle.WithConcurrency) keeps its leases in
prefix{KEY}:leases, a sorted set of random tokens scored by the last server
millisecond in which each is held; inspect lists the leases held (--concurrency K shows the
cap), and the wake-ups in prefix{KEY}:free that releases left for waiters.

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
	get  *redis.StringCmd          // slots only
	hash *redis.MapStringStringCmd // the window only
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
	if len(k.limitPer) > 0 {
		return inspectWindows(ctx, client, store, k, w)
	}
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

		leaseNames = store.LeaseKeys(k.key)
		leasesType *redis.StatusCmd
		leases     *redis.ZSliceCmd
		leasesTTL  *redis.DurationCmd
		wakeups    *redis.IntCmd
	)
	_, err := client.TxPipelined(ctx, func(pipe redis.Pipeliner) error {
		now = pipe.Time(ctx)
		for _, name := range names {
			st := keyState{name: name, typ: pipe.Type(ctx, name), pttl: pipe.PTTL(ctx, name)}
			if list {
				st.hash = pipe.HGetAll(ctx, name)
			} else {
				st.get = pipe.Get(ctx, name)
			}
			states = append(states, st)
		}
		hold = pipe.PTTL(ctx, holdName)
		exists = existsEach(ctx, pipe, stray)
		leasesType = pipe.Type(ctx, leaseNames[0])
		leases = pipe.ZRangeWithScores(ctx, leaseNames[0], 0, -1)
		leasesTTL = pipe.PTTL(ctx, leaseNames[0])
		wakeups = pipe.LLen(ctx, leaseNames[1])
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
		row("limit", "%d (--limit): counts of starts per time bucket", k.limit)
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
		showSlots(w, row, states, k.interval)
	}
	showLeases(w, row, k, leaseNames, leasesType.Val(), leases, leasesTTL.Val(), wakeups.Val(), serverNow)
	if found := existing(stray, exists); len(found) > 0 {
		fmt.Fprintf(w, "note: %s of another limit exists; give the throttle's own --limit (throttles sharing a key must use the same limit)\n",
			strings.Join(quoteAll(found), " and "))
	}
	return listErr
}

// inspectWindows shows the windows of a throttle with WithLimitPer
// (scripts/multi.lua): the hash that keeps them all, with its ttl and
// fields, the starts each window has counted, and the hold record.
func inspectWindows(ctx context.Context, client *redis.Client, store *throttle.RedisStore, k keyFlags, w io.Writer) error {
	names := store.KeysFor(k.key, windowsRequest(k))
	name, holdName := names[0], names[1]
	windows := windowsOf(name)
	fields := make([]string, len(windows))
	for i := range windows {
		fields[i] = strconv.Itoa(i+1) + ".c"
	}
	var (
		now    *redis.TimeCmd
		hold   *redis.DurationCmd
		ttl    *redis.DurationCmd
		typ    *redis.StatusCmd
		n      *redis.IntCmd
		counts *redis.SliceCmd
	)
	_, err := client.TxPipelined(ctx, func(pipe redis.Pipeliner) error {
		now = pipe.Time(ctx)
		typ = pipe.Type(ctx, name)
		ttl = pipe.PTTL(ctx, name)
		n = pipe.HLen(ctx, name)
		counts = pipe.HMGet(ctx, name, fields...)
		hold = pipe.PTTL(ctx, holdName)
		return nil
	})
	if err != nil && !errors.Is(err, redis.Nil) && !strings.HasPrefix(err.Error(), "WRONGTYPE") {
		return err
	}
	if err := now.Err(); err != nil {
		return err
	}
	row := func(name, format string, a ...any) {
		fmt.Fprintf(w, "%-13s %s\n", name, fmt.Sprintf(format, a...))
	}
	row("key", "%s", strconv.Quote(k.key))
	row("server time", "%s (Redis TIME)", now.Val().UTC().Format("2006-01-02 15:04:05.000000 MST"))
	row("windows", "%d: a bucket window each (WithLimitPer), in one hash, one script decides them all", len(windows))
	switch t := typ.Val(); t {
	case "none":
		row("hash", "%s  none: no state (never used, or idle for its longest interval)", strconv.Quote(name))
	case "hash":
		row("hash", "%s  ttl %s, %d fields", strconv.Quote(name), ttlText(ttl.Val()), n.Val())
	default:
		row("hash", "%s  a %s (not written by dthrottle), ttl %s", strconv.Quote(name), t, ttlText(ttl.Val()))
	}
	for i, win := range windows {
		counted := "no start counted"
		if v, ok := counts.Val()[i].(string); ok && typ.Val() == "hash" {
			if _, c, ok := strings.Cut(v, ":"); ok {
				counted = c + " starts counted so far"
			}
		}
		row("window", "%d per %s (fields %d.*): %s", win.Limit, win.Interval, i+1, counted)
	}
	switch d := hold.Val(); {
	case d >= 0:
		row("hold", "%s  %s left (Throttle.Hold)", strconv.Quote(holdName), fmtDur(d))
	default:
		row("hold", "%s  none", strconv.Quote(holdName))
	}
	return nil
}

// windowsOf returns the windows of the hash name (see
// throttle.RedisStore.KeysFor), in the order of its fields' prefixes, from
// the name's end: :w:<interval in µs>:<limit> for each.
func windowsOf(name string) []throttle.Window {
	_, spec, _ := strings.Cut(name[strings.LastIndexByte(name, '}'):], ":w:")
	parts := strings.Split(spec, ":")
	var ws []throttle.Window
	for i := 0; i+1 < len(parts); i += 2 {
		us, err1 := strconv.ParseInt(parts[i], 10, 64)
		n, err2 := strconv.Atoi(parts[i+1])
		if err1 == nil && err2 == nil {
			ws = append(ws, throttle.Window{Interval: time.Duration(us) * time.Microsecond, Limit: n})
		}
	}
	return ws
}

// windowsRequest is the Request of a throttle with the flags' interval,
// limit and windows, which names its keys.
func windowsRequest(k keyFlags) throttle.Request {
	return throttle.Request{Interval: k.interval, Limit: k.limit, Windows: k.limitPer}
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
func showSlots(w io.Writer, row func(string, string, ...any), states []keyState, interval time.Duration) {
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
		row(fmt.Sprintf("slot %d", i), "%s  held, ttl %s: %s", name, ttlText(ttl), slotValue(st.get.Val(), ttl, interval))
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

// slotValue describes the value v of a held slot whose PTTL is ttl: a
// booking's value is its mark, and it starts one interval before the slot
// expires (shown relative to TIME when interval is known).
func slotValue(v string, ttl, interval time.Duration) string {
	switch v {
	case "1":
		return "a start"
	case "h":
		return `a hold (value "h")`
	}
	if mark, err := strconv.ParseUint(v, 10, 64); err == nil && mark > 1 {
		if interval <= 0 {
			return fmt.Sprintf("a start booked by a waiting call (mark %s), one interval before the ttl ends (--interval to see when)", v)
		}
		return fmt.Sprintf("a start booked by a waiting call (mark %s), %s", v, relative(ttl-ceilMillis(interval)))
	}
	return fmt.Sprintf("%s (not written by dthrottle)", strconv.Quote(v))
}

// ceilMillis rounds d up to whole milliseconds, as Redis keeps expiries.
func ceilMillis(d time.Duration) time.Duration {
	return (d + time.Millisecond - 1).Truncate(time.Millisecond)
}

// showList shows the window of a limit above 64 (scripts/window.lua): a
// hash whose field c is "l:C", l the newest bucket with a start and C the
// starts counted so far, h the end of a hold in server microseconds, and
// ring fields "b:C(b)", C(b) the starts up to bucket b. A bucket is
// ceil(interval/200) microseconds; with --interval, inspect shows the end
// of the newest bucket and the starts in the window.
func showList(w io.Writer, row func(string, string, ...any), st keyState, nowUs int64, k keyFlags) error {
	ttl := st.pttl.Val()
	switch t := st.typ.Val(); t {
	case "none":
		row("window", "%s  none: no state (never used, or idle for a whole interval)", strconv.Quote(st.name))
		row("next start", "free now")
		return nil
	case "hash":
	default:
		row("window", "%s  a %s (not written by dthrottle), ttl %s", strconv.Quote(st.name), t, ttlText(ttl))
		return nil
	}
	if err := st.hash.Err(); err != nil {
		return err
	}
	h := st.hash.Val()
	row("window", "%s  ttl %s: counts of starts per bucket (%d fields)", strconv.Quote(st.name), ttlText(ttl), len(h))
	l, total, ok := parsePair(h["c"])
	if !ok {
		row("count", "%s  (not \"bucket:count\")", strconv.Quote(h["c"]))
		return nil
	}
	if hold, err := strconv.ParseInt(h["hold"], 10, 64); err == nil {
		if hold > nowUs {
			row("hold end", "in %s (recorded in the window)", fmtDur(time.Duration(hold-nowUs)*time.Microsecond))
		} else {
			row("hold end", "passed %s ago", fmtDur(time.Duration(nowUs-hold)*time.Microsecond))
		}
	}
	row("count", "%d starts counted so far; newest bucket %d", total, l)
	if k.interval <= 0 {
		row("interval", "unknown: give --interval to see the newest bucket's time and the starts in the window")
		return nil
	}
	iv := k.interval.Microseconds()
	bw := (iv + windowBuckets - 1) / windowBuckets
	end := (l + 1) * bw
	row("newest", "bucket ends %s (each start counts as if at its bucket's end)", relative(time.Duration(end-nowUs)*time.Microsecond))
	// The head of the list of buckets with starts, moved past those
	// that left the window, as the script does.
	j0 := floorDiv(nowUs-iv, bw) - 1
	hb, base, ok := parsePair(h["h"])
	for ok && hb >= 0 && hb <= j0 {
		var b, c, next int64
		b, c, next, ok = parseEntry(h[strconv.FormatInt(hb%windowRing, 10)])
		if !ok || b != hb {
			break
		}
		base, hb = c, next
	}
	in := total - base
	row("in window", "%d of limit %d counted in the last %v", in, k.limit, k.interval)
	if in < int64(k.limit) && nowUs >= end-bw {
		row("next start", "free now")
	} else {
		row("next start", "not free: the window is full (or a start is booked ahead)")
	}
	return nil
}

// windowBuckets and windowRing are K and R of scripts/window.lua: buckets
// per interval, and fields in the ring of buckets.
const (
	windowBuckets = 160
	windowRing    = 640
)

// floorDiv is a / b rounded down, for b > 0.
func floorDiv(a, b int64) int64 {
	q := a / b
	if a%b != 0 && a < 0 {
		q--
	}
	return q
}

// parseEntry parses "bucket:count:next", a bucket of the window's list.
func parseEntry(v string) (b, c, next int64, ok bool) {
	x, rest, found := strings.Cut(v, ":")
	if !found {
		return 0, 0, 0, false
	}
	y, z, found := strings.Cut(rest, ":")
	if !found {
		return 0, 0, 0, false
	}
	b, err1 := strconv.ParseInt(x, 10, 64)
	c, err2 := strconv.ParseInt(y, 10, 64)
	next, err3 := strconv.ParseInt(z, 10, 64)
	return b, c, next, err1 == nil && err2 == nil && err3 == nil
}

// parsePair parses "a:b" into two integers.
func parsePair(v string) (a, b int64, ok bool) {
	x, y, found := strings.Cut(v, ":")
	if !found {
		return 0, 0, false
	}
	a, err1 := strconv.ParseInt(x, 10, 64)
	b, err2 := strconv.ParseInt(y, 10, 64)
	return a, b, err1 == nil && err2 == nil
}

// showLeases shows the leases of a throttle with a cap (WithConcurrency):
// the sorted set prefix{KEY}:leases, member a token, score the last server
// millisecond in which it is held, and the wake-ups waiting in
// prefix{KEY}:free.
func showLeases(w io.Writer, row func(string, string, ...any), k keyFlags, names []string, typ string, leases *redis.ZSliceCmd, ttl time.Duration, wakeups int64, now time.Time) {
	capText := "--concurrency not given"
	if k.concurrency > 0 {
		capText = fmt.Sprintf("cap %d", k.concurrency)
	}
	switch typ {
	case "none":
		if k.concurrency > 0 {
			row("leases", "%s  none held (%s)", strconv.Quote(names[0]), capText)
		}
		return
	case "zset":
	default:
		row("leases", "%s  a %s (not written by dthrottle), ttl %s", strconv.Quote(names[0]), typ, ttlText(ttl))
		return
	}
	nowMs := now.UnixMilli()
	var live []redis.Z
	for _, z := range leases.Val() {
		if int64(z.Score) >= nowMs {
			live = append(live, z)
		}
	}
	row("leases", "%s  ttl %s: %d held (%s)", strconv.Quote(names[0]), ttlText(ttl), len(live), capText)
	for _, z := range live {
		fmt.Fprintf(w, "%-13s %v  expires in %s unless renewed\n", "", z.Member, fmtDur(time.Duration(int64(z.Score)+1-nowMs)*time.Millisecond))
	}
	if wakeups > 0 {
		row("wake-ups", "%s  %d pushed by releases, not yet taken by a waiter", strconv.Quote(names[1]), wakeups)
	}
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
For a throttle with WithLimitPer, give its --interval and each --limit-per
N/DURATION: its windows share one hash (throttle.RedisStore.KeysFor).
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
	if len(k.limitPer) > 0 {
		keys, stray = store.KeysFor(k.key, windowsRequest(k)), nil
	}
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
