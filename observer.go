package throttle

import "time"

// An EventKind says what an Event reports. An observer that counts
// decisions should count only EventDecision: more kinds may be added.
type EventKind uint8

const (
	// EventDecision is one decision, by the store or the deny cache, of
	// Allow, Wait, Acquire or a wrapped function. A start that the store
	// booked ahead (WithWait) is a decision with Allowed and a Delay; an
	// EventWaited follows when its wait ends.
	EventDecision EventKind = iota
	// EventWaited ends the wait of a call whose decision booked a start
	// ahead. Allowed reports whether the call reached its start; it is
	// false when the call's context ended first (Err is then ctx's error)
	// or left too little time for the delay, and the booking was handed
	// back. Delay is how long the call waited.
	EventWaited
	// EventHold is one Hold that reached the store: RetryAfter is its
	// length, Err the store's failure or ctx's error, if any, and Latency
	// the store's round trip.
	EventHold
	// EventLeaseTaken reports that this process holds a new Lease
	// (WithConcurrency), from the store or, while the store fails, from
	// WithFallback's local cap or WithFailOpen.
	EventLeaseTaken
	// EventLeaseReleased reports that a Lease taken with EventLeaseTaken
	// was released; Held is how long it was held. A lease that was lost
	// is reported when it is released.
	EventLeaseReleased
)

// String returns the kind's name, such as "decision".
func (k EventKind) String() string {
	switch k {
	case EventDecision:
		return "decision"
	case EventWaited:
		return "waited"
	case EventHold:
		return "hold"
	case EventLeaseTaken:
		return "lease taken"
	case EventLeaseReleased:
		return "lease released"
	}
	return "unknown"
}

// waited reports to the observer, if any, the end of a wait that began at
// since.
func (c *core) waited(key string, since time.Time, ok bool, err error) {
	if c.cfg.observer != nil {
		c.cfg.observer(Event{Kind: EventWaited, Key: key, Allowed: ok, Delay: time.Since(since), Err: err})
	}
}
