package main

import (
	"strings"
	"testing"
)

const input = `BenchmarkRedis/floor/SETNX-2                	 100	   100 ns/op	 266 B/op	 7 allocs/op
BenchmarkRedis/floor/SETNX/parallel64-2     	 100	    10 ns/op	 738 B/op	 8 allocs/op
BenchmarkRedis/keyed/limit1-2               	 100	   130 ns/op	 812 B/op	14 allocs/op
BenchmarkRedis/keyed/limit1/parallel64-2    	 100	    12 ns/op	 834 B/op	14 allocs/op
BenchmarkRedis/floor/SETNX-2                	 100	   300 ns/op	 266 B/op	 7 allocs/op
BenchmarkRedis/floor/SETNX/parallel64-2     	 100	    10 ns/op	 738 B/op	 8 allocs/op
BenchmarkRedis/keyed/limit1-2               	 100	   110 ns/op	 812 B/op	14 allocs/op
BenchmarkRedis/keyed/limit1/parallel64-2    	 100	    14 ns/op	 834 B/op	14 allocs/op
BenchmarkDenyCache/serial-2                 	 100	    40 ns/op	   0 B/op	 0 allocs/op
`

func TestRows(t *testing.T) {
	names, data, err := parse(strings.NewReader(input))
	if err != nil {
		t.Fatal(err)
	}
	got := map[string][]string{}
	for _, r := range rows(names, data, "floor/SETNX")[1:] {
		got[r[0]] = r
	}
	// keyed/limit1: medians 120 against the floor's 200; parallel 13 against 10.
	for name, want := range map[string][]string{
		"Redis/keyed/limit1":            {"120.0ns", "110.0ns–130.0ns", "14", "0.60", "−80.0ns", "+7", "2"},
		"Redis/keyed/limit1/parallel64": {"13.0ns", "12.0ns–14.0ns", "14", "1.30", "+3.0ns", "+6", "2"},
		"Redis/floor/SETNX":             {"200.0ns", "100.0ns–300.0ns", "7", "-", "-", "-", "2"},
		"DenyCache/serial":              {"40.0ns", "40.0ns–40.0ns", "0", "-", "-", "-", "1"},
	} {
		if r := got[name]; strings.Join(r[1:], " ") != strings.Join(want, " ") {
			t.Errorf("%s: got %q, want %q", name, r[1:], want)
		}
	}
}
