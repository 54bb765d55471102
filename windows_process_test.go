package throttle

import (
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/stretchr/testify/assert"

	"github.com/dthrottle/throttle/internal/redistest"
	"github.com/dthrottle/throttle/internal/simevent"
)

// TestCrossProcessWindows runs worker processes on one key with two windows,
// 3 per 100 ms and 12 per 1 s, under continuous demand: the short window
// binds within each burst, the long one across bursts, in turn. Every
// window must hold (0 provable violations, judged as simevent.Check does),
// and the long window's capacity must mostly be used.
func TestCrossProcessWindows(t *testing.T) {
	if testing.Short() {
		t.Skip("cross-process test skipped in -short mode")
	}
	mr := miniredis.RunT(t)
	mr.ClockTTL(true) // expire keys on the real clock, as Redis does
	servers := map[string]string{"miniredis": mr.Addr()}
	if redistest.Available() || requireRedis() {
		servers["redis"] = redistest.Start(t).Addr
	} else {
		t.Log("redis-server not found: cross-process test runs on miniredis only")
	}
	const workers = 4
	const duration = 2500 * time.Millisecond
	short := Window{Interval: 100 * time.Millisecond, Limit: 3}
	long := Window{Interval: time.Second, Limit: 12}
	for name, addr := range servers {
		for _, wait := range []time.Duration{0, 250 * time.Millisecond} {
			t.Run(name+"/wait "+wait.String(), func(t *testing.T) {
				spec := workerSpec{Addr: addr, Key: "xproc:" + t.Name(), Interval: short.Interval, Limit: short.Limit,
					Windows: []Window{long}, Wait: wait, Duration: duration}
				evs := runWorkers(t, workers, spec)
				for _, e := range evs {
					assert.NotEqual(t, simevent.Error, e.Event, "worker %d store error: %s", e.Worker, e.Err)
				}
				as := simevent.Admissions(evs)
				for _, w := range []Window{short, long} {
					r := simevent.Check(as, w.Interval, w.Limit, duration)
					t.Logf("%d per %v: %d starts, ideal %.0f, admitted/ideal %.2f, raw max in window %d, provable violations %d",
						w.Limit, w.Interval, r.Starts, r.Ideal, r.AdmittedRatio(), r.MaxInWindow, r.Violations)
					assert.Zero(t, r.Violations, "provable violations of %d per %v", w.Limit, w.Interval)
					if w == long {
						assert.GreaterOrEqual(t, r.AdmittedRatio(), 0.6, "admitted/ideal of the long window")
					} else {
						assert.GreaterOrEqual(t, r.MaxInWindow, 2, "the short window binds: bursts of starts")
					}
				}
			})
		}
	}
}
