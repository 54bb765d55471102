package throttletest

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dthrottle/throttle"
)

// TestStoreWindows runs a throttle with two windows on the fake clock:
// Advance moves both, Count sees every start, and Reset clears both.
func TestStoreWindows(t *testing.T) {
	s := New(t)
	th, err := throttle.New("w", 100*time.Millisecond, append(s.Options(), throttle.WithLimit(2), throttle.WithLimitPer(3, time.Minute))...)
	require.NoError(t, err)
	ctx := t.Context()
	allowed := func() bool {
		t.Helper()
		d, err := th.Allow(ctx)
		require.NoError(t, err)
		return d.Allowed
	}
	assert.True(t, allowed())
	assert.True(t, allowed())
	assert.False(t, allowed(), "third start within 100ms")
	s.Advance(100*time.Millisecond + time.Millisecond)
	assert.True(t, allowed(), "third start after 100ms")
	assert.False(t, allowed(), "fourth start within the minute")
	name := s.KeysFor("w", throttle.Request{Interval: 100 * time.Millisecond, Limit: 2,
		Windows: []throttle.Window{{Interval: time.Minute, Limit: 3}}})[0]
	assert.True(t, s.Miniredis().Exists(name), "the windows' hash %s", name)
	// A window on Redis admits at most one bucket (1/160 of it) late.
	s.Advance(time.Minute + time.Minute/160)
	assert.True(t, allowed(), "fourth start after the minute")
	assert.Equal(t, 4, s.Count("w"), "starts admitted")
	require.NoError(t, th.Reset(ctx))
	assert.True(t, allowed())
	assert.True(t, allowed(), "after Reset: both windows empty")
}

// TestStoreWindowsCancel: a Wait with two windows whose ctx ends hands its
// booking back, and Admitted no longer counts it.
func TestStoreWindowsCancel(t *testing.T) {
	s := New(t)
	th, err := throttle.New("wc", 100*time.Millisecond, append(s.Options(), throttle.WithLimit(1), throttle.WithLimitPer(2, time.Second))...)
	require.NoError(t, err)
	d, err := th.Allow(t.Context())
	require.NoError(t, err)
	require.True(t, d.Allowed)
	// The fake clock stands still, so the booking at 100 ms outlasts ctx.
	ctx, cancel := context.WithCancel(t.Context())
	time.AfterFunc(20*time.Millisecond, cancel)
	require.ErrorIs(t, th.Wait(ctx), context.Canceled)
	assert.Equal(t, 1, s.Count("wc"), "starts admitted: the cancelled booking is not one")
}

// TestStoreLeasesWindows runs a throttle with a cap and two windows on the
// fake clock: a call the cap refuses uses no start of either window, a
// call a window refuses takes no lease, and Advance moves both windows and
// the leases.
func TestStoreLeasesWindows(t *testing.T) {
	s := New(t)
	opts := append(s.Options(), throttle.WithLimit(2), throttle.WithLimitPer(3, time.Minute),
		throttle.WithConcurrency(1), throttle.WithLeaseTTL(time.Hour))
	th, err := throttle.New("lw", time.Second, opts...)
	require.NoError(t, err)
	ctx := t.Context()
	l, err := th.Acquire(ctx)
	require.NoError(t, err, "first Acquire")
	_, err = th.Acquire(ctx)
	assert.ErrorIs(t, err, throttle.ErrAtCapacity, "second Acquire with the lease held")
	l.Release()
	l, err = th.Acquire(ctx)
	require.NoError(t, err, "second Acquire after the release: the cap's refusal used no start")
	l.Release()
	_, err = th.Acquire(ctx)
	var te *throttle.ThrottledError
	require.ErrorAs(t, err, &te, "third Acquire within the second")
	assert.NotErrorIs(t, err, throttle.ErrAtCapacity, "third Acquire: refused by the short window")
	s.Advance(te.RetryAfter)
	l, err = th.Acquire(ctx)
	require.NoError(t, err, "third Acquire after the second: the refusal took no lease")
	l.Release()
	s.Advance(time.Second + time.Millisecond)
	_, err = th.Acquire(ctx)
	require.ErrorAs(t, err, &te, "fourth Acquire within the minute")
	assert.Greater(t, te.RetryAfter, 50*time.Second, "fourth Acquire's RetryAfter: the minute window's")
	s.Advance(te.RetryAfter)
	l, err = th.Acquire(ctx)
	require.NoError(t, err, "fourth Acquire after the minute")
	l.Release()
	assert.Equal(t, 4, s.Count("lw"), "starts admitted")
}
