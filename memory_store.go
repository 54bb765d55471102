package throttle

import (
	"context"
	"sync"
	"time"
)

// MemoryStore is a Store that lives in one process: it limits only the calls
// made in this process, never across processes. Use it for tests, for a
// single process, or for a limit that is per process by design.
//
// A MemoryStore is safe for concurrent use. It starts no goroutine. Keys
// whose starts have all left their interval are removed as the store is
// used, so its memory stays proportional to the keys in use.
type MemoryStore struct {
	mu    sync.Mutex
	keys  map[string]*memKey
	epoch time.Time
	clock func() int64 // replaces the monotonic clock in tests; nil otherwise
	sw    sweeper      // drops expired keys (its period: the longest interval seen)
	marks uint64       // the last Booking.Mark given out
}

// memKey holds the starts (admitted or booked) of one key, oldest first,
// in times[head:]. Starts that left the window are dropped from the front.
type memKey struct {
	times   []int64
	head    int
	expires int64
	hold    int64 // no start before this (see Hold)
	// mark is the Booking.Mark of the newest start, times[len(times)-1],
	// while it is a booking that was not handed back; 0 otherwise.
	mark uint64
	// leases maps the token of each lease (see Leaser) to its expiry;
	// free, when not nil, is closed when a lease is released.
	leases map[string]int64
	free   chan struct{}
}

// forget drops the starts at or before cutoff (they left the window).
func (k *memKey) forget(cutoff int64) {
	for k.head < len(k.times) && k.times[k.head] <= cutoff {
		k.head++
	}
}

// compact moves the starts still held to the front of times.
func (k *memKey) compact() {
	k.times = k.times[:copy(k.times, k.times[k.head:])]
	k.head = 0
}

// NewMemoryStore returns an empty MemoryStore that uses the monotonic clock
// of this process.
func NewMemoryStore() *MemoryStore {
	return &MemoryStore{keys: make(map[string]*memKey), epoch: time.Now()}
}

// now returns the time in nanoseconds on the store's monotonic clock.
func (m *MemoryStore) now() int64 {
	if m.clock != nil {
		return m.clock()
	}
	return int64(time.Since(m.epoch))
}

func (m *MemoryStore) local() {}

// Take implements Store. It never blocks and never fails.
func (m *MemoryStore) Take(_ context.Context, key string, req Request) (Reservation, error) {
	m.mu.Lock()
	now := m.now()
	k := m.keyState(key, now, req.longest())
	slot := k.earliest(now, req)
	delay := slot - now
	if delay > 0 && delay > int64(req.MaxWait) {
		m.mu.Unlock()
		return Reservation{RetryAfter: time.Duration(delay)}, nil
	}
	res := Reservation{OK: true, Delay: time.Duration(delay)}
	res.Booking = m.record(k, slot, now, req)
	m.mu.Unlock()
	return res, nil
}

// earliest returns the earliest start at or after now that req's limit,
// and each of req.Windows, admits, after dropping the starts that left the
// longest window. Every window counts the same starts, which times holds
// in order.
func (k *memKey) earliest(now int64, req Request) int64 {
	k.forget(now - int64(req.longest()))
	n := len(k.times) - k.head
	slot := max(now, k.hold)
	if n > 0 {
		if last := k.times[len(k.times)-1]; last > slot {
			slot = last
		}
		slot = k.admits(slot, req.Limit, req.Interval)
		for _, w := range req.Windows {
			slot = k.admits(slot, w.Limit, w.Interval)
		}
	}
	return slot
}

// admits returns the earliest start at or after slot, which is at or after
// the latest start, that limit per interval admits: once the limit-th
// latest start has left the window.
func (k *memKey) admits(slot int64, limit int, interval time.Duration) int64 {
	if len(k.times)-k.head >= limit {
		slot = max(slot, k.times[len(k.times)-limit]+int64(interval))
	}
	return slot
}

// record adds to k a start at slot, which earliest admitted at now, and
// returns its Booking: At and Start are slot, and a start booked ahead
// gets a Mark of its own. m.mu is held.
func (m *MemoryStore) record(k *memKey, slot, now int64, req Request) Booking {
	if k.head > 0 && k.head >= len(k.times)/2 {
		k.compact()
	}
	k.times = append(k.times, slot)
	k.expires = max(k.expires, slot+int64(req.longest()))
	k.mark = 0
	if slot <= now {
		return Booking{}
	}
	m.marks++
	k.mark = m.marks
	return Booking{At: slot, Start: slot, Mark: k.mark}
}

// Cancel implements Store: it hands back res's booking while it is the
// newest start of key, matched by its Mark. It never fails.
func (m *MemoryStore) Cancel(_ context.Context, key string, _ Request, res Reservation) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	k := m.keys[key]
	b := res.Booking
	if k != nil && b.Mark != 0 && k.mark == b.Mark && len(k.times) > k.head && k.times[len(k.times)-1] == b.At {
		k.times = k.times[:len(k.times)-1]
		k.mark = 0
	}
	return nil
}

// Reset implements Resetter: it forgets every start and any hold of key,
// so the next Take is admitted. It never fails.
func (m *MemoryStore) Reset(_ context.Context, key string, _ Request) error {
	m.mu.Lock()
	delete(m.keys, key)
	m.mu.Unlock()
	return nil
}

// len returns the number of keys the store holds, including keys that
// expired but were not removed yet.
func (m *MemoryStore) len() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.keys)
}

// keyState returns the state of key, made empty if missing. A key whose
// starts all left the window (expires <= now) holds nothing, so a sweep may
// drop it. interval is that of the caller's request: the store sweeps at
// least once per the longest interval it has seen, as keys are added.
// m.mu is held.
func (m *MemoryStore) keyState(key string, now int64, interval time.Duration) *memKey {
	k := m.keys[key]
	if k == nil {
		m.sw.period = max(m.sw.period, int64(interval))
		if m.sw.due(len(m.keys), now) {
			m.keys = sweep(&m.sw, m.keys, now, func(k *memKey) bool { return k.expires <= now })
		}
		k = &memKey{}
		m.keys[key] = k
	}
	return k
}
