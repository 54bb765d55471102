// Package workerproc runs copies of a test binary as long-lived worker
// processes, for the cross-process tests of the task-queue adapters: each
// worker is told its spec (JSON) through an environment variable, prints
// its events as JSON lines on stdout, and runs until its stdin is closed.
//
// The test side calls Start; the worker side (from TestMain, when the
// variable is set) calls Emitter and WaitStdin.
package workerproc

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"sync"
	"testing"
	"time"
)

// Environ returns the environment for a worker process: this process's,
// then kv, then GORACE with atexit_sleep_ms=0 in front of any GORACE
// options already set (a later option wins). A race-enabled binary
// otherwise sleeps 1 s at exit, which a test that starts dozens of
// workers pays every time.
func Environ(kv ...string) []string {
	env := append(os.Environ(), kv...)
	return append(env, "GORACE=atexit_sleep_ms=0 "+os.Getenv("GORACE"))
}

// Start starts one copy of the test binary per spec, running no test
// (-test.run=^$), with env set to the spec's JSON, and calls add with each
// line that a worker prints on stdout, decoded as E (add may be called
// from several goroutines at once). The returned stop closes every
// worker's stdin, waits for them to exit, and reports through tb a line
// that did not decode, a failed exit (with the worker's stderr), and logs
// any stderr; calling it again does nothing. Call stop from the test's
// goroutine, not from a Cleanup (tb's failures must still count).
func Start[E any](tb testing.TB, env string, specs []any, add func(E)) (stop func()) {
	tb.Helper()
	type proc struct {
		cmd    *exec.Cmd
		stdin  io.WriteCloser
		stderr *lockedBuffer
		read   chan error
	}
	procs := make([]*proc, 0, len(specs))
	stopped := false
	stop = func() {
		if stopped {
			return
		}
		stopped = true
		for _, p := range procs {
			_ = p.stdin.Close()
		}
		for i, p := range procs {
			if err := <-p.read; err != nil {
				tb.Errorf("worker %d output: %v", i, err)
			}
			if err := p.cmd.Wait(); err != nil {
				tb.Errorf("worker %d: %v: %s", i, err, p.stderr.String())
			} else if s := p.stderr.String(); s != "" {
				tb.Logf("worker %d stderr:\n%s", i, s)
			}
		}
	}
	for i, spec := range specs {
		b, err := json.Marshal(spec)
		if err != nil {
			stop()
			tb.Fatalf("worker %d spec: %v", i, err)
		}
		p := &proc{cmd: exec.Command(os.Args[0], "-test.run=^$"), stderr: &lockedBuffer{}, read: make(chan error, 1)}
		p.cmd.Env = Environ(env + "=" + string(b))
		p.cmd.Stderr = p.stderr
		stdin, err1 := p.cmd.StdinPipe()
		stdout, err2 := p.cmd.StdoutPipe()
		if err = firstErr(err1, err2); err == nil {
			err = p.cmd.Start()
		}
		if err != nil {
			stop()
			tb.Fatalf("starting worker %d: %v", i, err)
		}
		p.stdin = stdin
		go func() {
			sc := bufio.NewScanner(stdout)
			sc.Buffer(make([]byte, 0, 64*1024), 1<<20)
			for sc.Scan() {
				var e E
				if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
					p.read <- fmt.Errorf("line %q: %w", sc.Text(), err)
					_, _ = io.Copy(io.Discard, stdout)
					return
				}
				add(e)
			}
			p.read <- sc.Err()
		}()
		procs = append(procs, p)
	}
	return stop
}

// Emitter returns a function that prints v as one JSON line on stdout, for
// a worker's events; it is safe for concurrent use.
func Emitter() func(v any) {
	var mu sync.Mutex
	enc := json.NewEncoder(os.Stdout)
	return func(v any) {
		mu.Lock()
		defer mu.Unlock()
		_ = enc.Encode(v)
	}
}

// WaitStdin blocks until stdin is closed (the test called stop) or max has
// passed, so that a worker whose test died does not run forever.
func WaitStdin(max time.Duration) {
	done := make(chan struct{})
	go func() {
		_, _ = io.Copy(io.Discard, os.Stdin)
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(max):
	}
}

func firstErr(errs ...error) error {
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// lockedBuffer is a bytes buffer safe for a writer and a reader on
// different goroutines.
type lockedBuffer struct {
	mu sync.Mutex
	b  []byte
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.b = append(l.b, p...)
	return len(p), nil
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return string(l.b)
}

// Log collects events from any goroutine; its Add can be the add function
// of Start, or be called in the test's own process.
type Log[E any] struct {
	mu  sync.Mutex
	evs []E
}

// Add records e.
func (l *Log[E]) Add(e E) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.evs = append(l.evs, e)
}

// Snapshot returns a copy of the events recorded so far.
func (l *Log[E]) Snapshot() []E {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]E(nil), l.evs...)
}
