// Package benchfmt holds what the benchmark summary tools (cmd/medians,
// cmd/ratios) share: reading go test -bench output, medians, and tables.
package benchfmt

import (
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"text/tabwriter"
)

// Input returns the concatenation of the files named in args, or standard
// input when there are none, and a function that closes the files.
func Input(args []string) (io.Reader, func(), error) {
	var in []io.Reader
	var files []*os.File
	closeAll := func() {
		for _, f := range files {
			_ = f.Close()
		}
	}
	for _, name := range args {
		f, err := os.Open(name)
		if err != nil {
			closeAll()
			return nil, nil, err
		}
		files = append(files, f)
		in = append(in, f)
	}
	if len(in) == 0 {
		in = append(in, os.Stdin)
	}
	return io.MultiReader(in...), closeAll, nil
}

// Median returns the median of xs, or 0 for none.
func Median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	if n := len(s); n%2 == 1 {
		return s[n/2]
	}
	n := len(s)
	return (s[n/2-1] + s[n/2]) / 2
}

// FormatNs formats a duration in nanoseconds as ns, µs or ms.
func FormatNs(ns float64) string {
	switch {
	case ns >= 1e6:
		return fmt.Sprintf("%.2fms", ns/1e6)
	case ns >= 1e3:
		return fmt.Sprintf("%.1fµs", ns/1e3)
	default:
		return fmt.Sprintf("%.1fns", ns)
	}
}

// Table writes rows, the first being the header, aligned for a terminal
// or as a Markdown table whose first textCols columns are left-aligned and
// the others right-aligned.
func Table(w io.Writer, rows [][]string, md bool, textCols int) error {
	if md {
		for i, r := range rows {
			if _, err := fmt.Fprintf(w, "| %s |\n", strings.Join(r, " | ")); err != nil {
				return err
			}
			if i == 0 {
				sep := make([]string, len(r))
				for j := range sep {
					sep[j] = "---:"
					if j < textCols {
						sep[j] = "---"
					}
				}
				if _, err := fmt.Fprintf(w, "|%s|\n", strings.Join(sep, "|")); err != nil {
					return err
				}
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
