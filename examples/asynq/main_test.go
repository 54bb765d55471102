package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"
)

// TestRun runs the example briefly on its embedded miniredis, once with
// pure re-queues and once with waits in the handler.
func TestRun(t *testing.T) {
	for _, wait := range []string{"0", "400ms"} {
		t.Run("wait "+wait, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			var out bytes.Buffer
			err := run(ctx, []string{"-tasks", "12", "-interval", "300ms", "-limit", "2", "-wait", wait, "-timeout", "50s"}, &out)
			t.Log(out.String())
			if err != nil {
				t.Fatal(err)
			}
			for _, want := range []string{"summary: 12 tasks ran", "archived 0, failed 0", "start task 11"} {
				if !strings.Contains(out.String(), want) {
					t.Errorf("output lacks %q", want)
				}
			}
		})
	}
}

func TestBadFlags(t *testing.T) {
	var out bytes.Buffer
	if err := run(context.Background(), []string{"-tasks", "0"}, &out); err == nil {
		t.Error("-tasks 0 accepted")
	}
	if err := run(context.Background(), []string{"-no-such-flag"}, &out); err == nil {
		t.Error("unknown flag accepted")
	}
}
