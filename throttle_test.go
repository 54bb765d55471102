package throttle

import (
	"context"
	"errors"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dthrottle/throttle/internal/faultproxy"
)

func TestNewRejectsBadInput(t *testing.T) {
	var nilRedis *RedisStore
	tests := []struct {
		name     string
		key      string
		interval time.Duration
		opts     []Option
		want     string
	}{
		{"empty key", "", time.Second, nil, "throttle: empty key"},
		{"zero interval", "k", 0, nil, "throttle: interval 0s is below 1ms"},
		{"sub-millisecond interval", "k", 999 * time.Microsecond, nil, "throttle: interval 999µs is below 1ms"},
		{"negative interval", "k", -time.Second, nil, "throttle: interval -1s is below 1ms"},
		{"huge interval", "k", MaxInterval + 1, nil, "throttle: interval 87600h0m0.000000001s is above 87600h0m0s"},
		{"zero limit", "k", time.Second, []Option{WithLimit(0)}, "throttle: limit 0 is below 1"},
		{"negative limit", "k", time.Second, []Option{WithLimit(-3)}, "throttle: limit -3 is below 1"},
		{"huge limit", "k", time.Second, []Option{WithLimit(MaxLimit + 1)}, "throttle: limit 1073741825 is above 1073741824"},
		{"nil store", "k", time.Second, []Option{WithStore(nil)}, "throttle: nil store"},
		{"typed nil store", "k", time.Second, []Option{WithStore(nilRedis)}, "throttle: nil store"},
		{"typed nil store of another package's type", "k", time.Second, []Option{WithStore((*ptrStore)(nil))}, "throttle: nil store"},
		{"negative wait", "k", time.Second, []Option{WithWait(-time.Millisecond)}, "throttle: negative wait -1ms"},
		{"negative timeout", "k", time.Second, []Option{WithTimeout(-time.Second)}, "throttle: negative timeout -1s"},
		{"negative permit batch", "k", time.Second, []Option{WithPermitBatch(-1)}, "throttle: negative permit batch -1"},
		{"WithLimitPer zero limit", "k", time.Second, []Option{WithLimitPer(0, time.Hour)}, "throttle: WithLimitPer limit 0 is below 1"},
		{"WithLimitPer huge limit", "k", time.Second, []Option{WithLimitPer(MaxLimit+1, time.Hour)}, "throttle: WithLimitPer limit 1073741825 is above 1073741824"},
		{"WithLimitPer zero interval", "k", time.Second, []Option{WithLimitPer(5, 0)}, "throttle: WithLimitPer interval 0s is below 1ms"},
		{"WithLimitPer negative interval", "k", time.Second, []Option{WithLimitPer(5, -time.Hour)}, "throttle: WithLimitPer interval -1h0m0s is below 1ms"},
		{"WithLimitPer huge interval", "k", time.Second, []Option{WithLimitPer(5, MaxInterval+1)}, "throttle: WithLimitPer interval 87600h0m0.000000001s is above 87600h0m0s"},
		{"WithLimitPer too many windows", "k", time.Second, []Option{WithLimitPer(5, time.Minute), WithLimitPer(5, time.Hour),
			WithLimitPer(5, 2*time.Hour), WithLimitPer(5, 3*time.Hour)}, "throttle: 4 windows of WithLimitPer, at most 3"},
		{"WithLimitPer with a pure cap", "k", 0, []Option{WithLimitPer(5, time.Minute), WithConcurrency(2)},
			"throttle: WithLimitPer needs an interval: give the shortest window as the interval and limit"},
		{"WithConcurrency with a large limit that WithLimitPer merges", "k", time.Second, []Option{WithLimit(100), WithLimitPer(80, time.Second), WithConcurrency(2)},
			"throttle: WithConcurrency needs a limit of at most 64, not 80"},
		{"WithLimitPer on a store that is not a WindowStore", "k", time.Second, []Option{WithStore(plainStore{NewMemoryStore()}), WithLimitPer(5, time.Minute)},
			"throttle: store throttle.plainStore cannot keep the windows of WithLimitPer: it is not a WindowStore"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			th, err := New(tt.key, tt.interval, tt.opts...)
			assert.Nil(t, th, "New(%q, %v)", tt.key, tt.interval)
			require.Error(t, err, "New(%q, %v)", tt.key, tt.interval)
			assert.Equal(t, tt.want, err.Error(), "New(%q, %v) error", tt.key, tt.interval)
			assert.PanicsWithValue(t, tt.want, func() {
				Wrap(tt.key, tt.interval, func() int { return 1 }, tt.opts...)
			}, "Wrap(%q, %v)", tt.key, tt.interval)
			assert.PanicsWithValue(t, tt.want, func() {
				WrapErr(tt.key, tt.interval, func(context.Context) (int, error) { return 1, nil }, tt.opts...)
			}, "WrapErr(%q, %v)", tt.key, tt.interval)
		})
	}
}

// ptrStore is a Store with pointer receivers that is not one of this
// package's own, as a user's wrapper would be.
type ptrStore struct{ MemoryStore }

func (s *ptrStore) Take(ctx context.Context, key string, req Request) (Reservation, error) {
	return s.MemoryStore.Take(ctx, key, req)
}

func TestNewAcceptsEdgeInput(t *testing.T) {
	for _, tt := range []struct {
		name     string
		interval time.Duration
		opts     []Option
	}{
		{"1ms", time.Millisecond, nil},
		{"max interval", MaxInterval, nil},
		{"max limit", time.Second, []Option{WithLimit(MaxLimit)}},
		{"zero wait and timeout mean defaults", time.Second, []Option{WithWait(0), WithTimeout(0)}},
		{"nil option ignored", time.Second, []Option{nil}},
	} {
		th, err := New("k", tt.interval, tt.opts...)
		require.NoError(t, err, "New with %s", tt.name)
		assert.Equal(t, DefaultTimeout, th.c.cfg.timeout, "%s: timeout", tt.name)
	}
	assert.Panics(t, func() { Wrap[int]("k", time.Second, nil) }, "Wrap with nil fn")
	assert.Panics(t, func() { WrapErr[int]("k", time.Second, nil) }, "WrapErr with nil fn")
}

func TestWrapRunsOnceThenReturnsZero(t *testing.T) {
	var calls atomic.Int32
	fetch := Wrap("api", time.Hour, func() int { calls.Add(1); return 7 })
	assert.Equal(t, 7, fetch(), "first call")
	for range 10 {
		assert.Equal(t, 0, fetch(), "call within the interval")
	}
	assert.EqualValues(t, 1, calls.Load(), "fn calls")
}

func TestWrapWithLimit(t *testing.T) {
	var calls atomic.Int32
	fetch := Wrap("api", time.Hour, func() string { calls.Add(1); return "ok" }, WithLimit(3))
	got := 0
	for range 10 {
		if fetch() == "ok" {
			got++
		}
	}
	assert.Equal(t, 3, got, "admitted of 10 calls with limit 3")
	assert.EqualValues(t, 3, calls.Load(), "fn calls")
}

func TestWrapErrReportsThrottled(t *testing.T) {
	fetch := WrapErr("api", time.Hour, func(context.Context) (string, error) { return "body", nil })
	v, err := fetch(context.Background())
	require.NoError(t, err, "first call")
	assert.Equal(t, "body", v, "first call")
	v, err = fetch(context.Background())
	assert.Empty(t, v, "second call value")
	require.ErrorIs(t, err, ErrThrottled, "second call")
	var te *ThrottledError
	require.ErrorAs(t, err, &te, "second call")
	assert.Equal(t, "api", te.Key)
	assert.Positive(t, te.RetryAfter, "RetryAfter")
	assert.LessOrEqual(t, te.RetryAfter, time.Hour, "RetryAfter")
	assert.NotErrorIs(t, err, ErrStoreUnavailable)

	// fn's own error comes back unchanged.
	boom := errors.New("boom")
	failing := WrapErr("other", time.Hour, func(context.Context) (int, error) { return 0, boom })
	_, err = failing(context.Background())
	assert.Equal(t, boom, err, "fn's error")
}

func TestPanicInFnReachesCaller(t *testing.T) {
	f := Wrap("p", time.Hour, func() int { panic("boom") })
	assert.PanicsWithValue(t, "boom", func() { f() })
	g := WrapErr("p", time.Hour, func(context.Context) (int, error) { panic("bang") })
	assert.PanicsWithValue(t, "bang", func() { _, _ = g(context.Background()) })
}

// failingStore fails every call.
type failingStore struct{ err error }

func (s failingStore) Take(context.Context, string, Request) (Reservation, error) {
	return Reservation{}, s.err
}

func (s failingStore) Cancel(context.Context, string, Request, Reservation) error { return s.err }

func TestStoreFailure(t *testing.T) {
	down := errors.New("connection refused")
	for _, failOpen := range []bool{false, true} {
		opts := []Option{WithStore(failingStore{down})}
		if failOpen {
			opts = append(opts, WithFailOpen())
		}
		var calls atomic.Int32
		f := Wrap("k", time.Second, func() int { calls.Add(1); return 1 }, opts...)
		g := WrapErr("k", time.Second, func(context.Context) (int, error) { calls.Add(1); return 1, nil }, opts...)
		th, err := New("k", time.Second, opts...)
		require.NoError(t, err)

		fv := f()
		gv, gerr := g(context.Background())
		d, aerr := th.Allow(context.Background())
		werr := th.Wait(context.Background())
		if failOpen {
			assert.Equal(t, 1, fv, "fail-open Wrap runs fn")
			assert.Equal(t, 1, gv, "fail-open WrapErr runs fn")
			assert.NoError(t, gerr, "fail-open WrapErr returns fn's error")
			assert.True(t, d.Allowed, "fail-open Allow decision")
			assert.NoError(t, werr, "fail-open Wait")
			assert.EqualValues(t, 2, calls.Load(), "fail-open fn calls")
		} else {
			assert.Equal(t, 0, fv, "fail-closed Wrap returns the zero value")
			assert.Equal(t, 0, gv, "fail-closed WrapErr value")
			assert.ErrorIs(t, gerr, ErrStoreUnavailable, "fail-closed WrapErr")
			assert.ErrorIs(t, gerr, down, "fail-closed WrapErr keeps the cause")
			assert.NotErrorIs(t, gerr, ErrThrottled, "fail-closed WrapErr")
			assert.False(t, d.Allowed, "fail-closed Allow decision")
			assert.ErrorIs(t, werr, ErrStoreUnavailable, "fail-closed Wait")
			assert.Zero(t, calls.Load(), "fail-closed fn calls")
		}
		var se *StoreError
		require.ErrorAs(t, aerr, &se, "Allow error (failOpen=%v)", failOpen)
		assert.Equal(t, "k", se.Key)
	}
}

func TestTimeoutBoundsHungRedis(t *testing.T) {
	// A proxy that holds every byte: to the client, a server that stopped
	// answering.
	hung := faultproxy.Start(t, miniredis.RunT(t).Addr())
	hung.Stall()
	addr := hung.Addr
	for _, mode := range []string{"ContextTimeoutEnabled", "no ContextTimeoutEnabled", "AutoPipeline"} {
		c := redis.NewClient(&redis.Options{Addr: addr, ContextTimeoutEnabled: mode == "ContextTimeoutEnabled",
			ReadTimeout: 2 * time.Second, MaxRetries: -1})
		t.Cleanup(func() { _ = c.Close() })
		var client redis.UniversalClient = c
		if mode == "AutoPipeline" {
			// A queued command's own deadline is not honoured by the
			// pipeliner: the store must bound the wait itself.
			ap, err := c.AutoPipeline()
			require.NoError(t, err)
			t.Cleanup(func() { _ = ap.Close() })
			client = ap
		}
		for _, limit := range []int{1, 2, 100} {
			th, err := New("k", time.Second, WithStore(NewRedisStore(client)), WithTimeout(100*time.Millisecond), WithLimit(limit))
			require.NoError(t, err)
			start := time.Now()
			d, err := th.Allow(context.Background())
			elapsed := time.Since(start)
			assert.ErrorIs(t, err, ErrStoreUnavailable, "Allow against a hung server (%s, limit %d)", mode, limit)
			assert.False(t, d.Allowed)
			assert.Less(t, elapsed, time.Second, "Allow with a 100ms timeout (%s, limit %d) took %v", mode, limit, elapsed)
		}
	}
}

func TestCancelledContextIsNotAStoreError(t *testing.T) {
	th, err := New("k", time.Second)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err = th.Allow(ctx)
	assert.ErrorIs(t, err, context.Canceled)
	assert.NotErrorIs(t, err, ErrStoreUnavailable)
}

// countingStore counts the calls that reach its Store.
type countingStore struct {
	Store
	takes atomic.Int32
}

func (s *countingStore) Take(ctx context.Context, key string, req Request) (Reservation, error) {
	s.takes.Add(1)
	return s.Store.Take(ctx, key, req)
}

func TestDenyCacheSparesTheStore(t *testing.T) {
	for _, limit := range []int{1, 3} {
		for _, cache := range []bool{true, false} {
			s := &countingStore{Store: NewMemoryStore()}
			th, err := New("k", time.Hour, WithStore(s), WithLimit(limit), WithDenyCache(cache))
			require.NoError(t, err)
			admitted := 0
			for range 100 {
				d, err := th.Allow(context.Background())
				require.NoError(t, err)
				if d.Allowed {
					admitted++
				} else {
					assert.Positive(t, d.RetryAfter, "denied decision RetryAfter")
				}
			}
			assert.Equal(t, limit, admitted, "limit %d, cache %v: admitted of 100", limit, cache)
			want := 100
			if cache {
				// limit 1: the admission itself closes the key; limit N:
				// the first denial does.
				want = limit
				if limit > 1 {
					want++
				}
			}
			assert.EqualValues(t, want, s.takes.Load(), "limit %d, cache %v: store calls for 100 decisions", limit, cache)
		}
	}
}

func TestDenyCacheNeverOutlivesTheStoreDenial(t *testing.T) {
	// The store denies with a retry-after of 20ms. The cache may answer for
	// those 20ms, and must ask the store again once they have passed.
	const retry = 20 * time.Millisecond
	for _, limit := range []int{1, 2} {
		s := &countingStore{Store: denyingStore{retry}}
		th, err := New("k", time.Hour, WithStore(s), WithLimit(limit))
		require.NoError(t, err)
		ctx := context.Background()
		d, err := th.Allow(ctx)
		require.NoError(t, err)
		require.False(t, d.Allowed)
		require.EqualValues(t, 1, s.takes.Load(), "limit %d: store calls after the first Allow", limit)
		time.Sleep(retry)
		d, err = th.Allow(ctx)
		require.NoError(t, err)
		assert.False(t, d.Allowed)
		assert.EqualValues(t, 2, s.takes.Load(), "limit %d: store calls for an Allow %v after a denial with that retry-after", limit, retry)
	}
}

// denyingStore denies every Take with a fixed retry-after.
type denyingStore struct{ retry time.Duration }

func (s denyingStore) Take(context.Context, string, Request) (Reservation, error) {
	return Reservation{RetryAfter: s.retry}, nil
}

func (s denyingStore) Cancel(context.Context, string, Request, Reservation) error { return nil }

func TestResetOpensTheThrottle(t *testing.T) {
	th, err := New("k", time.Hour)
	require.NoError(t, err)
	ctx := context.Background()
	d, _ := th.Allow(ctx)
	require.True(t, d.Allowed)
	d, _ = th.Allow(ctx)
	require.False(t, d.Allowed)
	require.NoError(t, th.Reset(ctx))
	d, err = th.Allow(ctx)
	require.NoError(t, err)
	assert.True(t, d.Allowed, "Allow after Reset")

	noReset, err := New("k", time.Hour, WithStore(failingStore{}))
	require.NoError(t, err)
	assert.EqualError(t, noReset.Reset(ctx), "throttle: store cannot reset keys: it is not a Resetter")
}

func TestWaitSpacesStartsWithoutPolling(t *testing.T) {
	const (
		n        = 6
		interval = 25 * time.Millisecond
	)
	for _, limit := range []int{1, 2} {
		s := &countingStore{Store: NewMemoryStore()}
		th, err := New("k", interval, WithStore(s), WithLimit(limit), WithWait(time.Second))
		require.NoError(t, err)
		var (
			wg    sync.WaitGroup
			mu    sync.Mutex
			ends  []time.Duration
			errs  []error
			start = time.Now()
		)
		for range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				err := th.Wait(context.Background())
				mu.Lock()
				defer mu.Unlock()
				ends = append(ends, time.Since(start))
				errs = append(errs, err)
			}()
		}
		wg.Wait()
		for _, err := range errs {
			require.NoError(t, err, "Wait with room to wait")
		}
		sort.Slice(ends, func(i, j int) bool { return ends[i] < ends[j] })
		// The k-th return (0-based) is no earlier than its booked start,
		// which is at least k/limit intervals after the first call began.
		for k, end := range ends {
			assert.GreaterOrEqual(t, end, time.Duration(k/limit)*interval, "limit %d: return %d at %v", limit, k, end)
		}
		assert.EqualValues(t, n, s.takes.Load(), "limit %d: store calls for %d waiters", limit, n)
	}
}

func TestWaitBeyondMaxIsThrottledAtOnce(t *testing.T) {
	s := &countingStore{Store: NewMemoryStore()}
	th, err := New("k", time.Hour, WithStore(s), WithWait(10*time.Millisecond))
	require.NoError(t, err)
	require.NoError(t, th.Wait(context.Background()))
	start := time.Now()
	err = th.Wait(context.Background())
	assert.ErrorIs(t, err, ErrThrottled, "Wait for a slot an hour away with max 10ms")
	assert.Less(t, time.Since(start), time.Second, "throttled Wait returns at once")

	// Without WithWait, ctx's deadline bounds the wait: no booking is made.
	th2, err := New("k2", time.Hour, WithStore(s))
	require.NoError(t, err)
	require.NoError(t, th2.Wait(context.Background()))
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	assert.ErrorIs(t, th2.Wait(ctx), ErrThrottled, "Wait past ctx deadline")
	res, err := s.Take(context.Background(), "k2", Request{Interval: time.Hour, Limit: 1, MaxWait: 3 * time.Hour})
	require.NoError(t, err)
	assert.Greater(t, res.Delay, 59*time.Minute, "next booking: the throttled Wait booked nothing")
	assert.LessOrEqual(t, res.Delay, time.Hour, "next booking: the throttled Wait booked nothing")
}

func TestWaitCancelledHandsTheSlotBack(t *testing.T) {
	for _, limit := range []int{1, 2} {
		m, _ := fakeMemory()
		// The observer sees the booking before Wait sleeps: cancelling there
		// cuts the Wait short after its booking, never before.
		ctx, cancel := context.WithCancel(context.Background())
		var booked atomic.Int32
		th, err := New("k", time.Hour, WithStore(m), WithLimit(limit), WithObserver(func(e Event) {
			if e.Kind == EventDecision && e.Allowed && e.Delay > 0 {
				booked.Add(1)
				cancel()
			}
		}))
		require.NoError(t, err)
		for range limit {
			require.NoError(t, th.Wait(context.Background()))
		}
		start := time.Now()
		err = th.Wait(ctx)
		require.EqualValues(t, 1, booked.Load(), "limit %d: bookings made by the cancelled Wait", limit)
		assert.ErrorIs(t, err, context.Canceled, "limit %d: Wait cancelled while sleeping", limit)
		assert.Less(t, time.Since(start), time.Second, "cancelled Wait returns promptly")
		res, err := m.Take(context.Background(), "k", Request{Interval: time.Hour, Limit: limit, MaxWait: 3 * time.Hour})
		require.NoError(t, err)
		assert.Equal(t, time.Hour, res.Delay, "limit %d: booking after the cancelled Wait reuses its slot", limit)
	}
}

func TestWrapWaits(t *testing.T) {
	var calls atomic.Int32
	f := Wrap("k", 10*time.Millisecond, func() int { calls.Add(1); return 1 }, WithWait(time.Second))
	start := time.Now()
	sum := 0
	for range 4 {
		sum += f()
	}
	assert.Equal(t, 4, sum, "every waiting call runs fn")
	assert.GreaterOrEqual(t, time.Since(start), 30*time.Millisecond, "4 calls at 10ms spacing")
}

func TestObserverSeesEveryDecision(t *testing.T) {
	var events []Event
	th, err := New("k", time.Hour, WithObserver(func(e Event) { events = append(events, e) }))
	require.NoError(t, err)
	for range 3 {
		_, _ = th.Allow(context.Background())
	}
	require.Len(t, events, 3)
	assert.True(t, events[0].Allowed)
	assert.False(t, events[0].Cached)
	assert.False(t, events[1].Allowed)
	assert.True(t, events[1].Cached, "second decision from the deny cache")
	assert.Positive(t, events[2].RetryAfter)
	for _, e := range events {
		assert.Equal(t, "k", e.Key)
		assert.NoError(t, e.Err)
	}

	var failed []Event
	bad, err := New("k", time.Hour, WithStore(failingStore{errors.New("down")}), WithFailOpen(),
		WithObserver(func(e Event) { failed = append(failed, e) }))
	require.NoError(t, err)
	_, _ = bad.Allow(context.Background())
	require.Len(t, failed, 1)
	assert.ErrorIs(t, failed[0].Err, ErrStoreUnavailable)
	assert.True(t, failed[0].Allowed, "fail-open decision")
}

func TestFallbackLimitsLocallyWhileTheStoreFails(t *testing.T) {
	down := errors.New("connection refused")
	th, err := New("k", time.Hour, WithStore(failingStore{down}), WithFallback(2), WithFailOpen())
	require.NoError(t, err)
	for i := range 3 {
		d, err := th.Allow(context.Background())
		assert.ErrorIs(t, err, ErrStoreUnavailable, "Allow %d with the store down", i)
		assert.Equal(t, i < 2, d.Allowed, "Allow %d with fallback limit 2 (fail-open is overridden)", i)
	}

	var calls atomic.Int32
	f := WrapErr("k", time.Hour, func(context.Context) (int, error) { calls.Add(1); return 1, nil },
		WithStore(failingStore{down}), WithFallback(1))
	v, err := f(context.Background())
	assert.NoError(t, err, "first call under the fallback")
	assert.Equal(t, 1, v)
	_, err = f(context.Background())
	assert.ErrorIs(t, err, ErrThrottled, "second call under fallback limit 1")
	assert.ErrorIs(t, err, ErrStoreUnavailable, "second call under fallback limit 1")
	assert.ErrorIs(t, err, down, "second call keeps the store's cause")
	var te *ThrottledError
	require.ErrorAs(t, err, &te)
	assert.Positive(t, te.RetryAfter)
	assert.EqualValues(t, 1, calls.Load(), "fn calls")

	// Waiting under the fallback books local starts.
	w, err := New("w", 20*time.Millisecond, WithStore(failingStore{down}), WithFallback(1), WithWait(time.Second))
	require.NoError(t, err)
	start := time.Now()
	for i := range 3 {
		assert.NoError(t, w.c.admit(context.Background(), w.key, &w.e), "waiting call %d under the fallback", i)
	}
	assert.GreaterOrEqual(t, time.Since(start), 40*time.Millisecond, "3 starts 20ms apart")

	_, err = New("k", time.Hour, WithFallback(-1))
	assert.EqualError(t, err, "throttle: negative fallback limit -1")
}

// TestWaitBookedPastTheDeadlineIsThrottled: when the store books a start
// that the time left before ctx's deadline cannot reach (the round trip
// used it up), Wait hands the booking back and reports the call as
// throttled, not as ctx's error.
func TestWaitBookedPastTheDeadlineIsThrottled(t *testing.T) {
	m, _ := fakeMemory()
	store := slowStore{MemoryStore: m, bookings: new(atomic.Int32)}
	th, err := New("k", 100*time.Millisecond, WithStore(store))
	require.NoError(t, err)
	require.NoError(t, th.Wait(context.Background()))
	// 500 ms left when Wait asks, far more than the 100 ms booking needs;
	// the store books it, then answers only 10 ms before the deadline.
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	err = th.Wait(ctx)
	var te *ThrottledError
	require.ErrorAs(t, err, &te, "Wait whose booking falls past the deadline")
	assert.Equal(t, 100*time.Millisecond, te.RetryAfter, "RetryAfter: the booked delay")
	require.Positive(t, store.booked(), "the store booked the start (else the test shows nothing)")
	res, err := m.Take(context.Background(), "k", Request{Interval: 100 * time.Millisecond, Limit: 1, MaxWait: time.Hour})
	require.NoError(t, err)
	assert.Equal(t, 100*time.Millisecond, res.Delay, "the booking was handed back")
}

// slowStore is a MemoryStore whose Take, after booking a start, answers
// only 10 ms before its ctx's deadline (its own clock does not move).
type slowStore struct {
	*MemoryStore
	bookings *atomic.Int32
}

func (s slowStore) booked() int32 { return s.bookings.Load() }

func (s slowStore) Take(ctx context.Context, key string, req Request) (Reservation, error) {
	res, err := s.MemoryStore.Take(ctx, key, req)
	if deadline, ok := ctx.Deadline(); ok && res.OK && res.Delay > 0 {
		s.bookings.Add(1)
		time.Sleep(time.Until(deadline) - 10*time.Millisecond)
	}
	return res, err
}
