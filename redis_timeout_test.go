package throttle

import (
	"context"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestRoundTimeout(t *testing.T) {
	seen := map[int]time.Duration{}
	for _, r := range []time.Duration{0, time.Microsecond, time.Millisecond, 1048576, 1048577, 250 * time.Millisecond,
		260 * time.Millisecond, time.Second, time.Minute, time.Hour, 1 << 50, 1<<62 + 5} {
		d, i := roundTimeout(r)
		want := min(max(r, minCloneTimeout), maxCloneTimeout)
		assert.GreaterOrEqual(t, d, want, "timeout for %v", r)
		assert.LessOrEqual(t, d, want+want/16, "timeout for %v", r)
		require.True(t, i >= 0 && i < timeoutSlots, "slot %d of %v", i, r)
		if old, ok := seen[i]; ok {
			assert.Equal(t, old, d, "slot %d holds one timeout", i)
		}
		seen[i] = d
	}
}

// stackHook records whether each command's hooks ran in a goroutine whose
// stack holds fn.
type stackHook struct {
	fn        string
	mu        sync.Mutex
	elsewhere int
	cmds      int
}

func (h *stackHook) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h *stackHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		buf := make([]byte, 64<<10)
		stack := string(buf[:runtime.Stack(buf, false)])
		h.mu.Lock()
		h.cmds++
		if !strings.Contains(stack, h.fn) {
			h.elsewhere++
		}
		h.mu.Unlock()
		return next(ctx, cmd)
	}
}

func (h *stackHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

// TestDefaultClientDecidesInCallersGoroutine decides with a client made
// with go-redis's default options (no ContextTimeoutEnabled) for limits 1
// (SET NX), 3 (and the slots script) and 100 (the window script): every
// command runs in the caller's goroutine, not in one per decision, and
// through the client's hooks. (TestSlowLinkBoundedByTimeout shows that
// such decisions still end with their timeout.)
func TestDefaultClientDecidesInCallersGoroutine(t *testing.T) {
	mr := miniredis.RunT(t)
	c := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	t.Cleanup(func() { _ = c.Close() })
	h := &stackHook{fn: "TestDefaultClientDecidesInCallersGoroutine"}
	c.AddHook(h)
	store := NewRedisStore(c)
	for _, limit := range []int{1, 3, 100} {
		th, err := New(fmt.Sprintf("callers/%d", limit), time.Hour, WithStore(store), WithLimit(limit), WithTimeout(100*time.Millisecond))
		require.NoError(t, err)
		for range limit + 1 {
			_, err := th.Allow(context.Background())
			require.NoError(t, err)
		}
	}
	assert.Positive(t, h.cmds, "commands seen by the hook")
	assert.True(t, NewRedisStore(c).conn.(*goRedisConn).timeouts == store.conn.(*goRedisConn).timeouts, "stores on one client share its clones")
	assert.Zero(t, h.elsewhere, "commands of %d that ran in another goroutine than the caller's", h.cmds)
}
