package throttle

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dthrottle/throttle/internal/redistest"
)

// TestTLS runs decisions through a rediss:// URL against a redis-server that
// accepts only TLS, with a certificate signed by a CA made for the test. A
// plain-text client and a client that does not trust the CA both fail with
// ErrStoreUnavailable, which shows the decisions really went over TLS.
func TestTLS(t *testing.T) {
	t.Parallel()
	srv := redistest.StartTLS(t)
	require.True(t, strings.HasPrefix(srv.URL(), "rediss://"), "URL %q", srv.URL())
	client := func(t *testing.T, tlsConfig *tls.Config, url string) *redis.Client {
		opt, err := redis.ParseURL(url)
		require.NoError(t, err, "ParseURL(%q)", url)
		if tlsConfig != nil {
			require.NotNil(t, opt.TLSConfig, "ParseURL(%q) turns TLS on", url)
			opt.TLSConfig.RootCAs = tlsConfig.RootCAs
		}
		opt.ContextTimeoutEnabled = true
		opt.MaxRetries = -1
		c := redis.NewClient(opt)
		t.Cleanup(func() { _ = c.Close() })
		return c
	}
	ctx := context.Background()

	c := client(t, srv.TLSConfig(), srv.URL())
	store := NewRedisStore(c)
	for _, limit := range []int{1, 3} {
		th, err := New(fmt.Sprintf("tls/limit%d", limit), time.Hour, WithStore(store), WithLimit(limit), WithTimeout(time.Second))
		require.NoError(t, err)
		for i := range limit {
			d, err := th.Allow(ctx)
			require.NoError(t, err, "Allow %d of limit %d over TLS", i+1, limit)
			assert.True(t, d.Allowed, "Allow %d of limit %d over TLS", i+1, limit)
		}
		d, err := th.Allow(ctx)
		require.NoError(t, err, "Allow %d of limit %d over TLS", limit+1, limit)
		assert.False(t, d.Allowed, "Allow %d of limit %d over TLS", limit+1, limit)
		assert.Positive(t, d.RetryAfter, "RetryAfter of a denied call over TLS")
	}
	waiter, err := New("tls/wait", 50*time.Millisecond, WithStore(store), WithWait(time.Second), WithTimeout(time.Second))
	require.NoError(t, err)
	for i := range 3 {
		require.NoError(t, waiter.Wait(ctx), "Wait %d over TLS", i+1)
	}

	plain := client(t, nil, "redis://"+srv.Addr)
	untrusted := client(t, nil, srv.URL()) // system roots only
	for name, c := range map[string]*redis.Client{"a plain-text client": plain, "a client that does not trust the CA": untrusted} {
		th, err := New("tls/refused", time.Hour, WithStore(NewRedisStore(c)), WithTimeout(200*time.Millisecond))
		require.NoError(t, err)
		d, err := th.Allow(ctx)
		assert.ErrorIs(t, err, ErrStoreUnavailable, "Allow from %s", name)
		assert.False(t, d.Allowed, "Allow from %s", name)
		t.Logf("Allow from %s: %v", name, err)
	}
}

// aclCommands are the commands a RedisStore needs: SET (SET NX PX) on the
// hot path, EVALSHA and EVAL (after a script cache loss) for the scripts,
// PTTL for Held, DEL for Reset, and the commands the scripts call (the hash
// commands only for limits above 64, HGET only when they deny or book, HDEL
// only for a cancel, TYPE only for a slot without an expiry).
var aclCommands = []string{"set", "pttl", "evalsha", "eval", "del", "time", "get", "pexpireat", "type", "pexpire", "hmget", "hset", "hget", "hdel"}

// aclLeaseCommands are the commands a RedisStore needs besides
// aclCommands for WithConcurrency: the lease scripts' sorted set, wake-up
// list and count of waiters, and BLPOP for waiters.
var aclLeaseCommands = []string{"zadd", "zcard", "zrange", "zrem", "zremrangebyscore", "zscore", "rpush", "ltrim", "incrby", "blpop"}

// exerciseLeases makes every lease call a throttle with a cap makes.
func exerciseLeases(ctx context.Context, s *RedisStore) error {
	req := Request{Limit: 1, Concurrency: 1, LeaseTTL: time.Minute}
	res, err := s.TakeLease(ctx, "acl/lease", req, "a")
	if err != nil || !res.OK {
		return fmt.Errorf("TakeLease: %+v, %w", res, err)
	}
	if res, err := s.TakeLease(ctx, "acl/lease", req, "b"); err != nil || res.OK || !res.Full {
		return fmt.Errorf("TakeLease at capacity: %+v, %w", res, err)
	}
	// Two waiters, so that the release wakes one and counts one still
	// waiting.
	waiter := req
	waiter.MaxWait = time.Second
	for _, token := range []string{"c", "d"} {
		if res, err := s.TakeLease(ctx, "acl/lease", waiter, token); err != nil || res.OK || !res.Full {
			return fmt.Errorf("waiting TakeLease at capacity: %+v, %w", res, err)
		}
	}
	if held, err := s.RenewLease(ctx, "acl/lease", req, "a"); err != nil || !held {
		return fmt.Errorf("RenewLease: %v, %w", held, err)
	}
	if err := s.ReleaseLease(ctx, "acl/lease", req, "a"); err != nil {
		return fmt.Errorf("ReleaseLease: %w", err)
	}
	if err := s.AwaitLease(ctx, "acl/lease", req, time.Second); err != nil {
		return fmt.Errorf("AwaitLease: %w", err)
	}
	return nil
}

// aclRules is the minimal ACL rule set for a RedisStore with the default
// key prefix, without the password.
func aclRules(commands []string, keyPattern string) []string {
	rules := []string{"on", ">secret", "resetkeys", keyPattern, "resetchannels", "-@all"}
	for _, c := range commands {
		rules = append(rules, "+"+c)
	}
	return rules
}

// exerciseStore runs every kind of store call that RedisStore makes, on a
// server whose script cache was just flushed, and returns the first error
// or unexpected decision.
func exerciseStore(ctx context.Context, s *RedisStore) error {
	steps := []struct {
		name string
		run  func() error
	}{
		{"limit 1: admit and deny (SET NX PX, PTTL)", func() error {
			req := Request{Interval: time.Hour, Limit: 1}
			if res, err := s.Take(ctx, "acl/1", req); err != nil || !res.OK {
				return fmt.Errorf("first Take: %+v, %v", res, err)
			}
			if res, err := s.Take(ctx, "acl/1", req); err != nil || res.OK || res.RetryAfter <= 0 {
				return fmt.Errorf("second Take: %+v, %v", res, err)
			}
			return nil
		}},
		{"limit 100: admit and deny (window.lua)", func() error {
			req := Request{Interval: time.Hour, Limit: 100}
			for i := range 100 {
				if res, err := s.Take(ctx, "acl/100", req); err != nil || !res.OK {
					return fmt.Errorf("Take %d: %+v, %v", i+1, res, err)
				}
			}
			if res, err := s.Take(ctx, "acl/100", req); err != nil || res.OK || res.RetryAfter <= 0 {
				return fmt.Errorf("Take beyond the limit: %+v, %v", res, err)
			}
			return nil
		}},
		{"limit 3: admit and deny (SET NX PX, slots.lua)", func() error {
			req := Request{Interval: time.Hour, Limit: 3}
			for i := range 3 {
				if res, err := s.Take(ctx, "acl/3", req); err != nil || !res.OK {
					return fmt.Errorf("Take %d: %+v, %v", i+1, res, err)
				}
			}
			if res, err := s.Take(ctx, "acl/3", req); err != nil || res.OK || res.RetryAfter <= 0 {
				return fmt.Errorf("Take beyond the limit: %+v, %v", res, err)
			}
			return nil
		}},
		{"limit 1: a slot without an expiry gets one (slots.lua: TYPE, PEXPIRE)", func() error {
			if err := s.conn.(*goRedisConn).client.Set(ctx, s.name("acl/noexp", ""), "x", 0).Err(); err != nil {
				return err
			}
			res, err := s.Take(ctx, "acl/noexp", Request{Interval: time.Hour, Limit: 1})
			if err != nil || res.OK || res.RetryAfter <= 0 {
				return fmt.Errorf("Take of a slot without expiry: %+v, %v", res, err)
			}
			return nil
		}},
		{"limit 1: book and cancel (slots.lua, unbook.lua)", func() error {
			req := Request{Interval: time.Hour, Limit: 1, MaxWait: 2 * time.Hour}
			if _, err := s.Take(ctx, "acl/book1", req); err != nil {
				return err
			}
			res, err := s.Take(ctx, "acl/book1", req)
			if err != nil || !res.OK || res.Delay <= 0 {
				return fmt.Errorf("booking: %+v, %v", res, err)
			}
			return s.Cancel(ctx, "acl/book1", req, res)
		}},
		{"limit 100: book and cancel (window.lua)", func() error {
			req := Request{Interval: time.Hour, Limit: 100, MaxWait: 2 * time.Hour}
			var res Reservation
			var err error
			for range 101 {
				if res, err = s.Take(ctx, "acl/book100", req); err != nil || !res.OK {
					return fmt.Errorf("booking: %+v, %v", res, err)
				}
			}
			if err := s.Cancel(ctx, "acl/book100", req, res); err != nil {
				return err
			}
			// The cancelled start is free again: only a hand-back
			// explains a second booking at the same delay.
			again, err := s.Take(ctx, "acl/book100", req)
			if err != nil || !again.OK || again.Delay > res.Delay {
				return fmt.Errorf("booking after cancel: %+v (cancelled %+v), %v", again, res, err)
			}
			return nil
		}},
		{"limit 100: leased permits (window.lua)", func() error {
			req := Request{Interval: time.Hour, Limit: 100, Permits: 10, Validity: time.Minute}
			if res, err := s.Take(ctx, "acl/permits", req); err != nil || res.Permits < 1 {
				return fmt.Errorf("permits: %+v, %v", res, err)
			}
			return nil
		}},
		{"Hold and Held (hold.lua, window.lua, PTTL)", func() error {
			for _, limit := range []int{1, 3, 100} {
				req := Request{Interval: time.Hour, Limit: limit}
				key := fmt.Sprint("acl/hold", limit)
				if _, err := s.Take(ctx, key, req); err != nil {
					return err
				}
				if err := s.Hold(ctx, key, req, time.Minute); err != nil {
					return fmt.Errorf("Hold, limit %d: %w", limit, err)
				}
				if d, err := s.Held(ctx, key); err != nil || d <= 0 {
					return fmt.Errorf("Held, limit %d: %v, %v", limit, d, err)
				}
			}
			return nil
		}},
		{"Reset (DEL)", func() error { return s.Reset(ctx, "acl/1", Request{Interval: time.Second, Limit: 1}) }},
	}
	for _, st := range steps {
		if err := st.run(); err != nil {
			return fmt.Errorf("%s: %w", st.name, err)
		}
	}
	return nil
}

// TestACLMinimalRules shows that a Redis user limited to aclRules (the
// commands in aclCommands on keys ~throttle:*) can use every feature of a
// RedisStore, and that each of those rules is needed: without any one of
// them, or with another key pattern, some store call fails. It also shows
// that a throttle whose user lacks EVALSHA fails with ErrStoreUnavailable.
func TestACLMinimalRules(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	ctx := context.Background()
	n := 0
	// storeAs creates a user with rules and returns a store that logs in
	// as that user, after flushing the script cache (so that EVAL is
	// needed as after a restart) and the keys of earlier users.
	storeAs := func(t *testing.T, rules []string) *RedisStore {
		t.Helper()
		n++
		user := fmt.Sprintf("throttle%d", n)
		args := append([]string{"ACL", "SETUSER", user, "reset"}, rules...)
		_, err := srv.Do(args...)
		require.NoError(t, err, "ACL SETUSER %s %s", user, strings.Join(rules, " "))
		_, err = srv.Do("SCRIPT", "FLUSH")
		require.NoError(t, err)
		_, err = srv.Do("FLUSHALL")
		require.NoError(t, err)
		c := srv.Client(t, func(o *redis.Options) {
			o.Username, o.Password = user, "secret"
			o.MaxRetries = -1
		})
		return NewRedisStore(c)
	}
	line := "ACL SETUSER throttle " + strings.Join(aclRules(aclCommands, "~throttle:*"), " ")
	t.Logf("minimal ACL for the default key prefix: %s", line)

	require.NoError(t, exerciseStore(ctx, storeAs(t, aclRules(aclCommands, "~throttle:*"))), "every store call as a user with %s", line)

	for i, cmd := range aclCommands {
		without := append(append([]string(nil), aclCommands[:i]...), aclCommands[i+1:]...)
		err := exerciseStore(ctx, storeAs(t, aclRules(without, "~throttle:*")))
		assert.Error(t, err, "store calls as a user without +%s: the rule would not be needed", cmd)
		if err != nil {
			assert.True(t, isPermissionError(err), "store calls as a user without +%s: got %v, want a permission error", cmd, err)
		}
	}
	err := exerciseStore(ctx, storeAs(t, aclRules(aclCommands, "~other:*")))
	assert.Error(t, err, "store calls as a user limited to keys ~other:*")

	// WithConcurrency needs the lease commands too, each of them.
	all := append(append([]string(nil), aclCommands...), aclLeaseCommands...)
	t.Logf("with WithConcurrency, add: +%s", strings.Join(aclLeaseCommands, " +"))
	require.NoError(t, exerciseLeases(ctx, storeAs(t, aclRules(all, "~throttle:*"))), "every lease call with the lease rules")
	for i, cmd := range aclLeaseCommands {
		without := append(append([]string(nil), aclCommands...), aclLeaseCommands[:i]...)
		without = append(without, aclLeaseCommands[i+1:]...)
		err := exerciseLeases(ctx, storeAs(t, aclRules(without, "~throttle:*")))
		assert.Error(t, err, "lease calls as a user without +%s: the rule would not be needed", cmd)
		if err != nil {
			assert.True(t, isPermissionError(err), "lease calls as a user without +%s: got %v, want a permission error", cmd, err)
		}
	}

	// At the throttle level: a user without EVALSHA gets ErrStoreUnavailable
	// from a limit above 1 (which runs a script), and fails closed.
	noEvalSHA := append([]string(nil), aclCommands...)
	for i, c := range noEvalSHA {
		if c == "evalsha" {
			noEvalSHA = append(noEvalSHA[:i], noEvalSHA[i+1:]...)
			break
		}
	}
	// Limit 100 decides with a script on every call.
	th, err := New("acl/throttle", time.Hour, WithStore(storeAs(t, aclRules(noEvalSHA, "~throttle:*"))), WithLimit(100))
	require.NoError(t, err)
	d, err := th.Allow(ctx)
	assert.ErrorIs(t, err, ErrStoreUnavailable, "Allow as a user without EVALSHA")
	assert.False(t, d.Allowed, "Allow as a user without EVALSHA")
	var se *StoreError
	if assert.True(t, errors.As(err, &se)) {
		assert.True(t, isPermissionError(se.Err), "the store's error: got %v, want a permission error", se.Err)
	}
}

// isPermissionError reports whether err is Redis refusing a command to the
// user: NOPERM for a command sent by the client, and an ERR for a command
// called by a script.
func isPermissionError(err error) bool {
	msg := err.Error()
	return strings.Contains(msg, "NOPERM") || strings.Contains(msg, "can't run this command")
}

// TestACLMinimalRulesCluster shows that on Redis Cluster the same user needs
// one more rule, +cluster|slots, with which go-redis loads the slot map, and
// that aclRules with it are enough.
func TestACLMinimalRulesCluster(t *testing.T) {
	if testing.Short() {
		t.Skip("cluster test skipped in -short mode")
	}
	t.Parallel()
	cl := redistest.StartCluster(t, 3)
	ctx := context.Background()
	for i, extra := range []string{"+cluster|slots", ""} {
		rules := aclRules(aclCommands, "~throttle:*")
		if extra != "" {
			rules = append(rules, extra)
		}
		user := fmt.Sprintf("throttle%d", i)
		for _, n := range cl.Nodes {
			for _, cmd := range [][]string{append([]string{"ACL", "SETUSER", user, "reset"}, rules...), {"SCRIPT", "FLUSH"}, {"FLUSHALL"}} {
				_, err := n.Do(cmd...)
				require.NoError(t, err, "%s on %s", strings.Join(cmd, " "), n.Addr)
			}
		}
		c := cl.Client(t, func(o *redis.ClusterOptions) {
			o.Username, o.Password = user, "secret"
			o.MaxRetries = -1
		})
		err := exerciseStore(ctx, NewRedisStore(c))
		if extra != "" {
			assert.NoError(t, err, "every store call on a cluster as a user with %s", strings.Join(rules, " "))
		} else if assert.Error(t, err, "store calls on a cluster as a user without +cluster|slots") {
			assert.True(t, isPermissionError(err), "store calls on a cluster as a user without +cluster|slots: got %v, want a permission error", err)
		}
	}
}
