package throttle

// sweeper keeps a map of per-key state in step with the keys in use,
// without a goroutine: the owner calls due before adding a key and sweep
// when it is due. A sweep removes the entries that hold nothing any more.
// It is due when the map has doubled since the last sweep (so sweeping costs
// O(1) per new key), or when period has passed since the last sweep (so
// keys that went idle are dropped even when few new keys come). Go maps
// keep their size after deletes, so a map that shrank to under a quarter
// of its peak is copied into a new one.
type sweeper struct {
	at     int   // sweep when the map holds this many entries
	peak   int   // the most entries since the map was made
	next   int64 // sweep when now reaches this
	period int64 // time between sweeps when the map does not grow
}

// minSweep is the map size below which no sweep is due.
const minSweep = 64

// due reports whether the map, holding n entries, is to be swept at now.
func (s *sweeper) due(n int, now int64) bool {
	s.peak = max(s.peak, n)
	return n >= max(s.at, minSweep) || (n >= minSweep && now >= s.next)
}

// sweep deletes the entries of m for which dead reports true, and returns
// m or, when it shrank well below its peak, a smaller copy of it.
func sweep[V any](s *sweeper, m map[string]V, now int64, dead func(V) bool) map[string]V {
	for key, v := range m {
		if dead(v) {
			delete(m, key)
		}
	}
	s.at = max(2*len(m), minSweep)
	s.next = now + s.period
	if len(m) < s.peak/4 {
		fresh := make(map[string]V, len(m))
		for key, v := range m {
			fresh[key] = v
		}
		m = fresh
		s.peak = len(m)
	}
	return m
}
