// Command ratios reads `go test -bench` output of the benchmarks module
// and prints the medians per library, then the ratios of ours to the floor
// and to each peer, per workload and mode, computed from the medians.
//
// Usage:
//
//	go run ./cmd/ratios [-md] [-ours dthrottle] [-floor floor] [file ...]
//
// With no file it reads standard input. Benchmark names must be
// Benchmark<Workload>/<library>/<mode> (an optional -GOMAXPROCS suffix is
// ignored). A library is ours when its name is the -ours name or starts
// with it and a dash; the floor is the -floor library; every other library
// is a peer. A ratio below 1 means ours is faster.
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
	ours := flag.String("ours", "dthrottle", "name (or name prefix before a dash) of our libraries")
	floor := flag.String("floor", "floor", "name of the floor")
	md := flag.Bool("md", false, "print Markdown tables")
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
	res, err := parse(io.MultiReader(in...))
	if err != nil {
		fatal(err)
	}
	if len(res.groups) == 0 {
		fatal(fmt.Errorf("no benchmark lines of the form Benchmark<Workload>/<library>/<mode> found"))
	}
	if err := report(os.Stdout, res, *ours, *floor, *md); err != nil {
		fatal(err)
	}
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "ratios:", err)
	os.Exit(1)
}

// group is one workload in one mode, e.g. Allowed1PerMinute parallel64.
type group struct{ workload, mode string }

// sample is what one library measured in one group, one value per run.
type sample struct {
	ns, allocs []float64
}

type results struct {
	groups []group // in order of first appearance
	libs   []string
	data   map[group]map[string]*sample
}

var line = regexp.MustCompile(`^Benchmark(\S+)\s+\d+\s+([0-9.e+]+) ns/op(.*)$`)
var allocs = regexp.MustCompile(`([0-9.e+]+) allocs/op`)
var procs = regexp.MustCompile(`-\d+$`)

func parse(r io.Reader) (*results, error) {
	res := &results{data: map[group]map[string]*sample{}}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64*1024), 1<<20)
	for sc.Scan() {
		m := line.FindStringSubmatch(strings.TrimSpace(sc.Text()))
		if m == nil {
			continue
		}
		parts := strings.Split(procs.ReplaceAllString(m[1], ""), "/")
		if len(parts) < 3 {
			continue
		}
		g := group{parts[0], parts[len(parts)-1]}
		lib := strings.Join(parts[1:len(parts)-1], "/")
		ns, err := strconv.ParseFloat(m[2], 64)
		if err != nil {
			return nil, fmt.Errorf("%q: %v", sc.Text(), err)
		}
		if res.data[g] == nil {
			res.data[g] = map[string]*sample{}
			res.groups = append(res.groups, g)
		}
		if !slices.Contains(res.libs, lib) {
			res.libs = append(res.libs, lib)
		}
		s := res.data[g][lib]
		if s == nil {
			s = &sample{}
			res.data[g][lib] = s
		}
		s.ns = append(s.ns, ns)
		if a := allocs.FindStringSubmatch(m[3]); a != nil {
			if v, err := strconv.ParseFloat(a[1], 64); err == nil {
				s.allocs = append(s.allocs, v)
			}
		}
	}
	return res, sc.Err()
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

func isOurs(lib, ours string) bool { return lib == ours || strings.HasPrefix(lib, ours+"-") }

func report(w io.Writer, res *results, ours, floor string, md bool) error {
	var oursLibs, peers []string
	for _, l := range res.libs {
		switch {
		case isOurs(l, ours):
			oursLibs = append(oursLibs, l)
		case l != floor:
			peers = append(peers, l)
		}
	}
	runs := map[int]bool{}
	for _, g := range res.groups {
		for _, s := range res.data[g] {
			runs[len(s.ns)] = true
		}
	}
	var counts []int
	for n := range runs {
		counts = append(counts, n)
	}
	slices.Sort(counts)

	libs := append(append([]string{floor}, oursLibs...), peers...)
	medians := [][]string{append([]string{"workload", "mode"}, libs...)}
	for _, g := range res.groups {
		row := []string{g.workload, g.mode}
		for _, l := range libs {
			s := res.data[g][l]
			if s == nil {
				row = append(row, "-")
				continue
			}
			cell := formatNs(median(s.ns))
			if len(s.allocs) > 0 {
				cell += fmt.Sprintf(" (%g)", median(s.allocs))
			}
			row = append(row, cell)
		}
		medians = append(medians, row)
	}

	head := []string{"workload", "mode", "ours", "/" + floor}
	for _, p := range peers {
		head = append(head, "/"+p)
	}
	ratios := [][]string{head}
	for _, g := range res.groups {
		for _, o := range oursLibs {
			so := res.data[g][o]
			if so == nil {
				continue
			}
			mo := median(so.ns)
			row := []string{g.workload, g.mode, o}
			for _, other := range append([]string{floor}, peers...) {
				if s := res.data[g][other]; s != nil && median(s.ns) > 0 {
					row = append(row, formatRatio(mo/median(s.ns)))
				} else {
					row = append(row, "-")
				}
			}
			ratios = append(ratios, row)
		}
	}

	fmt.Fprintf(w, "Medians of time/op (allocs/op), %s run(s) per benchmark\n\n", joinInts(counts))
	if err := table(w, medians, md); err != nil {
		return err
	}
	fmt.Fprintf(w, "\nRatios of medians, ours / other (below 1: ours is faster)\n\n")
	return table(w, ratios, md)
}

// table writes rows, the first being the header, aligned for a terminal
// or as a Markdown table.
func table(w io.Writer, rows [][]string, md bool) error {
	if md {
		for i, r := range rows {
			fmt.Fprintf(w, "| %s |\n", strings.Join(r, " | "))
			if i == 0 {
				sep := make([]string, len(r))
				for j := range sep {
					sep[j] = "---"
					if j >= 2 {
						sep[j] = "---:"
					}
				}
				fmt.Fprintf(w, "|%s|\n", strings.Join(sep, "|"))
			}
		}
		return nil
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	for _, r := range rows {
		fmt.Fprintln(tw, strings.Join(r, "\t")+"\t")
	}
	return tw.Flush()
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

func formatRatio(r float64) string {
	if r < 0.01 {
		return fmt.Sprintf("%.1e", r)
	}
	return fmt.Sprintf("%.2f", r)
}

func joinInts(xs []int) string {
	s := make([]string, len(xs))
	for i, x := range xs {
		s[i] = strconv.Itoa(x)
	}
	return strings.Join(s, " or ")
}
