package redistest

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// migrateTimeout bounds MigrateSlot's loop over the keys of the slot.
const migrateTimeout = 20 * time.Second

// KeySlot returns the hash slot of key (CLUSTER KEYSLOT).
func (c *Cluster) KeySlot(key string) (int, error) {
	v, err := c.Nodes[0].Do("CLUSTER", "KEYSLOT", key)
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(fmt.Sprint(v))
}

// SlotOwner returns the master that serves slot, as the first node that
// answers sees it (CLUSTER NODES).
func (c *Cluster) SlotOwner(slot int) (*Server, error) {
	var lastErr error
	for _, n := range c.Nodes {
		v, err := n.Do("CLUSTER", "NODES")
		if err != nil {
			lastErr = err
			continue
		}
		addr, err := slotOwner(fmt.Sprint(v), slot)
		if err != nil {
			return nil, err
		}
		for _, s := range c.Nodes {
			if s.Addr == addr {
				return s, nil
			}
		}
		return nil, fmt.Errorf("slot %d is served by %s, which is not a node of this cluster", slot, addr)
	}
	return nil, lastErr
}

// slotOwner finds the address of the master serving slot in a CLUSTER NODES
// reply: "<id> <ip:port@bus> <flags> <master> <ping> <pong> <epoch> <link>
// <slot> <slot> ...", where a slot is "n", "lo-hi" or a "[...]" migration.
func slotOwner(nodes string, slot int) (string, error) {
	for _, line := range strings.Split(strings.TrimSpace(nodes), "\n") {
		f := strings.Fields(line)
		if len(f) < 8 || !strings.Contains(f[2], "master") {
			continue
		}
		addr, _, _ := strings.Cut(f[1], "@")
		for _, r := range f[8:] {
			if strings.HasPrefix(r, "[") {
				continue
			}
			lo, hi, found := strings.Cut(r, "-")
			if !found {
				hi = lo
			}
			l, err1 := strconv.Atoi(lo)
			h, err2 := strconv.Atoi(hi)
			if err1 == nil && err2 == nil && l <= slot && slot <= h {
				return addr, nil
			}
		}
	}
	return "", fmt.Errorf("no master serves slot %d", slot)
}

// MigrateSlot moves slot from the master that serves it to dst by hand, as
// `redis-cli --cluster reshard` does: CLUSTER SETSLOT IMPORTING on dst and
// MIGRATING on the source, then MIGRATE of every key left in the slot, one
// key at a time, then CLUSTER SETSLOT NODE on every master. Between the
// steps it sleeps pause, so that clients using the slot meanwhile get ASK
// redirections (while keys move) and then MOVED ones (once the slot has
// moved). It returns how many keys it moved.
func (c *Cluster) MigrateSlot(slot int, dst *Server, pause time.Duration) (int, error) {
	src, err := c.SlotOwner(slot)
	if err != nil {
		return 0, err
	}
	if src == dst {
		return 0, fmt.Errorf("slot %d is already served by %s", slot, dst.Addr)
	}
	srcID, err := nodeID(src)
	if err != nil {
		return 0, err
	}
	dstID, err := nodeID(dst)
	if err != nil {
		return 0, err
	}
	s := strconv.Itoa(slot)
	if _, err := dst.Do("CLUSTER", "SETSLOT", s, "IMPORTING", srcID); err != nil {
		return 0, fmt.Errorf("SETSLOT IMPORTING on %s: %w", dst.Addr, err)
	}
	if _, err := src.Do("CLUSTER", "SETSLOT", s, "MIGRATING", dstID); err != nil {
		return 0, fmt.Errorf("SETSLOT MIGRATING on %s: %w", src.Addr, err)
	}
	time.Sleep(pause)

	moved := 0
	deadline := time.Now().Add(migrateTimeout)
	for {
		v, err := src.Do("CLUSTER", "GETKEYSINSLOT", s, "10")
		if err != nil {
			return moved, fmt.Errorf("GETKEYSINSLOT on %s: %w", src.Addr, err)
		}
		keys, _ := v.([]any)
		if len(keys) == 0 {
			break
		}
		if time.Now().After(deadline) {
			return moved, fmt.Errorf("slot %d still has keys on %s after %v", slot, src.Addr, migrateTimeout)
		}
		for _, k := range keys {
			// NOKEY: the key expired meanwhile, which is fine.
			if _, err := src.Do("MIGRATE", "127.0.0.1", strconv.Itoa(dst.Port), "", "0", "5000", "KEYS", fmt.Sprint(k)); err != nil {
				return moved, fmt.Errorf("MIGRATE %q from %s to %s: %w", k, src.Addr, dst.Addr, err)
			}
			moved++
			time.Sleep(pause / 10)
		}
	}

	// The importing node first, as redis-cli does, so that the slot is
	// never left without an owner that accepts its keys.
	var errs []error
	order := []*Server{dst, src}
	for _, n := range c.Nodes {
		if n != dst && n != src {
			order = append(order, n)
		}
	}
	for _, n := range order {
		if _, err := n.Do("CLUSTER", "SETSLOT", s, "NODE", dstID); err != nil {
			errs = append(errs, fmt.Errorf("SETSLOT NODE on %s: %w", n.Addr, err))
		}
	}
	return moved, errors.Join(errs...)
}

func nodeID(s *Server) (string, error) {
	v, err := s.Do("CLUSTER", "MYID")
	if err != nil {
		return "", fmt.Errorf("CLUSTER MYID on %s: %w", s.Addr, err)
	}
	return fmt.Sprint(v), nil
}
