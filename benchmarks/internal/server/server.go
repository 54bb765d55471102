// Package server starts a private redis-server for the benchmarks.
//
// The root module's internal/redistest cannot be imported from this
// module, so this is a small launcher of its own, with the same rules: the
// server listens on a free port of 127.0.0.1 (never 6379, which may belong
// to a Redis that is not ours), keeps nothing on disk, is checked to be our
// own process before use, and is stopped by its process id at cleanup.
// Nothing here ever flushes a server.
package server

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

const (
	binary = "redis-server"
	// requireEnv makes a missing redis-server a failure instead of a skip,
	// as in the root module's tests.
	requireEnv = "THROTTLE_REQUIRE_REDIS"
	// systemPort is never used: it may belong to someone else's Redis.
	systemPort   = 6379
	attempts     = 5
	readyTimeout = 10 * time.Second
	stopTimeout  = 5 * time.Second
)

// Server is one redis-server process started by Start.
type Server struct {
	// Addr is "127.0.0.1:<port>".
	Addr string
	// PID is the process id of the server.
	PID int

	cmd  *exec.Cmd
	done chan struct{} // closed once the process has been reaped
}

// Start starts redis-server on a free loopback port and returns once it
// answers PING as our process. It skips tb when redis-server is not on PATH
// (fails it if THROTTLE_REQUIRE_REDIS=1). The server is stopped when tb
// and its subtests or sub-benchmarks have completed.
func Start(tb testing.TB) *Server {
	tb.Helper()
	if _, err := exec.LookPath(binary); err != nil {
		if os.Getenv(requireEnv) == "1" {
			tb.Fatalf("server: %s not found on PATH but %s=1", binary, requireEnv)
		}
		tb.Skipf("server: %s not found on PATH; install Redis to run this", binary)
	}
	dir := tb.TempDir()
	var lastErr error
	for range attempts {
		port, err := freePort()
		if err != nil {
			tb.Fatalf("server: %v", err)
		}
		s, err := launch(dir, port)
		if err == nil {
			tb.Cleanup(s.Stop)
			return s
		}
		lastErr = err
	}
	tb.Fatalf("server: could not start %s: %v", binary, lastErr)
	return nil
}

// Client returns a go-redis client of the server, closed at tb's cleanup.
// Its context deadlines are honoured (ContextTimeoutEnabled), as the
// library recommends.
func (s *Server) Client(tb testing.TB) *redis.Client {
	c := NewClient(s.Addr)
	tb.Cleanup(func() { _ = c.Close() })
	return c
}

// NewClient returns the client every benchmark and worker uses for addr.
func NewClient(addr string) *redis.Client {
	return redis.NewClient(&redis.Options{Addr: addr, ContextTimeoutEnabled: true})
}

// Stop terminates the server by its process id (SIGTERM, then SIGKILL
// after 5 s) and waits for it to exit. It is idempotent.
func (s *Server) Stop() {
	select {
	case <-s.done:
		return
	default:
	}
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.done:
		return
	case <-time.After(stopTimeout):
	}
	_ = s.cmd.Process.Kill()
	<-s.done
}

func launch(dir string, port int) (*Server, error) {
	var log bytes.Buffer
	cmd := exec.Command(binary,
		"--port", strconv.Itoa(port),
		"--bind", "127.0.0.1",
		"--save", "",
		"--appendonly", "no",
		"--daemonize", "no",
		"--dir", dir,
	)
	cmd.Dir = dir
	cmd.Stdout = &log
	cmd.Stderr = &log
	cmd.SysProcAttr = sysProcAttr()
	if err := start(cmd); err != nil {
		return nil, err
	}
	s := &Server{
		Addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(port)),
		PID:  cmd.Process.Pid,
		cmd:  cmd,
		done: make(chan struct{}),
	}
	var waitErr error
	go func() {
		waitErr = cmd.Wait()
		close(s.done)
	}()
	if err := s.waitReady(); err != nil {
		s.Stop()
		if errors.Is(err, errExited) {
			err = fmt.Errorf("%w (%v): %s", err, waitErr, strings.TrimSpace(lastLines(log.String(), 5)))
		}
		return nil, err
	}
	return s, nil
}

var errExited = errors.New("redis-server exited before it was ready")

// waitReady polls until the server answers PING and reports our pid, so
// that a foreign server that took the port is never used.
func (s *Server) waitReady() error {
	c := redis.NewClient(&redis.Options{Addr: s.Addr, MaxRetries: -1, DialTimeout: time.Second})
	defer c.Close()
	deadline := time.Now().Add(readyTimeout)
	var lastErr error
	for time.Now().Before(deadline) {
		select {
		case <-s.done:
			return errExited
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		info, err := c.Info(ctx, "server").Result()
		cancel()
		if err == nil {
			if pid := field(info, "process_id"); pid != strconv.Itoa(s.PID) {
				return fmt.Errorf("%s is served by process %s, not ours (%d)", s.Addr, pid, s.PID)
			}
			return nil
		}
		lastErr = err
		select {
		case <-s.done:
			return errExited
		case <-time.After(20 * time.Millisecond):
		}
	}
	return fmt.Errorf("redis-server on %s not ready within %v: %v", s.Addr, readyTimeout, lastErr)
}

func field(info, name string) string {
	for line := range strings.SplitSeq(info, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), name+":"); ok {
			return v
		}
	}
	return ""
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// freePort returns a loopback port that was free a moment ago, never 6379.
func freePort() (int, error) {
	for {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return 0, err
		}
		port := l.Addr().(*net.TCPAddr).Port
		l.Close()
		if port != systemPort {
			return port, nil
		}
	}
}
