package main

import (
	"strings"
	"testing"

	"github.com/dthrottle/throttle/benchmarks/internal/benchfmt"
)

const input = `goos: linux
pkg: github.com/dthrottle/throttle/benchmarks
BenchmarkW/floor/serial-2         	     100	     100 ns/op	     280 B/op	       8 allocs/op
BenchmarkW/floor/serial-2         	     100	     300 ns/op	     280 B/op	       8 allocs/op
BenchmarkW/floor/serial-2         	     100	     200 ns/op	     280 B/op	       8 allocs/op
BenchmarkW/dthrottle/serial-2     	     100	     110 ns/op	     300 B/op	       9 allocs/op
BenchmarkW/dthrottle/serial-2     	     100	     110 ns/op	     300 B/op	       9 allocs/op
BenchmarkW/dthrottle/serial-2     	     100	     220 ns/op	     300 B/op	       9 allocs/op
BenchmarkW/dthrottle-allow/serial-2	     100	     440 ns/op
BenchmarkW/throttled/serial-2     	     100	     440 ns/op	     300 B/op	      20 allocs/op
BenchmarkW/throttled/parallel64-2 	     100	     440 ns/op	         0.5000 errors/op	     300 B/op	      20 allocs/op
BenchmarkNoLibrary-2              	     100	     440 ns/op
PASS
`

func TestParseAndReport(t *testing.T) {
	res, err := parse(strings.NewReader(input))
	if err != nil {
		t.Fatal(err)
	}
	g := group{"W", "serial"}
	if got := benchfmt.Median(res.data[g]["floor"].ns); got != 200 {
		t.Errorf("floor median = %v, want 200", got)
	}
	if got := benchfmt.Median(res.data[g]["dthrottle"].ns); got != 110 {
		t.Errorf("dthrottle median = %v, want 110", got)
	}
	if len(res.groups) != 2 {
		t.Errorf("groups = %v, want W/serial and W/parallel64", res.groups)
	}
	var out strings.Builder
	if err := report(&out, res, "dthrottle", "floor", false); err != nil {
		t.Fatal(err)
	}
	s := out.String()
	// dthrottle/floor = 110/200, dthrottle/throttled = 110/440,
	// dthrottle-allow/floor = 440/200.
	// Per run: 110/100, 110/300, 220/200; the medians differ by -90 ns
	// and +1 alloc.
	for _, want := range []string{"0.55", "0.25", "2.20", "110.0ns (9)", "dthrottle-allow",
		"0.37–1.10", "−90.0ns", "+1", "440.0ns (20) [0.50 err/op]", "100.0ns"} {
		if !strings.Contains(s, want) {
			t.Errorf("report lacks %q:\n%s", want, s)
		}
	}
	for lib, want := range map[string]bool{"dthrottle": true, "dthrottle-allow": true, "throttled": false, "floor": false} {
		if got := isOurs(lib, "dthrottle"); got != want {
			t.Errorf("isOurs(%q) = %v, want %v", lib, got, want)
		}
	}
	out.Reset()
	if err := report(&out, res, "dthrottle", "floor", true); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "| W | serial | dthrottle | 0.55 |") {
		t.Errorf("Markdown report lacks the dthrottle row:\n%s", out.String())
	}
}

func TestMedianEven(t *testing.T) {
	if got := benchfmt.Median([]float64{4, 1, 3, 2}); got != 2.5 {
		t.Errorf("median = %v, want 2.5", got)
	}
}
