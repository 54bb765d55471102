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
