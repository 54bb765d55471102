package throttle

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// gatedStore holds every Take until the test releases it with an answer,
// and counts the Takes it received.
type gatedStore struct {
	calls   atomic.Int64
	entered chan struct{}    // one receive per Take that arrived
	answers chan gatedAnswer // one send per Take to release
}

type gatedAnswer struct {
	res Reservation
	err error
}

func newGatedStore() *gatedStore {
	return &gatedStore{entered: make(chan struct{}, 1024), answers: make(chan gatedAnswer, 1024)}
}

func (s *gatedStore) Take(ctx context.Context, _ string, _ Request) (Reservation, error) {
	s.calls.Add(1)
	s.entered <- struct{}{}
	select {
	case a := <-s.answers:
		return a.res, a.err
	case <-ctx.Done():
		return Reservation{}, ctx.Err()
	}
}

func (s *gatedStore) Cancel(context.Context, string, Request, Reservation) error { return nil }

// awaitTake waits until a Take has arrived at s.
func (s *gatedStore) awaitTake(t *testing.T) {
	t.Helper()
	select {
	case <-s.entered:
	case <-time.After(5 * time.Second):
		t.Fatalf("no Take arrived at the store within 5s (%d so far)", s.calls.Load())
	}
}

// herd starts one Allow on th, waits until its Take is in the store, then
// starts n more Allows and waits until each of them waits for the first
// one's answer (th reports each wait on parked). It returns the channel of
// all n+1 results.
func herd(t *testing.T, th *Throttle, s *gatedStore, parked chan struct{}, n int) chan allowResult {
	t.Helper()
	out := make(chan allowResult, n+1)
	allow := func() {
		d, err := th.Allow(context.Background())
		out <- allowResult{d, err}
	}
	go allow()
	s.awaitTake(t)
	for range n {
		go allow()
	}
	awaitParked(t, parked, n)
	return out
}

// awaitParked waits until n calls have reported waiting for another's
// store call.
func awaitParked(t *testing.T, parked chan struct{}, n int) {
	t.Helper()
	for i := range n {
		select {
		case <-parked:
		case <-time.After(5 * time.Second):
			t.Fatalf("only %d of %d calls waited for another's store call within 5s", i, n)
		}
	}
}

type allowResult struct {
	d   Decision
	err error
}

func sharingThrottle(t *testing.T, s Store, limit int) (*Throttle, chan struct{}) {
	t.Helper()
	th, err := New("k", time.Hour, WithStore(s), WithLimit(limit), WithTimeout(10*time.Second))
	require.NoError(t, err)
	parked := make(chan struct{}, 1024)
	th.cfg.onShare = func() { parked <- struct{}{} }
	return th, parked
}

// collect receives n results and counts them.
func collect(t *testing.T, out chan allowResult, n int) (allowed, denied, failed int) {
	t.Helper()
	for range n {
		r := <-out
		switch {
		case r.err != nil:
			assert.ErrorIs(t, r.err, ErrStoreUnavailable)
			failed++
		case r.d.Allowed:
			allowed++
		default:
			assert.LessOrEqual(t, r.d.RetryAfter, time.Hour, "never beyond the store's own answer")
			denied++
		}
	}
	return allowed, denied, failed
}

// A burst of Allows on one key while the first one's store call is in
// flight costs that one call: its admission closes the key (limit 1), and
// the rest are denied by the deny cache it filled.
func TestConcurrentAllowsShareOneStoreCall(t *testing.T) {
	const n = 16
	s := newGatedStore()
	th, parked := sharingThrottle(t, s, 1)
	out := herd(t, th, s, parked, n)
	s.answers <- gatedAnswer{res: Reservation{OK: true}}
	allowed, denied, _ := collect(t, out, n+1)
	assert.Equal(t, 1, allowed, "exactly the call the store admitted")
	assert.Equal(t, n, denied)
	assert.EqualValues(t, 1, s.calls.Load(), "store calls for %d concurrent Allows", n+1)
}

// An answer that does not close the key is not shared. After one, the
// waiting calls wait for one more store call (by one of them), and then
// each asks the store itself. After an admission that left starts free (a
// limit above 1) each asks the store at once.
func TestSharingNeverSharesWhatDoesNotCloseTheKey(t *testing.T) {
	const n = 6
	admit := gatedAnswer{res: Reservation{OK: true}}
	fail := gatedAnswer{err: errors.New("boom")}
	for _, tc := range []struct {
		name    string
		limit   int
		answers []gatedAnswer // in order, to the calls that ask the store one at a time
		rest    gatedAnswer   // to each of the calls that then ask at once
		calls   int
		allowed int
		failed  int
	}{
		// With a retry-after below Redis's millisecond, nothing is known
		// to be closed: one more call asks, and its admission is shared.
		{"denied with no retry-after", 1, []gatedAnswer{{}, admit}, gatedAnswer{}, 2, 1, 0},
		{"store error", 1, []gatedAnswer{fail, admit}, gatedAnswer{}, 2, 1, 1},
		{"two store errors", 1, []gatedAnswer{fail, fail}, gatedAnswer{}, n + 1, 0, 2},
		{"admitted with starts left", 10, []gatedAnswer{{res: Reservation{OK: true, Remaining: 5}}}, admit, n + 1, n + 1, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newGatedStore()
			th, parked := sharingThrottle(t, s, tc.limit)
			th.full.Store(true) // as after a denial: the next answer will likely close the key
			out := herd(t, th, s, parked, n)
			waiting := n
			for i, a := range tc.answers {
				if i > 0 {
					s.awaitTake(t) // one of the waiting calls asks
					waiting--
					awaitParked(t, parked, waiting)
				}
				s.answers <- a
			}
			for range tc.calls - len(tc.answers) {
				s.awaitTake(t)
				s.answers <- tc.rest
			}
			allowed, _, failed := collect(t, out, n+1)
			assert.Equal(t, tc.allowed, allowed, "admitted")
			assert.Equal(t, tc.failed, failed, "store errors")
			assert.EqualValues(t, tc.calls, s.calls.Load(), "store calls")
		})
	}
}

// With a limit above 1, calls share only once the store said the key is
// full; while it has starts free, concurrent calls ask the store at once.
func TestLimitNSharesOnlyWhenFull(t *testing.T) {
	const n = 6
	s := newGatedStore()
	th, err := New("k", time.Hour, WithStore(s), WithLimit(10), WithTimeout(10*time.Second))
	require.NoError(t, err)
	th.cfg.onShare = func() { t.Error("a call waited for another's store call on a key with starts free") }
	out := make(chan allowResult, n)
	for range n {
		go func() {
			d, err := th.Allow(context.Background())
			out <- allowResult{d, err}
		}()
	}
	for range n {
		s.awaitTake(t) // all n are in the store together
	}
	for range n {
		s.answers <- gatedAnswer{res: Reservation{OK: true, Remaining: 3}}
	}
	allowed, _, _ := collect(t, out, n)
	assert.Equal(t, n, allowed)
	assert.False(t, th.full.Load(), "starts left: not full")

	// A denial marks the key full, and so does an admission of the last
	// free start; an admission with starts left clears it.
	for _, a := range []struct {
		res  Reservation
		full bool
	}{
		{Reservation{RetryAfter: time.Millisecond}, true},
		{Reservation{OK: true, Remaining: 2}, false},
		{Reservation{OK: true}, true},
	} {
		s.answers <- gatedAnswer{res: a.res}
		th.deniedUntil.Store(0)
		_, err := th.Allow(context.Background())
		s.awaitTake(t)
		require.NoError(t, err)
		assert.Equal(t, a.full, th.full.Load(), "after %+v", a.res)
	}
}

// A call waiting for another's store call still ends with its own context,
// at once, and with its own timeout, as a store error.
func TestSharedWaitIsBounded(t *testing.T) {
	s := newGatedStore()
	th, parked := sharingThrottle(t, s, 1)
	th.cfg.timeout = 100 * time.Millisecond
	first := make(chan error, 1)
	go func() { _, err := th.Allow(context.Background()); first <- err }()
	s.awaitTake(t)

	ctx, cancel := context.WithCancel(context.Background())
	cancelled := make(chan error, 1)
	go func() { _, err := th.Allow(ctx); cancelled <- err }()
	awaitParked(t, parked, 1)
	cancel()
	select {
	case err := <-cancelled:
		assert.ErrorIs(t, err, context.Canceled)
		assert.NotErrorIs(t, err, ErrStoreUnavailable)
	case <-time.After(time.Second):
		t.Fatal("a cancelled call kept waiting for another's store call")
	}

	// The first call's store call hangs until its own 100 ms timeout; a
	// call that waits for it ends by its own timeout as well.
	begin := time.Now()
	_, err := th.Allow(context.Background())
	assert.ErrorIs(t, err, ErrStoreUnavailable)
	assert.ErrorIs(t, err, context.DeadlineExceeded)
	assert.Less(t, time.Since(begin), time.Second, "bounded by the 100 ms timeout")
	assert.ErrorIs(t, <-first, ErrStoreUnavailable)
}
