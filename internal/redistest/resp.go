package redistest

import (
	"bufio"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"time"
)

// respConn is a minimal RESP2 client used only for probing and administering
// servers (PING, INFO, CLUSTER, SENTINEL). It deliberately avoids go-redis so
// that probes have no retries, pools or background goroutines of their own.
type respConn struct {
	conn net.Conn
	r    *bufio.Reader
}

// dialRESP connects to addr, which must be a 127.0.0.1 address, over TLS when
// tlsConfig is not nil; every call of the returned connection is bounded by
// the deadline now+timeout.
func dialRESP(addr string, timeout time.Duration, tlsConfig *tls.Config) (*respConn, error) {
	d := &net.Dialer{Timeout: timeout}
	var c net.Conn
	var err error
	if tlsConfig != nil {
		c, err = tls.DialWithDialer(d, "tcp", addr, tlsConfig)
	} else {
		c, err = d.Dial("tcp", addr)
	}
	if err != nil {
		return nil, err
	}
	if err := c.SetDeadline(time.Now().Add(timeout)); err != nil {
		c.Close()
		return nil, err
	}
	return &respConn{conn: c, r: bufio.NewReader(c)}, nil
}

// Close closes the connection.
func (c *respConn) Close() error { return c.conn.Close() }

// do sends one command and returns a simple-string, integer or bulk-string
// reply as a string. Error replies are returned as errors, and so are nil
// and array replies.
func (c *respConn) do(args ...string) (string, error) {
	v, err := c.doAny(args...)
	if err != nil {
		return "", err
	}
	switch v := v.(type) {
	case string:
		return v, nil
	case nil:
		return "", errors.New("nil reply")
	default:
		return "", fmt.Errorf("unexpected array reply to %s", args[0])
	}
}

// doStrings sends one command whose reply is an array of strings (nested
// arrays are flattened).
func (c *respConn) doStrings(args ...string) ([]string, error) {
	v, err := c.doAny(args...)
	if err != nil {
		return nil, err
	}
	var out []string
	var flatten func(v any)
	flatten = func(v any) {
		switch v := v.(type) {
		case string:
			out = append(out, v)
		case []any:
			for _, e := range v {
				flatten(e)
			}
		}
	}
	if _, ok := v.([]any); !ok && v != nil {
		return nil, fmt.Errorf("unexpected reply %q to %s, want an array", v, args[0])
	}
	flatten(v)
	return out, nil
}

// doAny sends one command and returns its reply: a string (simple, integer
// or bulk), nil, or a []any for an array.
func (c *respConn) doAny(args ...string) (any, error) {
	var b strings.Builder
	fmt.Fprintf(&b, "*%d\r\n", len(args))
	for _, a := range args {
		fmt.Fprintf(&b, "$%d\r\n%s\r\n", len(a), a)
	}
	if _, err := c.conn.Write([]byte(b.String())); err != nil {
		return nil, err
	}
	return c.read()
}

func (c *respConn) read() (any, error) {
	line, err := c.readLine()
	if err != nil {
		return nil, err
	}
	if line == "" {
		return nil, errors.New("empty reply")
	}
	switch line[0] {
	case '+', ':':
		return line[1:], nil
	case '-':
		return nil, fmt.Errorf("redis error: %s", line[1:])
	case '$':
		n, err := strconv.Atoi(line[1:])
		if err != nil {
			return nil, fmt.Errorf("bad bulk length %q", line)
		}
		if n < 0 {
			return nil, nil
		}
		buf := make([]byte, n+2)
		if _, err := io.ReadFull(c.r, buf); err != nil {
			return nil, err
		}
		return string(buf[:n]), nil
	case '*':
		n, err := strconv.Atoi(line[1:])
		if err != nil {
			return nil, fmt.Errorf("bad array length %q", line)
		}
		if n < 0 {
			return nil, nil
		}
		arr := make([]any, n)
		for i := range arr {
			if arr[i], err = c.read(); err != nil {
				return nil, err
			}
		}
		return arr, nil
	default:
		return nil, fmt.Errorf("unsupported reply type %q", line)
	}
}

func (c *respConn) readLine() (string, error) {
	line, err := c.r.ReadString('\n')
	if err != nil {
		return "", err
	}
	return strings.TrimRight(line, "\r\n"), nil
}

// infoField extracts "name:value" from an INFO or CLUSTER INFO reply.
func infoField(info, name string) string {
	for _, line := range strings.Split(info, "\n") {
		line = strings.TrimRight(line, "\r")
		if v, ok := strings.CutPrefix(line, name+":"); ok {
			return v
		}
	}
	return ""
}
