package redistest

import "testing"

func TestSlotOwner(t *testing.T) {
	nodes := `07c37dfeb235213a872192d90877d0cd55635b91 127.0.0.1:30004@31004 slave e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 0 1426238317239 4 connected
67ed2db8d677e59ec4a4cefb06858cf2a1a89fa1 127.0.0.1:30002@31002 master - 0 1426238316232 2 connected 5461-10922
292f8b365bb7edb5e285caf0b7e6ddc7265d2f4f 127.0.0.1:30003@31003 master - 0 1426238318243 3 connected 10923-16383 [10922->-67ed2db8d677e59ec4a4cefb06858cf2a1a89fa1]
e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 127.0.0.1:30001@31001 myself,master - 0 0 1 connected 0-5460 7000
`
	for _, c := range []struct {
		slot int
		want string
	}{{0, "127.0.0.1:30001"}, {5460, "127.0.0.1:30001"}, {5461, "127.0.0.1:30002"}, {10922, "127.0.0.1:30002"}, {16383, "127.0.0.1:30003"}} {
		got, err := slotOwner(nodes, c.slot)
		if err != nil || got != c.want {
			t.Errorf("slotOwner(slot %d) = %q, %v; want %q", c.slot, got, err, c.want)
		}
	}
	if got, err := slotOwner("", 1); err == nil {
		t.Errorf("slotOwner of an empty reply = %q, want an error", got)
	}
}
