package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dthrottle/throttle"
	"github.com/dthrottle/throttle/internal/redistest"
	"github.com/dthrottle/throttle/internal/simevent"
)

// TestMain lets the test binary stand in for the dthrottle binary: the
// simulator re-executes os.Executable() (here, this test binary) as its
// workers, with execEnv set, and TestSimSIGINT runs it as the parent.
func TestMain(m *testing.M) {
	if os.Getenv(execEnv) == "1" {
		os.Exit(mainArgs(os.Args[1:]))
	}
	os.Exit(m.Run())
}

// syncBuffer is a bytes.Buffer safe for concurrent use.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// runCmd runs the command line args in-process and returns its exit status
// and output.
func runCmd(ctx context.Context, args ...string) (int, string, string) {
	var stdout, stderr syncBuffer
	code := run(ctx, args, strings.NewReader(""), &stdout, &stderr)
	return code, stdout.String(), stderr.String()
}

// summaryFigure returns the number printed in the summary row named name.
func summaryFigure(t *testing.T, out, name string) int {
	t.Helper()
	m := regexp.MustCompile(`(?m)^  ` + regexp.QuoteMeta(name) + ` +(\d+)$`).FindStringSubmatch(out)
	require.NotNil(t, m, "summary row %q not found in:\n%s", name, out)
	n, err := strconv.Atoi(m[1])
	require.NoError(t, err)
	return n
}

// checkRun runs a short simulation with args added and checks its output,
// events file and SVG against each other and against the guarantee.
func checkRun(t *testing.T, interval time.Duration, limit, workers int, args ...string) {
	t.Helper()
	dir := t.TempDir()
	events, svg := filepath.Join(dir, "events.jsonl"), filepath.Join(dir, "timeline.svg")
	args = append([]string{"sim",
		"--workers", strconv.Itoa(workers), "--interval", interval.String(), "--limit", strconv.Itoa(limit),
		"--duration", "1.5s", "--api-time", "150ms", "--seed", "42",
		"--events", events, "--svg", svg}, args...)
	code, out, errOut := runCmd(context.Background(), args...)
	require.Equal(t, exitOK, code, "stdout:\n%s\nstderr:\n%s", out, errOut)
	assert.Contains(t, out, "PASS: the guarantee held")
	assert.Contains(t, out, "timeline")
	for id := 1; id <= workers; id++ {
		assert.Regexp(t, fmt.Sprintf(`(?m)^w%d +\d+ +\d+`, id), out, "a table row per worker")
	}

	f, err := os.Open(events)
	require.NoError(t, err)
	defer f.Close()
	evs, err := simevent.Read(f)
	require.NoError(t, err)
	require.NotEmpty(t, evs)
	for _, e := range evs {
		assert.Contains(t, []string{simevent.Start, simevent.Finish, simevent.Throttled, simevent.Error}, e.Event)
		assert.True(t, e.Worker >= 1 && e.Worker <= workers, "worker id %d", e.Worker)
		assert.Positive(t, e.PID)
		assert.Positive(t, e.TUnixNs)
		if e.Event == simevent.Start {
			assert.Positive(t, e.AskedUnixNs, "a start records when it began asking")
			assert.LessOrEqual(t, e.AskedUnixNs, e.TUnixNs)
		}
	}
	rep := simevent.Check(simevent.Admissions(evs), interval, limit, 1500*time.Millisecond)
	assert.Equal(t, rep.Starts, summaryFigure(t, out, "starts"), "the summary counts the starts of the events file")
	assert.Equal(t, rep.Violations, summaryFigure(t, out, "provable violations"))
	assert.Zero(t, rep.Violations)
	assert.Positive(t, rep.Starts, "liveness: some calls were admitted")
	assert.Contains(t, out, fmt.Sprintf("events: %d lines written", len(evs)))

	b, err := os.ReadFile(svg)
	require.NoError(t, err)
	assert.True(t, strings.HasPrefix(string(b), "<svg"), "the SVG starts with <svg")
	assert.True(t, strings.HasSuffix(string(b), "</svg>\n"))
	assert.Equal(t, rep.Starts*2, strings.Count(string(b), `stroke="#0b3d91" stroke-width="2"/>`)-1,
		"a tick per start in its lane and in the all-starts lane, plus the legend's")
}

func TestSimEmbedded(t *testing.T) {
	t.Parallel()
	checkRun(t, 100*time.Millisecond, 1, 3)
}

func TestSimEmbeddedWait(t *testing.T) {
	t.Parallel()
	checkRun(t, 100*time.Millisecond, 2, 3, "--wait", "150ms", "--quiet")
}

// TestSimLimitPer runs the simulator with a second window, 3 per 500 ms on
// top of 2 per 100 ms, and checks that its summary checks that window too,
// from the same events.
func TestSimLimitPer(t *testing.T) {
	t.Parallel()
	events := filepath.Join(t.TempDir(), "events.jsonl")
	code, out, errOut := runCmd(context.Background(), "sim", "--workers", "3", "--interval", "100ms", "--limit", "2",
		"--limit-per", "3/500ms", "--duration", "1.5s", "--api-time", "150ms", "--seed", "42", "--quiet", "--events", events)
	require.Equal(t, exitOK, code, "stdout:\n%s\nstderr:\n%s", out, errOut)
	assert.Contains(t, out, "PASS: the guarantee held")
	assert.Contains(t, out, "at most 2 start(s) in any 100ms window and 3 in any 500ms window")
	f, err := os.Open(events)
	require.NoError(t, err)
	defer f.Close()
	evs, err := simevent.Read(f)
	require.NoError(t, err)
	rep := simevent.Check(simevent.Admissions(evs), 500*time.Millisecond, 3, 1500*time.Millisecond)
	assert.Equal(t, rep.Violations, summaryFigure(t, out, "provable violations per 500ms"), "the summary checks the second window")
	assert.Regexp(t, fmt.Sprintf(`(?m)^  max starts in any 500ms \(raw\) +%d +limit 3`, rep.MaxInWindow), out)
	assert.Zero(t, rep.Violations)
	assert.Positive(t, rep.Starts, "liveness: some calls were admitted")
}

// TestSimLimitPerConcurrency runs the simulator with a cap and a second
// window: the verdict checks the calls in flight and both windows.
func TestSimLimitPerConcurrency(t *testing.T) {
	t.Parallel()
	code, out, errOut := runCmd(context.Background(), "sim", "--workers", "3", "--interval", "100ms", "--limit", "3",
		"--limit-per", "6/500ms", "--concurrency", "2", "--wait", "300ms", "--duration", "1.5s", "--api-time", "40ms",
		"--seed", "42", "--quiet")
	require.Equal(t, exitOK, code, "stdout:\n%s\nstderr:\n%s", out, errOut)
	assert.Contains(t, out, "PASS: the guarantee held")
	assert.Contains(t, out, "at most 3 start(s) in any 100ms window and 6 in any 500ms window and at most 2 call(s) in flight")
	assert.Zero(t, summaryFigure(t, out, "provable violations per 500ms"), "the summary checks the second window")
	assert.Regexp(t, `(?m)^  max calls in flight +[12] +cap 2`, out)
}

func TestSimRedisServer(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	url := "redis://" + srv.Addr
	t.Run("limit 1", func(t *testing.T) {
		checkRun(t, 100*time.Millisecond, 1, 3, "--redis", url, "--key", "sim1")
	})
	t.Run("limit 3", func(t *testing.T) {
		checkRun(t, 100*time.Millisecond, 3, 4, "--redis", url, "--key", "sim3", "--quiet")
	})
}

func TestSimBadFlags(t *testing.T) {
	tests := []struct {
		args []string
		msg  string
	}{
		{[]string{"--bogus"}, "flag provided but not defined: -bogus"},
		{[]string{"--workers", "0"}, "--workers 0: must be between 1 and"},
		{[]string{"--workers", "x"}, `invalid value "x" for flag -workers`},
		{[]string{"--interval", "0"}, "--interval 0s: must be between 1ms and"},
		{[]string{"--limit", "0"}, "--limit 0: must be between 1 and"},
		{[]string{"--wait", "-1s"}, "--wait -1s: must be between 0"},
		{[]string{"--duration", "0"}, "--duration 0s: must be above 0"},
		{[]string{"--api-time", "-1s"}, "--api-time -1s: must not be negative"},
		{[]string{"extra"}, `unexpected argument "extra"`},
		{[]string{"--redis", "redis://x:y:z"}, "bad --redis URL"},
		{[]string{"--limit-per", "20"}, `invalid value "20" for flag -limit-per: want N/DURATION`},
		{[]string{"--limit-per", "0/1s"}, "--limit-per 0/1s: WithLimitPer limit 0 is below 1"},
		{[]string{"--limit-per", "1/2s", "--limit-per", "1/3s", "--limit-per", "1/4s", "--limit-per", "1/5s"}, "4 windows of WithLimitPer, at most 3"},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			code, out, errOut := runCmd(context.Background(), append([]string{"sim"}, tt.args...)...)
			assert.Equal(t, exitUsage, code)
			assert.Contains(t, errOut, tt.msg)
			assert.NotContains(t, errOut, "goroutine ", "no stack trace")
			assert.Empty(t, out)
		})
	}
	t.Run("usage", func(t *testing.T) {
		_, _, errOut := runCmd(context.Background(), "sim", "--limit", "0")
		assert.Contains(t, errOut, "Usage: dthrottle sim")
		assert.Contains(t, errOut, "-workers")
	})
	t.Run("help", func(t *testing.T) {
		code, _, errOut := runCmd(context.Background(), "sim", "-h")
		assert.Equal(t, exitOK, code)
		assert.Contains(t, errOut, "Usage: dthrottle sim")
	})
	t.Run("no command", func(t *testing.T) {
		code, _, errOut := runCmd(context.Background())
		assert.Equal(t, exitUsage, code)
		assert.Contains(t, errOut, "Usage:")
	})
	t.Run("unknown command", func(t *testing.T) {
		code, _, errOut := runCmd(context.Background(), "simulate")
		assert.Equal(t, exitUsage, code)
		assert.Contains(t, errOut, `unknown command "simulate"`)
	})
}

func TestSimUnreachableStore(t *testing.T) {
	begin := time.Now()
	code, out, errOut := runCmd(context.Background(), "sim", "--redis", "redis://127.0.0.1:1")
	assert.Equal(t, exitUsage, code)
	assert.Contains(t, errOut, "cannot reach Redis at 127.0.0.1:1")
	assert.Empty(t, out, "no worker was started")
	assert.Less(t, time.Since(begin), 10*time.Second, "liveness: fails without waiting for the run")
}

// waitFor waits until s's output contains sub, failing the test after a
// generous bound.
func waitFor(t *testing.T, s fmt.Stringer, sub string) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for !strings.Contains(s.String(), sub) {
		if time.Now().After(deadline) {
			t.Fatalf("%q did not appear in:\n%s", sub, s.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestSimInterrupted ends the context of a long run, as Ctrl-C does, and
// checks that the workers stop and the summary is still printed.
func TestSimInterrupted(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var stdout, stderr syncBuffer
	done := make(chan int, 1)
	begin := time.Now()
	go func() {
		done <- run(ctx, []string{"sim", "--workers", "3", "--interval", "100ms", "--duration", "10m",
			"--api-time", "150ms"}, strings.NewReader(""), &stdout, &stderr)
	}()
	waitFor(t, &stdout, "  workers: ") // the run has begun
	time.Sleep(300 * time.Millisecond)
	cancel()
	select {
	case code := <-done:
		out := stdout.String()
		assert.Equal(t, exitOK, code, "stdout:\n%s\nstderr:\n%s", out, stderr.String())
		assert.Contains(t, out, "interrupted: stopping the workers")
		assert.Contains(t, out, "(interrupted after")
		assert.Contains(t, out, "PASS: the guarantee held")
		assert.Empty(t, stderr.String())
	case <-time.After(60 * time.Second):
		t.Fatal("the run did not stop after its context ended")
	}
	assert.Less(t, time.Since(begin), 2*time.Minute)
}

// TestSimSIGINT runs the simulator as its own process, sends it SIGINT and
// checks that it stops its workers and prints the summary.
func TestSimSIGINT(t *testing.T) {
	t.Parallel()
	exe, err := os.Executable()
	require.NoError(t, err)
	cmd := exec.Command(exe, "sim", "--workers", "2", "--interval", "100ms", "--duration", "10m", "--api-time", "150ms")
	cmd.Env = append(os.Environ(), execEnv+"=1")
	var stderr syncBuffer
	cmd.Stderr = &stderr
	stdout, err := cmd.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	var out syncBuffer
	copied := make(chan struct{})
	go func() {
		_, _ = io.Copy(&out, stdout)
		close(copied)
	}()
	waitFor(t, &out, "  workers: ")
	m := regexp.MustCompile(`workers: w1 pid (\d+), w2 pid (\d+)`).FindStringSubmatch(out.String())
	require.NotNil(t, m, out.String())
	time.Sleep(300 * time.Millisecond)
	require.NoError(t, cmd.Process.Signal(os.Interrupt))

	waited := make(chan error, 1)
	go func() {
		<-copied
		waited <- cmd.Wait()
	}()
	select {
	case err := <-waited:
		require.NoError(t, err, "exit status 0: the guarantee held\nstdout:\n%s\nstderr:\n%s", out.String(), stderr.String())
	case <-time.After(60 * time.Second):
		_ = cmd.Process.Kill()
		t.Fatalf("the simulator did not stop on SIGINT:\n%s", out.String())
	}
	assert.Contains(t, out.String(), "interrupted: stopping the workers")
	assert.Contains(t, out.String(), "PASS: the guarantee held")
	for _, s := range m[1:] {
		pid, _ := strconv.Atoi(s)
		p, err := os.FindProcess(pid)
		if err == nil {
			assert.Error(t, p.Signal(syscall.Signal(0)), "worker pid %d has exited", pid)
		}
	}
}

func TestInspectAndResetMiniredis(t *testing.T) {
	mr := miniredis.RunT(t)
	mr.ClockTTL(true)
	testInspectAndReset(t, mr.Addr())
}

func TestInspectAndResetRedisServer(t *testing.T) {
	srv := redistest.Start(t)
	testInspectAndReset(t, srv.Addr)
}

// quotedRe returns a regular expression that matches the Redis key name,
// quoted as inspect and reset print it.
func quotedRe(name string) string { return regexp.QuoteMeta(strconv.Quote(name)) }

func testInspectAndReset(t *testing.T, addr string) {
	ctx := context.Background()
	url := "redis://" + addr
	client := redis.NewClient(&redis.Options{Addr: addr})
	defer client.Close()
	store := throttle.NewRedisStore(client)
	const minute = `(59\.\d+s|1m0s|1m0\.\d+s)` // a minute of ttl, less what the test took
	countKeys := func(names []string) int64 {
		t.Helper()
		n, err := client.Exists(ctx, names...).Result()
		require.NoError(t, err)
		return n
	}

	// A limit-3 throttle with three starts and a fourth booked a minute
	// ahead, and a limit-1 one with one start.
	k3 := store.Keys("k3", 3)
	require.Len(t, k3, 4, "three slots and the hold record")
	t3, err := throttle.New("k3", time.Minute, throttle.WithStore(store), throttle.WithLimit(3))
	require.NoError(t, err)
	for range 3 {
		d, err := t3.Allow(ctx)
		require.NoError(t, err)
		require.True(t, d.Allowed)
	}
	res, err := store.Take(ctx, "k3", throttle.Request{Interval: time.Minute, Limit: 3, MaxWait: time.Hour})
	require.NoError(t, err)
	require.True(t, res.OK && res.Delay > 0, "a booking: %+v", res)
	t1, err := throttle.New("k1", time.Minute, throttle.WithStore(store))
	require.NoError(t, err)
	d, err := t1.Allow(ctx)
	require.NoError(t, err)
	require.True(t, d.Allowed)
	k1 := store.Keys("k1", 1)

	code, out, errOut := runCmd(ctx, "inspect", "k3", "--redis", url, "--limit", "3", "--interval", "1m")
	require.Equal(t, exitOK, code, errOut)
	assert.Contains(t, out, "limit         3 (--limit): 3 slot keys")
	assert.Regexp(t, `(?m)^hold +`+quotedRe(k3[3])+`  none$`, out)
	for i, name := range k3[:3] {
		assert.Regexp(t, fmt.Sprintf(`(?m)^slot %d +%s +held, ttl `, i, quotedRe(name)), out, "slot %d", i)
	}
	assert.Equal(t, 2, len(regexp.MustCompile(`(?m)^slot \d .* held, ttl `+minute+`: a start$`).FindAllString(out, -1)),
		"two slots held by a start now:\n%s", out)
	assert.Regexp(t, `(?m)^slot \d .* held, ttl (1m59\.\d+s|2m0s|2m0\.\d+s): a start booked by a waiting call \(mark \d+\), \+`+minute+`$`,
		out, "the booked slot: its mark, and its start relative to TIME")
	assert.Regexp(t, `(?m)^next start +free in `+minute+` \(the smallest slot ttl \+ 1ms\)$`, out)
	assert.NotContains(t, out, "note:")

	code, out, errOut = runCmd(ctx, "inspect", "--redis", url, "k1") // flags before KEY; --limit 1 by default
	require.Equal(t, exitOK, code, errOut)
	assert.Contains(t, out, `key           "k1"`)
	assert.Regexp(t, `(?m)^slot 0 +`+quotedRe(k1[0])+` +held, ttl `+minute+`: a start$`, out)
	assert.Regexp(t, `(?m)^hold +`+quotedRe(k1[1])+`  none$`, out, "inspect of a key without a hold")
	assert.Regexp(t, `(?m)^next start +free in `+minute, out)
	assert.NotContains(t, out, "slot 1")

	// A limit that is not the throttle's own shows the slots it names,
	// and a note.
	code, out, errOut = runCmd(ctx, "inspect", "--redis", url, "k3")
	require.Equal(t, exitOK, code, errOut)
	assert.Regexp(t, `(?m)^slot 0 +`+quotedRe(k3[0])+` +held`, out)
	assert.Regexp(t, `(?m)^note: `+quotedRe(k3[1])+` of another limit exists`, out)

	// A hold (Throttle.Hold) shows with its time left, in the hold record
	// and in every slot.
	require.NoError(t, t1.Hold(ctx, 2*time.Minute))
	code, out, errOut = runCmd(ctx, "inspect", "--redis", url, "k1")
	require.Equal(t, exitOK, code, errOut)
	assert.Regexp(t, `(?m)^hold +`+quotedRe(k1[1])+`  (1m59\.\d+s|2m0s) left \(Throttle\.Hold`, out, "inspect of a held key")
	assert.Regexp(t, `(?m)^slot 0 +`+quotedRe(k1[0])+` +held, ttl (1m59\.\d+s|2m0s): a hold \(value "h"\)$`, out)
	assert.Regexp(t, `(?m)^next start +free in (1m59\.\d+s|2m0s|2m0\.\d+s) `, out)

	code, out, errOut = runCmd(ctx, "reset", "k3", "--redis", url, "--limit", "3")
	require.Equal(t, exitOK, code, errOut)
	assert.Contains(t, out, "reset: deleted 3 of the 4 keys "+strings.Join([]string{
		strconv.Quote(k3[0]), strconv.Quote(k3[1]), strconv.Quote(k3[2]), strconv.Quote(k3[3])}, ", "))
	assert.Zero(t, countKeys(k3), "reset deleted the keys")
	code, out, _ = runCmd(ctx, "reset", "k3", "--redis", url, "--limit", "3")
	assert.Equal(t, exitOK, code)
	assert.Contains(t, out, "nothing to reset")

	code, out, errOut = runCmd(ctx, "inspect", "k3", "--redis", url, "--limit", "3")
	require.Equal(t, exitOK, code, errOut)
	for i, name := range k3[:3] {
		assert.Regexp(t, fmt.Sprintf(`(?m)^slot %d +%s +free$`, i, quotedRe(name)), out)
	}
	assert.Regexp(t, `(?m)^next start +free now$`, out)

	// Reset ends a hold too.
	code, out, errOut = runCmd(ctx, "reset", "k1", "--redis", url)
	require.Equal(t, exitOK, code, errOut)
	assert.Contains(t, out, "reset: deleted 2 of the 2 keys "+strconv.Quote(k1[0])+", "+strconv.Quote(k1[1]))
	assert.Zero(t, countKeys(k1), "reset deleted the slot and the hold record")
	code, out, errOut = runCmd(ctx, "inspect", "--redis", url, "k1")
	require.Equal(t, exitOK, code, errOut)
	assert.Regexp(t, `(?m)^hold +`+quotedRe(k1[1])+`  none$`, out, "inspect after reset of a held key")
	// t1's own deny cache still holds it off; another process's throttle
	// is admitted.
	other, err := throttle.New("k1", time.Minute, throttle.WithStore(store))
	require.NoError(t, err)
	held, err := other.Held(ctx)
	require.NoError(t, err)
	assert.Zero(t, held, "Held after reset of a held key")
	d, err = other.Allow(ctx)
	require.NoError(t, err)
	assert.True(t, d.Allowed, "a call of another throttle after reset of a held key")

	// A limit above 64 keeps counts per time bucket in a hash.
	const big = 65
	kb := store.Keys("big", big)
	require.Len(t, kb, 2, "the list and the hold record")
	tb, err := throttle.New("big", time.Minute, throttle.WithStore(store), throttle.WithLimit(big))
	require.NoError(t, err)
	for range big {
		d, err := tb.Allow(ctx)
		require.NoError(t, err)
		require.True(t, d.Allowed)
	}
	code, out, errOut = runCmd(ctx, "inspect", "big", "--redis", url, "--limit", strconv.Itoa(big))
	require.Equal(t, exitOK, code, errOut)
	// A minute and a bucket, and the validity (a 64th of the interval) of
	// the leased permits that 65 quick calls take.
	assert.Regexp(t, `(?m)^window +`+quotedRe(kb[0])+`  ttl 1m[01]\.\d+s: counts of starts per bucket`, out)
	assert.Regexp(t, `(?m)^count +65 starts counted so far; newest bucket \d+$`, out)
	assert.Contains(t, out, "give --interval")
	code, out, errOut = runCmd(ctx, "inspect", "big", "--redis", url, "--limit", strconv.Itoa(big), "--interval", "1m")
	require.Equal(t, exitOK, code, errOut)
	assert.Contains(t, out, "65 of limit 65 counted in the last 1m0s")
	assert.Regexp(t, `(?m)^newest +bucket ends \+\d`, out)
	assert.Regexp(t, `(?m)^next start +not free`, out)
	code, out, errOut = runCmd(ctx, "reset", "big", "--redis", url, "--limit", strconv.Itoa(big))
	require.Equal(t, exitOK, code, errOut)
	assert.Contains(t, out, "reset: deleted 1 of the 2 keys")
	assert.Zero(t, countKeys(kb))

	// The leases of a throttle with a cap.
	capped, err := throttle.New("capped", 0, throttle.WithStore(store), throttle.WithConcurrency(2))
	require.NoError(t, err)
	lease, err := capped.Acquire(ctx)
	require.NoError(t, err)
	code, out, errOut = runCmd(ctx, "inspect", "capped", "--redis", url, "--concurrency", "2")
	require.Equal(t, exitOK, code, errOut)
	assert.Regexp(t, `(?m)^leases +`+quotedRe(store.LeaseKeys("capped")[0])+`  ttl \d+(\.\d+)?s: 1 held \(cap 2\)$`, out)
	assert.Regexp(t, `(?m)^ +[0-9a-f]{32}  expires in \d+(\.\d+)?s unless renewed$`, out)
	lease.Release()
	code, out, errOut = runCmd(ctx, "inspect", "capped", "--redis", url, "--concurrency", "2")
	require.Equal(t, exitOK, code, errOut)
	assert.Regexp(t, `(?m)^leases +.*none held \(cap 2\)$`, out)

	// Another prefix, and a slot that dthrottle did not write.
	app := throttle.NewRedisStore(client, throttle.WithKeyPrefix("app:"))
	ka := app.Keys("odd", 2)
	require.NoError(t, client.HSet(ctx, ka[1], "f", "v").Err())
	code, out, errOut = runCmd(ctx, "inspect", "odd", "--redis", url, "--prefix", "app:", "--limit", "2")
	require.Equal(t, exitOK, code, errOut)
	assert.Regexp(t, `(?m)^slot 0 +`+quotedRe(ka[0])+` +free$`, out)
	assert.Regexp(t, `(?m)^slot 1 +`+quotedRe(ka[1])+` +held: a hash, not written by dthrottle; ttl no expiry`, out)
	assert.Regexp(t, `(?m)^next start +free now$`, out)
	code, out, errOut = runCmd(ctx, "reset", "odd", "--redis", url, "--prefix", "app:", "--limit", "2")
	require.Equal(t, exitOK, code, errOut)
	assert.Contains(t, out, "reset: deleted 1 of the 3 keys")
	assert.Zero(t, countKeys(ka))

	// Bad usage and an unreachable server.
	for _, args := range [][]string{
		{"inspect", "--redis", url},
		{"inspect", "k1"},
		{"inspect", "k1", "k2", "--redis", url},
		{"inspect", "k1", "--redis", url, "--limit", "0"},
		{"inspect", "k1", "--redis", url, "--prefix", "a{b"},
		{"reset", "k1"},
		{"reset", "k1", "--redis", url, "--limit", "-1"},
		{"reset", "k1", "--redis", url, "--concurrency", "2"}, // inspect only
		{"inspect", "k1", "--redis", "redis://127.0.0.1:1"},
		{"reset", "k1", "--redis", "redis://127.0.0.1:1"},
	} {
		code, _, errOut := runCmd(ctx, args...)
		assert.Equal(t, exitUsage, code, "%v", args)
		assert.NotEmpty(t, errOut, "%v", args)
	}
}

// TestPossible checks the replay that says how many calls a perfect
// throttle could have admitted.
func TestPossible(t *testing.T) {
	ms := int64(time.Millisecond)
	call := func(kind string, asked int64) record {
		return record{Event: simevent.Event{Event: kind, Worker: 1, TUnixNs: asked + ms, AskedUnixNs: asked}}
	}
	r := simResult{
		cfg:   simConfig{workers: 1, interval: 100 * time.Millisecond, limit: 1},
		begin: 0, span: time.Second,
		recs: []record{
			call(simevent.Start, 0), call(simevent.Throttled, 50*ms), call(simevent.Throttled, 100*ms),
			call(simevent.Throttled, 150*ms), call(simevent.Throttled, 2000*ms), // after the end
		},
	}
	assert.Equal(t, 2, r.possible(), "0 and 100ms; 50 and 150 are too close; 2s is after the end")
	r.cfg.wait = 60 * time.Millisecond
	assert.Equal(t, 3, r.possible(), "with waits: 0, 100 (for the 50) and 200 (for the 150)")
	r.cfg.wait, r.cfg.limit = 0, 2
	assert.Equal(t, 3, r.possible(), "limit 2: 0, 50, then 100 is free again; 150 is not")
}

func TestASCIITimeline(t *testing.T) {
	ms := int64(time.Millisecond)
	r := simResult{
		cfg:   simConfig{workers: 2, interval: 100 * time.Millisecond, limit: 1},
		begin: 0, span: time.Second, pids: map[int]int{1: 11, 2: 22},
		recs: []record{
			{Event: simevent.Event{Event: simevent.Start, Worker: 1, TUnixNs: 0}},
			{Event: simevent.Event{Event: simevent.Throttled, Worker: 2, TUnixNs: 50 * ms}},
			{Event: simevent.Event{Event: simevent.Finish, Worker: 1, TUnixNs: 300 * ms}},
			{Event: simevent.Event{Event: simevent.Start, Worker: 2, TUnixNs: 500 * ms}},
			{Event: simevent.Event{Event: simevent.Error, Worker: 1, TUnixNs: 990 * ms}},
		},
	}
	var b bytes.Buffer
	r.ascii(&b, 26) // 20 columns of 50 ms
	sc := bufio.NewScanner(&b)
	var lines []string
	for sc.Scan() {
		lines = append(lines, sc.Text())
	}
	require.GreaterOrEqual(t, len(lines), 5, b.String())
	assert.Equal(t, "all  S.........S.........", lines[0])
	assert.Equal(t, "w1   S======............E", lines[1])
	assert.Equal(t, "w2   .x........S=========", lines[2], "a call without a finish runs to the end")
	assert.Equal(t, "     +------------------+", lines[3])
	assert.Equal(t, "     0s                 1s", lines[4])
}

// TestSimConcurrency runs the simulator with a cap, with and without a
// rate: it passes, the summary reports the calls in flight, and the
// timeline has its "fly" row.
func TestSimConcurrency(t *testing.T) {
	t.Parallel()
	for _, args := range [][]string{
		{"--interval", "0", "--concurrency", "2"},
		{"--interval", "100ms", "--limit", "2", "--concurrency", "2", "--wait", "300ms"},
	} {
		all := append([]string{"sim", "--workers", "3", "--duration", "1500ms", "--api-time", "150ms", "--think", "30ms", "--quiet", "--lease-ttl", "2s"}, args...)
		code, out, errOut := runCmd(context.Background(), all...)
		require.Equal(t, exitOK, code, "dthrottle %v: %s\n%s", all, out, errOut)
		assert.Regexp(t, `(?m)^  max calls in flight +[12] +cap 2`, out)
		assert.Regexp(t, `(?m)^fly +[.0-9]+$`, out)
		assert.Contains(t, out, "PASS: the guarantee held: at most")
	}
	code, _, errOut := runCmd(context.Background(), "sim", "--interval", "0")
	assert.Equal(t, exitUsage, code, "--interval 0 without --concurrency")
	assert.Contains(t, errOut, "--interval 0s")
	code, _, errOut = runCmd(context.Background(), "sim", "--concurrency", "-1")
	assert.Equal(t, exitUsage, code)
	assert.Contains(t, errOut, "--concurrency -1")
}

// TestInspectAndResetWindows inspects and resets a throttle with two extra
// windows (WithLimitPer): inspect shows every window's count, and reset
// deletes every window, so the next call is admitted.
func TestInspectAndResetWindows(t *testing.T) {
	mr := miniredis.RunT(t)
	mr.ClockTTL(true)
	ctx := context.Background()
	url := "redis://" + mr.Addr()
	client := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	defer client.Close()
	store := throttle.NewRedisStore(client)
	opts := []throttle.Option{throttle.WithStore(store), throttle.WithLimit(2),
		throttle.WithLimitPer(3, time.Minute), throttle.WithLimitPer(5, time.Hour)}
	th, err := throttle.New("win", time.Second, opts...)
	require.NoError(t, err)
	for range 2 {
		d, err := th.Allow(ctx)
		require.NoError(t, err)
		require.True(t, d.Allowed)
	}
	flags := []string{"win", "--redis", url, "--limit", "2", "--interval", "1s", "--limit-per", "3/1m", "--limit-per", "5/1h"}
	code, out, errOut := runCmd(ctx, append([]string{"inspect"}, flags...)...)
	require.Equal(t, exitOK, code, errOut)
	assert.Contains(t, out, "windows       3: a bucket window each")
	name := store.KeysFor("win", throttle.Request{Interval: time.Second, Limit: 2,
		Windows: []throttle.Window{{Interval: time.Minute, Limit: 3}, {Interval: time.Hour, Limit: 5}}})[0]
	assert.Regexp(t, `(?m)^hash +`+regexp.QuoteMeta(strconv.Quote(name))+`  ttl .*, \d+ fields$`, out)
	for i, win := range []string{"2 per 1s", "3 per 1m0s", "5 per 1h0m0s"} {
		assert.Regexp(t, fmt.Sprintf(`(?m)^window +%s \(fields %d\.\*\): 2 starts counted so far$`, regexp.QuoteMeta(win), i+1), out)
	}
	// Another throttle on the key is refused until reset.
	other, err := throttle.New("win", time.Second, append(opts, throttle.WithDenyCache(false))...)
	require.NoError(t, err)
	d, err := other.Allow(ctx)
	require.NoError(t, err)
	require.False(t, d.Allowed, "a third call within the second")
	code, out, errOut = runCmd(ctx, append([]string{"reset"}, flags...)...)
	require.Equal(t, exitOK, code, errOut)
	assert.Contains(t, out, "reset: deleted 1 of the 2 keys")
	d, err = other.Allow(ctx)
	require.NoError(t, err)
	assert.True(t, d.Allowed, "a call after reset")
	// Bad flags.
	code, _, errOut = runCmd(ctx, "reset", "win", "--redis", url, "--limit-per", "3/1m")
	assert.Equal(t, exitUsage, code)
	assert.Contains(t, errOut, "--limit-per needs the throttle's --interval")
	code, _, errOut = runCmd(ctx, "inspect", "win", "--redis", url, "--interval", "1s", "--limit-per", "0/1m")
	assert.Equal(t, exitUsage, code)
	assert.Contains(t, errOut, "WithLimitPer limit 0 is below 1")
}
