// Package faultproxy is a TCP proxy on 127.0.0.1 for tests that puts a slow
// or broken network between a client and a server: latency in each
// direction, a stall that holds every byte, dropped connections, refused
// connections, and lost replies (the server executed a command but its
// reply never reaches the client).
//
// Every method may be called from any goroutine while traffic flows. The
// proxy's goroutines end when Close returns.
package faultproxy

import (
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Proxy forwards every connection made to Addr to the target address.
type Proxy struct {
	// Addr is the address clients connect to, "127.0.0.1:<port>".
	Addr string

	target string
	ln     net.Listener
	wg     sync.WaitGroup

	up, down  atomic.Int64 // latency in ns: client to server, server to client
	refuse    atomic.Bool
	lossEvery atomic.Int64 // lose every nth reply chunk; 0: none
	replies   atomic.Int64 // reply chunks seen, for lossEvery

	accepted, dropped, lost atomic.Int64

	mu     sync.Mutex
	links  map[*link]struct{}
	gate   chan struct{} // closed while traffic flows; open while stalled
	closed bool
}

// Stats counts what the proxy did since it started.
type Stats struct {
	// Accepted is the number of connections accepted (refused ones too).
	Accepted int64
	// Dropped is the number of connections closed by Drop, by Refuse or by
	// a lost reply.
	Dropped int64
	// LostReplies is the number of reply chunks that were thrown away
	// (each with its connection) by SetReplyLoss.
	LostReplies int64
}

// Start starts a proxy to target on a free port of 127.0.0.1, and closes it
// when the test completes.
func Start(tb testing.TB, target string) *Proxy {
	tb.Helper()
	p, err := New(target)
	if err != nil {
		tb.Fatalf("faultproxy: %v", err)
	}
	tb.Cleanup(func() { _ = p.Close() })
	return p
}

// New starts a proxy to target on a free port of 127.0.0.1. Close stops it.
func New(target string) (*Proxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	gate := make(chan struct{})
	close(gate)
	p := &Proxy{Addr: ln.Addr().String(), target: target, ln: ln, links: map[*link]struct{}{}, gate: gate}
	p.wg.Add(1)
	go p.accept()
	return p, nil
}

// SetLatency delays every byte by up on its way from the client to the
// server and by down on its way back, from the moment the proxy reads it.
// Bytes keep their order; throughput is not limited. Zero removes latency.
func (p *Proxy) SetLatency(up, down time.Duration) {
	p.up.Store(int64(up))
	p.down.Store(int64(down))
}

// Stall holds every byte in both directions, on open and new connections,
// until Resume. Nothing is closed: to the client the server just stops
// answering.
func (p *Proxy) Stall() {
	p.mu.Lock()
	defer p.mu.Unlock()
	select {
	case <-p.gate:
		p.gate = make(chan struct{})
	default: // already stalled
	}
}

// Resume ends a Stall: held bytes flow on.
func (p *Proxy) Resume() {
	p.mu.Lock()
	defer p.mu.Unlock()
	select {
	case <-p.gate:
	default:
		close(p.gate)
	}
}

// Refuse makes the proxy close every new connection at once (on true), or
// forward new connections again (on false). Open connections are not
// affected: use Drop for them.
func (p *Proxy) Refuse(on bool) { p.refuse.Store(on) }

// SetReplyLoss makes the proxy lose every nth chunk of bytes that the server
// sends: instead of forwarding it, the proxy closes that connection on both
// sides. The server has executed the commands the chunk answers, but the
// client never learns their result. n = 0 turns the loss off.
func (p *Proxy) SetReplyLoss(n int) { p.lossEvery.Store(int64(n)) }

// Drop closes every open connection on both sides and returns how many it
// closed. Bytes the proxy holds for them are lost.
func (p *Proxy) Drop() int {
	p.mu.Lock()
	links := make([]*link, 0, len(p.links))
	for l := range p.links {
		links = append(links, l)
	}
	p.mu.Unlock()
	for _, l := range links {
		l.close()
	}
	p.dropped.Add(int64(len(links)))
	return len(links)
}

// Stats returns the proxy's counters.
func (p *Proxy) Stats() Stats {
	return Stats{Accepted: p.accepted.Load(), Dropped: p.dropped.Load(), LostReplies: p.lost.Load()}
}

// Close stops accepting, closes every connection, and waits until every
// goroutine of the proxy has ended. It is idempotent.
func (p *Proxy) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	p.mu.Unlock()
	err := p.ln.Close()
	p.Drop()
	p.wg.Wait()
	return err
}

func (p *Proxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			time.Sleep(time.Millisecond) // e.g. too many open files
			continue
		}
		p.accepted.Add(1)
		if p.refuse.Load() {
			c.Close()
			p.dropped.Add(1)
			continue
		}
		p.wg.Add(1)
		go p.serve(c)
	}
}

// serve connects c to the target and forwards both ways until either side
// closes or the link is dropped.
func (p *Proxy) serve(c net.Conn) {
	defer p.wg.Done()
	s, err := net.DialTimeout("tcp", p.target, 5*time.Second)
	if err != nil {
		c.Close()
		return
	}
	l := &link{client: c, server: s, done: make(chan struct{})}
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		l.close()
		return
	}
	p.links[l] = struct{}{}
	p.mu.Unlock()
	toServer, toClient := make(chan chunk, 256), make(chan chunk, 256)
	p.wg.Add(4)
	go p.read(l, c, toServer, false)
	go p.write(l, s, toServer, false)
	go p.read(l, s, toClient, true)
	go p.write(l, c, toClient, true)
	<-l.done
	p.mu.Lock()
	delete(p.links, l)
	p.mu.Unlock()
}

// link is one proxied connection: the client's side and the server's.
type link struct {
	client, server net.Conn
	done           chan struct{} // closed by close
	once           sync.Once
}

// chunk is bytes read from one side, due at the other side at a time.
type chunk struct {
	b   []byte
	due time.Time
}

func (l *link) close() {
	l.once.Do(func() {
		close(l.done)
		l.client.Close()
		l.server.Close()
	})
}

// read reads from src and queues each chunk, stamped with the time it is
// due at the other side, for write.
func (p *Proxy) read(l *link, src net.Conn, ch chan<- chunk, reply bool) {
	defer p.wg.Done()
	defer l.close()
	buf := make([]byte, 32*1024)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			lat := p.up.Load()
			if reply {
				lat = p.down.Load()
			}
			c := chunk{b: append([]byte(nil), buf[:n]...), due: time.Now().Add(time.Duration(lat))}
			select {
			case ch <- c:
			case <-l.done:
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// write forwards queued chunks to dst once they are due and the proxy is
// not stalled, or loses a reply chunk with its connection.
func (p *Proxy) write(l *link, dst net.Conn, ch <-chan chunk, reply bool) {
	defer p.wg.Done()
	defer l.close()
	timer := time.NewTimer(0)
	<-timer.C
	defer timer.Stop()
	for {
		var c chunk
		select {
		case c = <-ch:
		case <-l.done:
			return
		}
		if d := time.Until(c.due); d > 0 {
			timer.Reset(d)
			select {
			case <-timer.C:
			case <-l.done:
				return
			}
		}
		p.mu.Lock()
		gate := p.gate
		p.mu.Unlock()
		select {
		case <-gate:
		case <-l.done:
			return
		}
		if reply {
			if n := p.lossEvery.Load(); n > 0 && p.replies.Add(1)%n == 0 {
				p.lost.Add(1)
				p.dropped.Add(1)
				return // the deferred close loses c and the connection
			}
		}
		if _, err := dst.Write(c.b); err != nil {
			return
		}
	}
}
