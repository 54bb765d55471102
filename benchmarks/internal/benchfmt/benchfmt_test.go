package benchfmt

import (
	"strings"
	"testing"
)

func TestMedian(t *testing.T) {
	for _, tt := range []struct {
		in   []float64
		want float64
	}{{nil, 0}, {[]float64{3}, 3}, {[]float64{5, 1, 3}, 3}, {[]float64{4, 1, 3, 2}, 2.5}} {
		if got := Median(tt.in); got != tt.want {
			t.Errorf("Median(%v) = %v, want %v", tt.in, got, tt.want)
		}
	}
}

func TestTableMarkdown(t *testing.T) {
	var b strings.Builder
	if err := Table(&b, [][]string{{"a", "b", "c"}, {"x", "y", "1"}}, true, 2); err != nil {
		t.Fatal(err)
	}
	want := "| a | b | c |\n|---|---|---:|\n| x | y | 1 |\n"
	if b.String() != want {
		t.Errorf("Table = %q, want %q", b.String(), want)
	}
}
