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
// is a peer. A ratio below 1 means ours is faster. Next to the ratio to the
// floor it prints the range of that ratio within each run (the n-th result
// of ours against the n-th of the floor, which ran minutes apart at most),
// and the differences of the medians in time and allocations; last, the
// floor of every run, to spot a run that something else on the machine
// disturbed. An errors/op metric (a peer's failures) is shown in brackets.
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
	ours := flag.String("ours", "dthrottle", "name (or name prefix before a dash) of our libraries")
	floor := flag.String("floor", "floor", "name of the floor")
	md := flag.Bool("md", false, "print Markdown tables")
	flag.Parse()
	in, closeInput, err := benchfmt.Input(flag.Args())
	if err != nil {
		fatal(err)
	}
	defer closeInput()
	res, err := parse(in)
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

// sample is what one library measured in one group, one value per run, in
// the order of the runs.
type sample struct {
	ns, allocs, errs []float64
}

type results struct {
	groups []group // in order of first appearance
	libs   []string
	data   map[group]map[string]*sample
}

var line = regexp.MustCompile(`^Benchmark(\S+)\s+\d+\s+([0-9.e+]+) ns/op(.*)$`)
var allocs = regexp.MustCompile(`([0-9.e+]+) allocs/op`)
var errsRE = regexp.MustCompile(`([0-9.e+-]+) errors/op`)
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
		e := 0.0
		if m := errsRE.FindStringSubmatch(m[3]); m != nil {
			e, _ = strconv.ParseFloat(m[1], 64)
		}
		s.errs = append(s.errs, e)
	}
	return res, sc.Err()
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
			cell := benchfmt.FormatNs(benchfmt.Median(s.ns))
			if len(s.allocs) > 0 {
				cell += fmt.Sprintf(" (%g)", benchfmt.Median(s.allocs))
			}
			if e := benchfmt.Median(s.errs); e > 0 {
				cell += fmt.Sprintf(" [%.2f err/op]", e)
			}
			row = append(row, cell)
		}
		medians = append(medians, row)
	}

	head := []string{"workload", "mode", "ours", "/" + floor, "/" + floor + " per run", "−" + floor + " ns", "−" + floor + " allocs"}
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
			mo := benchfmt.Median(so.ns)
			row := []string{g.workload, g.mode, o}
			if sf := res.data[g][floor]; sf != nil && benchfmt.Median(sf.ns) > 0 {
				row = append(row, formatRatio(mo/benchfmt.Median(sf.ns)), perRun(so.ns, sf.ns),
					formatDelta(mo-benchfmt.Median(sf.ns)), fmt.Sprintf("%+g", benchfmt.Median(so.allocs)-benchfmt.Median(sf.allocs)))
			} else {
				row = append(row, "-", "-", "-", "-")
			}
			for _, other := range peers {
				if s := res.data[g][other]; s != nil && benchfmt.Median(s.ns) > 0 {
					row = append(row, formatRatio(mo/benchfmt.Median(s.ns)))
				} else {
					row = append(row, "-")
				}
			}
			ratios = append(ratios, row)
		}
	}

	fmt.Fprintf(w, "Medians of time/op (allocs/op), %s run(s) per benchmark\n\n", joinInts(counts))
	if err := benchfmt.Table(w, medians, md, 2); err != nil {
		return err
	}
	fmt.Fprintf(w, "\nRatios of medians, ours / other (below 1: ours is faster); per run: the range of\n"+
		"ours / %[1]s within each run; −%[1]s: difference of the medians\n\n", floor)
	if err := benchfmt.Table(w, ratios, md, 2); err != nil {
		return err
	}

	// The floor of every run, to spot a run that something disturbed.
	maxRuns := 0
	if len(counts) > 0 {
		maxRuns = counts[len(counts)-1]
	}
	fl := [][]string{{"workload", "mode"}}
	for i := range maxRuns {
		fl[0] = append(fl[0], "run "+strconv.Itoa(i+1))
	}
	for _, g := range res.groups {
		s := res.data[g][floor]
		if s == nil {
			continue
		}
		row := []string{g.workload, g.mode}
		for i := range maxRuns {
			if i < len(s.ns) {
				row = append(row, benchfmt.FormatNs(s.ns[i]))
			} else {
				row = append(row, "-")
			}
		}
		fl = append(fl, row)
	}
	fmt.Fprintf(w, "\n%s time/op in each run\n\n", floor)
	return benchfmt.Table(w, fl, md, 2)
}

// perRun returns the range of ours[i] / floor[i] over the runs i that
// measured both.
func perRun(ours, floor []float64) string {
	lo, hi := 0.0, 0.0
	n := 0
	for i := range min(len(ours), len(floor)) {
		if floor[i] <= 0 {
			continue
		}
		r := ours[i] / floor[i]
		if n == 0 || r < lo {
			lo = r
		}
		if n == 0 || r > hi {
			hi = r
		}
		n++
	}
	if n == 0 {
		return "-"
	}
	return formatRatio(lo) + "–" + formatRatio(hi)
}

func formatDelta(ns float64) string {
	if ns < 0 {
		return "−" + benchfmt.FormatNs(-ns)
	}
	return "+" + benchfmt.FormatNs(ns)
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
