// Package redistest starts real redis-server processes for tests.
//
// Every server listens on a free port of 127.0.0.1 only (never on 6379, which
// may belong to a Redis that is not ours), runs without persistence in a
// temporary directory of the test, and is stopped by its process id when the
// test ends. Tests that need Redis call Start (one server), StartTLS (one
// server that accepts only TLS), StartCluster (a Redis Cluster of masters)
// or StartSentinel (a primary, a replica and Sentinels); when redis-server
// is not installed they are skipped, or fail if the environment variable
// THROTTLE_REQUIRE_REDIS is set to 1.
//
// Faults: Server.Stop and Server.Kill (SIGKILL, as a crash) stop a server
// and Server.Restart starts it again on the same port; Cluster.MigrateSlot
// moves a hash slot to another master while clients use it.
package redistest

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

const (
	serverBinary = "redis-server"
	cliBinary    = "redis-cli"

	// requireEnv makes a missing redis-server a test failure instead of a skip.
	requireEnv = "THROTTLE_REQUIRE_REDIS"

	// readyTimeout bounds how long a started server may take to answer PING.
	readyTimeout = 10 * time.Second
	// stopTimeout bounds how long a server may take to exit after SIGTERM
	// before it is sent SIGKILL.
	stopTimeout = 5 * time.Second
	// startAttempts is how many ports Start tries when redis-server cannot
	// bind the one it was given (another process took it in the meantime).
	startAttempts = 5
	// clusterTimeout bounds `redis-cli --cluster create` and the wait for
	// cluster_state:ok on every node.
	clusterTimeout = 20 * time.Second
	// clusterBusOffset is the distance between a node's client port and the
	// port of its cluster bus, which redis-server binds as well.
	clusterBusOffset = 10000
	// systemRedisPort is the port of a Redis that is not ours; it is never used.
	systemRedisPort = 6379
)

// errPortInUse marks a start that failed only because the port was taken.
var errPortInUse = errors.New("redistest: port already in use")

// Available reports whether redis-server is on PATH. Clusters additionally
// need redis-cli, which StartCluster checks by itself.
func Available() bool {
	_, err := exec.LookPath(serverBinary)
	return err == nil
}

// Require makes the test skip when redis-server is not on PATH. If the
// environment variable THROTTLE_REQUIRE_REDIS is set to 1, the test fails
// instead, so that a CI job meant to exercise Redis cannot pass vacuously.
func Require(tb testing.TB) {
	tb.Helper()
	if !Available() {
		missing(tb, serverBinary)
	}
}

// requireCLI is Require for redis-cli, which clusters need.
func requireCLI(tb testing.TB) {
	tb.Helper()
	if _, err := exec.LookPath(cliBinary); err != nil {
		missing(tb, cliBinary)
	}
}

func missing(tb testing.TB, binary string) {
	tb.Helper()
	if os.Getenv(requireEnv) == "1" {
		tb.Fatalf("redistest: %s was not found on PATH, but %s=1 requires the Redis-backed tests to run; install Redis (e.g. apt-get install redis-server) or unset %s", binary, requireEnv, requireEnv)
	}
	tb.Skipf("redistest: skipping because %s was not found on PATH; install Redis to run this test, or set %s=1 to turn this skip into a failure", binary, requireEnv)
}

// Server is one redis-server process started by Start or StartCluster.
//
// Addr, Port and PID describe the current process. Restart replaces the
// process and updates PID, so these fields must not be read concurrently with
// Restart. Stop may be called from any goroutine.
type Server struct {
	// Addr is the address clients connect to, "127.0.0.1:<Port>".
	Addr string
	// Port is the TCP port on 127.0.0.1 that the server listens on.
	Port int
	// PID is the process id of the running (or last running) redis-server.
	PID int

	cluster bool
	extra   []string
	dir     string
	// conf is a configuration file given first on the command line
	// (Sentinels keep their state in it); sentinel adds --sentinel.
	conf     string
	sentinel bool
	// tls, when not nil, makes the server listen with TLS only (on Port,
	// with no plain-text port); it is the client configuration that trusts
	// the server's certificate, and tlsArgs are the certificate options.
	tls     *tls.Config
	tlsArgs []string

	mu   sync.Mutex
	proc *process // nil when stopped
}

// process is one run of redis-server.
type process struct {
	cmd     *exec.Cmd
	logPath string
	logFrom int64         // size of the log file before this run started
	done    chan struct{} // closed once cmd.Wait has returned
	waitErr error         // result of cmd.Wait, valid after done is closed
}

// Start starts one redis-server on a free port of 127.0.0.1 and returns once
// it answers PING, failing the test if that takes longer than 10 seconds. It
// calls Require first, so the test is skipped when Redis is not installed.
// The server has no persistence and works in its own temporary directory.
// extraArgs are appended to the command line, e.g. "--maxmemory", "10mb".
// The server is stopped when the test and its subtests have completed.
func Start(tb testing.TB, extraArgs ...string) *Server {
	tb.Helper()
	Require(tb)
	return start(tb, false, extraArgs)
}

func start(tb testing.TB, cluster bool, extraArgs []string) *Server {
	tb.Helper()
	s := &Server{
		cluster: cluster,
		extra:   append([]string(nil), extraArgs...),
		dir:     tb.TempDir(),
	}
	if err := s.startFresh(tb); err != nil {
		tb.Fatalf("redistest: could not start redis-server: %v", err)
	}
	return s
}

// startFresh starts s for the first time on a free port, trying other
// ports when the one picked is taken, and registers its Stop as a cleanup.
func (s *Server) startFresh(tb testing.TB) error {
	tb.Helper()
	// Registered after TempDir, so it runs before the directory is removed.
	tb.Cleanup(s.Stop)

	var lastErr error
	for range startAttempts {
		port, err := pickPort(s.cluster)
		if err != nil {
			return err
		}
		s.Port = port
		s.Addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
		lastErr = s.launch()
		if lastErr == nil {
			return nil
		}
		if !errors.Is(lastErr, errPortInUse) {
			break
		}
	}
	return lastErr
}

// Stop stops the server: it sends SIGTERM to the process, sends SIGKILL if
// the process has not exited after 5 seconds, and waits until the process has
// exited and been reaped. Stop is idempotent and safe to call on a server
// that has already stopped; Restart starts it again.
func (s *Server) Stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.proc == nil {
		return
	}
	s.proc.stop()
	s.proc = nil
}

// Kill stops the server at once with SIGKILL, as a crash would: no reply is
// finished, no buffer is flushed, and replicas hear nothing more. It waits
// until the process has exited and been reaped. Like Stop, it is idempotent
// and safe to call from any goroutine; Restart starts the server again.
func (s *Server) Kill() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.proc == nil {
		return
	}
	_ = s.proc.cmd.Process.Kill()
	<-s.proc.done
	s.proc = nil
}

// Restart stops the server if it is running and starts a new redis-server on
// the same port and in the same directory, returning once it answers PING.
// Data does not survive a restart, since persistence is off, but a cluster
// node keeps its node id and slots through its nodes.conf file; note that a
// restarted cluster node reports cluster_state:fail (and refuses commands
// with CLUSTERDOWN) for about 2 seconds, as Redis holds back a master that
// has just started before accepting writes. It fails the
// test if the port cannot be bound again or the server does not become
// ready. The cleanup registered by Start or StartCluster also stops the
// restarted process.
func (s *Server) Restart(tb testing.TB) {
	tb.Helper()
	s.Stop()
	var err error
	for attempt := range startAttempts {
		if attempt > 0 {
			time.Sleep(200 * time.Millisecond)
		}
		if err = s.launch(); err == nil || !errors.Is(err, errPortInUse) {
			break
		}
	}
	if err != nil {
		tb.Fatalf("redistest: could not restart redis-server on %s: %v", s.Addr, err)
	}
}

// Client returns a go-redis client for the server that is closed when the
// test completes. ContextTimeoutEnabled is true unless an option function
// changes it; opts are applied in order to the options before the client is
// created.
func (s *Server) Client(tb testing.TB, opts ...func(*redis.Options)) *redis.Client {
	tb.Helper()
	o := &redis.Options{Addr: s.Addr, ContextTimeoutEnabled: true, TLSConfig: s.TLSConfig()}
	for _, f := range opts {
		f(o)
	}
	c := redis.NewClient(o)
	tb.Cleanup(func() { _ = c.Close() })
	return c
}

// Do sends one command to the server on a new connection (over TLS for a
// server started by StartTLS), without go-redis, and returns its reply: a
// string for a simple, integer or bulk string, nil, or a []any for an array.
// An error reply is returned as an error. It is meant for administration in
// tests (ACL, CLUSTER, SENTINEL, INFO) and gives up after 5 seconds.
func (s *Server) Do(args ...string) (any, error) {
	c, err := dialRESP(s.Addr, 5*time.Second, s.tls)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	return c.doAny(args...)
}

// launch starts redis-server on s.Port and waits until it is ready. On
// failure the process is gone again and the error contains the log tail.
func (s *Server) launch() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.proc != nil {
		return errors.New("redistest: server is already running")
	}
	p, err := s.spawnLocked()
	if err != nil {
		return err
	}
	s.proc = p
	s.PID = p.cmd.Process.Pid
	if err := p.waitReady(s.Addr, s.PID, s.tls); err != nil {
		p.stop()
		s.proc = nil
		tail := p.logTail()
		if strings.Contains(tail, "Address already in use") {
			err = fmt.Errorf("%w: %v", errPortInUse, err)
		}
		return fmt.Errorf("%w\n--- tail of %s ---\n%s", err, p.logPath, tail)
	}
	return nil
}

func (s *Server) args() []string {
	var args []string
	if s.conf != "" {
		args = append(args, s.conf)
	}
	if s.sentinel {
		args = append(args, "--sentinel")
	}
	if s.tls != nil {
		args = append(args, "--port", "0", "--tls-port", strconv.Itoa(s.Port))
		args = append(args, s.tlsArgs...)
	} else {
		args = append(args, "--port", strconv.Itoa(s.Port))
	}
	args = append(args,
		"--bind", "127.0.0.1",
		"--protected-mode", "no",
		"--daemonize", "no",
		"--save", "",
		"--appendonly", "no",
		"--dir", s.dir,
	)
	if s.cluster {
		args = append(args,
			"--cluster-enabled", "yes",
			"--cluster-config-file", fmt.Sprintf("nodes-%d.conf", s.Port),
			"--cluster-node-timeout", "2000",
		)
	}
	return append(args, s.extra...)
}

func (s *Server) spawnLocked() (*process, error) {
	logPath := fmt.Sprintf("%s/redis-%d.log", s.dir, s.Port)
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("redistest: open log: %w", err)
	}
	defer logFile.Close() // the child has its own copy once started
	var from int64
	if st, err := logFile.Stat(); err == nil {
		from = st.Size()
	}
	args := s.args()
	shown := make([]string, len(args))
	for i, a := range args {
		shown[i] = a
		if a == "" || strings.ContainsAny(a, " \t\"") {
			shown[i] = strconv.Quote(a)
		}
	}
	fmt.Fprintf(logFile, "=== redistest %s: %s %s\n", time.Now().Format(time.RFC3339Nano), serverBinary, strings.Join(shown, " "))

	cmd := exec.Command(serverBinary, args...)
	cmd.Dir = s.dir
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	cmd.SysProcAttr = sysProcAttr()
	if err := spawn(cmd); err != nil {
		return nil, fmt.Errorf("redistest: start %s: %w", serverBinary, err)
	}
	p := &process{cmd: cmd, logPath: logPath, logFrom: from, done: make(chan struct{})}
	go func() {
		p.waitErr = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

// spawner runs every cmd.Start on one goroutine that stays locked to its OS
// thread for the life of the test binary. On Linux the parent-death signal
// is tied to the thread that forked the child, and Go ends a thread when a
// goroutine exits while locked to it; a thread that is never released can
// never end that way, so redis-server only dies with the test process.
var spawner = sync.OnceValue(func() chan func() {
	ch := make(chan func())
	go spawnLoop(ch)
	return ch
})

// PermanentGoroutine is the function at the top of the one goroutine this
// package keeps for the life of the test binary (it starts every
// redis-server, see spawner); goroutine leak checks should ignore it.
const PermanentGoroutine = "github.com/dthrottle/throttle/internal/redistest.spawnLoop"

func spawnLoop(ch chan func()) {
	runtime.LockOSThread() // never unlocked on purpose
	for f := range ch {
		f()
	}
}

func spawn(cmd *exec.Cmd) error {
	errc := make(chan error, 1)
	spawner() <- func() { errc <- cmd.Start() }
	return <-errc
}

// waitReady polls until the server at addr answers PING and reports pid as
// its process id, so that a foreign server on the same port is never
// mistaken for ours.
func (p *process) waitReady(addr string, pid int, tlsConfig *tls.Config) error {
	deadline := time.Now().Add(readyTimeout)
	var lastErr error
	for time.Now().Before(deadline) {
		select {
		case <-p.done:
			return fmt.Errorf("redis-server exited before it was ready (%v)", p.waitErr)
		default:
		}
		if lastErr = probe(addr, pid, tlsConfig); lastErr == nil {
			return nil
		}
		select {
		case <-p.done:
		case <-time.After(20 * time.Millisecond):
		}
	}
	return fmt.Errorf("redis-server on %s did not answer PING within %v: %v", addr, readyTimeout, lastErr)
}

func probe(addr string, pid int, tlsConfig *tls.Config) error {
	c, err := dialRESP(addr, time.Second, tlsConfig)
	if err != nil {
		return err
	}
	defer c.Close()
	if r, err := c.do("PING"); err != nil {
		return err
	} else if r != "PONG" {
		return fmt.Errorf("PING answered %q", r)
	}
	info, err := c.do("INFO", "server")
	if err != nil {
		return err
	}
	if got := infoField(info, "process_id"); got != strconv.Itoa(pid) {
		return fmt.Errorf("%s is served by process %s, not by ours (%d)", addr, got, pid)
	}
	return nil
}

func (p *process) stop() {
	select {
	case <-p.done:
		return
	default:
	}
	// os.Process signals through a pidfd where available, so a reused pid
	// can never be hit.
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		return
	case <-time.After(stopTimeout):
	}
	_ = p.cmd.Process.Kill()
	<-p.done
}

// logTail returns the last lines this run wrote to its log file.
func (p *process) logTail() string {
	const maxBytes = 4096
	const maxLines = 25
	f, err := os.Open(p.logPath)
	if err != nil {
		return fmt.Sprintf("(cannot read log: %v)", err)
	}
	defer f.Close()
	from := p.logFrom
	if st, err := f.Stat(); err == nil && st.Size()-from > maxBytes {
		from = st.Size() - maxBytes
	}
	if _, err := f.Seek(from, io.SeekStart); err != nil {
		return fmt.Sprintf("(cannot read log: %v)", err)
	}
	b, _ := io.ReadAll(f)
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > maxLines {
		lines = lines[len(lines)-maxLines:]
	}
	return strings.Join(lines, "\n")
}

var (
	portsMu sync.Mutex
	// portsTaken holds every port handed out in this process (including the
	// cluster bus ports), so parallel tests never get the same port.
	portsTaken = map[int]bool{systemRedisPort: true, systemRedisPort + clusterBusOffset: true}
)

// pickPort returns a port on 127.0.0.1 that was free a moment ago. For
// cluster nodes the bus port (port+10000) must be free and valid as well.
// Another process may still take the port before redis-server binds it;
// callers retry with a new port when that happens.
func pickPort(cluster bool) (int, error) {
	portsMu.Lock()
	defer portsMu.Unlock()
	for range 500 {
		port, err := freePort()
		if err != nil {
			return 0, fmt.Errorf("find a free port: %w", err)
		}
		if portsTaken[port] {
			continue
		}
		if cluster {
			bus := port + clusterBusOffset
			if bus > 65535 || portsTaken[bus] || !portFree(bus) {
				continue
			}
			portsTaken[bus] = true
		}
		portsTaken[port] = true
		return port, nil
	}
	return 0, errors.New("no free port found on 127.0.0.1")
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func portFree(port int) bool {
	l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
	if err != nil {
		return false
	}
	l.Close()
	return true
}

// Cluster is a Redis Cluster of masters without replicas, started by
// StartCluster.
type Cluster struct {
	// Nodes are the master nodes, in the order they were started.
	Nodes []*Server
	// Addrs are the addresses of Nodes, in the same order.
	Addrs []string
}

// StartCluster starts n (at least 3) redis-server masters with cluster mode
// enabled, joins them into one cluster with `redis-cli --cluster create`
// (no replicas, slots spread evenly) and returns once every node reports
// cluster_state:ok and knows all n nodes, failing the test if that takes
// longer than 20 seconds. It skips the test like Require when redis-server
// or redis-cli is not on PATH. All nodes are stopped when the test and its
// subtests have completed.
func StartCluster(tb testing.TB, n int) *Cluster {
	tb.Helper()
	if n < 3 {
		tb.Fatalf("redistest: StartCluster needs at least 3 masters, got %d", n)
	}
	Require(tb)
	requireCLI(tb)

	c := &Cluster{}
	for range n {
		s := start(tb, true, nil)
		c.Nodes = append(c.Nodes, s)
		c.Addrs = append(c.Addrs, s.Addr)
	}

	ctx, cancel := context.WithTimeout(context.Background(), clusterTimeout)
	defer cancel()
	args := append([]string{"--cluster", "create"}, c.Addrs...)
	args = append(args, "--cluster-replicas", "0", "--cluster-yes")
	cmd := exec.CommandContext(ctx, cliBinary, args...)
	cmd.Env = cliEnv()
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	if err := cmd.Run(); err != nil {
		tb.Fatalf("redistest: %s %s failed: %v\n%s%s", cliBinary, strings.Join(args, " "), err, out.String(), c.logTails())
	}

	deadline := time.Now().Add(clusterTimeout)
	for {
		err := c.checkReady(n)
		if err == nil {
			return c
		}
		if time.Now().After(deadline) {
			tb.Fatalf("redistest: cluster %v not ready within %v: %v%s", c.Addrs, clusterTimeout, err, c.logTails())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Client returns a go-redis cluster client seeded with all node addresses
// that is closed when the test completes. ContextTimeoutEnabled is true
// unless an option function changes it; opts are applied in order to the
// options before the client is created.
func (c *Cluster) Client(tb testing.TB, opts ...func(*redis.ClusterOptions)) *redis.ClusterClient {
	tb.Helper()
	o := &redis.ClusterOptions{
		Addrs:                 append([]string(nil), c.Addrs...),
		ContextTimeoutEnabled: true,
	}
	for _, f := range opts {
		f(o)
	}
	cc := redis.NewClusterClient(o)
	tb.Cleanup(func() { _ = cc.Close() })
	return cc
}

// checkReady reports why the cluster is not usable yet, or nil.
func (c *Cluster) checkReady(n int) error {
	for _, s := range c.Nodes {
		conn, err := dialRESP(s.Addr, time.Second, nil)
		if err != nil {
			return err
		}
		info, err := conn.do("CLUSTER", "INFO")
		conn.Close()
		if err != nil {
			return fmt.Errorf("%s: %w", s.Addr, err)
		}
		if st := infoField(info, "cluster_state"); st != "ok" {
			return fmt.Errorf("%s: cluster_state:%s", s.Addr, st)
		}
		if k := infoField(info, "cluster_known_nodes"); k != strconv.Itoa(n) {
			return fmt.Errorf("%s: cluster_known_nodes:%s, want %d", s.Addr, k, n)
		}
	}
	return nil
}

func (c *Cluster) logTails() string {
	var b strings.Builder
	for _, s := range c.Nodes {
		s.mu.Lock()
		p := s.proc
		s.mu.Unlock()
		if p != nil {
			fmt.Fprintf(&b, "\n--- tail of %s ---\n%s", p.logPath, p.logTail())
		}
	}
	return b.String()
}

// cliEnv is the environment for redis-cli without variables that would make
// it authenticate or otherwise behave differently from a plain invocation.
func cliEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "REDISCLI_") {
			continue
		}
		env = append(env, kv)
	}
	return env
}
