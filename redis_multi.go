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
// hash that keeps every window, P{k}:w:<interval in µs>:<limit>, then
// :<interval>:<limit> for each of req.Windows, then the record of its
// holds. The windows are merged as New merges those of WithLimitPer, so
// req may give them as the options do.
func (s *RedisStore) KeysFor(key string, req Request) []string {
	req.Limit, req.Windows = mergedWindows(req.Interval, req.Limit, req.Windows)
	if len(req.Windows) == 0 {
		return s.Keys(key, req.Limit)
	}
	return s.windowKeys(key, req)
}

// windowKeys returns the names of the hash of req's windows and of the
// hold record, the keys of multi.lua.
func (s *RedisStore) windowKeys(key string, req Request) []string {
	return []string{s.name(key, windowsName(req)), s.name(key, holdSuffix)}
}

// windowsName is the suffix of the hash of req's windows, its own first,
// in the order of multiArgs.
func windowsName(req Request) string {
	b := make([]byte, 0, 3+24*(1+len(req.Windows)))
	b = append(b, ":w"...)
	b = appendWindow(b, req.Interval, req.Limit)
	for _, w := range req.Windows {
		b = appendWindow(b, w.Interval, w.Limit)
	}
	return string(b)
}

func appendWindow(b []byte, interval time.Duration, limit int) []byte {
	b = append(b, ':')
	b = strconv.AppendInt(b, micros(interval), 10)
	b = append(b, ':')
	return strconv.AppendInt(b, int64(limit), 10)
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
	v, err := s.run(ctx, multiScript, s.windowKeys(key, req),
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
	_, err := s.run(ctx, multiScript, s.windowKeys(key, req), multiArgs("c", req, strconv.FormatUint(res.Booking.Mark, 10))...)
	return err
}

// holdMulti holds off every window of req for d, and records the hold.
func (s *RedisStore) holdMulti(ctx context.Context, key string, req Request, d time.Duration) error {
	_, err := s.run(ctx, multiScript, s.windowKeys(key, req), multiArgs("h", req, micros(d))...)
	return err
}
