// Package simevent holds the event line written by the dthrottle simulator
// and by this module's cross-process tests, and the check of the throttle
// guarantee from such events.
package simevent

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"time"
)

// Event kinds.
const (
	Start     = "start"     // fn is about to run (the call was admitted)
	Finish    = "finish"    // fn returned
	Throttled = "throttled" // the call was not admitted
	Error     = "error"     // the store failed
)

// Event is one JSON line. Times are the worker's wall clock in Unix
// nanoseconds; workers on one machine share that clock.
type Event struct {
	TUnixNs int64  `json:"t_unix_ns"`
	Worker  int    `json:"worker"`
	PID     int    `json:"pid"`
	Event   string `json:"event"`
	// AskedUnixNs is, for a start, when the call began asking the store:
	// the store decided between it and TUnixNs.
	AskedUnixNs int64 `json:"asked_unix_ns,omitempty"`
	// WaitedNs is, for a start after WithWait, how long the call waited.
	WaitedNs int64 `json:"waited_ns,omitempty"`
	// Err is the store error of an error event.
	Err string `json:"err,omitempty"`
}

// Read decodes JSON lines until EOF.
func Read(r io.Reader) ([]Event, error) {
	var evs []Event
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64*1024), 1<<20)
	for line := 1; sc.Scan(); line++ {
		if len(sc.Bytes()) == 0 {
			continue
		}
		var e Event
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			return nil, fmt.Errorf("simevent: line %d: %w", line, err)
		}
		evs = append(evs, e)
	}
	return evs, sc.Err()
}

// Admission is one admitted call: when it began asking the store and when
// fn started, in Unix nanoseconds.
type Admission struct {
	Asked, Started int64
}

// Admissions returns the admissions recorded by the start events of evs.
func Admissions(evs []Event) []Admission {
	var as []Admission
	for _, e := range evs {
		if e.Event == Start {
			asked := e.AskedUnixNs
			if asked == 0 {
				asked = e.TUnixNs
			}
			as = append(as, Admission{Asked: asked, Started: e.TUnixNs})
		}
	}
	return as
}

// Report is the check of a run against the guarantee.
type Report struct {
	Starts int
	// MinGap is the smallest gap between consecutive starts (0 with fewer
	// than two starts). With limit 1 and no delay between the store's
	// decision and fn's start, it would be at least the interval.
	MinGap time.Duration
	// MaxInWindow is the most starts found in any half-open window of
	// the interval, judged by start times.
	MaxInWindow int
	// Violations counts the groups of limit+1 admissions (consecutive by
	// start) whose store decisions provably lie within less than the
	// interval: the latest start minus the earliest ask is below it. Delay
	// between the decision and fn's start cannot cause one.
	Violations int
	// Ideal is the number of starts the limit allows over the span.
	Ideal float64
}

// OK reports whether the run held the guarantee.
func (r Report) OK() bool { return r.Violations == 0 }

// AdmittedRatio is Starts / Ideal.
func (r Report) AdmittedRatio() float64 {
	if r.Ideal == 0 {
		return 0
	}
	return float64(r.Starts) / r.Ideal
}

// Check checks admissions made over span against limit starts per interval.
func Check(as []Admission, interval time.Duration, limit int, span time.Duration) Report {
	as = append([]Admission(nil), as...)
	sort.Slice(as, func(i, j int) bool { return as[i].Started < as[j].Started })
	r := Report{Starts: len(as), Ideal: float64(limit) * span.Seconds() / interval.Seconds()}
	iv := int64(interval)
	for i := 1; i < len(as); i++ {
		if g := time.Duration(as[i].Started - as[i-1].Started); i == 1 || g < r.MinGap {
			r.MinGap = g
		}
	}
	lo := 0
	for hi := range as {
		for as[hi].Started-as[lo].Started >= iv {
			lo++
		}
		r.MaxInWindow = max(r.MaxInWindow, hi-lo+1)
	}
	for i := 0; i+limit < len(as); i++ {
		group := as[i : i+limit+1]
		earliestAsk := group[0].Asked
		for _, a := range group {
			earliestAsk = min(earliestAsk, a.Asked)
		}
		if group[limit].Started-earliestAsk < iv {
			r.Violations++
		}
	}
	return r
}

// InFlight returns the most calls in flight at one instant, each call a
// [start, end] pair of Unix ns, and the mean number in flight over span
// (0 for no span). An end at the same nanosecond as a start counts first:
// a concurrency lease is released after its call's end and taken before
// the next call's start.
func InFlight(calls [][2]int64, span time.Duration) (peak int, mean float64) {
	type edge struct {
		t int64
		d int
	}
	edges := make([]edge, 0, 2*len(calls))
	var busy int64
	for _, c := range calls {
		edges = append(edges, edge{c[0], +1}, edge{c[1], -1})
		busy += c[1] - c[0]
	}
	sort.Slice(edges, func(i, j int) bool {
		if edges[i].t != edges[j].t {
			return edges[i].t < edges[j].t
		}
		return edges[i].d < edges[j].d
	})
	n := 0
	for _, e := range edges {
		n += e.d
		peak = max(peak, n)
	}
	if span > 0 {
		mean = float64(busy) / float64(span)
	}
	return peak, mean
}
