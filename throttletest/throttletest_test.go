package throttletest

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dthrottle/throttle"
)

// step is the distance between two chained bookings of one slot: a booked
// start comes 1 ms after the interval of the slot's previous holder, as on
// Redis, which keeps a key through its expiry millisecond.
func step(interval time.Duration) time.Duration { return interval + time.Millisecond }

// at returns the times start+ds.
func at(start time.Time, ds ...time.Duration) []time.Time {
	ts := make([]time.Time, len(ds))
	for i, d := range ds {
		ts[i] = start.Add(d)
	}
	return ts
}

func TestNewStartsClockAtFixedInstant(t *testing.T) {
	t.Parallel()
	s := New(t)
	want := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	assert.Equal(t, want, s.Now(), "Now after New")
	got, err := s.Client().Time(t.Context()).Result()
	require.NoError(t, err, "TIME")
	assert.True(t, want.Equal(got), "miniredis TIME after New: got %v, want %v", got, want)
}

func TestDropModeOpensAfterAdvance(t *testing.T) {
	for _, limit := range []int{1, 3} {
		t.Run(fmt.Sprintf("limit %d", limit), func(t *testing.T) {
			t.Parallel()
			s := New(t)
			start := s.Now()
			const interval = time.Minute
			var calls int
			send := throttle.Wrap("report", interval, func() bool { calls++; return true },
				append(s.Options(), throttle.WithLimit(limit))...)

			for i := range limit {
				assert.True(t, send(), "call %d of limit %d: want run", i+1, limit)
			}
			assert.False(t, send(), "call %d, over limit %d: want throttled", limit+1, limit)
			s.Advance(interval - time.Millisecond)
			assert.False(t, send(), "call after Advance(interval-1ms): want throttled")
			s.Advance(time.Millisecond)
			for i := range limit {
				assert.True(t, send(), "call %d after Advance(interval): want run", i+1)
			}
			assert.False(t, send(), "call %d after Advance(interval): want throttled", limit+1)

			assert.Equal(t, 2*limit, calls, "fn calls")
			assert.Equal(t, 2*limit, s.Count("report"), "Count")
			want := make([]time.Duration, 2*limit)
			for i := limit; i < 2*limit; i++ {
				want[i] = interval
			}
			assert.Equal(t, at(start, want...), s.Admitted("report"), "Admitted")
		})
	}
}

func TestRetryAfterFollowsFakeClock(t *testing.T) {
	for _, limit := range []int{1, 2} {
		t.Run(fmt.Sprintf("limit %d", limit), func(t *testing.T) {
			t.Parallel()
			s := New(t)
			fetch := throttle.WrapErr("api", time.Minute,
				func(context.Context) (int, error) { return 1, nil },
				append(s.Options(), throttle.WithLimit(limit))...)
			for range limit {
				_, err := fetch(t.Context())
				require.NoError(t, err, "call within limit %d", limit)
			}
			for _, step := range []time.Duration{0, 20 * time.Second, 39 * time.Second} {
				s.Advance(step)
				_, err := fetch(t.Context())
				var te *throttle.ThrottledError
				require.ErrorAs(t, err, &te, "call at %v", s.Now().Sub(start))
				assert.Equal(t, time.Minute-s.Now().Sub(start), te.RetryAfter, "RetryAfter at %v", s.Now().Sub(start))
			}
		})
	}
}

func TestDenyCacheFollowsAdvance(t *testing.T) {
	// Without Options the deny cache is on, and runs on the fake clock.
	t.Parallel()
	s := New(t)
	ctx := t.Context()
	th, err := throttle.New("report", time.Minute, throttle.WithStore(s))
	require.NoError(t, err)
	start := s.Now()
	d, err := th.Allow(ctx)
	require.NoError(t, err)
	require.True(t, d.Allowed, "first call")

	// The store fails from now on: only the cache can answer without an
	// error.
	s.Fail(errors.New("down"))
	for _, step := range []time.Duration{0, 30 * time.Second, 30*time.Second - time.Millisecond} {
		s.Advance(step)
		d, err := th.Allow(ctx)
		require.NoError(t, err, "%v into the interval: answered by the cache, not the failing store", s.Now().Sub(start))
		assert.False(t, d.Allowed)
		assert.Equal(t, start.Add(time.Minute).Sub(s.Now()), d.RetryAfter, "retry-after on the fake clock")
	}
	s.Advance(time.Millisecond)
	_, err = th.Allow(ctx)
	assert.ErrorIs(t, err, throttle.ErrStoreUnavailable, "once the interval has passed on the fake clock, the store is asked")
	s.Fail(nil)
	d, err = th.Allow(ctx)
	require.NoError(t, err)
	assert.True(t, d.Allowed, "call after the interval")
	assert.Equal(t, 2, s.Count("report"), "Count")
}

func TestDenyCacheOfADenialFollowsAdvance(t *testing.T) {
	// A denial by the store (limit 2) is cached on the fake clock too.
	t.Parallel()
	s := New(t)
	ctx := t.Context()
	th, err := throttle.New("report", time.Minute, throttle.WithStore(s), throttle.WithLimit(2))
	require.NoError(t, err)
	start := s.Now()
	for i := range 2 {
		d, err := th.Allow(ctx)
		require.NoError(t, err)
		require.True(t, d.Allowed, "call %d", i+1)
	}
	s.Advance(10 * time.Second)
	d, err := th.Allow(ctx)
	require.NoError(t, err)
	require.False(t, d.Allowed, "third call: denied by the store")
	assert.Equal(t, 50*time.Second, d.RetryAfter, "the store's retry-after")

	s.Fail(errors.New("down"))
	s.Advance(50*time.Second - time.Millisecond)
	d, err = th.Allow(ctx)
	require.NoError(t, err, "answered by the cache, not the failing store")
	assert.Equal(t, time.Millisecond, d.RetryAfter, "the cache's retry-after on the fake clock")
	s.Advance(time.Millisecond)
	_, err = th.Allow(ctx)
	assert.ErrorIs(t, err, throttle.ErrStoreUnavailable, "at the end of the retry-after the store is asked")
	assert.Equal(t, start.Add(time.Minute), s.Now())
}

func TestThrottlesSharingStoreShareLimit(t *testing.T) {
	t.Parallel()
	s := New(t)
	ctx := t.Context()
	worker1, err := throttle.New("sync", time.Minute, s.Options()...)
	require.NoError(t, err)
	worker2, err := throttle.New("sync", time.Minute, s.Options()...)
	require.NoError(t, err)
	other, err := throttle.New("other", time.Minute, s.Options()...)
	require.NoError(t, err)

	allow := func(th *throttle.Throttle, name string) bool {
		t.Helper()
		d, err := th.Allow(ctx)
		require.NoError(t, err, "%s.Allow", name)
		return d.Allowed
	}
	assert.True(t, allow(worker1, "worker1"), "worker1 first")
	assert.False(t, allow(worker2, "worker2"), "worker2 after worker1, same key")
	assert.True(t, allow(other, "other"), "another key")
	s.Advance(time.Minute)
	assert.True(t, allow(worker2, "worker2"), "worker2 one interval later")
	assert.False(t, allow(worker1, "worker1"), "worker1 after worker2")
	assert.Equal(t, at(start, 0, time.Minute), s.Admitted("sync"), "Admitted(sync)")
	assert.Equal(t, 1, s.Count("other"), "Count(other)")
	assert.Nil(t, s.Admitted("never"), "Admitted of an unused key")
	assert.Zero(t, s.Count("never"), "Count of an unused key")
}

func TestAdmittedRecordsBookedStarts(t *testing.T) {
	for _, limit := range []int{1, 2} {
		t.Run(fmt.Sprintf("limit %d", limit), func(t *testing.T) {
			t.Parallel()
			s := New(t)
			ctx := t.Context()
			const I = 10 * time.Second
			req := throttle.Request{Interval: I, Limit: limit, MaxWait: time.Minute}
			var res []throttle.Reservation
			var want []time.Duration
			for i := range 3 * limit {
				r, err := s.Take(ctx, "k", req)
				require.NoError(t, err, "Take %d", i)
				require.True(t, r.OK, "Take %d: got %+v", i, r)
				res = append(res, r)
				want = append(want, time.Duration(i/limit)*step(I))
			}
			assert.Equal(t, at(start, want...), s.Admitted("k"), "Admitted after bookings")

			// The newest booking is handed back: it leaves Admitted, and
			// its start is free again.
			last := res[len(res)-1]
			require.NoError(t, s.Cancel(ctx, "k", req, last), "Cancel newest")
			assert.Equal(t, at(start, want[:len(want)-1]...), s.Admitted("k"), "Admitted after Cancel of the newest")
			again, err := s.Take(ctx, "k", req)
			require.NoError(t, err)
			assert.Equal(t, last.Delay, again.Delay, "booking after Cancel reuses the start")
			assert.Equal(t, at(start, want...), s.Admitted("k"), "Admitted after booking again")

			// An older booking given up does not run either: it leaves
			// Admitted, though the store keeps its start.
			require.NoError(t, s.Cancel(ctx, "k", req, res[limit]), "Cancel an older booking")
			assert.Equal(t, 3*limit-1, s.Count("k"), "Count after Cancel of an older booking")
		})
	}
}

func TestWaitSleepsInRealTime(t *testing.T) {
	// Without auto-advance, a waiting call sleeps in real time and the
	// fake clock stands still, so bookings pile up one interval and 1 ms
	// apart.
	t.Parallel()
	s := New(t)
	const interval = 50 * time.Millisecond
	var calls atomic.Int32
	send := throttle.Wrap("report", interval, func() bool { calls.Add(1); return true },
		append(s.Options(), throttle.WithWait(time.Second))...)

	begin := time.Now()
	for i := range 3 {
		require.True(t, send(), "waiting call %d", i)
	}
	elapsed := time.Since(begin)
	assert.GreaterOrEqual(t, elapsed, step(interval)+2*step(interval), "real time for calls booked at 0, 51ms and 102ms")
	assert.Less(t, elapsed, time.Second, "real time for three waiting calls")
	assert.Equal(t, start, s.Now(), "fake clock after waiting calls")
	assert.Equal(t, at(start, 0, step(interval), 2*step(interval)), s.Admitted("report"), "Admitted")
}

func TestWaitCutShortLeavesAdmitted(t *testing.T) {
	t.Parallel()
	s := New(t)
	// The wait is long, so that the call is still asleep when its context
	// ends, however slow the machine.
	const interval = time.Minute
	var calls atomic.Int32
	send := throttle.WrapErr("report", interval,
		func(context.Context) (int, error) { return int(calls.Add(1)), nil },
		append(s.Options(), throttle.WithWait(time.Hour))...)

	_, err := send(t.Context())
	require.NoError(t, err, "first call")

	// The second call books the start after the first one's interval and
	// sleeps until it. Its context ends only once the booking is made.
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	done := make(chan error, 1)
	go func() {
		_, err := send(ctx)
		done <- err
	}()
	waitForCount(t, s, "report", 2)
	assert.Equal(t, at(start, 0, step(interval)), s.Admitted("report"), "Admitted during the wait")
	cancel()
	select {
	case err = <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("waiting call did not return after its context ended")
	}
	require.ErrorIs(t, err, context.Canceled, "waiting call whose context ends")
	assert.Equal(t, int32(1), calls.Load(), "fn calls")
	assert.Equal(t, at(start, 0), s.Admitted("report"), "Admitted after a wait cut short")
	assert.Equal(t, start, s.Now(), "fake clock after a wait cut short")

	// The start was handed back: the next booking gets it.
	s.SetAutoAdvance(true)
	_, err = send(t.Context())
	require.NoError(t, err, "call with auto-advance")
	assert.Equal(t, at(start, 0, step(interval)), s.Admitted("report"), "Admitted")
}

func TestAutoAdvanceRunsWaitsAtOnce(t *testing.T) {
	t.Parallel()
	s := New(t)
	s.SetAutoAdvance(true)
	const interval = time.Minute
	var calls atomic.Int32
	send := throttle.Wrap("report", interval, func() bool { calls.Add(1); return true },
		append(s.Options(), throttle.WithWait(time.Hour))...)

	begin := time.Now()
	for i := range 4 {
		require.True(t, send(), "waiting call %d", i)
	}
	assert.Less(t, time.Since(begin), time.Second, "real time for four calls one minute apart")
	assert.Equal(t, int32(4), calls.Load(), "fn calls")
	assert.Equal(t, at(start, 0, step(interval), 2*step(interval), 3*step(interval)), s.Admitted("report"), "Admitted")
	assert.Equal(t, start.Add(3*step(interval)), s.Now(), "fake clock after the last booked start")

	// Drop mode still sees the clock: the last start was just now.
	d, err := throttle.New("report", interval, s.Options()...)
	require.NoError(t, err)
	dec, err := d.Allow(t.Context())
	require.NoError(t, err)
	assert.False(t, dec.Allowed, "drop-mode Allow right after the last booked start")

	// With auto-advance off, a booking leaves the clock where it is.
	s.SetAutoAdvance(false)
	res, err := s.Take(t.Context(), "report", throttle.Request{Interval: interval, Limit: 1, MaxWait: time.Hour})
	require.NoError(t, err, "booking Take with auto-advance off")
	assert.Equal(t, step(interval), res.Delay, "booking delay with auto-advance off")
	assert.Equal(t, start.Add(3*step(interval)), s.Now(), "fake clock after a booking with auto-advance off")
}

func TestAutoAdvanceConcurrentWaitersKeepLimit(t *testing.T) {
	t.Parallel()
	s := New(t)
	s.SetAutoAdvance(true)
	const (
		interval = time.Minute
		limit    = 2
		n        = 10
	)
	send := throttle.WrapErr("job", interval, func(context.Context) (bool, error) { return true, nil },
		append(s.Options(), throttle.WithLimit(limit), throttle.WithWait(time.Hour))...)

	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		wg.Go(func() { _, errs[i] = send(context.Background()) })
	}
	wg.Wait()
	for i, err := range errs {
		assert.NoError(t, err, "waiter %d", i)
	}
	var want []time.Duration
	for i := range n {
		want = append(want, time.Duration(i/limit)*step(interval))
	}
	assert.Equal(t, at(start, want...), s.Admitted("job"), "Admitted for %d waiters, limit %d", n, limit)
}

func TestConcurrentCallsAdmitExactlyLimit(t *testing.T) {
	t.Parallel()
	s := New(t)
	const limit, n = 5, 50
	th, err := throttle.New("k", time.Minute, append(s.Options(), throttle.WithLimit(limit))...)
	require.NoError(t, err)
	admitted, failed := allowConcurrently(th, n)
	assert.Zero(t, failed, "Allow errors")
	assert.Equal(t, limit, admitted, "%d concurrent calls, limit %d: admitted", n, limit)
	assert.Equal(t, limit, s.Count("k"), "Count")
}

func TestSlowMiniredisIsNotATimeout(t *testing.T) {
	// Scripts on miniredis take milliseconds under -race, and decisions run
	// one at a time: only SetLatency may run into the throttle's timeout.
	t.Parallel()
	s := New(t)
	const limit, n = 5, 20
	th, err := throttle.New("k", time.Minute,
		append(s.Options(), throttle.WithLimit(limit), throttle.WithTimeout(time.Millisecond))...)
	require.NoError(t, err)
	admitted, failed := allowConcurrently(th, n)
	assert.Zero(t, failed, "%d concurrent Allows with a 1ms timeout: errors", n)
	assert.Equal(t, limit, admitted, "%d concurrent Allows, limit %d: admitted", n, limit)
}

func TestFail(t *testing.T) {
	injected := errors.New("connection refused")
	for _, tt := range []struct {
		name     string
		failOpen bool
	}{
		{"fail closed", false},
		{"fail open", true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s := New(t)
			opts := s.Options()
			if tt.failOpen {
				opts = append(opts, throttle.WithFailOpen())
			}
			var calls atomic.Int32
			fetch := throttle.WrapErr("api", time.Minute,
				func(context.Context) (int, error) { return int(calls.Add(1)), nil }, opts...)

			s.Fail(injected)
			v, err := fetch(t.Context())
			if tt.failOpen {
				assert.NoError(t, err, "WrapErr with a failing store and WithFailOpen")
				assert.Equal(t, 1, v, "WrapErr result with WithFailOpen")
				assert.Equal(t, int32(1), calls.Load(), "fn calls with WithFailOpen")
			} else {
				assert.ErrorIs(t, err, throttle.ErrStoreUnavailable, "WrapErr with a failing store")
				assert.ErrorIs(t, err, injected, "WrapErr with a failing store")
				assert.Zero(t, calls.Load(), "fn calls, fail closed")
			}
			assert.Zero(t, s.Count("api"), "Count after a failed decision")

			s.Fail(nil)
			before := calls.Load()
			_, err = fetch(t.Context())
			require.NoError(t, err, "call after Fail(nil)")
			assert.Equal(t, before+1, calls.Load(), "fn ran after Fail(nil)")
			assert.Equal(t, 1, s.Count("api"), "Count after Fail(nil)")
		})
	}
}

func TestFailAppliesToAllowAndReset(t *testing.T) {
	t.Parallel()
	s := New(t)
	injected := errors.New("boom")
	th, err := throttle.New("k", time.Minute, s.Options()...)
	require.NoError(t, err)
	s.Fail(injected)

	d, err := th.Allow(t.Context())
	assert.ErrorIs(t, err, throttle.ErrStoreUnavailable, "Allow on a failing store")
	assert.False(t, d.Allowed, "Allow on a failing store, fail closed")
	assert.ErrorIs(t, th.Reset(t.Context()), throttle.ErrStoreUnavailable, "Reset on a failing store")
	assert.ErrorIs(t, s.Cancel(t.Context(), "k", throttle.Request{Interval: time.Minute, Limit: 1}, throttle.Reservation{}),
		injected, "Cancel on a failing store")
}

func TestResetReopensAndKeepsHistory(t *testing.T) {
	t.Parallel()
	s := New(t)
	ctx := t.Context()
	th, err := throttle.New("k", time.Hour, s.Options()...)
	require.NoError(t, err)
	allowed := func(msg string) bool {
		t.Helper()
		d, err := th.Allow(ctx)
		require.NoError(t, err, msg)
		return d.Allowed
	}
	require.True(t, allowed("first Allow"))
	require.False(t, allowed("second Allow"))
	require.NoError(t, th.Reset(ctx), "Reset")
	assert.True(t, allowed("Allow after Reset"))
	assert.Equal(t, at(start, 0, 0), s.Admitted("k"), "Admitted keeps starts from before Reset")
}

func TestLatencyBeyondTimeoutIsStoreFailure(t *testing.T) {
	for _, failOpen := range []bool{false, true} {
		t.Run(fmt.Sprintf("failOpen=%v", failOpen), func(t *testing.T) {
			t.Parallel()
			s := New(t)
			opts := append(s.Options(), throttle.WithTimeout(50*time.Millisecond))
			if failOpen {
				opts = append(opts, throttle.WithFailOpen())
			}
			var calls atomic.Int32
			fetch := throttle.WrapErr("api", time.Minute,
				func(context.Context) (int, error) { return int(calls.Add(1)), nil }, opts...)

			s.SetLatency(time.Second)
			begin := time.Now()
			_, err := fetch(t.Context())
			elapsed := time.Since(begin)
			assert.GreaterOrEqual(t, elapsed, 50*time.Millisecond, "WrapErr with latency 1s, timeout 50ms: elapsed")
			assert.Less(t, elapsed, time.Second, "WrapErr with latency 1s, timeout 50ms: elapsed")
			if failOpen {
				assert.NoError(t, err, "WrapErr past the timeout with WithFailOpen")
				assert.Equal(t, int32(1), calls.Load(), "fn calls with WithFailOpen")
			} else {
				assert.ErrorIs(t, err, throttle.ErrStoreUnavailable, "WrapErr past the timeout")
				assert.ErrorIs(t, err, context.DeadlineExceeded, "WrapErr past the timeout")
				assert.Zero(t, calls.Load(), "fn calls, fail closed")
			}

			// The slow call decided nothing: the next one is admitted.
			s.SetLatency(0)
			_, err = fetch(t.Context())
			require.NoError(t, err, "call after SetLatency(0)")
			assert.Equal(t, 1, s.Count("api"), "Count")
		})
	}
}

func TestLatencyWithinTimeoutDelaysDecision(t *testing.T) {
	t.Parallel()
	s := New(t)
	s.SetLatency(30 * time.Millisecond)
	send := throttle.Wrap("k", time.Minute, func() bool { return true }, s.Options()...)
	begin := time.Now()
	assert.True(t, send(), "call with 30ms latency and the default timeout")
	assert.GreaterOrEqual(t, time.Since(begin), 30*time.Millisecond, "elapsed")
}

func TestLatencyHonoursCallerContext(t *testing.T) {
	t.Parallel()
	s := New(t)
	s.SetLatency(time.Hour)
	fetch := throttle.WrapErr("api", time.Minute,
		func(context.Context) (int, error) { return 1, nil },
		append(s.Options(), throttle.WithTimeout(time.Hour))...)
	ctx, cancel := context.WithCancel(t.Context())
	timer := time.AfterFunc(20*time.Millisecond, cancel)
	defer timer.Stop()
	begin := time.Now()
	_, err := fetch(ctx)
	assert.Less(t, time.Since(begin), time.Second, "elapsed")
	assert.ErrorIs(t, err, context.Canceled, "WrapErr whose context ends during the latency")
	assert.NotErrorIs(t, err, throttle.ErrStoreUnavailable, "WrapErr whose context ends during the latency")
}

func TestAdvanceMovesTimeAndExpiry(t *testing.T) {
	t.Parallel()
	s := New(t)
	ctx := t.Context()
	_, err := s.Take(ctx, "k", throttle.Request{Interval: 10 * time.Second, Limit: 1})
	require.NoError(t, err)
	keys := s.Keys("k", 1)
	require.Equal(t, throttle.NewRedisStore(s.Client()).Keys("k", 1), keys, "Keys: those of a RedisStore with the default prefix")
	rkey := keys[0] // the slot of a limit of 1
	for _, tc := range []struct {
		advance time.Duration
		ttl     time.Duration // -2 (ns, as go-redis reports it): no key
	}{
		{0, 10 * time.Second},
		{4 * time.Second, 6 * time.Second},
		{5999 * time.Millisecond, time.Millisecond},
		{time.Millisecond, -2},
	} {
		s.Advance(tc.advance)
		now := s.Now()
		got, err := s.Client().Time(ctx).Result()
		require.NoError(t, err, "TIME")
		assert.True(t, now.Equal(got), "TIME at %v: got %v, want %v", now.Sub(start), got, now)
		ttl, err := s.Client().PTTL(ctx, rkey).Result()
		require.NoError(t, err, "PTTL")
		assert.Equal(t, tc.ttl, ttl, "PTTL at %v", now.Sub(start))
	}
	assert.False(t, s.Miniredis().Exists(rkey), "key after its interval")
	assert.PanicsWithValue(t, "throttletest: Advance(-1ns): negative duration", func() { s.Advance(-1) })
}

func TestNewClosesAtCleanup(t *testing.T) {
	var client *redis.Client
	t.Run("inner", func(t *testing.T) {
		s := New(t)
		client = s.Client()
		require.NoError(t, client.Ping(t.Context()).Err(), "Ping during the test")
	})
	assert.Error(t, client.Ping(context.Background()).Err(), "Ping after the test's cleanup")
}

func TestRunAndClose(t *testing.T) {
	s, err := Run()
	require.NoError(t, err, "Run")
	_, err = s.Take(t.Context(), "k", throttle.Request{Interval: time.Second, Limit: 1})
	require.NoError(t, err, "Take before Close")
	s.Close()
	s.Close() // a second Close does nothing
	_, err = s.Take(t.Context(), "k", throttle.Request{Interval: time.Second, Limit: 1})
	assert.Error(t, err, "Take after Close")
}

func TestHoldOnTheFakeClock(t *testing.T) {
	s := New(t)
	th, err := throttle.New("held", time.Second, s.Options()...)
	require.NoError(t, err)
	ctx := context.Background()
	require.NoError(t, th.Hold(ctx, time.Minute))
	d, err := th.Allow(ctx)
	require.NoError(t, err)
	assert.False(t, d.Allowed, "Allow during a one-minute hold")
	assert.Equal(t, time.Minute, d.RetryAfter, "RetryAfter during the hold")
	s.Advance(time.Minute)
	d, err = th.Allow(ctx)
	require.NoError(t, err)
	assert.True(t, d.Allowed, "Allow once the hold has passed")
}

// waitForCount waits, in real time, until s has admitted n starts of key.
func waitForCount(t *testing.T, s *Store, key string, n int) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for s.Count(key) < n {
		if time.Now().After(deadline) {
			t.Fatalf("Count(%q) = %d after 30s, want %d", key, s.Count(key), n)
		}
		time.Sleep(time.Millisecond)
	}
}

// allowConcurrently makes n concurrent Allow calls on th and returns how
// many were admitted and how many failed.
func allowConcurrently(th *throttle.Throttle, n int) (admitted, failed int) {
	var wg sync.WaitGroup
	var a, f atomic.Int32
	for range n {
		wg.Go(func() {
			d, err := th.Allow(context.Background())
			if err != nil {
				f.Add(1)
			} else if d.Allowed {
				a.Add(1)
			}
		})
	}
	wg.Wait()
	return int(a.Load()), int(f.Load())
}
