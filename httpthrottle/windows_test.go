package httpthrottle

import (
	"errors"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dthrottle/throttle"
	"github.com/dthrottle/throttle/throttletest"
)

// TestTransportTwoWindows limits a host to 2 requests per second and 3 per
// hour (throttle.WithLimitPer) on the fake clock of throttletest: the third
// request is refused by the short window, the fourth, a second later, is
// sent, and the fifth is refused by the long window until the hour ends.
func TestTransportTwoWindows(t *testing.T) {
	t.Parallel()
	up := newUpstream(t, nil)
	s := throttletest.New(t)
	tr := newTransport(t, newKeyed(t, time.Second, append(s.Options(), throttle.WithLimit(2), throttle.WithLimitPer(3, time.Hour))...))
	ctx := t.Context()
	send := func(what string) error {
		t.Helper()
		status, err := get(ctx, tr, up.URL)
		if err == nil {
			assert.Equal(t, http.StatusOK, status, what)
		}
		return err
	}
	require.NoError(t, send("first request"))
	require.NoError(t, send("second request"))
	var te *throttle.ThrottledError
	require.ErrorAs(t, send("third request"), &te, "third request: the short window")
	assert.InDelta(t, float64(time.Second), float64(te.RetryAfter), float64(10*time.Millisecond), "third request's RetryAfter")
	s.Advance(te.RetryAfter)
	require.NoError(t, send("fourth request, a second later"))
	err := send("fifth request")
	require.True(t, errors.As(err, &te), "fifth request: the long window")
	assert.InDelta(t, float64(time.Hour-time.Second), float64(te.RetryAfter), float64(30*time.Second), "fifth request's RetryAfter")
	assert.Equal(t, 3, up.count(), "requests that reached the upstream")
}

// TestTransportTenPerSecondThousandPerHour limits a host as issue 21 asks,
// 10 requests per second and 1000 per hour, on the fake clock: 10 requests
// are sent in each second and the 11th is refused by the short window
// until that second has passed, up to the 1000th; then the long window refuses the rest of the hour,
// although the short window has room.
func TestTransportTenPerSecondThousandPerHour(t *testing.T) {
	t.Parallel()
	up := newUpstream(t, nil)
	s := throttletest.New(t)
	tr := newTransport(t, newKeyed(t, time.Second, append(s.Options(), throttle.WithLimit(10), throttle.WithLimitPer(1000, time.Hour))...))
	ctx := t.Context()
	var te *throttle.ThrottledError
	for second := range 100 {
		for i := range 10 {
			status, err := get(ctx, tr, up.URL)
			require.NoError(t, err, "second %d, request %d", second, i+1)
			require.Equal(t, http.StatusOK, status, "second %d, request %d", second, i+1)
		}
		if second == 99 {
			break // the 11th is the 1001st, below
		}
		_, err := get(ctx, tr, up.URL)
		require.ErrorAs(t, err, &te, "second %d, 11th request: the short window", second)
		// A window on Redis admits at most one bucket (1/160 of it) late.
		require.LessOrEqual(t, te.RetryAfter, time.Second+time.Second/160, "second %d, 11th request's RetryAfter: the short window's", second)
		s.Advance(te.RetryAfter)
	}
	s.Advance(time.Second + time.Second/160) // the short window is empty
	_, err := get(ctx, tr, up.URL)
	require.ErrorAs(t, err, &te, "the 1001st request within the hour: the long window")
	assert.Greater(t, te.RetryAfter, time.Hour-2*time.Minute, "the 1001st request's RetryAfter: the long window's")
	assert.Equal(t, 1000, up.count(), "requests that reached the upstream")
}
