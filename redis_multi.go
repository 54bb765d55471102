package throttle

import (
	"context"
	_ "embed"
	"fmt"
	"math/rand/v2"
	"strconv"
	"time"
)

var (
	//go:embed scripts/multi.lua
	multiSource string

	multiScript = newScript(bucketSource + windowsFunction + "return windows(KEYS, ARGV)\n")
)

// windowsFunction is multi.lua as the body of windows(KEYS, ARGV, gate),
// so that a script can decide the windows over its own keys and arguments
// and put one more limit (gate) in the same step (see leasewindows.lua).
var windowsFunction = "local function windows(KEYS, ARGV, gate)\n" + multiSource + "\nend\n"

// KeysFor returns the names of the Redis keys that a throttle of key under
// req may write, as Keys does; with req.Windows (WithLimitPer) they are the
// bucket window of each window, P{k}:w:<interval in µs>:<limit>, then the
// record of its holds. The windows are merged as New merges those of
// WithLimitPer, so req may give them as the options do.
func (s *RedisStore) KeysFor(key string, req Request) []string {
	req.Limit, req.Windows = mergedWindows(req.Interval, req.Limit, req.Windows)
	if len(req.Windows) == 0 {
		return s.Keys(key, req.Limit)
	}
	return append(s.windowKeys(key, req), s.name(key, holdSuffix))
}

// windowKeys returns the names of the bucket windows of req's windows, its
// own first, in the order of multiArgs, with room for the hold record that
// the callers append.
func (s *RedisStore) windowKeys(key string, req Request) []string {
	keys := make([]string, 0, 2+len(req.Windows))
	keys = append(keys, s.name(key, windowName(req.Interval, req.Limit)))
	for _, w := range req.Windows {
		keys = append(keys, s.name(key, windowName(w.Interval, w.Limit)))
	}
	return keys
}

// windowName is the suffix of the bucket window of limit per interval.
func windowName(interval time.Duration, limit int) string {
	return ":w:" + strconv.FormatInt(micros(interval), 10) + ":" + strconv.Itoa(limit)
}

// multiArgs returns the arguments of multi.lua for op over req's windows,
// then rest.
func multiArgs(op string, req Request, rest ...any) []any {
	args := make([]any, 0, 2+2*(1+len(req.Windows))+len(rest))
	args = append(args, op, 1+len(req.Windows), micros(req.Interval), req.Limit)
	for _, w := range req.Windows {
		args = append(args, micros(w.Interval), w.Limit)
	}
	return append(args, rest...)
}

// takeMulti decides a start under every window of req with multi.lua.
// Booking.Mark is a booking's random mark, which names it for Cancel in
// every window (At and Start are not used).
func (s *RedisStore) takeMulti(ctx context.Context, key string, req Request) (Reservation, error) {
	var mark uint64
	if req.MaxWait > 0 {
		mark = rand.Uint64() | 1 // never 0, which names no booking
	}
	keys := append(s.windowKeys(key, req), s.name(key, holdSuffix))
	v, err := s.run(ctx, multiScript, keys,
		multiArgs("t", req, micros(min(req.MaxWait, MaxInterval)), strconv.FormatUint(mark, 10))...)
	if err != nil {
		return Reservation{}, err
	}
	if len(v) != 3 || v[1] < 0 || v[2] < 0 {
		return Reservation{}, fmt.Errorf("throttle: unexpected reply %v from windows script", v)
	}
	res := Reservation{
		OK:         v[0] == 1,
		Delay:      time.Duration(v[1]) * time.Microsecond,
		RetryAfter: time.Duration(v[2]) * time.Microsecond,
	}
	if res.Delay > 0 {
		res.Booking = Booking{Mark: mark}
	}
	return res, nil
}

// cancelMulti hands back the booking of res in every window of req where it
// is still the newest.
func (s *RedisStore) cancelMulti(ctx context.Context, key string, req Request, res Reservation) error {
	if res.Booking.Mark == 0 {
		return nil // not a booking of takeMulti
	}
	keys := append(s.windowKeys(key, req), s.name(key, holdSuffix))
	_, err := s.run(ctx, multiScript, keys, multiArgs("c", req, strconv.FormatUint(res.Booking.Mark, 10))...)
	return err
}

// holdMulti holds off every window of req for d, and records the hold.
func (s *RedisStore) holdMulti(ctx context.Context, key string, req Request, d time.Duration) error {
	keys := append(s.windowKeys(key, req), s.name(key, holdSuffix))
	_, err := s.run(ctx, multiScript, keys, multiArgs("h", req, micros(d))...)
	return err
}
