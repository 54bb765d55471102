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
	//go:embed scripts/leasewindows.lua
	leaseWindowsSource string

	leaseWindowsScript = newScript(leaseSetSource + bucketSource + windowsFunction + leaseWindowsSource)
)

// takeLeaseWindows takes a lease of key and a start under every window of
// req (WithConcurrency with WithLimitPer) with leasewindows.lua: the lease
// keys, then the bucket windows and the hold record of takeMulti, in one
// script. Booking.Mark names a booking for cancelMulti, as takeMulti's do.
func (s *RedisStore) takeLeaseWindows(ctx context.Context, key string, req Request, token string) (Reservation, error) {
	var mark uint64
	if req.MaxWait > 0 {
		mark = rand.Uint64() | 1 // never 0, which names no booking
	}
	keys := append(s.LeaseKeys(key), s.windowKeys(key, req)...)
	v, err := s.run(ctx, leaseWindowsScript, keys,
		multiArgs("t", req, micros(min(req.MaxWait, MaxInterval)), strconv.FormatUint(mark, 10),
			token, req.Concurrency, millis(ceilMillis(req.LeaseTTL)))...)
	if err != nil {
		return Reservation{}, err
	}
	if (len(v) != 3 && len(v) != 4) || v[1] < 0 || v[2] < 0 {
		return Reservation{}, fmt.Errorf("throttle: unexpected reply %v from lease windows script", v)
	}
	res := Reservation{
		OK:         v[0] == 1,
		Delay:      time.Duration(v[1]) * time.Microsecond,
		RetryAfter: time.Duration(v[2]) * time.Microsecond,
		Full:       len(v) == 4 && v[3] == 1,
	}
	if res.OK && res.Delay > 0 {
		res.Booking = Booking{Mark: mark}
	}
	return res, nil
}
