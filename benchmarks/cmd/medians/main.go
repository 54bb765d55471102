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
	"text/tabwriter"
)

func main() {
	floor := flag.String("floor", "floor/SETNX", "name of the floor under each top-level benchmark")
	md := flag.Bool("md", false, "print a Markdown table")
	flag.Parse()
	var in []io.Reader
	for _, name := range flag.Args() {
		f, err := os.Open(name)
		if err != nil {
			fatal(err)
		}
		defer f.Close()
		in = append(in, f)
	}
	if len(in) == 0 {
		in = append(in, os.Stdin)
	}
	names, data, err := parse(io.MultiReader(in...))
	if err != nil {
		fatal(err)
	}
	if len(names) == 0 {
		fatal(fmt.Errorf("no benchmark lines found"))
	}
	write(os.Stdout, rows(names, data, *floor), *md)
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
		row := []string{n, formatNs(median(s.ns)), formatNs(mn) + "–" + formatNs(mx), "-", "-", "-", "-", strconv.Itoa(len(s.ns))}
		if len(s.allocs) > 0 {
			row[3] = strconv.FormatFloat(median(s.allocs), 'g', -1, 64)
		}
		if f := data[floorOf(n, floor)]; f != nil && f != s && median(f.ns) > 0 {
			row[4] = fmt.Sprintf("%.2f", median(s.ns)/median(f.ns))
			d := median(s.ns) - median(f.ns)
			if d < 0 {
				row[5] = "−" + formatNs(-d)
			} else {
				row[5] = "+" + formatNs(d)
			}
			if len(s.allocs) > 0 && len(f.allocs) > 0 {
				row[6] = fmt.Sprintf("%+g", median(s.allocs)-median(f.allocs))
			}
		}
		out = append(out, row)
	}
	return out
}

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	if n := len(s); n%2 == 1 {
		return s[n/2]
	} else {
		return (s[n/2-1] + s[n/2]) / 2
	}
}

func formatNs(ns float64) string {
	switch {
	case ns >= 1e6:
		return fmt.Sprintf("%.2fms", ns/1e6)
	case ns >= 1e3:
		return fmt.Sprintf("%.1fµs", ns/1e3)
	default:
		return fmt.Sprintf("%.1fns", ns)
	}
}

func write(w io.Writer, rows [][]string, md bool) {
	if md {
		for i, r := range rows {
			fmt.Fprintf(w, "| %s |\n", strings.Join(r, " | "))
			if i == 0 {
				sep := make([]string, len(r))
				for j := range sep {
					sep[j] = "---:"
				}
				sep[0] = "---"
				fmt.Fprintf(w, "|%s|\n", strings.Join(sep, "|"))
			}
		}
		return
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	for _, r := range rows {
		fmt.Fprintln(tw, strings.Join(r, "\t")+"\t")
	}
	tw.Flush()
}
