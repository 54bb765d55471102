package throttle

import (
	"context"
	_ "embed"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// DefaultKeyPrefix is the prefix of every Redis key a RedisStore writes,
// unless WithKeyPrefix sets another.
const DefaultKeyPrefix = "throttle:"

// maxSlots is the largest limit kept as slot keys (see scripts/slots.lua);
// larger limits keep counts per time bucket (scripts/window.lua).
const maxSlots = 64

var (
	//go:embed scripts/slotscan.lua
	slotScanSource string
	//go:embed scripts/slots.lua
	slotsSource string
	//go:embed scripts/unbook.lua
	unbookSource string
	//go:embed scripts/hold.lua
	holdSource string
	//go:embed scripts/bucket.lua
	bucketSource string
	//go:embed scripts/window.lua
	windowSource string

	slotsScript  = newScript(slotScanSource + slotsSource)
	unbookScript = newScript(unbookSource)
	holdScript   = newScript(holdSource)
	windowScript = newScript(bucketSource + windowSource)
)

// slotSuffix[i] ends the name of slot i of a throttle; slot 0 has none.
var slotSuffix = func() [maxSlots]string {
	var s [maxSlots]string
	for i := 1; i < maxSlots; i++ {
		s[i] = ":" + strconv.Itoa(i)
	}
	return s
}()

// Suffixes of a throttle's other keys.
const (
	holdSuffix   = ":hold"   // the record of a hold, for Held
	windowSuffix = ":window" // the counts of a limit above maxSlots
)

// RedisStore is a Store kept in Redis, shared by every process that uses the
// same Redis server (or Cluster) and key prefix. Decisions use the Redis
// server's clock, never the callers', so skewed clocks on the workers do not
// matter.
//
// The keys of a throttle with key k are named after the prefix and k in a
// hash tag, P{k}, so that they share one Cluster slot; a k that starts with
// '}' or '\' gets a '\' in front inside the tag. Every key has an expiry: an
// idle throttle leaves nothing behind.
//   - Limit N up to 64: N slot keys, P{k} and P{k}:1 to P{k}:N-1, each a
//     limit-1 throttle written with SET slot 1 NX PX interval. A start holds
//     one free slot for its interval, so a slot is free exactly when the
//     sliding window admits a start. An admitted call is that one command
//     on the slot its process expects to be free; only when that slot is
//     held does a short script look at all N.
//   - Limit above 64: P{k}:window, a hash of the counts of starts in
//     buckets of 1/160 of the interval, kept by a script of three Redis
//     calls; at most 643 fields (under 64 KiB) whatever the limit. Each
//     start counts as if at the end of its bucket, so the limit is never
//     exceeded, and at most 0.7% of the capacity is lost. A waiting call
//     can book at most about three intervals ahead.
//   - With windows (WithLimitPer), whatever the limits: a bucket window as
//     above per window, all in one hash, P{k}:w:<interval in µs>:<limit>
//     and :<interval>:<limit> for each further window, decided by one
//     script (see KeysFor). The single-window keys are not used.
//   - P{k}:hold records a hold (see Throttle.Hold) while it lasts.
//
// Scripts run with EVALSHA and fall back to EVAL when the server has lost
// its script cache (restart, failover, new shard). Redis 5 or newer is
// needed; Redis 6 or newer for waits on a cap that end exactly on time
// (see AwaitLease).
//
// A RedisStore is safe for concurrent use and starts no goroutine of its
// own, except as described in NewRedisStore and AwaitLease.
type RedisStore struct {
	conn    RedisConn
	prefix  string
	bounded bool          // conn's commands end at the context's deadline
	next    atomic.Uint32 // the slot a call tries first is next % limit
}

// A RedisOption configures a RedisStore.
type RedisOption interface {
	applyRedis(*RedisStore)
}

type redisOptionFunc func(*RedisStore)

func (f redisOptionFunc) applyRedis(s *RedisStore) { f(s) }

// WithKeyPrefix sets the prefix of the store's Redis keys. Stores that must
// share throttles must use the same prefix. The prefix must not contain '{'
// or '}', which would change the keys' Cluster hash tag. Default:
// DefaultKeyPrefix ("throttle:").
func WithKeyPrefix(prefix string) RedisOption {
	return redisOptionFunc(func(s *RedisStore) { s.prefix = prefix })
}

// NewRedisStore returns a RedisStore that uses c: a *redis.Client, a
// *redis.ClusterClient or a Sentinel failover client, or the
// *redis.AutoPipeliner of one (go-redis auto-pipelining: the commands of
// concurrent callers share round trips; the store never closes it). A
// *redis.Ring works too, but moves keys when its shards change, which
// restarts throttles from empty state.
//
// Every decision is bounded by the throttle's timeout (WithTimeout):
//   - When c was made with ContextTimeoutEnabled, go-redis itself stops at
//     the decision's deadline.
//   - A *redis.Client without it (the go-redis default, also what
//     NewFailoverClient returns) runs each command in the caller's
//     goroutine, as cheaply as the recommended client, on a clone made by
//     c.WithTimeout (the same pool and dialer) whose read and write
//     timeouts end with the decision, rounded up by at most 1/16. The
//     command still goes through c's hooks: NewRedisStore adds one hook to
//     c (once per client), after the hooks c has, that sends the store's
//     commands on to the clone and lets every other command through; a
//     hook added to c later does not see the store's commands. Waiting for
//     a pooled connection or dialling one ends at the deadline; a socket
//     read that begins only then may run for its timeout from there.
//   - A *redis.ClusterClient or *redis.Ring without ContextTimeoutEnabled
//     (they have no WithTimeout), and an AutoPipeliner (which does not
//     honour a queued command's context), run each call in a goroutine
//     that the caller leaves when the timeout ends; that goroutine ends
//     when go-redis returns (at its ReadTimeout at worst).
//
// NewRedisStore panics if the key prefix contains '{' or '}'.
func NewRedisStore(c redis.UniversalClient, opts ...RedisOption) *RedisStore {
	g := &goRedisConn{client: c}
	bounded := honoursDeadlines(c)
	switch v := c.(type) {
	case *redis.Client:
		if bounded {
			g.blockMax = blockMax(v.Options().ReadTimeout)
		} else {
			g.timeouts = timeoutsFor(v)
			bounded = true
		}
	case *redis.ClusterClient:
		g.blockMax = blockMax(v.Options().ReadTimeout)
	case *redis.Ring:
		g.blockMax = blockMax(v.Options().ReadTimeout)
	default:
		g.blockMax = -1 // ReadTimeout unknown: BLPop sets its own
	}
	return newRedisStore(g, bounded, opts)
}

// NewRedisStoreOn returns a RedisStore that sends its commands on c, for a
// client other than go-redis (see RedisConn). It is the same store as
// NewRedisStore's, with the same keys, scripts and guarantee, so processes
// on either share throttles. c's commands must end when their context
// does.
//
// NewRedisStoreOn panics if c is nil or the key prefix contains '{' or
// '}'.
func NewRedisStoreOn(c RedisConn, opts ...RedisOption) *RedisStore {
	if c == nil {
		panic("throttle: NewRedisStoreOn with a nil RedisConn")
	}
	return newRedisStore(c, true, opts)
}

func newRedisStore(c RedisConn, bounded bool, opts []RedisOption) *RedisStore {
	s := &RedisStore{conn: c, prefix: DefaultKeyPrefix, bounded: bounded}
	for _, o := range opts {
		if o != nil {
			o.applyRedis(s)
		}
	}
	if strings.ContainsAny(s.prefix, "{}") {
		panic(fmt.Sprintf("throttle: key prefix %q contains '{' or '}'", s.prefix))
	}
	// Processes start at different slots, so that they rarely try the
	// same one at once.
	s.next.Store(uint32(time.Now().UnixNano()))
	return s
}

// honoursDeadlines reports whether go-redis stops c's commands at the
// context's deadline.
func honoursDeadlines(c redis.UniversalClient) bool {
	switch v := c.(type) {
	case *redis.Client:
		return v.Options().ContextTimeoutEnabled
	case *redis.ClusterClient:
		return v.Options().ContextTimeoutEnabled
	case *redis.Ring:
		return v.Options().ContextTimeoutEnabled
	}
	return false
}

// blockMax returns the longest BLPOP timeout for a client with
// readTimeout, leaving a quarter of it for the answer: any for none.
func blockMax(readTimeout time.Duration) time.Duration {
	if readTimeout <= 0 {
		return 0
	}
	return max(readTimeout-readTimeout/4, time.Millisecond)
}

// name returns the Redis key of key with suffix: the prefix, then key in a
// hash tag. A key starting with '}' would leave the tag empty, so such keys,
// and those starting with the escape '\', get a '\' in front.
func (s *RedisStore) name(key, suffix string) string {
	esc := ""
	if key != "" && (key[0] == '}' || key[0] == '\\') {
		esc = `\`
	}
	return s.prefix + "{" + esc + key + "}" + suffix
}

// Keys returns the names of the Redis keys that a throttle of key under
// limit may write: its slots (limit up to 64) or its window (above), then
// the record of its holds. Use it to inspect or delete a throttle's state, or
// to write ACL key patterns. A throttle with WithLimitPer writes other keys:
// see KeysFor.
func (s *RedisStore) Keys(key string, limit int) []string {
	var keys []string
	if limit > maxSlots {
		keys = []string{s.name(key, windowSuffix)}
	} else {
		keys = s.slots(key, max(limit, 1))
	}
	return append(keys, s.name(key, holdSuffix))
}

// slots returns the names of the n slot keys of key.
func (s *RedisStore) slots(key string, n int) []string {
	keys := make([]string, n)
	for i := range keys {
		keys[i] = s.name(key, slotSuffix[i])
	}
	return keys
}

// Take implements Store.
func (s *RedisStore) Take(ctx context.Context, key string, req Request) (Reservation, error) {
	if s.bounded { // the hot path, without the closure of bounded
		return s.take(ctx, key, req)
	}
	return bounded(s, ctx, func(ctx context.Context) (Reservation, error) { return s.take(ctx, key, req) })
}

// Cancel implements Store.
func (s *RedisStore) Cancel(ctx context.Context, key string, req Request, res Reservation) error {
	return boundedErr(s, ctx, func(ctx context.Context) error { return s.cancel(ctx, key, req, res) })
}

// Reset deletes the Redis keys of key under req (see KeysFor), and the record of
// a hold, so the next Take is admitted. It is one command.
func (s *RedisStore) Reset(ctx context.Context, key string, req Request) error {
	return boundedErr(s, ctx, func(ctx context.Context) error {
		return retryTryAgain(ctx, func() error { return s.conn.Del(ctx, s.KeysFor(key, req)...) })
	})
}

// bounded returns f(ctx) once ctx ends at the latest. When the client's
// commands end at ctx's deadline (with the routing of s.on, which f gets
// its ctx through, so that no command of f misses it), f runs in the
// caller's goroutine. Otherwise f runs in a goroutine of its own, which the
// caller leaves when ctx ends; it ends when go-redis returns.
func bounded[T any](s *RedisStore, ctx context.Context, f func(context.Context) (T, error)) (T, error) {
	if s.bounded {
		return f(ctx)
	}
	type result struct {
		v   T
		err error
	}
	ch := make(chan result, 1) // buffered: the goroutine never blocks on a caller that left
	go func() {
		v, err := f(ctx)
		ch <- result{v, err}
	}()
	select {
	case r := <-ch:
		return r.v, r.err
	case <-ctx.Done():
		var zero T
		return zero, ctx.Err()
	}
}

// boundedErr is bounded for calls that return only an error.
func boundedErr(s *RedisStore, ctx context.Context, f func(context.Context) error) error {
	_, err := bounded(s, ctx, func(ctx context.Context) (struct{}, error) { return struct{}{}, f(ctx) })
	return err
}

func (s *RedisStore) take(ctx context.Context, key string, req Request) (Reservation, error) {
	if len(req.Windows) > 0 {
		return s.takeMulti(ctx, key, req)
	}
	if req.Limit > maxSlots {
		return s.takeWindow(ctx, key, req)
	}
	i := 0
	if req.Limit > 1 {
		i = int(s.next.Add(1) % uint32(req.Limit))
	}
	if req.MaxWait > 0 {
		return s.takeSlot(ctx, key, req, i)
	}
	// The hot path: one SET NX PX on the slot expected to be free.
	name := s.name(key, slotSuffix[i])
	ok, err := s.conn.SetNX(ctx, name, ceilMillis(req.Interval))
	if err != nil && unsettled(err) {
		err = retryTryAgain(ctx, func() error {
			ok, err = s.conn.SetNX(ctx, name, ceilMillis(req.Interval))
			return err
		})
	}
	if err != nil {
		return Reservation{}, err
	}
	if ok {
		return Reservation{OK: true}, nil
	}
	return s.takeSlot(ctx, key, req, i+1)
}

// takeSlot runs slots.lua over the slots of key, starting at slot first.
func (s *RedisStore) takeSlot(ctx context.Context, key string, req Request, first int) (Reservation, error) {
	n := req.Limit
	var mark uint64
	if req.MaxWait > 0 {
		mark = newMark()
	}
	v, err := s.run(ctx, slotsScript, s.slots(key, n),
		millis(ceilMillis(req.Interval)), millis(min(req.MaxWait, MaxInterval)), first%n,
		strconv.FormatUint(mark, 10))
	if err != nil {
		return Reservation{}, err
	}
	if len(v) != 5 || v[3] < 0 || v[3] >= int64(n) {
		return Reservation{}, fmt.Errorf("throttle: unexpected reply %v from slots script", v)
	}
	s.hint(v[0] == 1, v[3], n)
	return slotReservation(v, mark), nil
}

// newMark returns a random Booking.Mark for a booking of a slot: never 0
// or 1, which are not marks (a slot holding '1' is a start now or a
// handed-back booking).
func newMark() uint64 {
	for {
		if m := rand.Uint64(); m > 1 {
			return m
		}
	}
}

// hint makes the next call try the slot after slot when it was taken, or
// slot itself (the one that frees first) when it was not.
func (s *RedisStore) hint(taken bool, slot int64, n int) {
	h := slot + int64(n) - 1
	if taken {
		h++
	}
	s.next.Store(uint32(h))
}

// slotReservation is the Reservation of a reply {ok, delay_ms, retry_ms,
// slot, start_ms, ...} of slots.lua or leasetake.lua, whose booking (if any)
// has the mark mark: its Booking is the slot, the booked start in server
// milliseconds and the mark.
func slotReservation(v []int64, mark uint64) Reservation {
	res := Reservation{
		OK:         v[0] == 1,
		Delay:      time.Duration(v[1]) * time.Millisecond,
		RetryAfter: time.Duration(v[2]) * time.Millisecond,
	}
	if res.OK && res.Delay > 0 {
		res.Booking = Booking{At: v[3], Start: v[4], Mark: mark}
	}
	return res
}

// takeWindow decides a start of a limit above maxSlots with window.lua,
// or leased permits when req asks for them. Booking.At is the bucket a
// booking was counted in, and Booking.Mark its random mark, for Cancel.
func (s *RedisStore) takeWindow(ctx context.Context, key string, req Request) (Reservation, error) {
	keys := []string{s.name(key, windowSuffix)}
	if req.Permits > 1 && req.MaxWait <= 0 {
		v, err := s.run(ctx, windowScript, keys,
			"p", micros(req.Interval), req.Limit, req.Permits, micros(req.Validity))
		if err != nil {
			return Reservation{}, err
		}
		if len(v) != 4 || v[0] < 0 || v[0] > int64(req.Permits) {
			return Reservation{}, fmt.Errorf("throttle: unexpected reply %v from window script", v)
		}
		return Reservation{OK: v[0] > 0, Permits: int(v[0]), RetryAfter: time.Duration(v[2]) * time.Microsecond}, nil
	}
	var mark uint64
	if req.MaxWait > 0 {
		mark = rand.Uint64()
	}
	v, err := s.run(ctx, windowScript, keys,
		"t", micros(req.Interval), req.Limit, micros(min(req.MaxWait, MaxInterval)), strconv.FormatUint(mark, 10))
	if err != nil {
		return Reservation{}, err
	}
	if len(v) != 4 {
		return Reservation{}, fmt.Errorf("throttle: unexpected reply %v from window script", v)
	}
	res := Reservation{
		OK:         v[0] == 1,
		Delay:      time.Duration(v[1]) * time.Microsecond,
		RetryAfter: time.Duration(v[2]) * time.Microsecond,
	}
	if res.Delay > 0 {
		res.Booking = Booking{At: v[3], Mark: mark}
	}
	return res, nil
}

func (s *RedisStore) cancel(ctx context.Context, key string, req Request, res Reservation) error {
	if len(req.Windows) > 0 {
		return s.cancelMulti(ctx, key, req, res)
	}
	var err error
	if req.Limit > maxSlots {
		_, err = s.run(ctx, windowScript, []string{s.name(key, windowSuffix)}, "c", micros(req.Interval), req.Limit,
			strconv.FormatInt(res.Booking.At, 10), strconv.FormatUint(res.Booking.Mark, 10))
	} else {
		b := res.Booking
		if b.Mark < 2 {
			return nil // not a booking of a slot
		}
		if b.At < 0 || b.At >= int64(req.Limit) {
			return fmt.Errorf("throttle: booking of slot %d for a limit of %d", b.At, req.Limit)
		}
		_, err = s.run(ctx, unbookScript, []string{s.name(key, slotSuffix[b.At])},
			strconv.FormatUint(b.Mark, 10), strconv.FormatInt(b.Start, 10))
	}
	return err
}

// run runs script over keys and returns its reply (see RedisConn.Eval),
// running it again while a Cluster slot migration refuses it (see
// retryTryAgain).
func (s *RedisStore) run(ctx context.Context, script luaScript, keys []string, args ...any) ([]int64, error) {
	v, err := s.conn.Eval(ctx, script.hash, script.src, keys, args...)
	if err != nil && unsettled(err) {
		err = retryTryAgain(ctx, func() error {
			v, err = s.conn.Eval(ctx, script.hash, script.src, keys, args...)
			return err
		})
	}
	return v, err
}

// unsettled reports whether err is Redis Cluster refusing a command that
// it did not run while a slot migrates: TRYAGAIN, to a command on several
// keys of a migrating slot of which some have moved (until the migration
// ends), and ASK or MOVED once go-redis has used up its redirections.
func unsettled(err error) bool {
	msg := err.Error()
	return strings.HasPrefix(msg, "TRYAGAIN ") || strings.HasPrefix(msg, "ASK ") || strings.HasPrefix(msg, "MOVED ")
}

// retryTryAgain calls f until it returns nil or an error that is not
// unsettled, or ctx ends. go-redis retries and redirects a few times; this
// goes on until the decision's deadline.
func retryTryAgain(ctx context.Context, f func() error) error {
	for pause := time.Millisecond; ; pause = min(2*pause, 20*time.Millisecond) {
		err := f()
		if err == nil || !unsettled(err) {
			return err
		}
		t := time.NewTimer(pause)
		select {
		case <-ctx.Done():
			t.Stop()
			return err
		case <-t.C:
		}
	}
}

// ceilMillis rounds d up to whole milliseconds, as Redis keeps expiries.
func ceilMillis(d time.Duration) time.Duration {
	return (d + time.Millisecond - 1).Truncate(time.Millisecond)
}

func millis(d time.Duration) int64 { return int64(d / time.Millisecond) }

// micros rounds d up to whole microseconds.
func micros(d time.Duration) int64 { return int64((d + time.Microsecond - 1) / time.Microsecond) }
