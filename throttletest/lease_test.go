package throttletest_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dthrottle/throttle"
	"github.com/dthrottle/throttle/throttletest"
)

func TestStoreLeases(t *testing.T) {
	s := throttletest.New(t)
	ctx := context.Background()
	opts := append(s.Options(), throttle.WithConcurrency(1), throttle.WithLeaseTTL(time.Minute))
	th, err := throttle.New("api", time.Second, opts...)
	require.NoError(t, err)
	l, err := th.Acquire(ctx)
	require.NoError(t, err)
	s.Advance(time.Second)
	_, err = th.Acquire(ctx)
	assert.True(t, errors.Is(err, throttle.ErrAtCapacity), "second Acquire with the lease held: %v", err)
	l.Release()
	l, err = th.Acquire(ctx)
	require.NoError(t, err, "Acquire after Release")
	assert.Equal(t, 2, s.Count("api"), "starts the store admitted")
	// A lease expires on the fake clock.
	s.Advance(2 * time.Minute)
	other, err := th.Acquire(ctx)
	require.NoError(t, err, "Acquire after the holder's lease expired on the fake clock")
	other.Release()
	l.Release()
}
