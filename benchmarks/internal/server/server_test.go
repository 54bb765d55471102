package server

import (
	"context"
	"os"
	"syscall"
	"testing"
)

func TestStartStop(t *testing.T) {
	s := Start(t)
	c := s.Client(t)
	if err := c.Set(context.Background(), "k", "v", 0).Err(); err != nil {
		t.Fatal(err)
	}
	s.Stop()
	s.Stop() // idempotent
	p, err := os.FindProcess(s.PID)
	if err == nil && p.Signal(syscall.Signal(0)) == nil {
		t.Fatalf("redis-server %d still running after Stop", s.PID)
	}
}
