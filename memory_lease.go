package throttle

import (
	"context"
	"time"
)

var _ Leaser = (*MemoryStore)(nil)

// TakeLease implements Leaser in this process, on the store's clock. It
// never blocks and never fails.
func (m *MemoryStore) TakeLease(_ context.Context, key string, req Request, token string) (Reservation, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.now()
	k := m.keyState(key, now, req.longest())
	slot := now
	if req.Interval > 0 {
		slot = k.earliest(now, req)
		if delay := slot - now; delay > 0 && delay > int64(req.MaxWait) {
			return Reservation{RetryAfter: time.Duration(delay)}, nil
		}
	}
	if n, first := k.liveLeases(now); n >= req.Concurrency {
		return Reservation{Full: true, RetryAfter: time.Duration(first - now)}, nil
	}
	var b Booking
	if req.Interval > 0 {
		b = m.record(k, slot, now, req)
	}
	if k.leases == nil {
		k.leases = make(map[string]int64)
	}
	end := slot + int64(req.LeaseTTL)
	k.leases[token] = end
	k.expires = max(k.expires, end)
	return Reservation{OK: true, Delay: time.Duration(slot - now), Booking: b}, nil
}

// liveLeases drops the expired leases of k and returns the number left and
// the earliest expiry among them.
func (k *memKey) liveLeases(now int64) (n int, first int64) {
	for token, end := range k.leases {
		if end <= now {
			delete(k.leases, token)
			continue
		}
		if n == 0 || end < first {
			first = end
		}
		n++
	}
	return n, first
}

// RenewLease implements Leaser. It never fails.
func (m *MemoryStore) RenewLease(_ context.Context, key string, req Request, token string) (bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.now()
	k := m.keys[key]
	if k == nil {
		return false, nil
	}
	end, ok := k.leases[token]
	if !ok || end <= now {
		delete(k.leases, token)
		return false, nil
	}
	end = max(end, now+int64(req.LeaseTTL))
	k.leases[token] = end
	k.expires = max(k.expires, end)
	return true, nil
}

// ReleaseLease implements Leaser: it wakes every AwaitLease of key. It
// never fails.
func (m *MemoryStore) ReleaseLease(_ context.Context, key string, _ Request, token string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	k := m.keys[key]
	if k == nil {
		return nil
	}
	if _, ok := k.leases[token]; ok {
		delete(k.leases, token)
		if k.free != nil {
			close(k.free)
			k.free = nil
		}
	}
	return nil
}

// AwaitLease implements Leaser. It returns at once when a lease of key is
// free; otherwise it waits for a release, d on this process's clock, or
// the end of ctx. It never fails.
func (m *MemoryStore) AwaitLease(ctx context.Context, key string, req Request, d time.Duration) error {
	m.mu.Lock()
	now := m.now()
	k := m.keyState(key, now, req.Interval)
	if n, _ := k.liveLeases(now); n < req.Concurrency {
		m.mu.Unlock()
		return nil
	}
	if k.free == nil {
		k.free = make(chan struct{})
	}
	free := k.free
	m.mu.Unlock()
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-free:
	case <-timer.C:
	case <-ctx.Done():
	}
	return nil
}
