package main

import (
	"fmt"
	"io"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/dthrottle/throttle/internal/simevent"
)

// simResult is what a simulation recorded, for the summary and timelines.
type simResult struct {
	cfg         simConfig
	begin       int64         // Unix ns of the go
	span        time.Duration // how long the workers called (shorter if interrupted)
	pids        map[int]int   // worker id → pid
	recs        []record      // sorted by time
	interrupted bool
	failures    []string // workers that exited abnormally
}

// workerStats are one worker's counts.
type workerStats struct {
	calls, starts, throttled, errors, waits int
	waited                                  time.Duration
}

// stats counts each worker's events, indexed by worker id (1..workers).
func (r *simResult) stats() []workerStats {
	st := make([]workerStats, r.cfg.workers+1)
	for _, e := range r.recs {
		if e.Worker < 1 || e.Worker > r.cfg.workers {
			continue
		}
		s := &st[e.Worker]
		switch e.Event.Event {
		case simevent.Start:
			s.calls++
			s.starts++
			if e.WaitedNs > 0 {
				s.waits++
				s.waited += time.Duration(e.WaitedNs)
			}
		case simevent.Throttled:
			s.calls++
			s.throttled++
		case simevent.Error:
			s.calls++
			s.errors++
		}
	}
	return st
}

// events returns the records as simevent events.
func (r *simResult) events() []simevent.Event {
	evs := make([]simevent.Event, len(r.recs))
	for i, e := range r.recs {
		evs[i] = e.Event
	}
	return evs
}

// possible is how many of the calls recorded a perfect throttle would have
// admitted: the calls replayed in the order they began asking, each admitted
// at the earliest start that keeps the limit, if that is at most the wait
// away (now, in drop mode) and before the end. Admitting greedily is optimal
// for a sliding window, so this is the most any throttle could admit given
// the same calls. The simulator's workers do not call on a fixed schedule
// (a worker whose call was admitted is busy for the API's duration), so
// this, not interval arithmetic alone, is the fair measure of
// under-admission.
func (r *simResult) possible() int {
	var asks []int64
	for _, e := range r.recs {
		switch e.Event.Event {
		case simevent.Start, simevent.Throttled, simevent.Error:
			a := e.AskedUnixNs
			if a == 0 {
				a = e.TUnixNs
			}
			asks = append(asks, a)
		}
	}
	sort.Slice(asks, func(i, j int) bool { return asks[i] < asks[j] })
	iv, wait, end := int64(r.cfg.interval), int64(r.cfg.wait), r.begin+int64(r.span)
	limit := r.cfg.limit
	var admitted []int64
	for _, a := range asks {
		s := a
		if n := len(admitted); n > 0 {
			s = max(s, admitted[n-1])
			if n >= limit {
				s = max(s, admitted[n-limit]+iv)
			}
		}
		if s-a <= wait && s < end {
			admitted = append(admitted, s)
		}
	}
	return len(admitted)
}

// report prints the timeline, the per-worker table and the check of the
// guarantee, and returns the exit status.
func (r *simResult) report(w io.Writer) int {
	c := r.cfg
	var rep simevent.Report
	rated := c.interval > 0
	if rated {
		rep = simevent.Check(simevent.Admissions(r.events()), c.interval, c.limit, r.span)
	} else {
		rep.Starts = len(simevent.Admissions(r.events()))
	}
	st := r.stats()
	windows := windowReports(simevent.Admissions(r.events()), c.limitPer, r.span)

	title := "timeline"
	if r.interrupted {
		title = "timeline (interrupted)"
	}
	fmt.Fprintf(w, "\n%s\n", title)
	r.ascii(w, c.width)

	fmt.Fprintf(w, "\nworker  pid       calls  starts  throttled  errors  waited\n")
	var tot workerStats
	for id := 1; id <= c.workers; id++ {
		s := st[id]
		tot.calls += s.calls
		tot.starts += s.starts
		tot.throttled += s.throttled
		tot.errors += s.errors
		tot.waits += s.waits
		tot.waited += s.waited
		fmt.Fprintf(w, "w%-6d %-8d %6d %7d %10d %7d  %s\n", id, r.pids[id], s.calls, s.starts, s.throttled, s.errors, waitText(s))
	}
	fmt.Fprintf(w, "%-16s %6d %7d %10d %7d  %s\n", "all", tot.calls, tot.starts, tot.throttled, tot.errors, waitText(tot))

	fmt.Fprintf(w, "\nguarantee: ")
	if rated {
		fmt.Fprintf(w, "at most %d start(s) in any %v window", c.limit, c.interval)
		for _, win := range c.limitPer {
			fmt.Fprintf(w, " and %d in any %v window", win.Limit, win.Interval)
		}
		if c.concurrency > 0 {
			fmt.Fprint(w, " and ")
		}
	}
	if c.concurrency > 0 {
		fmt.Fprintf(w, "at most %d call(s) in flight", c.concurrency)
	}
	fmt.Fprintf(w, ", across %d processes", c.workers)
	if r.interrupted {
		fmt.Fprintf(w, " (interrupted after %v)", r.span.Round(time.Millisecond))
	}
	fmt.Fprintln(w)
	row := func(name, value, note string) {
		line := fmt.Sprintf("  %-32s %-12s %s", name, value, note)
		fmt.Fprintln(w, strings.TrimRight(line, " "))
	}
	row("starts", fmt.Sprint(rep.Starts), "")
	peak, mean := r.inFlight()
	if c.concurrency > 0 {
		row("max calls in flight", fmt.Sprint(peak), fmt.Sprintf("cap %d (from start and finish events)", c.concurrency))
		row("mean calls in flight", fmt.Sprintf("%.2f", mean), "")
	}
	if !rated {
		// A cap without a rate: no window to check.
	} else if rep.Starts >= 2 {
		row("min gap between starts (raw)", fmtDur(rep.MinGap), fmt.Sprintf("interval %v", c.interval))
	} else {
		row("min gap between starts (raw)", "-", "fewer than 2 starts")
	}
	if rated {
		possible := r.possible()
		row(fmt.Sprintf("max starts in any %v (raw)", c.interval), fmt.Sprint(rep.MaxInWindow), fmt.Sprintf("limit %d", c.limit))
		row("provable violations", fmt.Sprint(rep.Violations), "")
		for i, win := range c.limitPer {
			row(fmt.Sprintf("max starts in any %v (raw)", win.Interval), fmt.Sprint(windows[i].MaxInWindow), fmt.Sprintf("limit %d (--limit-per)", win.Limit))
			row(fmt.Sprintf("provable violations per %v", win.Interval), fmt.Sprint(windows[i].Violations), "")
		}
		row("admitted / capacity", fmt.Sprintf("%d / %.1f", rep.Starts, rep.Ideal),
			fmt.Sprintf("= %s  (capacity: limit x duration / interval)", ratio(float64(rep.Starts), rep.Ideal)))
		if c.concurrency == 0 && len(c.limitPer) == 0 {
			row("admitted / possible", fmt.Sprintf("%d / %d", rep.Starts, possible),
				fmt.Sprintf("= %s  (possible: the most a perfect throttle", ratio(float64(rep.Starts), float64(possible))))
			row("", "", fmt.Sprintf("   could admit of these %d calls)", tot.calls))
		}
		fmt.Fprintf(w, "\n  Raw figures use the times fn started, after the store's answer reached the\n"+
			"  worker: on a busy machine they can dip below the interval by that delay.\n"+
			"  A violation is counted only when the times prove it: %d starts (limit+1)\n"+
			"  of which the last started less than %v after the first began asking.\n", c.limit+1, c.interval)
	}
	if c.concurrency > 0 {
		fmt.Fprintf(w, "\n  Calls in flight count each call from its start to its finish event; a lease\n"+
			"  is taken before the start and released after the finish, so the count is\n"+
			"  never above the number of leases held.\n")
	}
	if tot.errors > 0 {
		fmt.Fprintf(w, "  %d call(s) failed because the store did not answer in time (fail closed).\n", tot.errors)
	}

	status := exitOK
	fmt.Fprintln(w)
	for _, f := range r.failures {
		fmt.Fprintf(w, "warning: %s\n", f)
	}
	switch {
	case !rep.OK():
		status = exitFail
		fmt.Fprintf(w, "FAIL: the guarantee did not hold: %d group(s) of %d starts provably within less than %v\n",
			rep.Violations, c.limit+1, c.interval)
	case slices.ContainsFunc(windows, func(r simevent.Report) bool { return !r.OK() }):
		status = exitFail
		for i, win := range c.limitPer {
			if !windows[i].OK() {
				fmt.Fprintf(w, "FAIL: the guarantee did not hold: %d group(s) of %d starts provably within less than %v (--limit-per)\n",
					windows[i].Violations, win.Limit+1, win.Interval)
			}
		}
	case c.concurrency > 0 && peak > c.concurrency:
		status = exitFail
		fmt.Fprintf(w, "FAIL: the guarantee did not hold: %d calls in flight at once, cap %d\n", peak, c.concurrency)
	case len(r.failures) > 0:
		status = exitFail
		fmt.Fprintf(w, "FAIL: no violation was recorded, but %d worker(s) failed, so the record is incomplete\n", len(r.failures))
	default:
		if c.concurrency > 0 {
			fmt.Fprintf(w, "PASS: the guarantee held: at most %d of %d call(s) in flight", peak, c.concurrency)
			if rated {
				fmt.Fprint(w, ", 0 provable violations of the rate")
			}
			fmt.Fprintf(w, " in %d starts by %d processes\n", rep.Starts, c.workers)
		} else {
			fmt.Fprintf(w, "PASS: the guarantee held: 0 provable violations in %d starts by %d processes\n", rep.Starts, c.workers)
		}
	}
	return status
}

// calls returns each call as [start, finish] in Unix ns: each worker makes
// one call at a time, so a start pairs with that worker's next finish. A
// call without a finish counts as running until the end of the record.
func (r *simResult) calls() [][2]int64 {
	end := r.begin + int64(r.span)
	for _, e := range r.recs {
		end = max(end, e.TUnixNs)
	}
	open := make(map[int]int64)
	var out [][2]int64
	for _, e := range r.recs {
		switch e.Event.Event {
		case simevent.Start:
			if s, ok := open[e.Worker]; ok {
				out = append(out, [2]int64{s, end})
			}
			open[e.Worker] = e.TUnixNs
		case simevent.Finish:
			if s, ok := open[e.Worker]; ok {
				out = append(out, [2]int64{s, e.TUnixNs})
				delete(open, e.Worker)
			}
		}
	}
	for _, s := range open {
		out = append(out, [2]int64{s, end})
	}
	return out
}

// inFlight returns the most calls in flight at one instant and the mean
// over the run.
func (r *simResult) inFlight() (peak int, mean float64) {
	return simevent.InFlight(r.calls(), r.span)
}

func waitText(s workerStats) string {
	if s.waits == 0 {
		return "-"
	}
	return fmt.Sprintf("%d, avg %v", s.waits, fmtDur(s.waited/time.Duration(s.waits)))
}

func ratio(a, b float64) string {
	if b == 0 {
		return "-"
	}
	return fmt.Sprintf("%.2f", a/b)
}

// lane is one worker's timeline: times in Unix ns.
type lane struct {
	id, pid   int
	starts    []int64
	bars      [][2]int64 // API calls: start, finish
	waits     [][2]int64 // asked, start, for calls that waited
	throttled []int64
	errors    []int64
}

// lanes returns one lane per worker, and the time range to draw.
func (r *simResult) lanes() ([]lane, int64, int64) {
	ls := make([]lane, r.cfg.workers)
	for i := range ls {
		ls[i].id = i + 1
		ls[i].pid = r.pids[i+1]
	}
	from, to := r.begin, r.begin+int64(r.span)
	open := make(map[int]int64)
	for _, e := range r.recs {
		if e.Worker < 1 || e.Worker > len(ls) {
			continue
		}
		to = max(to, e.TUnixNs)
		l := &ls[e.Worker-1]
		switch e.Event.Event {
		case simevent.Start:
			l.starts = append(l.starts, e.TUnixNs)
			open[e.Worker] = e.TUnixNs
			if e.WaitedNs > 0 && e.AskedUnixNs > 0 {
				l.waits = append(l.waits, [2]int64{e.AskedUnixNs, e.TUnixNs})
			}
		case simevent.Finish:
			if s, ok := open[e.Worker]; ok {
				l.bars = append(l.bars, [2]int64{s, e.TUnixNs})
				delete(open, e.Worker)
			}
		case simevent.Throttled:
			l.throttled = append(l.throttled, e.TUnixNs)
		case simevent.Error:
			l.errors = append(l.errors, e.TUnixNs)
		}
	}
	for id, s := range open { // calls cut off without a finish
		ls[id-1].bars = append(ls[id-1].bars, [2]int64{s, to})
	}
	return ls, from, to
}

// niceStep returns a round step (1, 2 or 5 times a power of ten) that cuts
// span into at most n parts.
func niceStep(span time.Duration, n int) time.Duration {
	step := time.Duration(1)
	for {
		for _, m := range []time.Duration{1, 2, 5} {
			if span/(step*m) < time.Duration(n) {
				return step * m
			}
		}
		step *= 10
	}
}

// secLabel formats d since the beginning as seconds: "0s", "1.5s".
func secLabel(d time.Duration) string {
	return strings.TrimSuffix(strings.TrimRight(fmt.Sprintf("%.3f", d.Seconds()), "0"), ".") + "s"
}

// ascii draws one lane per worker, width columns wide in all.
func (r *simResult) ascii(w io.Writer, width int) {
	ls, from, to := r.lanes()
	label := max(len(fmt.Sprintf("w%d", len(ls))), 3) + 2
	cols := max(width-label-1, 10)
	span := max(to-from, 1)
	col := func(t int64) int {
		return min(max(int((t-from)*int64(cols)/span), 0), cols-1)
	}
	rank := map[byte]int{'.': 0, '-': 1, '=': 2, 'x': 3, 'E': 4, 'S': 5}
	mark := func(row []byte, i int, m byte) {
		if rank[m] > rank[row[i]] {
			row[i] = m
		}
	}
	all := make([]int, cols)
	var rows []string
	for _, l := range ls {
		row := []byte(strings.Repeat(".", cols))
		for _, b := range l.waits {
			for i := col(b[0]); i <= col(b[1]); i++ {
				mark(row, i, '-')
			}
		}
		for _, b := range l.bars {
			for i := col(b[0]); i <= col(b[1]); i++ {
				mark(row, i, '=')
			}
		}
		for _, t := range l.throttled {
			mark(row, col(t), 'x')
		}
		for _, t := range l.errors {
			mark(row, col(t), 'E')
		}
		for _, t := range l.starts {
			mark(row, col(t), 'S')
			all[col(t)]++
		}
		rows = append(rows, fmt.Sprintf("%-*s%s", label, fmt.Sprintf("w%d", l.id), row))
	}
	allRow := make([]byte, cols)
	for i, n := range all {
		switch {
		case n == 0:
			allRow[i] = '.'
		case n == 1:
			allRow[i] = 'S'
		case n <= 9:
			allRow[i] = byte('0' + n)
		default:
			allRow[i] = '+'
		}
	}
	fmt.Fprintf(w, "%-*s%s\n", label, "all", allRow)
	if r.cfg.concurrency > 0 {
		// The most calls in flight within each column.
		fly := make([]int, cols)
		type edge struct {
			t int64
			d int
		}
		var edges []edge
		for _, c := range r.calls() {
			edges = append(edges, edge{c[0], 1}, edge{c[1], -1})
		}
		sort.Slice(edges, func(i, j int) bool {
			if edges[i].t != edges[j].t {
				return edges[i].t < edges[j].t
			}
			return edges[i].d < edges[j].d
		})
		n, e := 0, 0
		for i := range cols {
			colEnd := from + (int64(i)+1)*span/int64(cols)
			fly[i] = n
			for ; e < len(edges) && edges[e].t < colEnd; e++ {
				n += edges[e].d
				fly[i] = max(fly[i], n)
			}
		}
		flyRow := make([]byte, cols)
		for i, n := range fly {
			switch {
			case n == 0:
				flyRow[i] = '.'
			case n <= 9:
				flyRow[i] = byte('0' + n)
			default:
				flyRow[i] = '+'
			}
		}
		fmt.Fprintf(w, "%-*s%s\n", label, "fly", flyRow)
	}
	for _, row := range rows {
		fmt.Fprintln(w, row)
	}

	// The time axis: '+' at round times, labelled where they fit.
	step := niceStep(time.Duration(span), max(cols/7, 2))
	axis := []byte(strings.Repeat("-", cols))
	labels := []byte(strings.Repeat(" ", cols+8))
	next := 0
	for t := time.Duration(0); int64(t) <= span; t += step {
		i := col(from + int64(t))
		axis[i] = '+'
		if s := secLabel(t); i >= next && i+len(s) <= len(labels) {
			copy(labels[i:], s)
			next = i + len(s) + 1
		}
	}
	fmt.Fprintf(w, "%*s%s\n%*s%s\n", label, "", axis, label, "", strings.TrimRight(string(labels), " "))
	fmt.Fprint(w, "S start  = API call  x throttled  E store error")
	if r.cfg.wait > 0 {
		fmt.Fprint(w, "  - waiting for a turn")
	}
	fmt.Fprintf(w, "\n(one column = %v; in \"all\", a digit counts the starts in one column",
		fmtDur(time.Duration(span/int64(cols))))
	if r.cfg.concurrency > 0 {
		fmt.Fprint(w, "; in \"fly\", the most calls in flight")
	}
	fmt.Fprintln(w, ")")
}
