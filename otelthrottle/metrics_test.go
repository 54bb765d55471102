package otelthrottle_test

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/metric/noop"

	"github.com/dthrottle/throttle"
	"github.com/dthrottle/throttle/internal/redistest"
	"github.com/dthrottle/throttle/otelthrottle"
)

// The series of the scripted sequence, named as series names them.
const (
	sAllowed        = "dthrottle.name=api,dthrottle.outcome=allowed,dthrottle.source=store"
	sPermit         = "dthrottle.name=api,dthrottle.outcome=allowed,dthrottle.source=permit"
	sThrottled      = "dthrottle.name=api,dthrottle.outcome=throttled,dthrottle.source=store"
	sCached         = "dthrottle.name=api,dthrottle.outcome=throttled,dthrottle.source=deny_cache"
	sFailedOpen     = "dthrottle.name=api,dthrottle.outcome=allowed,dthrottle.source=store,error.type=store_unavailable"
	sFailedClosed   = "dthrottle.name=api,dthrottle.outcome=error,dthrottle.source=store,error.type=store_unavailable"
	sWaitReached    = "dthrottle.name=api,dthrottle.outcome=allowed"
	sWaitCanceled   = "dthrottle.name=api,dthrottle.outcome=error,error.type=canceled"
	sName           = "dthrottle.name=api"
	sHoldStoreError = "dthrottle.name=api,error.type=store_unavailable"
)

// runScript runs the scripted sequence on store, with the metrics named
// "api" read by a ManualReader, and checks every data point of every
// instrument. down makes the store fail from then on. key is a key that no
// other test uses on the store. With permits, the store leases permits
// (throttle.WithPermitBatch), and the script spends some.
func runScript(t *testing.T, store throttle.Store, down func(), key string, permits bool) {
	reader, mp := newProvider(t)
	metrics := otelthrottle.WithMetrics("api", otelthrottle.WithMeterProvider(mp))
	newThrottle := func(key string, interval time.Duration, opts ...throttle.Option) *throttle.Throttle {
		t.Helper()
		opts = append([]throttle.Option{throttle.WithStore(store), throttle.WithTimeout(2 * time.Second), metrics}, opts...)
		th, err := throttle.New(key, interval, opts...)
		require.NoError(t, err, "New(%q)", key)
		return th
	}
	ctx := context.Background()
	allow := func(th *throttle.Throttle, want bool, what string) {
		t.Helper()
		d, err := th.Allow(ctx)
		require.NoError(t, err, what)
		require.Equal(t, want, d.Allowed, what)
	}

	// Admitted; then throttled by the deny cache, and (another process,
	// with a deny cache of its own) by the store.
	a := newThrottle(key, time.Hour)
	allow(a, true, "first Allow")
	allow(a, false, "second Allow, from the deny cache")
	b := newThrottle(key, time.Hour)
	allow(b, false, "Allow of another throttle on the key, from the store")

	// A hold.
	require.NoError(t, a.Hold(ctx, time.Minute), "Hold")

	// A wait that reaches its start: the second Wait books one interval
	// ahead (unless the first call took longer than the interval).
	w := newThrottle(key+":wait", 300*time.Millisecond, throttle.WithWait(10*time.Second))
	require.NoError(t, w.Wait(ctx), "first Wait")
	require.NoError(t, w.Wait(ctx), "second Wait")

	// A wait cut short: an observer of its own cancels it once it booked,
	// and hands every event to Metrics.Observe.
	m, err := otelthrottle.New("api", otelthrottle.WithMeterProvider(mp))
	require.NoError(t, err)
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var booked atomic.Int32
	c := newThrottle(key+":cut", time.Hour, throttle.WithObserver(func(e throttle.Event) {
		m.Observe(e)
		if e.Kind == throttle.EventDecision && e.Delay > 0 {
			booked.Add(1)
			cancel()
		}
	}))
	require.NoError(t, c.Wait(ctx), "first Wait of the cut-short throttle")
	require.ErrorIs(t, c.Wait(cctx), context.Canceled, "Wait cut short")
	require.EqualValues(t, 1, booked.Load(), "bookings of the cut-short throttle")

	// A lease taken, one refused by the cap, and the lease released.
	l := newThrottle(key+":lease", 0, throttle.WithConcurrency(1))
	lease, err := l.Acquire(ctx)
	require.NoError(t, err, "Acquire")
	_, err = l.Acquire(ctx)
	require.ErrorIs(t, err, throttle.ErrAtCapacity, "second Acquire")
	assert.Equal(t, map[string]int64{sName: 1}, points(mustCollect(t, reader))[otelthrottle.LeasesActiveName], "leases held")
	lease.Release()

	// Leased permits: a limit above 64, called often enough that the
	// throttle takes batches. An observer of its own counts the events
	// that a permit answered.
	var fromPermits, fromStore int64
	if permits {
		ph := newThrottle(key+":permits", 10*time.Second, throttle.WithLimit(1000), throttle.WithObserver(func(e throttle.Event) {
			m.Observe(e)
			if e.Permit {
				fromPermits++
			} else {
				fromStore++
			}
		}))
		for i := range 50 {
			allow(ph, true, fmt.Sprintf("Allow %d of a throttle with leased permits", i))
		}
		require.Positive(t, fromPermits, "decisions that a leased permit answered, of 50 in a row")
	}

	// The store down: fail closed, fail open, and a hold that fails.
	down()
	closed := newThrottle(key+":down", time.Hour)
	d, err := closed.Allow(ctx)
	require.ErrorIs(t, err, throttle.ErrStoreUnavailable, "Allow with the store down")
	require.False(t, d.Allowed, "fail-closed Allow with the store down")
	open := newThrottle(key+":down", time.Hour, throttle.WithFailOpen())
	d, err = open.Allow(ctx)
	require.ErrorIs(t, err, throttle.ErrStoreUnavailable, "fail-open Allow with the store down")
	require.True(t, d.Allowed, "fail-open Allow with the store down")
	require.ErrorIs(t, closed.Hold(ctx, time.Second), throttle.ErrStoreUnavailable, "Hold with the store down")

	got := mustCollect(t, reader)
	decisions := map[string]int64{
		// a, the two Waits of w, the first Wait and the booking of c, the lease.
		sAllowed:      6,
		sThrottled:    2, // b, and the lease refused by the cap
		sCached:       1,
		sFailedOpen:   1,
		sFailedClosed: 1,
	}
	if permits {
		decisions[sAllowed] += fromStore
		decisions[sPermit] = fromPermits
	}
	timed := maps.Clone(decisions)
	delete(timed, sCached) // the deny cache's and permits' decisions are not timed
	delete(timed, sPermit)
	assert.Equal(t, map[string]map[string]int64{
		otelthrottle.DecisionsName:        decisions,
		otelthrottle.DecisionDurationName: timed,
		otelthrottle.WaitDurationName:     {sWaitReached: 1, sWaitCanceled: 1},
		otelthrottle.WaitingName:          {sName: 0},
		otelthrottle.HoldsName:            {sName: 1, sHoldStoreError: 1},
		otelthrottle.LeasesActiveName:     {sName: 0},
		otelthrottle.LeaseDurationName:    {sName: 1},
	}, points(got), "data points of every instrument")

	// The wait that reached its start waited at least part of an
	// interval; the one cut short, less than its hour.
	assert.Positive(t, got[otelthrottle.WaitDurationName].sums[sWaitReached], "seconds waited by the wait that reached its start")
	assert.Less(t, got[otelthrottle.WaitDurationName].sums[sWaitCanceled], 3600.0, "seconds waited by the wait cut short")
	for _, s := range []string{sAllowed, sThrottled, sFailedClosed} {
		assert.Positive(t, got[otelthrottle.DecisionDurationName].sums[s], "seconds of the decisions %s", s)
	}
}

func TestScriptOnMemoryStore(t *testing.T) {
	store := &failingStore{MemoryStore: throttle.NewMemoryStore()}
	runScript(t, store, func() { store.down.Store(true) }, "k", false)
}

func TestScriptOnRedis(t *testing.T) {
	srv := redistest.Start(t)
	client := redis.NewClient(&redis.Options{Addr: srv.Addr, ContextTimeoutEnabled: true})
	t.Cleanup(func() { _ = client.Close() })
	// The server is the test's own, and stopped at its end.
	runScript(t, throttle.NewRedisStore(client), srv.Stop, "otelthrottle:script", true)
}

// failingStore is a MemoryStore that fails every decision, hold and lease
// once down is set, as a store that cannot be reached does.
type failingStore struct {
	*throttle.MemoryStore
	down atomic.Bool
}

var errDown = errors.New("store down")

func (s *failingStore) Take(ctx context.Context, key string, req throttle.Request) (throttle.Reservation, error) {
	if s.down.Load() {
		return throttle.Reservation{}, errDown
	}
	return s.MemoryStore.Take(ctx, key, req)
}

func (s *failingStore) TakeLease(ctx context.Context, key string, req throttle.Request, token string) (throttle.Reservation, error) {
	if s.down.Load() {
		return throttle.Reservation{}, errDown
	}
	return s.MemoryStore.TakeLease(ctx, key, req, token)
}

func (s *failingStore) Hold(ctx context.Context, key string, req throttle.Request, d time.Duration) error {
	if s.down.Load() {
		return errDown
	}
	return s.MemoryStore.Hold(ctx, key, req, d)
}

func TestInstrumentsHaveUnitsAndDescriptions(t *testing.T) {
	reader, mp := newProvider(t)
	m, err := otelthrottle.New("api", otelthrottle.WithMeterProvider(mp))
	require.NoError(t, err)
	// One event of each kind, so that every instrument reports.
	for _, e := range []throttle.Event{
		{Kind: throttle.EventDecision, Allowed: true, Delay: time.Millisecond},
		{Kind: throttle.EventWaited, Allowed: true, Delay: time.Millisecond},
		{Kind: throttle.EventHold, RetryAfter: time.Second},
		{Kind: throttle.EventLeaseTaken},
		{Kind: throttle.EventLeaseReleased, Held: time.Second},
	} {
		m.Observe(e)
	}
	got := mustCollect(t, reader)
	units := map[string]string{}
	for name, in := range got {
		units[name] = in.unit
		assert.NotEmpty(t, in.description, "description of %s", name)
	}
	assert.Equal(t, map[string]string{
		otelthrottle.DecisionsName:        "{decision}",
		otelthrottle.DecisionDurationName: "s",
		otelthrottle.WaitDurationName:     "s",
		otelthrottle.WaitingName:          "{call}",
		otelthrottle.HoldsName:            "{hold}",
		otelthrottle.LeasesActiveName:     "{lease}",
		otelthrottle.LeaseDurationName:    "s",
	}, units, "the instruments and their units")
	assert.InDelta(t, 0.001, got[otelthrottle.WaitDurationName].sums[sWaitReached], 1e-12, "seconds waited")
	assert.InDelta(t, 1.0, got[otelthrottle.LeaseDurationName].sums[sName], 1e-12, "seconds held")
}

// TestKeysOnlyOnRequest checks that a Keyed's keys are not attributes by
// default, and are with WithKeys.
func TestKeysOnlyOnRequest(t *testing.T) {
	for _, withKeys := range []bool{false, true} {
		reader, mp := newProvider(t)
		opts := []otelthrottle.Option{otelthrottle.WithMeterProvider(mp), otelthrottle.WithAttributes(attribute.String("region", "eu"))}
		if withKeys {
			opts = append(opts, otelthrottle.WithKeys())
		}
		k, err := throttle.NewKeyed(time.Hour, otelthrottle.WithMetrics("tenants", opts...))
		require.NoError(t, err)
		for _, key := range []string{"acme", "globex", "initech", "acme"} {
			_, err := k.Allow(context.Background(), key)
			require.NoError(t, err)
		}
		want := map[string]int64{
			"dthrottle.name=tenants,dthrottle.outcome=allowed,dthrottle.source=store,region=eu":        3,
			"dthrottle.name=tenants,dthrottle.outcome=throttled,dthrottle.source=deny_cache,region=eu": 1,
		}
		if withKeys {
			want = map[string]int64{
				"dthrottle.key=acme,dthrottle.name=tenants,dthrottle.outcome=allowed,dthrottle.source=store,region=eu":        1,
				"dthrottle.key=globex,dthrottle.name=tenants,dthrottle.outcome=allowed,dthrottle.source=store,region=eu":      1,
				"dthrottle.key=initech,dthrottle.name=tenants,dthrottle.outcome=allowed,dthrottle.source=store,region=eu":     1,
				"dthrottle.key=acme,dthrottle.name=tenants,dthrottle.outcome=throttled,dthrottle.source=deny_cache,region=eu": 1,
			}
		}
		assert.Equal(t, want, points(mustCollect(t, reader))[otelthrottle.DecisionsName], "decisions with WithKeys %v", withKeys)
	}
}

// cancelingStore ends the caller's context during each Take, as a call
// whose context ends while the store decides.
type cancelingStore struct {
	*throttle.MemoryStore
	cancel context.CancelFunc
}

func (s cancelingStore) Take(context.Context, string, throttle.Request) (throttle.Reservation, error) {
	s.cancel()
	return throttle.Reservation{}, context.Canceled
}

func TestDecisionCanceledByContext(t *testing.T) {
	reader, mp := newProvider(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	th, err := throttle.New("k", time.Hour, throttle.WithStore(cancelingStore{throttle.NewMemoryStore(), cancel}),
		otelthrottle.WithMetrics("api", otelthrottle.WithMeterProvider(mp)))
	require.NoError(t, err)
	_, err = th.Allow(ctx)
	require.ErrorIs(t, err, context.Canceled)
	assert.Equal(t, map[string]int64{"dthrottle.name=api,dthrottle.outcome=error,dthrottle.source=store,error.type=canceled": 1},
		points(mustCollect(t, reader))[otelthrottle.DecisionsName])
}

func TestEmptyName(t *testing.T) {
	_, err := otelthrottle.New("")
	assert.EqualError(t, err, "otelthrottle: empty name")
	assert.PanicsWithValue(t, "otelthrottle: empty name", func() { otelthrottle.WithMetrics("") })
}

// TestObserveClassifiesEvents feeds Observe the events that the scripts
// above cannot make happen on demand.
func TestObserveClassifiesEvents(t *testing.T) {
	reader, mp := newProvider(t)
	m, err := otelthrottle.New("api", otelthrottle.WithMeterProvider(mp))
	require.NoError(t, err)
	storeErr := &throttle.StoreError{Key: "k", Err: errDown}
	// A booking whose wait could not cover its delay.
	m.Observe(throttle.Event{Kind: throttle.EventDecision, Allowed: true, Delay: time.Second})
	m.Observe(throttle.Event{Kind: throttle.EventWaited})
	// The fallback refused a call while the store failed.
	m.Observe(throttle.Event{Kind: throttle.EventDecision, Err: storeErr, RetryAfter: time.Second})
	// Holds cut short by their context.
	m.Observe(throttle.Event{Kind: throttle.EventHold, Err: context.DeadlineExceeded})
	got := points(mustCollect(t, reader))
	assert.Equal(t, map[string]int64{"dthrottle.name=api,dthrottle.outcome=throttled": 1}, got[otelthrottle.WaitDurationName], "waits")
	assert.Equal(t, map[string]int64{sName: 0}, got[otelthrottle.WaitingName], "calls waiting")
	assert.Equal(t, map[string]int64{sAllowed: 1, sFailedClosed: 1}, got[otelthrottle.DecisionsName], "decisions")
	assert.Equal(t, map[string]int64{"dthrottle.name=api,error.type=canceled": 1}, got[otelthrottle.HoldsName], "holds")
}

// refusingProvider is a meter provider whose meters refuse the decisions
// counter.
type refusingProvider struct{ noop.MeterProvider }

func (refusingProvider) Meter(string, ...metric.MeterOption) metric.Meter { return refusingMeter{} }

type refusingMeter struct{ noop.Meter }

var errRefused = errors.New("instrument refused")

func (refusingMeter) Int64Counter(string, ...metric.Int64CounterOption) (metric.Int64Counter, error) {
	return noop.Int64Counter{}, errRefused
}

func TestRefusedInstrument(t *testing.T) {
	_, err := otelthrottle.New("api", otelthrottle.WithMeterProvider(refusingProvider{}))
	assert.ErrorIs(t, err, errRefused, "New on a meter that refuses an instrument")

	var handled []error
	prev := otel.GetErrorHandler()
	otel.SetErrorHandler(otel.ErrorHandlerFunc(func(err error) { handled = append(handled, err) }))
	t.Cleanup(func() { otel.SetErrorHandler(prev) })
	assert.Nil(t, otelthrottle.WithMetrics("api", otelthrottle.WithMeterProvider(refusingProvider{})),
		"WithMetrics on a meter that refuses an instrument")
	require.Len(t, handled, 1, "errors given to otel.Handle")
	assert.ErrorIs(t, handled[0], errRefused)
}
