package httpthrottle

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
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

// askedHeader carries, in the test requests, when the client began the
// request (Unix ns): the store decided between it and the arrival.
const askedHeader = "X-Test-Asked"

// arrival is one request as the upstream saw it.
type arrival struct {
	n         int       // 1 for the first request
	at        time.Time // when the handler began
	asked     time.Time // the client's askedHeader, or zero
	responded time.Time // just before the status was written
	status    int
}

// upstream is an httptest server that records every request and answers
// with the status and headers that respond chooses for the n-th request
// (200 if respond is nil). respond may block.
type upstream struct {
	*httptest.Server
	mu       sync.Mutex
	arrivals []arrival
}

func newUpstream(t *testing.T, respond func(n int, h http.Header) int) *upstream {
	t.Helper()
	u := &upstream{}
	u.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		a := arrival{at: time.Now()}
		if ns, err := strconv.ParseInt(r.Header.Get(askedHeader), 10, 64); err == nil {
			a.asked = time.Unix(0, ns)
		}
		u.mu.Lock()
		a.n = len(u.arrivals) + 1
		u.arrivals = append(u.arrivals, arrival{}) // reserve the slot
		u.mu.Unlock()
		a.status = http.StatusOK
		if respond != nil {
			a.status = respond(a.n, w.Header())
		}
		a.responded = time.Now()
		u.mu.Lock()
		u.arrivals[a.n-1] = a
		u.mu.Unlock()
		w.WriteHeader(a.status)
		_, _ = io.WriteString(w, "ok")
	}))
	t.Cleanup(u.Close)
	return u
}

// got returns the requests received so far.
func (u *upstream) got() []arrival {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]arrival(nil), u.arrivals...)
}

func (u *upstream) count() int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return len(u.arrivals)
}

// get sends a GET to url through rt with the askedHeader set, and drains
// and closes the response body.
func get(ctx context.Context, rt http.RoundTripper, url string) (int, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, err
	}
	req.Header.Set(askedHeader, strconv.FormatInt(time.Now().UnixNano(), 10))
	resp, err := (&http.Client{Transport: rt}).Do(req)
	if err != nil {
		return 0, err
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	_ = resp.Body.Close()
	return resp.StatusCode, nil
}

func newKeyed(t *testing.T, interval time.Duration, opts ...throttle.Option) *throttle.Keyed {
	t.Helper()
	k, err := throttle.NewKeyed(interval, opts...)
	require.NoError(t, err, "NewKeyed(%v, ...)", interval)
	return k
}

func newTransport(t *testing.T, k *throttle.Keyed, opts ...Option) *Transport {
	t.Helper()
	tr, err := NewTransport(nil, k, opts...)
	require.NoError(t, err, "NewTransport(nil, k, ...)")
	t.Cleanup(tr.CloseIdleConnections)
	return tr
}

// sharedStore is a store for the shared-limit tests: open returns a Store
// on it as another process would have (its own client, for Redis).
type sharedStore struct {
	name string
	open func(t *testing.T) throttle.Store
}

// sharedStores returns the stores the shared-limit tests run on: one
// MemoryStore shared by the "processes" (each with a Keyed of its own, so
// a deny cache of its own), a miniredis on the real clock (see
// miniredisClock), and a real redis-server when it is installed (required
// with THROTTLE_REQUIRE_REDIS=1).
func sharedStores(t *testing.T) []sharedStore {
	mem := throttle.NewMemoryStore()
	mr := miniredis.RunT(t)
	clock := newMiniredisClock(mr)
	stores := []sharedStore{
		{name: "memory", open: func(*testing.T) throttle.Store { return mem }},
		{name: "miniredis", open: func(t *testing.T) throttle.Store { return redisStore(t, mr.Addr(), clock) }},
	}
	if redistest.Available() || os.Getenv("THROTTLE_REQUIRE_REDIS") == "1" {
		addr := redistest.Start(t).Addr
		stores = append(stores, sharedStore{name: "redis", open: func(t *testing.T) throttle.Store { return redisStore(t, addr, nil) }})
	} else {
		t.Log("redis-server not found: the test runs on MemoryStore and miniredis only")
	}
	return stores
}

// redisStore returns a RedisStore with its own client on addr, as a
// separate process would have; hook, if not nil, is added to the client.
func redisStore(t *testing.T, addr string, hook redis.Hook) throttle.Store {
	c := redis.NewClient(&redis.Options{Addr: addr, ContextTimeoutEnabled: true})
	if hook != nil {
		c.AddHook(hook)
	}
	t.Cleanup(func() { _ = c.Close() })
	return throttle.NewRedisStore(c)
}

// miniredisClock is a go-redis hook that sets a miniredis's clock (TIME
// and, with ClockTTL, the TTLs) to the real time before each command of
// its clients. Real Redis freezes its clock during a script; miniredis
// with ClockTTL on the running clock does not, and can expire the key of
// take.lua between two of its calls: the script then records a start in an
// empty list and over-admits. With this hook the clock moves only between
// commands, never ahead of the real time, and never back.
type miniredisClock struct {
	mr   *miniredis.Miniredis
	mu   sync.Mutex
	last time.Time
}

func newMiniredisClock(mr *miniredis.Miniredis) *miniredisClock {
	c := &miniredisClock{mr: mr}
	c.tick()
	mr.ClockTTL(true)
	return c
}

func (c *miniredisClock) tick() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if now := time.Now(); now.After(c.last) {
		c.last = now
		c.mr.SetTime(now)
	}
}

func (c *miniredisClock) DialHook(next redis.DialHook) redis.DialHook { return next }

func (c *miniredisClock) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		c.tick()
		return next(ctx, cmd)
	}
}

func (c *miniredisClock) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		c.tick()
		return next(ctx, cmds)
	}
}

// sharedTransport returns a Transport on a store of s of its own, as
// another process would have.
func sharedTransport(t *testing.T, s sharedStore, interval time.Duration, kopts []throttle.Option, opts ...Option) *Transport {
	t.Helper()
	kopts = append([]throttle.Option{throttle.WithStore(s.open(t)), throttle.WithTimeout(time.Second)}, kopts...)
	return newTransport(t, newKeyed(t, interval, kopts...), opts...)
}

func TestNewTransportErrors(t *testing.T) {
	k := newKeyed(t, time.Second)
	tests := []struct {
		name string
		k    *throttle.Keyed
		opts []Option
		want string
	}{
		{"nil Keyed", nil, nil, "httpthrottle: nil Keyed"},
		{"nil key func", k, []Option{WithKeyFunc(nil)}, "httpthrottle: nil key func"},
		{"negative wait", k, []Option{WithWait(-time.Second)}, "httpthrottle: negative wait -1s"},
		{"huge wait", k, []Option{WithWait(throttle.MaxInterval + 1)}, "httpthrottle: wait 87600h0m0.000000001s is above 87600h0m0s"},
		{"negative max retry-after", k, []Option{WithMaxRetryAfter(-time.Second)}, "httpthrottle: negative max retry-after -1s"},
		{"huge max retry-after", k, []Option{WithMaxRetryAfter(throttle.MaxInterval + 1)}, "httpthrottle: max retry-after 87600h0m0.000000001s is above 87600h0m0s"},
		{"negative default retry-after", k, []Option{WithDefaultRetryAfter(-time.Second)}, "httpthrottle: negative default retry-after -1s"},
		{"huge default retry-after", k, []Option{WithDefaultRetryAfter(throttle.MaxInterval + 1)}, "httpthrottle: default retry-after 87600h0m0.000000001s is above 87600h0m0s"},
		{"bad status", k, []Option{WithBackoffStatuses(429, 99)}, "httpthrottle: backoff status 99 is not an HTTP status"},
		{"status above 599", k, []Option{WithBackoffStatuses(600)}, "httpthrottle: backoff status 600 is not an HTTP status"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tr, err := NewTransport(nil, tt.k, tt.opts...)
			assert.EqualError(t, err, tt.want, "NewTransport(nil, k, ...)")
			assert.Nil(t, tr)
		})
	}
}

func TestNewTransportDefaults(t *testing.T) {
	k := newKeyed(t, time.Second)
	tr, err := NewTransport(nil, k, nil)
	require.NoError(t, err)
	assert.Same(t, http.DefaultTransport, tr.base, "base of NewTransport(nil, ...)")
	assert.Same(t, k, tr.k)
	assert.Equal(t, time.Hour, tr.maxRetry)
	assert.Zero(t, tr.defRetry)
	assert.Equal(t, []int{429, 503}, tr.statuses)
	assert.Zero(t, tr.wait, "drop mode by default")
	assert.Equal(t, "http:", tr.prefix)

	tr, err = NewTransport(nil, k, WithMaxRetryAfter(0), WithWait(time.Second),
		WithKeyPrefix("a:"), WithKeyPrefix("b:"), WithBackoffStatuses(429), WithBackoffStatuses())
	require.NoError(t, err)
	assert.Equal(t, time.Hour, tr.maxRetry, "WithMaxRetryAfter(0)")
	assert.Equal(t, time.Second, tr.wait, "wait mode from WithWait")
	assert.Equal(t, "b:", tr.prefix, "the last WithKeyPrefix wins")
	assert.Empty(t, tr.statuses, "the last WithBackoffStatuses wins")
}

func TestHostKey(t *testing.T) {
	tests := []struct{ url, want string }{
		{"http://Example.COM/x?y", "example.com:80"},
		{"https://api.example.com", "api.example.com:443"},
		{"HTTPS://api.example.com:8443/", "api.example.com:8443"},
		{"http://127.0.0.1:8080", "127.0.0.1:8080"},
		{"http://[::1]/", "[::1]:80"},
		{"https://[2001:DB8::1]:9000/", "[2001:db8::1]:9000"},
		{"ftp://example.com/", "example.com"},
	}
	for _, tt := range tests {
		req, err := http.NewRequest(http.MethodGet, tt.url, nil)
		require.NoError(t, err, tt.url)
		assert.Equal(t, tt.want, HostKey(req), "HostKey(%q)", tt.url)
	}
}

func TestParseRetryAfter(t *testing.T) {
	now := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		value string
		want  time.Duration
		ok    bool
	}{
		{"1", time.Second, true},
		{" 120 ", 2 * time.Minute, true},
		{"0", 0, true},
		{"-1", 0, false},
		{"1.5", 0, false},
		{"soon", 0, false},
		{"", 0, false},
		{"99999999999999999999999", throttle.MaxInterval, true},
		{"99999999999999999999999x", 0, false},
		{"315360000000", throttle.MaxInterval, true},
		{"Thu, 01 Jan 2026 12:00:30 GMT", 30 * time.Second, true},
		{"Thursday, 01-Jan-26 12:01:00 GMT", time.Minute, true}, // RFC 850
		{"Thu Jan  1 12:00:05 2026", 5 * time.Second, true},     // asctime
		{"Thu, 01 Jan 2026 11:59:00 GMT", 0, true},              // in the past
	}
	for _, tt := range tests {
		d, ok := parseRetryAfter(tt.value, now)
		assert.Equal(t, tt.want, d, "parseRetryAfter(%q)", tt.value)
		assert.Equal(t, tt.ok, ok, "parseRetryAfter(%q) ok", tt.value)
	}
}

// closeRecorder is a request body that records whether it was closed.
type closeRecorder struct {
	io.Reader
	closed atomic.Bool
}

func (c *closeRecorder) Close() error { c.closed.Store(true); return nil }

func TestTransportDropsThrottledRequests(t *testing.T) {
	t.Parallel()
	up := newUpstream(t, nil)
	tr := newTransport(t, newKeyed(t, time.Hour))
	ctx := t.Context()

	status, err := get(ctx, tr, up.URL)
	require.NoError(t, err, "first request")
	assert.Equal(t, http.StatusOK, status)

	// Through http.Client: the error is a *url.Error around the
	// *throttle.ThrottledError.
	_, err = get(ctx, tr, up.URL+"/other/path")
	assert.ErrorIs(t, err, throttle.ErrThrottled, "second request to the same host")
	var te *throttle.ThrottledError
	require.ErrorAs(t, err, &te)
	assert.Equal(t, "http:"+strings.TrimPrefix(up.URL, "http://"), te.Key)
	assert.InDelta(t, float64(time.Hour), float64(te.RetryAfter), float64(time.Minute), "RetryAfter")

	// RoundTrip itself closes the body of a request it does not send.
	body := &closeRecorder{Reader: strings.NewReader("payload")}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, up.URL, body)
	require.NoError(t, err)
	resp, err := tr.RoundTrip(req)
	assert.Nil(t, resp, "response of a throttled RoundTrip")
	assert.ErrorIs(t, err, throttle.ErrThrottled, "throttled RoundTrip")
	assert.True(t, body.closed.Load(), "body of a request that was not sent: closed")
	assert.Equal(t, 1, up.count(), "requests that reached the upstream")

	// Another host has its own limit.
	other := newUpstream(t, nil)
	status, err = get(ctx, tr, other.URL)
	require.NoError(t, err, "first request to another host")
	assert.Equal(t, http.StatusOK, status)
}

func TestTransportKeyFunc(t *testing.T) {
	t.Parallel()
	up := newUpstream(t, nil)
	tr := newTransport(t, newKeyed(t, time.Hour), WithKeyPrefix("api:"), WithKeyFunc(func(r *http.Request) string {
		return r.Header.Get("X-Token") // "" (no token): not throttled
	}))
	send := func(token string) error {
		req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, up.URL, nil)
		require.NoError(t, err)
		if token != "" {
			req.Header.Set("X-Token", token)
		}
		resp, err := tr.RoundTrip(req)
		if err == nil {
			_ = resp.Body.Close()
		}
		return err
	}
	assert.NoError(t, send("a"), "first request with token a")
	assert.NoError(t, send("b"), "first request with token b")
	err := send("a")
	assert.ErrorIs(t, err, throttle.ErrThrottled, "second request with token a")
	var te *throttle.ThrottledError
	require.ErrorAs(t, err, &te)
	assert.Equal(t, "api:a", te.Key, "key of the throttled request")
	for i := range 3 {
		assert.NoError(t, send(""), "request %d without a token", i)
	}
	assert.Equal(t, 5, up.count(), "requests that reached the upstream")
}

func TestTransportWaitsForTurn(t *testing.T) {
	t.Parallel()
	const interval = 100 * time.Millisecond
	up := newUpstream(t, nil)
	tr := newTransport(t, newKeyed(t, interval), WithWait(5*time.Second))
	for i := range 3 {
		status, err := get(t.Context(), tr, up.URL)
		require.NoError(t, err, "request %d", i)
		assert.Equal(t, http.StatusOK, status)
	}
	got := up.got()
	require.Len(t, got, 3)
	for i := 1; i < len(got); i++ {
		// The store admitted request i at least one interval after
		// request i-1, which it admitted after that one was asked.
		assert.GreaterOrEqual(t, got[i].at.Sub(got[i-1].asked), interval, "request %d arrived too early after request %d was asked", i, i-1)
	}
}

func TestTransportWaitHonoursContext(t *testing.T) {
	t.Parallel()
	up := newUpstream(t, nil)

	t.Run("deadline before the turn", func(t *testing.T) {
		t.Parallel()
		tr := newTransport(t, newKeyed(t, time.Hour), WithWait(2*time.Hour))
		_, err := get(t.Context(), tr, up.URL)
		require.NoError(t, err, "first request")
		ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
		defer cancel()
		begin := time.Now()
		_, err = get(ctx, tr, up.URL)
		assert.ErrorIs(t, err, throttle.ErrThrottled, "request whose turn is after its deadline")
		assert.Less(t, time.Since(begin), 5*time.Second, "it returns without waiting for the turn")
	})

	t.Run("cancelled while waiting", func(t *testing.T) {
		t.Parallel()
		other := newUpstream(t, nil)
		const interval = 300 * time.Millisecond
		tr := newTransport(t, newKeyed(t, interval), WithWait(10*time.Second))
		_, err := get(t.Context(), tr, other.URL)
		require.NoError(t, err, "first request")
		ctx, cancel := context.WithCancel(t.Context())
		time.AfterFunc(50*time.Millisecond, cancel)
		_, err = get(ctx, tr, other.URL)
		assert.ErrorIs(t, err, context.Canceled, "request cancelled while it waited")
		assert.Equal(t, 1, other.count(), "requests that reached the upstream")
		status, err := get(t.Context(), tr, other.URL)
		require.NoError(t, err, "request after the cancelled one")
		assert.Equal(t, http.StatusOK, status)
	})
}

// TestTransportSharedBackoff runs pools of "processes" (goroutines, each
// with its own store client, Keyed and Transport) against one upstream,
// through one shared store. The upstream answers its third request with 429 and
// Retry-After: 1. It checks, from the upstream's arrival times and the
// clients' ask times, that the limit held in every window and that no
// request decided after the 429 reached the upstream before one second had
// passed.
func TestTransportSharedBackoff(t *testing.T) {
	if testing.Short() {
		t.Skip("shared backoff test skipped in -short mode")
	}
	cases := []struct {
		name     string
		interval time.Duration
		limit    int
		wait     time.Duration
	}{
		{"limit 1 per 200ms", 200 * time.Millisecond, 1, 0},
		{"limit 3 per 300ms", 300 * time.Millisecond, 3, 0},
		{"limit 1 per 200ms waiting", 200 * time.Millisecond, 1, 3 * time.Second},
		{"limit 2 per 200ms waiting", 200 * time.Millisecond, 2, 3 * time.Second},
	}
	const (
		workers    = 4
		duration   = 2500 * time.Millisecond
		retryAfter = time.Second
		// margin covers whole-millisecond expiries in Redis.
		margin = 5 * time.Millisecond
	)
	for _, srv := range sharedStores(t) {
		for _, c := range cases {
			t.Run(srv.name+"/"+c.name, func(t *testing.T) {
				t.Parallel()
				up := newUpstream(t, func(n int, h http.Header) int {
					if n == 3 {
						h.Set("Retry-After", strconv.Itoa(int(retryAfter/time.Second)))
						return http.StatusTooManyRequests
					}
					return http.StatusOK
				})
				var (
					mu       sync.Mutex
					holdDone time.Time // when the RoundTrip that got the 429 returned
					errs     []error
					wg       sync.WaitGroup
				)
				end := time.Now().Add(duration)
				for range workers {
					tr := sharedTransport(t, srv, c.interval, []throttle.Option{throttle.WithLimit(c.limit)}, WithWait(c.wait))
					wg.Go(func() {
						for time.Now().Before(end) {
							ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
							status, err := get(ctx, tr, up.URL)
							cancel()
							var te *throttle.ThrottledError
							switch {
							case errors.As(err, &te):
								time.Sleep(min(te.RetryAfter, 10*time.Millisecond) + rand.N(time.Millisecond))
							case err != nil:
								mu.Lock()
								errs = append(errs, err)
								mu.Unlock()
							case status == http.StatusTooManyRequests:
								mu.Lock()
								holdDone = time.Now()
								mu.Unlock()
							}
						}
					})
				}
				wg.Wait()
				require.Empty(t, errs, "request errors")
				got := up.got()
				require.GreaterOrEqual(t, len(got), 3, "requests that reached the upstream")
				require.False(t, holdDone.IsZero(), "no request got the 429")

				var as []simevent.Admission
				for _, a := range got {
					as = append(as, simevent.Admission{Asked: a.asked.UnixNano(), Started: a.at.UnixNano()})
				}
				r := simevent.Check(as, c.interval, c.limit, duration)
				if !assert.Zero(t, r.Violations, "provable violations of %d per %v (max %d in a window by arrival)", c.limit, c.interval, r.MaxInWindow) {
					for _, a := range got {
						t.Logf("request %d: asked %v, arrived %v (after the first arrival), status %d",
							a.n, a.asked.Sub(got[0].at), a.at.Sub(got[0].at), a.status)
					}
				}

				hold := got[2].responded.Add(retryAfter)
				var during, after, early int
				for _, a := range got[3:] {
					switch {
					case a.asked.After(holdDone) && a.at.Before(hold.Add(-margin)):
						early++
						t.Errorf("request %d asked %v after the 429 was handled arrived %v before the Retry-After ended",
							a.n, a.asked.Sub(holdDone), hold.Sub(a.at))
					case a.at.Before(hold):
						during++ // decided before the hold was set
					default:
						after++
					}
				}
				t.Logf("%d requests reached the upstream: 3 up to the 429, %d during the hold (decided before it), %d after it; max %d in a window by arrival",
					len(got), during, after, r.MaxInWindow)
				assert.Positive(t, after, "requests after the hold ended (liveness)")
			})
		}
	}
}

// TestTransportBackoffStopsBookedWaiters checks that a request waiting for
// a turn booked before another process got a 429 does not take that turn
// inside the hold: it waits for the hold to end and takes a new turn, or,
// when its wait cannot cover the hold, returns throttle.ErrThrottled unsent.
func TestTransportBackoffStopsBookedWaiters(t *testing.T) {
	if testing.Short() {
		t.Skip("shared backoff test skipped in -short mode")
	}
	const (
		interval   = 500 * time.Millisecond
		retryAfter = time.Second
		margin     = 5 * time.Millisecond
	)
	for _, srv := range sharedStores(t) {
		for _, wait := range []time.Duration{5 * time.Second, 700 * time.Millisecond} {
			t.Run(fmt.Sprintf("%s/wait %v", srv.name, wait), func(t *testing.T) {
				t.Parallel()
				arrived := make(chan struct{})
				release := make(chan struct{})
				var releaseOnce sync.Once
				t.Cleanup(func() { releaseOnce.Do(func() { close(release) }) })
				up := newUpstream(t, func(n int, h http.Header) int {
					if n > 1 {
						return http.StatusOK
					}
					close(arrived)
					<-release
					h.Set("Retry-After", "1")
					return http.StatusTooManyRequests
				})
				booked := make(chan struct{}, 1)
				a := sharedTransport(t, srv, interval, nil, WithWait(wait))
				b := sharedTransport(t, srv, interval, []throttle.Option{throttle.WithObserver(func(e throttle.Event) {
					if e.Kind == throttle.EventDecision && e.Allowed && e.Delay > 0 {
						select {
						case booked <- struct{}{}:
						default:
						}
					}
				})}, WithWait(wait))

				type result struct {
					status   int
					err      error
					returned time.Time
				}
				aDone, bDone := make(chan result, 1), make(chan result, 1)
				askedA := time.Now()
				go func() {
					status, err := get(context.Background(), a, up.URL)
					aDone <- result{status, err, time.Now()}
				}()
				select {
				case <-arrived:
				case <-time.After(10 * time.Second):
					t.Fatal("the first request did not reach the upstream")
				}
				go func() {
					status, err := get(context.Background(), b, up.URL)
					bDone <- result{status, err, time.Now()}
				}()
				select {
				case <-booked:
				case <-time.After(10 * time.Second):
					t.Fatal("the second request did not book a turn")
				}
				releaseOnce.Do(func() { close(release) })
				ra := <-aDone
				require.NoError(t, ra.err, "first request")
				require.Equal(t, http.StatusTooManyRequests, ra.status, "first request")
				rb := <-bDone

				// The waiter's turn was at least one interval after the
				// first request was asked; if the hold was set before
				// then, the waiter must have seen it.
				if !ra.returned.Before(askedA.Add(interval - 2*time.Millisecond)) {
					t.Skipf("inconclusive: the 429 was handled %v after the first request was asked, after the waiter's turn", ra.returned.Sub(askedA))
				}
				got := up.got()
				if wait < retryAfter {
					assert.ErrorIs(t, rb.err, throttle.ErrThrottled, "waiter whose wait of %v cannot cover the hold", wait)
					assert.Len(t, got, 1, "requests that reached the upstream")
					return
				}
				require.NoError(t, rb.err, "second request")
				assert.Equal(t, http.StatusOK, rb.status, "second request")
				require.Len(t, got, 2)
				hold := got[0].responded.Add(retryAfter)
				assert.False(t, got[1].at.Before(hold.Add(-margin)),
					"the booked waiter reached the upstream %v before the Retry-After ended", hold.Sub(got[1].at))
			})
		}
	}
}

// TestTransportRetryAfterDate checks Retry-After as an HTTP date: another
// process is throttled until that date, and admitted after it.
func TestTransportRetryAfterDate(t *testing.T) {
	if testing.Short() {
		t.Skip("shared backoff test skipped in -short mode")
	}
	for _, srv := range sharedStores(t) {
		t.Run(srv.name, func(t *testing.T) {
			t.Parallel()
			var untilNs atomic.Int64 // the Retry-After date
			up := newUpstream(t, func(n int, h http.Header) int {
				if n > 1 {
					return http.StatusOK
				}
				until := time.Now().Add(2 * time.Second).Truncate(time.Second)
				untilNs.Store(until.UnixNano())
				h.Set("Retry-After", until.UTC().Format(http.TimeFormat))
				return http.StatusServiceUnavailable
			})
			a := sharedTransport(t, srv, 10*time.Millisecond, nil)
			b := sharedTransport(t, srv, 10*time.Millisecond, nil)

			status, err := get(t.Context(), a, up.URL)
			require.NoError(t, err, "first request")
			require.Equal(t, http.StatusServiceUnavailable, status)
			until := time.Unix(0, untilNs.Load())

			_, err = get(t.Context(), b, up.URL)
			returned := time.Now()
			var te *throttle.ThrottledError
			require.ErrorAs(t, err, &te, "request from another process after the 503")
			assert.GreaterOrEqual(t, te.RetryAfter, until.Sub(returned)-2*time.Millisecond, "RetryAfter: at least until the date")
			assert.LessOrEqual(t, te.RetryAfter, 3*time.Second, "RetryAfter: the date is at most 2s after the response")

			deadline := time.Now().Add(10 * time.Second)
			for {
				status, err = get(t.Context(), b, up.URL)
				if err == nil || !errors.Is(err, throttle.ErrThrottled) || time.Now().After(deadline) {
					break
				}
				time.Sleep(20 * time.Millisecond)
			}
			require.NoError(t, err, "request after the date")
			assert.Equal(t, http.StatusOK, status)
			got := up.got()
			require.Len(t, got, 2, "requests that reached the upstream")
			assert.False(t, got[1].at.Before(until.Add(-5*time.Millisecond)), "request arrived %v before the Retry-After date", until.Sub(got[1].at))
		})
	}
}

func TestTransportBackoffStatuses(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		status  int
		header  string
		opts    []Option
		blocked bool
	}{
		{"429 with Retry-After", http.StatusTooManyRequests, "60", nil, true},
		{"503 with Retry-After", http.StatusServiceUnavailable, "60", nil, true},
		{"429 without Retry-After", http.StatusTooManyRequests, "", nil, false},
		{"500 with Retry-After", http.StatusInternalServerError, "60", nil, false},
		{"429 with Retry-After: 0", http.StatusTooManyRequests, "0", nil, false},
		{"429 with an unreadable Retry-After", http.StatusTooManyRequests, "later", nil, false},
		{"backoff turned off", http.StatusTooManyRequests, "60", []Option{WithBackoffStatuses()}, false},
		{"403 as a backoff status", http.StatusForbidden, "60", []Option{WithBackoffStatuses(403)}, true},
		{"429 without Retry-After, with a default", http.StatusTooManyRequests, "", []Option{WithDefaultRetryAfter(time.Minute)}, true},
		{"429 with an unreadable Retry-After, with a default", http.StatusTooManyRequests, "later", []Option{WithDefaultRetryAfter(time.Minute)}, true},
		{"429 with Retry-After: 0, with a default", http.StatusTooManyRequests, "0", []Option{WithDefaultRetryAfter(time.Minute)}, false},
		{"500 without Retry-After, with a default", http.StatusInternalServerError, "", []Option{WithDefaultRetryAfter(time.Minute)}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			up := newUpstream(t, func(n int, h http.Header) int {
				if n > 1 {
					return http.StatusOK
				}
				if tt.header != "" {
					h.Set("Retry-After", tt.header)
				}
				return tt.status
			})
			tr := newTransport(t, newKeyed(t, time.Millisecond), tt.opts...)
			status, err := get(t.Context(), tr, up.URL)
			require.NoError(t, err, "first request")
			require.Equal(t, tt.status, status, "first response is returned unchanged")
			time.Sleep(5 * time.Millisecond) // past the 1ms interval
			_, err = get(t.Context(), tr, up.URL)
			if tt.blocked {
				var te *throttle.ThrottledError
				require.ErrorAs(t, err, &te, "request after a %d with Retry-After %q", tt.status, tt.header)
				assert.Greater(t, te.RetryAfter, 59*time.Second, "RetryAfter after Retry-After: %s", tt.header)
				assert.Equal(t, 1, up.count(), "requests that reached the upstream")
			} else {
				assert.NoError(t, err, "request after a %d with Retry-After %q", tt.status, tt.header)
				assert.Equal(t, 2, up.count(), "requests that reached the upstream")
			}
		})
	}
}

func TestTransportMaxRetryAfter(t *testing.T) {
	t.Parallel()
	const maxHold = 100 * time.Millisecond
	up := newUpstream(t, func(n int, h http.Header) int {
		if n > 1 {
			return http.StatusOK
		}
		h.Set("Retry-After", "3600")
		return http.StatusTooManyRequests
	})
	tr := newTransport(t, newKeyed(t, time.Millisecond), WithMaxRetryAfter(maxHold), WithWait(5*time.Second))
	status, err := get(t.Context(), tr, up.URL)
	require.NoError(t, err, "first request")
	require.Equal(t, http.StatusTooManyRequests, status)
	status, err = get(t.Context(), tr, up.URL)
	require.NoError(t, err, "request after a Retry-After of an hour, capped at %v", maxHold)
	assert.Equal(t, http.StatusOK, status)
	got := up.got()
	require.Len(t, got, 2)
	gap := got[1].at.Sub(got[0].responded)
	assert.GreaterOrEqual(t, gap, maxHold, "gap after the 429")
	assert.Less(t, gap, 5*time.Second, "gap after the 429: the hold is capped at %v", maxHold)
}

// TestTransportHoldFailureStillReturnsResponse checks that a store that
// fails while the transport sets a hold does not hide the response.
func TestTransportHoldFailureStillReturnsResponse(t *testing.T) {
	t.Parallel()
	up := newUpstream(t, func(n int, h http.Header) int {
		h.Set("Retry-After", "60")
		return http.StatusTooManyRequests
	})
	mr := miniredis.RunT(t)
	c := redis.NewClient(&redis.Options{Addr: mr.Addr(), ContextTimeoutEnabled: true, MaxRetries: -1})
	t.Cleanup(func() { _ = c.Close() })
	// Fail open, so that the request is sent with Redis down.
	tr := newTransport(t, newKeyed(t, time.Millisecond, throttle.WithStore(throttle.NewRedisStore(c)), throttle.WithFailOpen()))
	mr.Close()
	status, err := get(t.Context(), tr, up.URL)
	require.NoError(t, err, "request with Redis down, fail open")
	assert.Equal(t, http.StatusTooManyRequests, status)
	// This process holds off all the same.
	_, err = get(t.Context(), tr, up.URL)
	assert.ErrorIs(t, err, throttle.ErrThrottled, "request after the 429 with Redis down")
}

// TestTransportConcurrentKeys checks that of concurrent first requests for
// one key, one is sent.
func TestTransportConcurrentKeys(t *testing.T) {
	t.Parallel()
	up := newUpstream(t, nil)
	tr := newTransport(t, newKeyed(t, time.Hour))
	var wg sync.WaitGroup
	var sent atomic.Int32
	release := make(chan struct{})
	for range 20 {
		wg.Go(func() {
			<-release
			if _, err := get(context.Background(), tr, up.URL); err == nil {
				sent.Add(1)
			}
		})
	}
	close(release)
	wg.Wait()
	assert.Equal(t, int32(1), sent.Load(), "requests sent out of 20 concurrent ones, limit 1 per hour")
	assert.Equal(t, 1, up.count())
}

// deadRedis returns a RedisStore whose server is gone.
func deadRedis(t *testing.T) throttle.Store {
	mr := miniredis.RunT(t)
	c := redis.NewClient(&redis.Options{Addr: mr.Addr(), ContextTimeoutEnabled: true, MaxRetries: -1})
	t.Cleanup(func() { _ = c.Close() })
	mr.Close()
	return throttle.NewRedisStore(c)
}

// TestTransportStoreDown checks the Keyed's store-failure policy: fail
// closed drops the request with an error matching ErrStoreUnavailable; the
// fallback limit admits one request per interval and denies the next with
// an error matching ErrThrottled too.
func TestTransportStoreDown(t *testing.T) {
	t.Parallel()
	for _, wait := range []time.Duration{0, time.Second} {
		t.Run(fmt.Sprintf("wait %v", wait), func(t *testing.T) {
			t.Parallel()
			up := newUpstream(t, nil)
			closed := newTransport(t, newKeyed(t, time.Hour, throttle.WithStore(deadRedis(t))), WithWait(wait))
			body := &closeRecorder{Reader: strings.NewReader("payload")}
			req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, up.URL, body)
			require.NoError(t, err)
			resp, err := closed.RoundTrip(req)
			assert.Nil(t, resp)
			assert.ErrorIs(t, err, throttle.ErrStoreUnavailable, "fail closed")
			assert.NotErrorIs(t, err, throttle.ErrThrottled, "fail closed")
			assert.True(t, body.closed.Load(), "body of a request that was not sent: closed")

			fallback := newTransport(t, newKeyed(t, time.Hour, throttle.WithStore(deadRedis(t)), throttle.WithFallback(1)), WithWait(wait))
			status, err := get(t.Context(), fallback, up.URL)
			require.NoError(t, err, "first request under the fallback limit")
			assert.Equal(t, http.StatusOK, status)
			_, err = get(t.Context(), fallback, up.URL)
			assert.ErrorIs(t, err, throttle.ErrStoreUnavailable, "second request under the fallback limit")
			var te *throttle.ThrottledError
			require.ErrorAs(t, err, &te, "second request under the fallback limit")
			assert.Greater(t, te.RetryAfter, 59*time.Minute, "RetryAfter of the fallback limit")
			assert.Equal(t, 1, up.count(), "requests that reached the upstream")
		})
	}
}

// edgeStore books every start a little past the wait it was given, as a
// store whose answer took that long would.
type edgeStore struct{ cancels atomic.Int32 }

func (s *edgeStore) Take(_ context.Context, _ string, req throttle.Request) (throttle.Reservation, error) {
	if req.MaxWait == 0 {
		return throttle.Reservation{RetryAfter: time.Hour}, nil
	}
	return throttle.Reservation{OK: true, Delay: req.MaxWait + 50*time.Millisecond}, nil
}

func (s *edgeStore) Cancel(context.Context, string, throttle.Request, throttle.Reservation) error {
	s.cancels.Add(1)
	return nil
}

// TestTransportWaitRunsOut checks that a request whose turn comes after
// its wait ran out is throttled and its turn handed back, while one whose
// context ran out gets the context's error.
func TestTransportWaitRunsOut(t *testing.T) {
	t.Parallel()
	up := newUpstream(t, nil)
	store := &edgeStore{}
	tr := newTransport(t, newKeyed(t, time.Second, throttle.WithStore(store), throttle.WithDenyCache(false)), WithWait(100*time.Millisecond))
	_, err := get(t.Context(), tr, up.URL)
	var te *throttle.ThrottledError
	require.ErrorAs(t, err, &te, "request whose turn is past its wait")
	assert.NotErrorIs(t, err, context.DeadlineExceeded)
	assert.Equal(t, int32(1), store.cancels.Load(), "turns handed back")

	// The request's own deadline comes before the booked turn: Wait hands
	// the turn back and the request is throttled, as when its turn is
	// past the Transport's wait.
	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	_, err = get(ctx, tr, up.URL)
	assert.ErrorIs(t, err, throttle.ErrThrottled, "request whose context ends before its turn")
	assert.Equal(t, int32(2), store.cancels.Load(), "turns handed back")
	assert.Zero(t, up.count(), "requests that reached the upstream")
}

// TestTransportKeyedWait checks that without the Transport's WithWait a
// throttled request is dropped even when the Keyed has a wait, and that
// the Keyed's wait caps the Transport's.
func TestTransportKeyedWait(t *testing.T) {
	t.Parallel()
	up := newUpstream(t, nil)
	k := newKeyed(t, time.Hour, throttle.WithWait(time.Hour))
	_, err := get(t.Context(), newTransport(t, k), up.URL)
	require.NoError(t, err, "first request")
	begin := time.Now()
	_, err = get(t.Context(), newTransport(t, k), up.URL)
	assert.ErrorIs(t, err, throttle.ErrThrottled, "request without the Transport's WithWait")
	assert.Less(t, time.Since(begin), time.Second, "it is dropped at once")

	k = newKeyed(t, time.Hour, throttle.WithWait(time.Millisecond))
	_, err = get(t.Context(), newTransport(t, k), up.URL)
	require.NoError(t, err, "first request")
	begin = time.Now()
	_, err = get(t.Context(), newTransport(t, k, WithWait(2*time.Hour)), up.URL)
	assert.ErrorIs(t, err, throttle.ErrThrottled, "request whose Keyed waits 1ms")
	assert.Less(t, time.Since(begin), time.Second, "it is throttled at once")
	assert.Equal(t, 2, up.count(), "requests that reached the upstream")
}

// okTransport answers every request with 200 and an empty body, without a
// network.
type okTransport struct{}

func (okTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	return &http.Response{StatusCode: http.StatusOK, Body: http.NoBody, Request: req, Header: http.Header{}}, nil
}

// TestTransportManyHostsKeepsNoState checks that a Transport used with
// many distinct hosts keeps nothing per host beyond the Keyed's state,
// which follows the hosts active within an interval: after 10,000 hosts,
// and as many again, the heap has not grown with them.
func TestTransportManyHostsKeepsNoState(t *testing.T) {
	const hosts = 10_000
	tr, err := NewTransport(okTransport{}, newKeyed(t, time.Millisecond))
	require.NoError(t, err)
	ctx := t.Context()
	round := func(r int) {
		for i := range hosts {
			req, err := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("http://h%d-%d.example/", r, i), nil)
			require.NoError(t, err)
			resp, err := tr.RoundTrip(req)
			require.NoError(t, err, "first request to host %d of round %d", i, r)
			_ = resp.Body.Close()
		}
		time.Sleep(5 * time.Millisecond) // past the hosts' interval
	}
	heap := func() uint64 {
		runtime.GC()
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return m.HeapAlloc
	}
	round(0) // warm up: the shards' maps reach their working size
	before := heap()
	for r := 1; r <= 3; r++ {
		round(r)
	}
	after := heap()
	grown := int64(after) - int64(before)
	t.Logf("heap after %d hosts: %d KiB; after %d more: %d KiB (%+d B per host)",
		hosts, before>>10, 3*hosts, after>>10, grown/(3*hosts))
	assert.Less(t, grown, int64(1<<20), "heap growth over %d more hosts", 3*hosts)
	runtime.KeepAlive(tr)
}
