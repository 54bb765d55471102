package rueidisthrottle

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/rueidis"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// redis5 is a fake Redis 5 server on loopback: it has no HELLO (so rueidis
// speaks RESP2) and no Cluster, refuses a BLPOP timeout that is not a
// whole number of seconds as Redis 5 does, and times out every other
// BLPOP at once. It records the BLPOP timeouts it was sent.
type redis5 struct {
	ln    net.Listener
	mu    sync.Mutex
	blpop []string
}

func startRedis5(t *testing.T) *redis5 {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	s := &redis5{ln: ln}
	var wg sync.WaitGroup
	t.Cleanup(func() { _ = ln.Close(); wg.Wait() })
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() { s.serve(c) })
		}
	})
	return s
}

func (s *redis5) serve(c net.Conn) {
	defer c.Close()
	r := bufio.NewReader(c)
	for {
		args, err := readCommand(r)
		if err != nil {
			return
		}
		var reply string
		switch name := strings.ToUpper(args[0]); {
		case name == "HELLO":
			reply = "-ERR unknown command 'HELLO'\r\n"
		case name == "CLUSTER":
			reply = "-ERR This instance has cluster support disabled\r\n"
		case name == "PING":
			reply = "+PONG\r\n"
		case name == "BLPOP" && len(args) == 3:
			s.mu.Lock()
			s.blpop = append(s.blpop, args[2])
			s.mu.Unlock()
			if _, err := strconv.Atoi(args[2]); err != nil {
				reply = "-ERR timeout is not an integer or out of range\r\n"
			} else {
				reply = "*-1\r\n" // timed out
			}
		default:
			reply = "+OK\r\n"
		}
		if _, err := io.WriteString(c, reply); err != nil {
			return
		}
	}
}

// readCommand reads one RESP array of bulk strings.
func readCommand(r *bufio.Reader) ([]string, error) {
	line, err := r.ReadString('\n')
	if err != nil {
		return nil, err
	}
	n, err := strconv.Atoi(strings.TrimSpace(strings.TrimPrefix(line, "*")))
	if err != nil || n < 1 {
		return nil, fmt.Errorf("bad command header %q", line)
	}
	args := make([]string, n)
	for i := range args {
		if line, err = r.ReadString('\n'); err != nil {
			return nil, err
		}
		size, err := strconv.Atoi(strings.TrimSpace(strings.TrimPrefix(line, "$")))
		if err != nil {
			return nil, fmt.Errorf("bad bulk header %q", line)
		}
		b := make([]byte, size+2)
		if _, err := io.ReadFull(r, b); err != nil {
			return nil, err
		}
		args[i] = string(b[:size])
	}
	return args, nil
}

// TestBLPopRedis5 checks the BLPOP of lease waiters on Redis 5, which
// rueidis talks to in RESP2 (with DisableCache: Redis 5 has no client
// tracking): the fractional timeout is refused once, the same wait is sent
// again in whole seconds rounded up, and later waits go to whole seconds
// straight away.
func TestBLPopRedis5(t *testing.T) {
	s := startRedis5(t)
	c := newClientWith(t, rueidis.ClientOption{DisableCache: true}, s.ln.Addr().String())
	cn := &conn{client: c}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	woken, err := cn.BLPop(ctx, "k", 250*time.Millisecond)
	require.NoError(t, err, "BLPop on Redis 5")
	assert.False(t, woken, "BLPop that timed out")
	woken, err = cn.BLPop(ctx, "k", 1500*time.Millisecond)
	require.NoError(t, err, "second BLPop on Redis 5")
	assert.False(t, woken, "second BLPop that timed out")
	s.mu.Lock()
	defer s.mu.Unlock()
	assert.Equal(t, []string{"0.25", "1", "2"}, s.blpop, "BLPOP timeouts sent")
}
