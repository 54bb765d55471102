package faultproxy_test

import (
	"bufio"
	"errors"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dthrottle/throttle/internal/faultproxy"
)

// echo starts a line echo server and returns its address and a counter of
// the lines it answered.
func echo(t *testing.T) (string, func() int) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	var (
		mu    sync.Mutex
		lines int
		wg    sync.WaitGroup
		conns []net.Conn
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				r := bufio.NewReader(c)
				for {
					line, err := r.ReadString('\n')
					if err != nil {
						return
					}
					mu.Lock()
					lines++
					mu.Unlock()
					if _, err := io.WriteString(c, line); err != nil {
						return
					}
				}
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return ln.Addr().String(), func() int { mu.Lock(); defer mu.Unlock(); return lines }
}

// roundTrip sends one line on c and reads the answer, with a deadline.
func roundTrip(c net.Conn, r *bufio.Reader, line string, timeout time.Duration) (string, error) {
	_ = c.SetDeadline(time.Now().Add(timeout))
	if _, err := io.WriteString(c, line+"\n"); err != nil {
		return "", err
	}
	got, err := r.ReadString('\n')
	return got, err
}

func dial(t *testing.T, p *faultproxy.Proxy) (net.Conn, *bufio.Reader) {
	t.Helper()
	c, err := net.Dial("tcp", p.Addr)
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	return c, bufio.NewReader(c)
}

func TestLatency(t *testing.T) {
	addr, _ := echo(t)
	p := faultproxy.Start(t, addr)
	c, r := dial(t, p)
	got, err := roundTrip(c, r, "a", 5*time.Second)
	require.NoError(t, err)
	assert.Equal(t, "a\n", got)

	p.SetLatency(60*time.Millisecond, 90*time.Millisecond)
	start := time.Now()
	got, err = roundTrip(c, r, "b", 5*time.Second)
	elapsed := time.Since(start)
	require.NoError(t, err)
	assert.Equal(t, "b\n", got)
	assert.GreaterOrEqual(t, elapsed, 150*time.Millisecond, "round trip with 60ms up and 90ms down latency")
}

func TestStallAndResume(t *testing.T) {
	addr, lines := echo(t)
	p := faultproxy.Start(t, addr)
	c, r := dial(t, p)
	p.Stall()
	_, err := roundTrip(c, r, "held", 200*time.Millisecond)
	var ne net.Error
	require.True(t, errors.As(err, &ne) && ne.Timeout(), "round trip while stalled: got %v, want a timeout", err)
	assert.Zero(t, lines(), "lines the server saw while stalled")
	p.Resume()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	got, err := r.ReadString('\n')
	require.NoError(t, err, "reading the held answer after Resume")
	assert.Equal(t, "held\n", got)
}

func TestDropAndRefuse(t *testing.T) {
	addr, _ := echo(t)
	p := faultproxy.Start(t, addr)
	c, r := dial(t, p)
	_, err := roundTrip(c, r, "a", 5*time.Second)
	require.NoError(t, err)
	assert.Equal(t, 1, p.Drop(), "connections dropped")
	_, err = roundTrip(c, r, "b", 5*time.Second)
	assert.Error(t, err, "round trip on a dropped connection")

	p.Refuse(true)
	c2, r2 := dial(t, p)
	_, err = roundTrip(c2, r2, "c", 5*time.Second)
	assert.Error(t, err, "round trip on a refused connection")
	p.Refuse(false)
	c3, r3 := dial(t, p)
	got, err := roundTrip(c3, r3, "d", 5*time.Second)
	require.NoError(t, err, "round trip after Refuse(false)")
	assert.Equal(t, "d\n", got)
}

func TestReplyLoss(t *testing.T) {
	addr, lines := echo(t)
	p := faultproxy.Start(t, addr)
	p.SetReplyLoss(1)
	c, r := dial(t, p)
	_, err := roundTrip(c, r, "lost", 5*time.Second)
	assert.Error(t, err, "round trip whose reply is lost")
	assert.Equal(t, 1, lines(), "the server still answered the request")
	assert.Equal(t, int64(1), p.Stats().LostReplies)
}

func TestCloseEndsEverything(t *testing.T) {
	addr, _ := echo(t)
	p, err := faultproxy.New(addr)
	require.NoError(t, err)
	c, r := dial(t, p)
	p.Stall()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	_, _ = io.WriteString(c, "x\n")
	done := make(chan struct{})
	go func() { _ = p.Close(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Close with a stalled connection did not return within 5s")
	}
	_, err = r.ReadString('\n')
	assert.Error(t, err, "reading after Close")
	require.NoError(t, p.Close(), "second Close")
}
