package workerproc

import (
	"encoding/json"
	"fmt"
	"os"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
)

const testEnv = "WORKERPROC_TEST_WORKER"

type spec struct {
	Worker int `json:"worker"`
	Lines  int `json:"lines"`
}

type line struct {
	Worker int `json:"worker"`
	N      int `json:"n"`
	PID    int `json:"pid"`
}

func TestMain(m *testing.M) {
	if s := os.Getenv(testEnv); s != "" {
		var sp spec
		if err := json.Unmarshal([]byte(s), &sp); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		emit := Emitter()
		var wg sync.WaitGroup
		for n := range sp.Lines {
			wg.Go(func() { emit(line{Worker: sp.Worker, N: n, PID: os.Getpid()}) })
		}
		wg.Wait()
		// The test closes stdin only after it has seen every line.
		WaitStdin(time.Minute)
		fmt.Fprintf(os.Stderr, "worker %d done\n", sp.Worker)
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func TestStartCollectsLinesUntilStop(t *testing.T) {
	const workers, lines = 3, 50
	var mu sync.Mutex
	got := map[int][]int{}
	pids := map[int]bool{}
	specs := make([]any, workers)
	for i := range specs {
		specs[i] = spec{Worker: i, Lines: lines}
	}
	stop := Start(t, testEnv, specs, func(l line) {
		mu.Lock()
		defer mu.Unlock()
		got[l.Worker] = append(got[l.Worker], l.N)
		pids[l.PID] = true
	})
	deadline := time.Now().Add(30 * time.Second)
	for {
		mu.Lock()
		n := 0
		for _, ns := range got {
			n += len(ns)
		}
		mu.Unlock()
		if n == workers*lines || time.Now().After(deadline) {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	stop()
	stop() // a second call does nothing
	assert.Len(t, pids, workers, "one process per spec")
	for w := range workers {
		ns := got[w]
		sort.Ints(ns)
		want := make([]int, lines)
		for i := range want {
			want[i] = i
		}
		assert.Equal(t, want, ns, "worker %d lines", w)
	}
}

func TestLogFromManyGoroutines(t *testing.T) {
	var l Log[int]
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 100 {
				l.Add(g*100 + i)
			}
		}()
	}
	wg.Wait()
	first := l.Snapshot()
	got := append([]int(nil), first...)
	sort.Ints(got)
	want := make([]int, 400)
	for i := range want {
		want[i] = i
	}
	assert.Equal(t, want, got, "every event, once")
	was := first[0]
	first[0] = -1
	assert.Equal(t, was, l.Snapshot()[0], "a snapshot is a copy")
}
