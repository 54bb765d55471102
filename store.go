package throttle

import (
	"context"
	"time"
)

// A Store keeps the start times of one or more throttles and decides, for
// every process that shares it, whether a start is admitted. RedisStore
// (shared by every process using the same Redis) and MemoryStore (one
// process) implement it; most users never call its methods directly.
//
// The contract, which every implementation must keep and which this
// package's tests check on both stores:
//
//   - Take is atomic per key: whatever the number of concurrent callers and
//     processes, the starts it admits (now or booked for later) never number
//     more than req.Limit in any half-open window of length req.Interval,
//     judged by the store's own clock.
//   - Take admits at once (Delay 0) when that is allowed. Otherwise, when
//     req.MaxWait > 0, it books the earliest start that keeps the limit, if
//     that start is at most req.MaxWait away, and reports the delay until it.
//     Otherwise it reports the denial with RetryAfter, the delay until the
//     earliest start it could admit if nobody else took it.
//   - A denied Take changes nothing.
//   - Cancel hands back a booking (Reservation with Delay > 0) that its
//     caller will not use, when that moves no other start: at least when it
//     is the latest booking of the key and no other was handed back since
//     it was made. It is a no-op otherwise (which costs only capacity),
//     and it never hands back another booking than res's: a Cancel run
//     twice (a retried script), late, or after a Reset changes nothing.
//   - Every key a store writes expires on its own once its starts are older
//     than the interval, so an idle throttle leaves nothing behind.
//
// With Request.Windows (WithLimitPer) each of the rules above holds for
// every window, and a start is admitted or booked only where every window
// admits it. Only a WindowStore is given windows (see WindowStore): a Store
// written before them would ignore Request.Windows and admit too many, so
// New and NewKeyed refuse WithLimitPer on it rather than pass them.
//
// Callers sharing a key must use the same interval, limit and windows.
type Store interface {
	// Take asks for one start of key under req. A denial is not an error.
	Take(ctx context.Context, key string, req Request) (Reservation, error)
	// Cancel hands back the booking res, made by Take with the same key
	// and req, whose caller gave up before its start.
	Cancel(ctx context.Context, key string, req Request, res Reservation) error
}

// Request is what a Take asks for.
type Request struct {
	// Interval is the length of the sliding window, at least 1 ms.
	Interval time.Duration
	// Limit is the number of starts allowed in any window, at least 1.
	Limit int
	// MaxWait is how far ahead Take may book a start; 0 means only now.
	MaxWait time.Duration
	// Concurrency is, for a Leaser's methods, the number of leases of the
	// key (WithConcurrency). Take and the other Store methods ignore it.
	Concurrency int
	// LeaseTTL is, for a Leaser's methods, how long a lease lasts after
	// it is taken or renewed.
	LeaseTTL time.Duration
	// Permits, when above 1 (and MaxWait is 0), asks Take for up to that
	// many starts at once, leased permits that the caller spends locally,
	// each at most once, within Validity of sending the request. A store
	// that grants them counts each as a start that may happen at any time
	// in that span, and says how many it granted in Reservation.Permits;
	// a store that ignores these fields decides one start now, as usual.
	Permits int
	// Validity is how long after the request leased permits may be spent.
	Validity time.Duration
	// Windows are the throttle's windows besides Interval and Limit
	// (WithLimitPer), each of another length, shortest first. Only a
	// WindowStore is given any: a Store that is not one, written before
	// windows existed, would ignore them (see WindowStore).
	Windows []Window
}

// A Clock tells the time. A Store that is also a Clock says that it keeps
// time by Now rather than by this process's clock, as throttletest.Store
// does with its fake clock: a Throttle or Keyed on such a store runs its
// deny cache on Now, so that moving the store's clock moves the cache with
// it. Now must never go backwards.
type Clock interface {
	Now() time.Time
}

// Reservation is a store's answer to Take.
type Reservation struct {
	// OK reports whether a start was admitted (now, or booked Delay ahead).
	OK bool
	// Delay is, when OK, how long after the decision the booked start is;
	// 0 means start now.
	Delay time.Duration
	// RetryAfter is, when not OK, how long after the decision the store
	// will go on denying every start: the earliest time it may admit the
	// next one. It must not be later than that (the deny cache of a
	// Throttle denies for that long without asking), and may be 0 when the
	// store cannot tell, or when the next start is less than the store's
	// resolution away (RedisStore: 1 ms for a limit of 1).
	RetryAfter time.Duration
	// Booking names, when Delay > 0, the start that the store booked ahead,
	// for Cancel. Its meaning is the store's.
	Booking Booking
	// Permits is, for a Take with Request.Permits above 1, the number of
	// leased permits granted (OK is then true). 0 means an ordinary
	// decision: one start, now or booked, as OK and Delay say.
	Permits int
	// Full reports, for a denial by a Leaser's TakeLease, that every lease
	// was held while the rate would have admitted the call. RetryAfter is
	// then the time until the earliest lease expires unless renewed: an
	// upper bound for a lease whose holder died, not a lower one, since a
	// release can free a lease at any moment. The throttle never caches it.
	Full bool
}

// A Booking names one start that a Store booked ahead, for Cancel: where the
// store counted it and a mark that no other booking of the key shares, so
// that a Cancel that runs twice (a retried script), late, or after a Reset
// never hands back another caller's booking. Its meaning is the store's.
type Booking struct {
	// At is where the store counted the start: RedisStore's slot (limits up
	// to 64) or time bucket (above); MemoryStore's start time.
	At int64
	// Start is the booked start on the store's clock (RedisStore: server ms).
	Start int64
	// Mark is unique among the key's bookings (RedisStore: random, chosen by
	// the caller of the script and matched as a string, never as a Lua number).
	Mark uint64
}

// A Resetter is a Store that can forget a key, as Throttle.Reset and
// Keyed.Reset need. RedisStore and MemoryStore are Resetters; a Store that
// wraps one must implement Resetter too, or Reset returns an error.
type Resetter interface {
	// Reset forgets every start and hold of key under req's interval and
	// limit, so that the next Take is admitted.
	Reset(ctx context.Context, key string, req Request) error
}

// A Holder is a Store that can hold off a key, as Throttle.Hold and
// Keyed.Hold need (and the HTTP transport, after a 429). RedisStore and
// MemoryStore are Holders; a Store that wraps one must implement Holder
// too, or Hold returns an error.
type Holder interface {
	// Hold makes the store admit no start of key, under req's interval
	// and limit, until d after the store's decision. It never shortens
	// anything: starts, bookings and longer holds keep their effect.
	Hold(ctx context.Context, key string, req Request, d time.Duration) error
	// Held returns how long the latest hold of key still lasts, or 0.
	Held(ctx context.Context, key string) (time.Duration, error)
}

// A Leaser is a Store that also keeps concurrency leases, as WithConcurrency
// needs: at most req.Concurrency leases of a key are held at any instant, on
// the store's clock, across every process that shares the store. RedisStore,
// MemoryStore and throttletest.Store are Leasers.
//
// A lease is named by a token that its taker chooses (random, unique). It
// expires req.LeaseTTL after it is taken or last renewed, counted from the
// store's decision and never less, so a holder that dies frees it then,
// never before; and a holder that counts the TTL from before it sent the
// call never believes it holds a lease that the store has let go.
type Leaser interface {
	Store
	// TakeLease asks, in one atomic step, for one start of key under req's
	// rate (none when req.Interval is 0; booked up to req.MaxWait ahead, as
	// Take does) and one lease named token, held from now until the start
	// plus req.LeaseTTL. It takes both or nothing. A denial by the rate is
	// a Reservation as Take returns; a denial by the cap has Full set.
	TakeLease(ctx context.Context, key string, req Request, token string) (Reservation, error)
	// RenewLease makes the lease token last req.LeaseTTL from now, and
	// never shortens it. It reports false when the lease is gone: expired,
	// released, or deleted.
	RenewLease(ctx context.Context, key string, req Request, token string) (bool, error)
	// ReleaseLease ends the lease token, if it is still held, and wakes an
	// AwaitLease of key. A lease that is gone is not an error.
	ReleaseLease(ctx context.Context, key string, req Request, token string) error
	// AwaitLease blocks until a lease of key may have been released since
	// the last TakeLease (with req.MaxWait > 0: a waiter) that found them
	// all held, d has passed, or ctx ends; it returns nil in each case, and
	// an error only when the store failed. A wake-up is a hint: the next
	// TakeLease decides.
	AwaitLease(ctx context.Context, key string, req Request, d time.Duration) error
}

// localStore is implemented by stores that never block, whose decisions
// therefore need no timeout.
type localStore interface {
	local()
}
