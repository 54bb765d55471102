package simevent

import (
	"bytes"
	"encoding/json"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

const ms = int64(time.Millisecond)

func TestCheckFindsProvableViolations(t *testing.T) {
	tests := []struct {
		name       string
		as         []Admission
		limit      int
		violations int
		maxIn      int
		minGap     time.Duration
	}{
		{"spaced", []Admission{{0, 0}, {99 * ms, 100 * ms}, {199 * ms, 200 * ms}}, 1, 0, 1, 100 * time.Millisecond},
		// fn started late: raw gap 95ms, but the second decision may have
		// been as late as 100ms after the first ask.
		{"late start is not a violation", []Admission{{0, 5 * ms}, {90 * ms, 100 * ms}}, 1, 0, 2, 95 * time.Millisecond},
		{"both decided within 50ms", []Admission{{0, 10 * ms}, {20 * ms, 50 * ms}}, 1, 1, 2, 40 * time.Millisecond},
		{"limit 2, three close", []Admission{{0, 1 * ms}, {2 * ms, 3 * ms}, {4 * ms, 5 * ms}}, 2, 1, 3, 2 * time.Millisecond},
		{"limit 2, two close", []Admission{{0, 1 * ms}, {2 * ms, 3 * ms}, {100 * ms, 101 * ms}}, 2, 0, 2, 2 * time.Millisecond},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := Check(tt.as, 100*time.Millisecond, tt.limit, time.Second)
			assert.Equal(t, tt.violations, r.Violations, "Violations")
			assert.Equal(t, tt.maxIn, r.MaxInWindow, "MaxInWindow")
			assert.Equal(t, tt.minGap, r.MinGap, "MinGap")
			assert.Equal(t, tt.violations == 0, r.OK(), "OK")
		})
	}
}

func TestReadRoundTrip(t *testing.T) {
	var buf bytes.Buffer
	in := []Event{{TUnixNs: 5, Worker: 1, PID: 2, Event: Start, AskedUnixNs: 3}, {TUnixNs: 9, Worker: 1, PID: 2, Event: Finish}}
	for _, e := range in {
		b, err := json.Marshal(e)
		require.NoError(t, err)
		buf.Write(append(b, '\n'))
	}
	assert.Contains(t, buf.String(), `"t_unix_ns":5`)
	out, err := Read(&buf)
	require.NoError(t, err)
	assert.Equal(t, in, out)
	assert.Equal(t, []Admission{{3, 5}}, Admissions(out))
}

func TestInFlight(t *testing.T) {
	// [0,10] and [5,15] overlap; [15,20] starts as [5,15] ends (the end
	// counts first); [30,40] is alone.
	calls := [][2]int64{{0, 10}, {5, 15}, {15, 20}, {30, 40}}
	peak, mean := InFlight(calls, 40)
	if peak != 2 {
		t.Errorf("peak = %d, want 2", peak)
	}
	if want := 35.0 / 40; mean != want {
		t.Errorf("mean = %v, want %v", mean, want)
	}
	if peak, mean := InFlight(nil, 0); peak != 0 || mean != 0 {
		t.Errorf("InFlight(nil, 0) = %d, %v", peak, mean)
	}
}
