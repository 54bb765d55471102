package httpthrottle

import (
	"context"
	"errors"
	"io"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dthrottle/throttle"
)

// inFlight counts the requests an upstream is serving, and the most at once.
type inFlight struct {
	now, most atomic.Int32
}

func (f *inFlight) enter() {
	n := f.now.Add(1)
	for {
		m := f.most.Load()
		if n <= m || f.most.CompareAndSwap(m, n) {
			return
		}
	}
}

func (f *inFlight) leave() { f.now.Add(-1) }

// TestTransportCapHoldsALeasePerRequest (issue 19, item 10): with a capped
// Keyed (throttle.WithConcurrency), a request holds a lease from before it
// is sent until its response body is closed. Before, every request failed
// with the Keyed's "lease required" error.
func TestTransportCapHoldsALeasePerRequest(t *testing.T) {
	for _, s := range sharedStores(t) {
		t.Run(s.name, func(t *testing.T) {
			ctx := context.Background()
			release := make(chan struct{})
			u := newUpstream(t, func(n int, _ http.Header) int {
				if n == 1 {
					<-release // the first request is slow
				}
				return http.StatusOK
			})
			tr := sharedTransport(t, s, 0, []throttle.Option{throttle.WithConcurrency(1)})
			first := make(chan *http.Response, 1)
			go func() {
				req, _ := http.NewRequestWithContext(ctx, http.MethodGet, u.URL, nil)
				resp, err := tr.RoundTrip(req)
				assert.NoError(t, err, "first request")
				first <- resp
			}()
			require.Eventually(t, func() bool { return u.count() == 1 }, 5*time.Second, time.Millisecond, "the first request arrives")

			// The cap is used: a second request is throttled, not sent.
			_, err := get(ctx, tr, u.URL)
			assert.ErrorIs(t, err, throttle.ErrThrottled, "second request while the first holds the lease")
			assert.ErrorIs(t, err, throttle.ErrAtCapacity, "second request while the first holds the lease")
			assert.Equal(t, 1, u.count(), "requests sent")

			// The first response arrives; its lease is held until its body
			// is closed.
			close(release)
			resp := <-first
			require.NotNil(t, resp)
			_, err = get(ctx, tr, u.URL)
			assert.ErrorIs(t, err, throttle.ErrAtCapacity, "request while the first response's body is open")
			_, _ = io.Copy(io.Discard, resp.Body)
			require.NoError(t, resp.Body.Close())
			require.NoError(t, resp.Body.Close(), "second Close")
			code, err := get(ctx, tr, u.URL)
			require.NoError(t, err, "request after the first body was closed")
			assert.Equal(t, http.StatusOK, code)
			code, err = get(ctx, tr, u.URL)
			require.NoError(t, err, "request after the previous body was closed")
			assert.Equal(t, http.StatusOK, code)
		})
	}
}

// TestTransportCapWaitsForALease: with WithWait, requests of a capped Keyed
// wait for a lease (released when a body is closed) instead of failing, and
// never more than the cap are in flight.
func TestTransportCapWaitsForALease(t *testing.T) {
	var f inFlight
	u := newUpstream(t, func(int, http.Header) int {
		f.enter()
		defer f.leave()
		time.Sleep(10 * time.Millisecond)
		return http.StatusOK
	})
	k := newKeyed(t, 0, throttle.WithStore(throttle.NewMemoryStore()), throttle.WithConcurrency(2))
	tr := newTransport(t, k, WithWait(10*time.Second))
	errs := make(chan error, 8)
	for range 8 {
		go func() {
			_, err := get(context.Background(), tr, u.URL)
			errs <- err
		}()
	}
	for range 8 {
		assert.NoError(t, <-errs)
	}
	assert.Equal(t, 8, u.count(), "requests sent")
	assert.LessOrEqual(t, f.most.Load(), int32(2), "requests in flight at once under a cap of 2")
}

// failingTransport fails every request without sending it.
type failingTransport struct{}

func (failingTransport) RoundTrip(*http.Request) (*http.Response, error) {
	return nil, errors.New("connection refused")
}

// TestTransportCapReleasesOnError: a request whose base fails gives its
// lease back at once.
func TestTransportCapReleasesOnError(t *testing.T) {
	k := newKeyed(t, 0, throttle.WithStore(throttle.NewMemoryStore()), throttle.WithConcurrency(1))
	tr, err := NewTransport(failingTransport{}, k)
	require.NoError(t, err)
	for i := range 3 {
		req, _ := http.NewRequest(http.MethodGet, "http://example.invalid/", nil)
		_, err := tr.RoundTrip(req)
		assert.EqualError(t, err, "connection refused", "request %d: the base's error, not the cap's", i)
	}
}
