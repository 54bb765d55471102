package redistest

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

const (
	// MasterName is the name under which StartSentinel's Sentinels monitor
	// the primary.
	MasterName = "mymaster"
	// sentinelDownAfter is how long a primary must not answer before a
	// Sentinel considers it down, and sentinelFailoverTimeout bounds one
	// failover attempt (both far below Redis's defaults of 30 s and 3 min,
	// so that a test sees a failover within a few seconds).
	sentinelDownAfter       = 500 * time.Millisecond
	sentinelFailoverTimeout = 2 * time.Second
	// sentinelTimeout bounds the wait for the replica to sync and for every
	// Sentinel to know the replica and the other Sentinels.
	sentinelTimeout = 20 * time.Second
)

// Sentinel is a primary with one replica, watched by one or more Sentinels,
// all on 127.0.0.1, started by StartSentinel.
type Sentinel struct {
	// Primary and Replica are the servers as started: after a failover the
	// replica is the primary (see Master).
	Primary, Replica *Server
	// Sentinels are the redis-server --sentinel processes.
	Sentinels []*Server
	// Addrs are the addresses of Sentinels, in the same order.
	Addrs []string
}

// StartSentinel starts a primary, a replica of it (--replicaof) and n
// Sentinels (redis-server --sentinel, each with its own configuration file
// in a temporary directory) that monitor the primary as MasterName, with a
// quorum of a majority of n, down-after-milliseconds 500 and
// failover-timeout 2000. It returns once the replica is in sync and every
// Sentinel knows the primary, the replica and the other Sentinels, failing
// the test if that takes longer than 20 seconds. It skips the test like
// Require. Everything is stopped when the test and its subtests have
// completed.
//
// With these settings a Sentinel notices a stopped primary after 0.5 s and
// promotes the replica about one to three seconds later.
func StartSentinel(tb testing.TB, n int) *Sentinel {
	tb.Helper()
	if n < 1 {
		tb.Fatalf("redistest: StartSentinel needs at least one Sentinel, got %d", n)
	}
	Require(tb)
	// Without a delay before a diskless full sync (5 s by default, to wait
	// for more replicas), the replica is in sync at once.
	s := &Sentinel{Primary: start(tb, false, []string{"--repl-diskless-sync-delay", "0"})}
	s.Replica = start(tb, false, []string{"--replicaof", "127.0.0.1", strconv.Itoa(s.Primary.Port)})

	deadline := time.Now().Add(sentinelTimeout)
	wait := func(what string, ready func() error) {
		tb.Helper()
		for {
			err := ready()
			if err == nil {
				return
			}
			if time.Now().After(deadline) {
				tb.Fatalf("redistest: %s not ready within %v: %v%s", what, sentinelTimeout, err, s.logTails())
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	wait("replica", func() error {
		info, err := s.Replica.Do("INFO", "replication")
		if err != nil {
			return err
		}
		if st := infoField(fmt.Sprint(info), "master_link_status"); st != "up" {
			return fmt.Errorf("replica %s: master_link_status:%s", s.Replica.Addr, st)
		}
		return nil
	})

	quorum := n/2 + 1
	for range n {
		sn := &Server{dir: tb.TempDir(), sentinel: true}
		sn.conf = filepath.Join(sn.dir, "sentinel.conf")
		conf := fmt.Sprintf("sentinel monitor %s 127.0.0.1 %d %d\n"+
			"sentinel down-after-milliseconds %s %d\n"+
			"sentinel failover-timeout %s %d\n"+
			"sentinel parallel-syncs %s 1\n",
			MasterName, s.Primary.Port, quorum,
			MasterName, sentinelDownAfter.Milliseconds(),
			MasterName, sentinelFailoverTimeout.Milliseconds(),
			MasterName)
		if err := os.WriteFile(sn.conf, []byte(conf), 0o644); err != nil {
			tb.Fatalf("redistest: write %s: %v", sn.conf, err)
		}
		if err := sn.startFresh(tb); err != nil {
			tb.Fatalf("redistest: could not start redis-server --sentinel: %v", err)
		}
		s.Sentinels = append(s.Sentinels, sn)
		s.Addrs = append(s.Addrs, sn.Addr)
	}
	for _, sn := range s.Sentinels {
		wait("sentinel "+sn.Addr, func() error {
			m, err := sentinelMaster(sn)
			if err != nil {
				return err
			}
			if m["flags"] != "master" || m["num-slaves"] != "1" || m["num-other-sentinels"] != strconv.Itoa(n-1) {
				return fmt.Errorf("sentinel %s sees flags=%s num-slaves=%s num-other-sentinels=%s",
					sn.Addr, m["flags"], m["num-slaves"], m["num-other-sentinels"])
			}
			return nil
		})
	}
	return s
}

// sentinelMaster returns SENTINEL MASTER MasterName as a map.
func sentinelMaster(sn *Server) (map[string]string, error) {
	v, err := sn.Do("SENTINEL", "MASTER", MasterName)
	if err != nil {
		return nil, err
	}
	kv, ok := v.([]any)
	if !ok {
		return nil, fmt.Errorf("SENTINEL MASTER replied %v", v)
	}
	m := map[string]string{}
	for i := 0; i+1 < len(kv); i += 2 {
		m[fmt.Sprint(kv[i])] = fmt.Sprint(kv[i+1])
	}
	return m, nil
}

// Master returns the address of the primary as the first Sentinel that
// answers reports it.
func (s *Sentinel) Master() (string, error) {
	var lastErr error
	for _, sn := range s.Sentinels {
		v, err := sn.Do("SENTINEL", "GET-MASTER-ADDR-BY-NAME", MasterName)
		if err != nil {
			lastErr = err
			continue
		}
		hp, ok := v.([]any)
		if !ok || len(hp) != 2 {
			lastErr = fmt.Errorf("SENTINEL GET-MASTER-ADDR-BY-NAME replied %v", v)
			continue
		}
		return net.JoinHostPort(fmt.Sprint(hp[0]), fmt.Sprint(hp[1])), nil
	}
	return "", lastErr
}

// Client returns a go-redis failover client (redis.NewFailoverClient) for
// MasterName through all the Sentinels, closed when the test completes.
// ContextTimeoutEnabled is true unless an option function changes it; opts
// are applied in order before the client is created.
func (s *Sentinel) Client(tb testing.TB, opts ...func(*redis.FailoverOptions)) *redis.Client {
	tb.Helper()
	o := &redis.FailoverOptions{
		MasterName:            MasterName,
		SentinelAddrs:         append([]string(nil), s.Addrs...),
		ContextTimeoutEnabled: true,
	}
	for _, f := range opts {
		f(o)
	}
	c := redis.NewFailoverClient(o)
	tb.Cleanup(func() { _ = c.Close() })
	return c
}

func (s *Sentinel) logTails() string {
	var b strings.Builder
	for _, srv := range append([]*Server{s.Primary, s.Replica}, s.Sentinels...) {
		if srv == nil {
			continue
		}
		srv.mu.Lock()
		p := srv.proc
		srv.mu.Unlock()
		if p != nil {
			fmt.Fprintf(&b, "\n--- tail of %s ---\n%s", p.logPath, p.logTail())
		}
	}
	return b.String()
}
