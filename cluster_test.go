package throttle

import (
	"context"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dthrottle/throttle/internal/redistest"
	"github.com/dthrottle/throttle/internal/simevent"
)

// faultRedirectHook counts the MOVED, ASK and TRYAGAIN replies a cluster
// node client gets (go-redis follows or retries them before the caller
// sees anything; the store retries TRYAGAIN until its deadline).
type faultRedirectHook struct{ moved, ask, tryAgain *atomic.Int64 }

func (h faultRedirectHook) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h faultRedirectHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		err := next(ctx, cmd)
		h.count(cmd.Err())
		return err
	}
}

func (h faultRedirectHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		err := next(ctx, cmds)
		for _, c := range cmds {
			h.count(c.Err())
		}
		return err
	}
}

func (h faultRedirectHook) count(err error) {
	if err == nil {
		return
	}
	switch msg := err.Error(); {
	case strings.HasPrefix(msg, "MOVED "):
		h.moved.Add(1)
	case strings.HasPrefix(msg, "ASK "):
		h.ask.Add(1)
	case strings.HasPrefix(msg, "TRYAGAIN "):
		h.tryAgain.Add(1)
	}
}

// faultAdmissionLog records, for one key, each admitted call's ask and start
// times, and every error a caller saw.
type faultAdmissionLog struct {
	mu     sync.Mutex
	starts []simevent.Admission
	errs   []error
}

func (l *faultAdmissionLog) admit(asked, started time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.starts = append(l.starts, simevent.Admission{Asked: asked.UnixNano(), Started: started.UnixNano()})
}

func (l *faultAdmissionLog) fail(err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.errs = append(l.errs, err)
}

// firstErrors returns the messages of the first n errors of errs.
func faultFirstErrors(errs []error, n int) []string {
	var msgs []string
	for _, err := range errs[:min(n, len(errs))] {
		msgs = append(msgs, err.Error())
	}
	return msgs
}

// hammer calls th from its own goroutine until stop is closed: Wait when
// wait is set, Allow otherwise. Throttled Allows retry after up to 2 ms.
func faultHammer(wg *sync.WaitGroup, stop <-chan struct{}, th *Throttle, wait bool, log *faultAdmissionLog) {
	wg.Add(1)
	go func() {
		defer wg.Done()
		ctx := context.Background()
		for {
			select {
			case <-stop:
				return
			default:
			}
			asked := time.Now()
			ok, err := decide(ctx, th, wait)
			started := time.Now()
			switch {
			case err != nil:
				log.fail(err)
			case ok:
				log.admit(asked, started)
			default:
				time.Sleep(time.Duration(rand.Int64N(int64(2 * time.Millisecond))))
			}
		}
	}()
}

// TestClusterSlotMigration moves the hash slot of four throttle keys to
// another master (CLUSTER SETSLOT IMPORTING/MIGRATING, MIGRATE of each key,
// SETSLOT NODE) while goroutines call them, each through its own Throttle
// (own deny cache, turned off so that every call reaches Redis). go-redis
// follows the ASK and MOVED replies: the callers see no error, and every key
// holds its limit across the move.
func TestClusterSlotMigration(t *testing.T) {
	if testing.Short() {
		t.Skip("cluster test skipped in -short mode")
	}
	t.Parallel()
	cl := redistest.StartCluster(t, 3)
	var moved, ask, tryAgain atomic.Int64
	cc := cl.Client(t)
	cc.OnNewNode(func(c *redis.Client) { c.AddHook(faultRedirectHook{moved: &moved, ask: &ask, tryAgain: &tryAgain}) })
	store := NewRedisStore(cc, WithKeyPrefix("mig:"))

	// One hash tag, so one slot, for every key.
	type keySpec struct {
		key   string
		limit int
		wait  bool
	}
	const interval = 100 * time.Millisecond
	keys := []keySpec{
		{"{m}limit1", 1, false},       // SET NX PX, then slots.lua
		{"{m}limit3", 3, false},       // SET NX PX on a slot, then slots.lua
		{"{m}limit1-wait", 1, true},   // slots.lua bookings
		{"{m}limit2-wait", 2, true},   // slots.lua bookings over 2 slots
		{"{m}limit1-other", 1, false}, // a second SET NX key
		{"{m}limit100", 100, false},   // take.lua on a list
	}
	slot, err := cl.KeySlot(store.name(keys[0].key, ""))
	require.NoError(t, err)
	for _, k := range keys[1:] {
		s, err := cl.KeySlot(store.name(k.key, ""))
		require.NoError(t, err)
		require.Equal(t, slot, s, "slot of %q", store.name(k.key, ""))
	}
	src, err := cl.SlotOwner(slot)
	require.NoError(t, err)
	dst := cl.Nodes[0]
	if dst == src {
		dst = cl.Nodes[1]
	}

	const goroutinesPerKey = 3
	logs := make([]*faultAdmissionLog, len(keys))
	var wg sync.WaitGroup
	stop := make(chan struct{})
	begin := time.Now()
	for i, k := range keys {
		logs[i] = &faultAdmissionLog{}
		for range goroutinesPerKey {
			opts := []Option{WithStore(store), WithLimit(k.limit), WithDenyCache(false), WithTimeout(2 * time.Second)}
			if k.wait {
				opts = append(opts, WithWait(time.Second))
			}
			th, err := New(k.key, interval, opts...)
			require.NoError(t, err)
			faultHammer(&wg, stop, th, k.wait, logs[i])
		}
	}
	time.Sleep(300 * time.Millisecond)
	migrateStart := time.Now()
	n, err := cl.MigrateSlot(slot, dst, 300*time.Millisecond)
	migrated := time.Since(migrateStart)
	if err == nil {
		time.Sleep(400 * time.Millisecond) // calls after the move: MOVED, then the new owner
	}
	close(stop)
	wg.Wait()
	span := time.Since(begin)
	require.NoError(t, err, "migrating slot %d from %s to %s", slot, src.Addr, dst.Addr)

	owner, err := cl.SlotOwner(slot)
	require.NoError(t, err)
	assert.Equal(t, dst.Addr, owner.Addr, "owner of slot %d after the migration", slot)
	t.Logf("slot %d moved from %s to %s in %v (%d keys migrated); node clients saw %d ASK, %d TRYAGAIN and %d MOVED replies",
		slot, src.Addr, dst.Addr, migrated, n, ask.Load(), tryAgain.Load(), moved.Load())
	// A key that moved is asked for with ASK by a single-key command (a
	// SET NX on a slot), and refused with TRYAGAIN to a script over slots
	// of which some moved; either shows the migration window was hit.
	assert.Positive(t, ask.Load()+tryAgain.Load(), "ASK and TRYAGAIN replies during the migration (the test must exercise them)")
	assert.Positive(t, moved.Load(), "MOVED replies after the migration (the test must exercise them)")

	for i, k := range keys {
		l := logs[i]
		assert.Empty(t, faultFirstErrors(l.errs, 3), "errors seen by callers of %q during the migration (%d in all)", k.key, len(l.errs))
		r := simevent.Check(l.starts, interval, k.limit, span)
		t.Logf("%q (limit %d per %v, wait %v): %d starts, admitted/ideal %.2f, provable violations %d",
			k.key, k.limit, interval, k.wait, r.Starts, r.AdmittedRatio(), r.Violations)
		assert.Zero(t, r.Violations, "provable violations of %d per %v on %q across the migration", k.limit, interval, k.key)
		// Loose liveness: demand is continuous, so many allowed starts
		// must be taken despite the redirections (the migration itself
		// stalls some calls, and the machine may be busy).
		assert.GreaterOrEqual(t, r.AdmittedRatio(), 0.3, "admitted/ideal on %q", k.key)
	}
}
