package throttletest

import (
	"context"
	"time"

	"github.com/dthrottle/throttle"
)

var _ throttle.Leaser = (*Store)(nil)

// TakeLease implements throttle.Leaser, for throttles with
// throttle.WithConcurrency: it calls the RedisStore on the miniredis server,
// on the fake clock, and records an admitted start for Admitted when the
// throttle has a rate. Fail, SetLatency and SetAutoAdvance apply to it as
// to Take. A lease expires on the fake clock: only Advance ends it.
func (s *Store) TakeLease(ctx context.Context, key string, req throttle.Request, token string) (throttle.Reservation, error) {
	if err := s.enter(ctx); err != nil {
		return throttle.Reservation{}, err
	}
	defer s.mu.Unlock()
	res, err := s.redis.TakeLease(context.WithoutCancel(ctx), key, req, token)
	if err != nil || !res.OK {
		return res, err
	}
	if req.Interval > 0 {
		s.admitted[key] = append(s.admitted[key], admission{at: s.now.Add(res.Delay), booking: res.Booking})
	}
	if s.auto && res.Delay > 0 {
		s.advance(res.Delay)
		res.Delay = 0
	}
	return res, nil
}

// RenewLease implements throttle.Leaser on the fake clock. Fail and
// SetLatency apply to it.
func (s *Store) RenewLease(ctx context.Context, key string, req throttle.Request, token string) (bool, error) {
	if err := s.enter(ctx); err != nil {
		return false, err
	}
	defer s.mu.Unlock()
	return s.redis.RenewLease(context.WithoutCancel(ctx), key, req, token)
}

// ReleaseLease implements throttle.Leaser. Fail and SetLatency apply to it.
func (s *Store) ReleaseLease(ctx context.Context, key string, req throttle.Request, token string) error {
	if err := s.enter(ctx); err != nil {
		return err
	}
	defer s.mu.Unlock()
	return s.redis.ReleaseLease(context.WithoutCancel(ctx), key, req, token)
}

// AwaitLease implements throttle.Leaser: it blocks, without holding the
// store, until a release wakes it, d passes in real time, or ctx ends.
// Fail and SetLatency apply to it.
func (s *Store) AwaitLease(ctx context.Context, key string, req throttle.Request, d time.Duration) error {
	if err := s.enter(ctx); err != nil {
		return err
	}
	s.mu.Unlock()
	return s.redis.AwaitLease(ctx, key, req, d)
}
