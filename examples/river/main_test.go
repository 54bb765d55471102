package main

import (
	"bytes"
	"context"
	"os"
	"strings"
	"testing"
	"time"
)

// requirePostgres skips the test when no PostgreSQL answers at the
// default URL, or fails it under THROTTLE_REQUIRE_POSTGRES=1 (CI).
func requirePostgres(t *testing.T) {
	t.Helper()
	pool, err := connect(context.Background(), defaultPostgres)
	if err != nil {
		if os.Getenv("THROTTLE_REQUIRE_POSTGRES") == "1" {
			t.Fatal(err)
		}
		t.Skip(err)
	}
	pool.Close()
}

// TestRun runs the example briefly, once with snoozes only and once with
// waits in the middleware.
func TestRun(t *testing.T) {
	requirePostgres(t)
	for _, wait := range []string{"0", "400ms"} {
		t.Run("wait "+wait, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			var out bytes.Buffer
			err := run(ctx, []string{"-jobs", "12", "-interval", "300ms", "-limit", "2", "-wait", wait, "-jitter", "100ms", "-timeout", "50s"}, &out)
			t.Log(out.String())
			if err != nil {
				t.Fatal(err)
			}
			for _, want := range []string{"summary: 12 jobs ran", "attempts at most 1; discarded or other 0", "start job 11"} {
				if !strings.Contains(out.String(), want) {
					t.Errorf("output lacks %q", want)
				}
			}
		})
	}
}

// TestNoPostgres: an unreachable server is a clear error.
func TestNoPostgres(t *testing.T) {
	var out bytes.Buffer
	err := run(context.Background(), []string{"-postgres", "postgres://nobody:secret@127.0.0.1:1/none?connect_timeout=2"}, &out)
	if err == nil {
		t.Fatal("run with no PostgreSQL succeeded")
	}
	for _, want := range []string{"needs a PostgreSQL server", "127.0.0.1:1", "-postgres URL"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}
	if strings.Contains(err.Error(), "secret") {
		t.Errorf("error %q shows the password", err)
	}
}

func TestBadFlags(t *testing.T) {
	var out bytes.Buffer
	if err := run(context.Background(), []string{"-jobs", "0"}, &out); err == nil {
		t.Error("-jobs 0 accepted")
	}
	if err := run(context.Background(), []string{"-no-such-flag"}, &out); err == nil {
		t.Error("unknown flag accepted")
	}
}
