// Package throttletest lets you unit-test code that uses dthrottle
// deterministically, with no real sleeps.
//
// New starts a miniredis server for one test and returns a Store on it. The
// Store's clock is fake: it starts at 2026-01-01 00:00:00 UTC and moves only
// when Advance moves it. Advance moves the server's TIME and its key expiries
// together, so throttles open exactly when they would in production. The
// Store records every admitted start (Admitted, Count), and it can fail or
// answer slowly on demand (Fail, SetLatency).
//
// Pass the options from Options to the code under test:
//
//	func TestReport(t *testing.T) {
//		s := throttletest.New(t)
//		send := throttle.Wrap("report", time.Hour, sendReport, s.Options()...)
//
//		assert.True(t, send())  // runs
//		assert.False(t, send()) // throttled: fn does not run
//		s.Advance(time.Hour)
//		assert.True(t, send()) // runs again
//		assert.Equal(t, 2, s.Count("report"))
//	}
//
// # The deny cache
//
// Options returns throttle.WithStore(s) and throttle.WithDenyCache(false),
// so that every call reaches the store: Fail and SetLatency then act on
// every call. A throttle made with throttle.WithStore(s) alone keeps its deny
// cache, and runs it on the fake clock (Store is a throttle.Clock), so
// Advance reopens the cache together with the store. Such a throttle answers
// a call that the store denied recently from the cache, without asking the
// store, as it would in production.
//
// # Waiting
//
// A throttle with throttle.WithWait (or a call to Throttle.Wait) books its
// start in the store, then sleeps in real time until that start. The fake
// clock does not move during the sleep. So the bookings pile up on a clock
// that stands still, one interval and 1 ms apart (a booked start comes 1 ms
// after the previous holder's interval, as on Redis; see Store), and each
// waiting call sleeps that much longer than the one before. There are three
// ways to test such code:
//
//   - Call SetAutoAdvance(true). A booked start then moves the fake clock to
//     itself at once, and the call runs without sleeping. This is the usual
//     choice for code that waits.
//   - Keep the intervals short (tens of milliseconds), and let the calls
//     sleep. This is also how to test a wait that its context cuts short.
//   - Test in drop mode (without WithWait) and move the clock with Advance.
//
// # Failures
//
// After Fail(err), each call to the store returns err. After
// SetLatency(d), each call first sleeps d of real time. A throttle reports
// both the same way it reports an unreachable Redis: WrapErr and Allow
// return an error matching throttle.ErrStoreUnavailable and fn does not run
// (fail closed), unless throttle.WithFailOpen is set, in which case fn runs.
// A latency longer than the throttle's timeout (throttle.WithTimeout,
// default 250 ms) ends at that timeout. Only the latency counts against the
// timeout, never the time miniredis itself takes, so a test fails only when
// it asks for a failure, even under -race with many goroutines.
package throttletest
