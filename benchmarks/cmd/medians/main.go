// Command medians reads `go test -bench` output (several runs of the same
// benchmarks, as the root module's benchmarks print it) and prints, per
// benchmark, the median time/op with the range over the runs, the median
// allocs/op, and, where the benchmark has a floor, the ratio to the floor's
// median and the differences of the medians (time and allocations).
//
// Usage:
//
//	go run ./cmd/medians [-md] [-floor floor/SETNX] [file ...]
//
// A benchmark's floor is the benchmark named -floor under the same
// top-level benchmark and in the same mode: a name ending in /parallel64
// (or /parallel) is compared with <Top>/<floor>/parallel64, any other with
// <Top>/<floor>. With no file it reads standard input.
package main

import (
	"bufio"
	"flag"
	"fmt"
	"io"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/dthrottle/throttle/benchmarks/internal/benchfmt"
)

func main() {
	floor := flag.String("floor", "floor/SETNX", "name of the floor under each top-level benchmark")
	md := flag.Bool("md", false, "print a Markdown table")
	flag.Parse()
	in, closeInput, err := benchfmt.Input(flag.Args())
	if err != nil {
		fatal(err)
	}
	defer closeInput()
	names, data, err := parse(in)
	if err != nil {
		fatal(err)
	}
	if len(names) == 0 {
		fatal(fmt.Errorf("no benchmark lines found"))
	}
	if err := benchfmt.Table(os.Stdout, rows(names, data, *floor), *md, 1); err != nil {
		fatal(err)
	}
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "medians:", err)
	os.Exit(1)
}

type sample struct{ ns, allocs []float64 }

var (
	line   = regexp.MustCompile(`^Benchmark(\S+)\s+\d+\s+([0-9.e+]+) ns/op(.*)$`)
	allocs = regexp.MustCompile(`([0-9.e+]+) allocs/op`)
	procs  = regexp.MustCompile(`-\d+$`)
)

func parse(r io.Reader) ([]string, map[string]*sample, error) {
	var names []string
	data := map[string]*sample{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64*1024), 1<<20)
	for sc.Scan() {
		m := line.FindStringSubmatch(strings.TrimSpace(sc.Text()))
		if m == nil {
			continue
		}
		name := procs.ReplaceAllString(m[1], "")
		ns, err := strconv.ParseFloat(m[2], 64)
		if err != nil {
			return nil, nil, fmt.Errorf("%q: %v", sc.Text(), err)
		}
		s := data[name]
		if s == nil {
			s = &sample{}
			data[name] = s
			names = append(names, name)
		}
		s.ns = append(s.ns, ns)
		if a := allocs.FindStringSubmatch(m[3]); a != nil {
			if v, err := strconv.ParseFloat(a[1], 64); err == nil {
				s.allocs = append(s.allocs, v)
			}
		}
	}
	return names, data, sc.Err()
}

// floorOf returns the name of name's floor.
func floorOf(name, floor string) string {
	top, _, _ := strings.Cut(name, "/")
	for _, mode := range []string{"/parallel64", "/parallel"} {
		if strings.HasSuffix(name, mode) {
			return top + "/" + floor + mode
		}
	}
	return top + "/" + floor
}

func rows(names []string, data map[string]*sample, floor string) [][]string {
	out := [][]string{{"benchmark", "time/op", "range", "allocs/op", "×floor", "−floor time", "−floor allocs", "runs"}}
	for _, n := range names {
		s := data[n]
		mn, mx := slices.Min(s.ns), slices.Max(s.ns)
		row := []string{n, benchfmt.FormatNs(benchfmt.Median(s.ns)), benchfmt.FormatNs(mn) + "–" + benchfmt.FormatNs(mx), "-", "-", "-", "-", strconv.Itoa(len(s.ns))}
		if len(s.allocs) > 0 {
			row[3] = strconv.FormatFloat(benchfmt.Median(s.allocs), 'g', -1, 64)
		}
		if f := data[floorOf(n, floor)]; f != nil && f != s && benchfmt.Median(f.ns) > 0 {
			row[4] = fmt.Sprintf("%.2f", benchfmt.Median(s.ns)/benchfmt.Median(f.ns))
			d := benchfmt.Median(s.ns) - benchfmt.Median(f.ns)
			if d < 0 {
				row[5] = "−" + benchfmt.FormatNs(-d)
			} else {
				row[5] = "+" + benchfmt.FormatNs(d)
			}
			if len(s.allocs) > 0 && len(f.allocs) > 0 {
				row[6] = fmt.Sprintf("%+g", benchfmt.Median(s.allocs)-benchfmt.Median(f.allocs))
			}
		}
		out = append(out, row)
	}
	return out
}
