package main

import (
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestRun(t *testing.T) {
	for _, args := range [][]string{
		{"-duration", "1500ms", "-workers", "4"},
		{"-duration", "1500ms", "-workers", "4", "-wait", "500ms"},
	} {
		var out strings.Builder
		err := run(args, &out)
		require.NoError(t, err, "run(%q) output:\n%s", args, out.String())
		got := out.String()
		num := func(label string) int {
			t.Helper()
			m := regexp.MustCompile(`(?m)^\s*` + regexp.QuoteMeta(label) + `\s+(\d+)`).FindStringSubmatch(got)
			require.NotNil(t, m, "run(%q): no %q line in:\n%s", args, label, got)
			n, err := strconv.Atoi(m[1])
			require.NoError(t, err)
			return n
		}
		sent, ok, tooMany := num("requests sent:"), num("200 OK:"), num("429 Too Many:")
		num("throttled locally:")
		assert.Equal(t, sent, ok+tooMany, "run(%q): sent = 200s + 429s", args)
		assert.Equal(t, sent, num("API received:"), "run(%q): the API received what was sent", args)
		assert.Positive(t, ok, "run(%q): 200s", args)
		// The client allows one request per 150ms: at most 11 in 1.5 s.
		assert.LessOrEqual(t, sent, 11, "run(%q): requests sent", args)
	}
}

func TestRunBadFlags(t *testing.T) {
	for _, args := range [][]string{
		{"-workers", "0"},
		{"-duration", "0s"},
		{"-limit", "0"},
		{"-interval", "0s"},
		{"-api-limit", "0"},
		{"-wait", "-1s"},
		{"-nosuchflag"},
	} {
		var out strings.Builder
		assert.Error(t, run(args, &out), "run(%q)", args)
	}
}
