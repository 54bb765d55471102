package main

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestRun(t *testing.T) {
	var out strings.Builder
	args := []string{"-duration", "600ms", "-interval", "100ms", "-workers", "4"}
	err := run(args, &out)
	require.NoError(t, err, "run(%q) output:\n%s", args, out.String())

	got := out.String()
	assert.Contains(t, got, "summary: 4 workers, 600ms, interval 100ms", "run(%q) output", args)
	assert.Contains(t, got, "starts:", "run(%q) output", args)
	assert.Contains(t, got, "throttled:", "run(%q) output", args)
	assert.Contains(t, got, "min gap between starts:", "run(%q) output", args)
	assert.Contains(t, got, "guarantee held", "run(%q) output", args)
	assert.Contains(t, got, "worker", "run(%q) logs no worker line", args)
}

func TestRunBadFlags(t *testing.T) {
	for _, args := range [][]string{
		{"-workers", "0"},
		{"-interval", "0s"},
		{"-duration", "0s"},
		{"-nosuchflag"},
	} {
		var out strings.Builder
		assert.Error(t, run(args, &out), "run(%q)", args)
	}
}
