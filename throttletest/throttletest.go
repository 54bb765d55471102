package throttletest

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/dthrottle/throttle"
)

// start is where every Store's fake clock starts.
var start = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

// Store is a throttle.Store for tests. It is a throttle.RedisStore on a
// miniredis server whose clock is fake. It adds these test controls:
//   - Advance moves the clock.
//   - Admitted and Count report the starts the store admitted.
//   - Fail and SetLatency make the store fail or answer slowly.
//
// The throttles that share a Store share their limits, as if they ran in
// different processes and shared one Redis server.
//
// Decisions are those of a RedisStore, on the fake clock. A start booked
// ahead (throttle.WithWait, Throttle.Wait) comes 1 ms after the previous
// holder of its slot expires, as on Redis, which keeps a key through its
// expiry millisecond. So with a limit of 1 and an interval I, calls that
// wait on a clock that stands still start at 0, I+1ms, 2I+2ms, and so on. In drop mode a start is admitted again once Advance has moved the
// clock by the interval: miniredis frees a key at its expiry, 1 ms before
// Redis does.
//
// A Store is safe for concurrent use. Its decisions run one at a time, in
// the order in which they reach the store. A Store starts no goroutine of
// its own. Close stops the miniredis server and closes the client; New makes
// the test's cleanup call Close.
type Store struct {
	mr     *miniredis.Miniredis
	client *redis.Client
	redis  *throttle.RedisStore
	close  sync.Once

	// mu guards what follows. It is held during each decision, so that
	// the clock does not move in the middle of one.
	mu       sync.Mutex
	now      time.Time
	admitted map[string][]admission
	err      error
	latency  time.Duration
	auto     bool
}

// admission is one start admitted by Take: at is its time on the fake clock,
// and booking is the store's Reservation.Booking, whose Mark Cancel matches.
type admission struct {
	at      time.Time
	booking throttle.Booking
}

var (
	_ throttle.Store    = (*Store)(nil)
	_ throttle.Resetter = (*Store)(nil)
	_ throttle.Holder   = (*Store)(nil)
	_ throttle.Clock    = (*Store)(nil)
)

// New starts a miniredis server and returns a Store on it, ready for
// throttle.WithStore (see Options). The Store's fake clock starts at
// 2026-01-01 00:00:00 UTC. The test's cleanup closes the Store. New fails
// the test if miniredis cannot start.
func New(tb testing.TB) *Store {
	tb.Helper()
	s, err := Run()
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(s.Close)
	return s
}

// Run is New for code that has no testing.TB, such as an Example or
// TestMain. The caller must call Close when done.
func Run() (*Store, error) {
	mr, err := miniredis.Run()
	if err != nil {
		return nil, fmt.Errorf("throttletest: starting miniredis: %w", err)
	}
	mr.SetTime(start)
	client := redis.NewClient(&redis.Options{
		Addr:                  mr.Addr(),
		ContextTimeoutEnabled: true,
		DisableIdentity:       true,
	})
	return &Store{
		mr:       mr,
		client:   client,
		redis:    throttle.NewRedisStore(client),
		now:      start,
		admitted: make(map[string][]admission),
	}, nil
}

// Close closes the client and stops the miniredis server. Later calls to
// the store fail. Calling Close again does nothing.
func (s *Store) Close() {
	s.close.Do(func() {
		_ = s.client.Close()
		s.mr.Close()
	})
}

// Options returns the options that make a throttle use s in a test:
// throttle.WithStore(s) and throttle.WithDenyCache(false), so that every
// call reaches the store (see the package documentation). Append other
// options to the result:
//
//	opts := append(s.Options(), throttle.WithLimit(3))
func (s *Store) Options() []throttle.Option {
	return []throttle.Option{throttle.WithStore(s), throttle.WithDenyCache(false)}
}

// Take implements throttle.Store. It calls the RedisStore on the miniredis
// server and records each admitted start for Admitted. It first sleeps for
// the latency set with SetLatency. If the call's context ends during that
// sleep, Take returns the context's error; if Fail set an error, Take
// returns it. In both cases nothing changes in the store.
//
// The call's context bounds only that latency, not the call to miniredis.
// So the throttle's timeout (throttle.WithTimeout) cannot expire merely
// because miniredis is slow, as its scripts are under -race with many
// goroutines: the store fails only when a test makes it fail.
//
// With SetAutoAdvance(true), a start booked d ahead first moves the fake
// clock forward by d. Then Take reports a start now (a Delay of 0).
func (s *Store) Take(ctx context.Context, key string, req throttle.Request) (throttle.Reservation, error) {
	if err := s.enter(ctx); err != nil {
		return throttle.Reservation{}, err
	}
	defer s.mu.Unlock()
	res, err := s.redis.Take(context.WithoutCancel(ctx), key, req)
	if err != nil || !res.OK {
		return res, err
	}
	s.admitted[key] = append(s.admitted[key], admission{at: s.now.Add(res.Delay), booking: res.Booking})
	if s.auto && res.Delay > 0 {
		s.advance(res.Delay)
		res.Delay = 0
	}
	return res, nil
}

// Cancel implements throttle.Store. A throttle calls it for a booked start
// that its caller gave up, such as a wait that its context cut short. Cancel
// removes that start from Admitted, because the call does not run. Then it
// calls the RedisStore, with the same latency and failure as Take.
func (s *Store) Cancel(ctx context.Context, key string, req throttle.Request, res throttle.Reservation) error {
	s.mu.Lock()
	if res.Booking.Mark != 0 {
		as := s.admitted[key]
		for i := len(as) - 1; i >= 0; i-- {
			if as[i].booking == res.Booking {
				s.admitted[key] = slices.Delete(as, i, i+1)
				break
			}
		}
	}
	s.mu.Unlock()

	if err := s.enter(ctx); err != nil {
		return err
	}
	defer s.mu.Unlock()
	return s.redis.Cancel(context.WithoutCancel(ctx), key, req, res)
}

// Reset implements throttle.Resetter: it forgets the starts of key in the
// store, so that the next call is admitted. Throttle.Reset calls it.
// Admitted and Count still report the starts admitted before the reset.
// Reset has the same latency and failure as Take.
func (s *Store) Reset(ctx context.Context, key string, req throttle.Request) error {
	if err := s.enter(ctx); err != nil {
		return err
	}
	defer s.mu.Unlock()
	return s.redis.Reset(context.WithoutCancel(ctx), key, req)
}

// Hold implements throttle.Holder: it holds off key for d on the fake
// clock, as RedisStore.Hold does, so that Throttle.Hold and the shared
// backoff of package httpthrottle work in tests. Fail and SetLatency apply
// to it.
func (s *Store) Hold(ctx context.Context, key string, req throttle.Request, d time.Duration) error {
	if err := s.enter(ctx); err != nil {
		return err
	}
	defer s.mu.Unlock()
	return s.redis.Hold(context.WithoutCancel(ctx), key, req, d)
}

// Held implements throttle.Holder: it returns how long the latest hold of
// key still lasts on the fake clock, as RedisStore.Held does. Fail and
// SetLatency apply to it.
func (s *Store) Held(ctx context.Context, key string) (time.Duration, error) {
	if err := s.enter(ctx); err != nil {
		return 0, err
	}
	defer s.mu.Unlock()
	return s.redis.Held(context.WithoutCancel(ctx), key)
}

// Advance moves the fake clock forward by d. It moves the miniredis server's
// TIME and its key expiries together, so that throttles open exactly d
// later, as they would in production. Advance panics if d is negative.
//
// Advance does not wake a throttle that sleeps until a booked start. Such a
// throttle sleeps in real time; see SetAutoAdvance.
func (s *Store) Advance(d time.Duration) {
	if d < 0 {
		panic(fmt.Sprintf("throttletest: Advance(%v): negative duration", d))
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.advance(d)
}

// advance moves the clock. s.mu is held.
func (s *Store) advance(d time.Duration) {
	s.now = s.now.Add(d)
	s.mr.SetTime(s.now)
	s.mr.FastForward(d)
}

// Now returns the time on the fake clock. The clock starts at 2026-01-01
// 00:00:00 UTC and moves only with Advance (and SetAutoAdvance). Now makes
// s a throttle.Clock: throttles on s run their deny cache on it.
func (s *Store) Now() time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.now
}

// Admitted returns the times, on the fake clock, of the starts that the
// store admitted for key, in time order. A start booked ahead is reported
// at its booked time. A booking that its caller gave up (see Cancel) is not
// reported. Admitted returns nil if no start of key was admitted.
//
// A call that a throttle admits because the store failed, under
// throttle.WithFailOpen, is not reported: the store did not admit it.
func (s *Store) Admitted(key string) []time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	as := s.admitted[key]
	if len(as) == 0 {
		return nil
	}
	ts := make([]time.Time, len(as))
	for i, a := range as {
		ts[i] = a.at
	}
	slices.SortStableFunc(ts, func(a, b time.Time) int { return a.Compare(b) })
	return ts
}

// Count returns the number of starts that Admitted reports for key.
func (s *Store) Count(key string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.admitted[key])
}

// Fail makes every later Take, Cancel, Reset, Hold and Held return err
// without deciding.
// A throttle reports the failure as an error that matches
// throttle.ErrStoreUnavailable, and errors.Is also matches err. The
// throttle then does not call fn, unless throttle.WithFailOpen is set.
// Fail(nil) makes the store work again.
func (s *Store) Fail(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.err = err
}

// SetLatency makes every later Take, Cancel, Reset, Hold and Held sleep
// for d before it answers. The sleep is in real time, not on the fake clock, and it ends
// early if the call's context ends; the call then returns the context's
// error without deciding. So a d longer than the throttle's timeout
// (throttle.WithTimeout, default 250 ms) makes each decision a store
// failure after that timeout. SetLatency(0) removes the latency.
func (s *Store) SetLatency(d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.latency = d
}

// SetAutoAdvance turns auto-advance on or off. It is off by default.
//
// With auto-advance on, when Take books a start d ahead, it moves the fake
// clock forward by d and reports a start now. A throttle with
// throttle.WithWait, or a call to Throttle.Wait, then runs the call at once,
// at its booked time on the fake clock, instead of sleeping d in real time.
// Calls that wait then run back to back, and the clock moves one booked start
// at a time, as time would pass in production: with a limit of 1 and an
// interval I, to I+1ms, then 2I+2ms, and so on (see Store). Because no call sleeps, no
// context can cut a wait short, and Cancel is not called.
func (s *Store) SetAutoAdvance(on bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.auto = on
}

// Miniredis returns the miniredis server behind the store, to inspect its
// keys, whose names Keys returns. To make the store fail, call Fail rather
// than closing the server: once closed, its port may be reused by another
// test's server.
//
// To move time, call Advance, which keeps TIME and the key expiries in step.
// Do not call the server's SetTime or FastForward, which move only one of
// them, nor ClockTTL, after which Advance would move the expiries twice.
func (s *Store) Miniredis() *miniredis.Miniredis { return s.mr }

// Client returns the go-redis client connected to the miniredis server.
func (s *Store) Client() *redis.Client { return s.client }

// Keys returns the names of the Redis keys that a throttle of key under
// limit may write on the miniredis server, as throttle.RedisStore.Keys does
// with the default key prefix: its slots (or, for a limit above 64, its
// list), then the record of its holds.
func (s *Store) Keys(key string, limit int) []string { return s.redis.Keys(key, limit) }

// enter answers a store call as Fail and SetLatency ask: it sleeps the
// latency, then locks the store. It returns the failure set with Fail, with
// the store unlocked, or nil with s.mu held for the caller to unlock.
func (s *Store) enter(ctx context.Context) error {
	if err := s.sleep(ctx); err != nil {
		return err
	}
	s.mu.Lock()
	if s.err != nil {
		err := s.err
		s.mu.Unlock()
		return err
	}
	return nil
}

// sleep waits for the latency set with SetLatency, or until ctx ends.
func (s *Store) sleep(ctx context.Context) error {
	s.mu.Lock()
	d := s.latency
	s.mu.Unlock()
	if d <= 0 {
		return nil
	}
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-timer.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
