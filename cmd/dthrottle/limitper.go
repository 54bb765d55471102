package main

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/dthrottle/throttle"
	"github.com/dthrottle/throttle/internal/simevent"
)

// limitPer is the repeatable flag --limit-per N/D: the windows of
// throttle.WithLimitPer.
type limitPer []throttle.Window

func (l *limitPer) String() string {
	if l == nil {
		return ""
	}
	parts := make([]string, len(*l))
	for i, w := range *l {
		parts[i] = strconv.Itoa(w.Limit) + "/" + w.Interval.String()
	}
	return strings.Join(parts, ",")
}

// Set parses one window, N/D: at most N starts in any window of length D.
func (l *limitPer) Set(v string) error {
	n, d, ok := strings.Cut(v, "/")
	if !ok {
		return fmt.Errorf("want N/DURATION, such as 20/1s")
	}
	limit, err := strconv.Atoi(n)
	if err != nil {
		return fmt.Errorf("limit %q: %v", n, err)
	}
	per, err := time.ParseDuration(d)
	if err != nil {
		return err
	}
	*l = append(*l, throttle.Window{Interval: per, Limit: limit})
	return nil
}

// options returns the throttle options of the windows.
func (l limitPer) options() []throttle.Option {
	opts := make([]throttle.Option, len(l))
	for i, w := range l {
		opts[i] = throttle.WithLimitPer(w.Limit, w.Interval)
	}
	return opts
}

// args returns the worker's command-line flags for the windows.
func (l limitPer) args() []string {
	var args []string
	for _, w := range l {
		args = append(args, "--limit-per", strconv.Itoa(w.Limit)+"/"+w.Interval.String())
	}
	return args
}

// windowReports checks the admissions against every window of --limit-per.
func windowReports(as []simevent.Admission, l limitPer, span time.Duration) []simevent.Report {
	reps := make([]simevent.Report, len(l))
	for i, w := range l {
		reps[i] = simevent.Check(as, w.Interval, w.Limit, span)
	}
	return reps
}
