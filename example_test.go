package throttle_test

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/dthrottle/throttle"
)

// This example sends a report at most once per hour. Without WithStore the
// limit holds only in this process; add
// throttle.WithStore(throttle.NewRedisStore(client)) to make every process
// that shares the Redis server share the limit.
func Example() {
	sendReport := throttle.Wrap("hourly-report", time.Hour, func() bool {
		fmt.Println("sending report")
		return true
	})

	fmt.Println("sent:", sendReport())
	fmt.Println("sent:", sendReport()) // within the hour: fn does not run
	// Output:
	// sending report
	// sent: true
	// sent: false
}

// Wrap returns T's zero value, without calling fn, when the call is
// throttled.
func ExampleWrap() {
	calls := 0
	refresh := throttle.Wrap("refresh-cache", time.Hour, func() int {
		calls++
		return calls
	})

	fmt.Println(refresh()) // runs fn
	fmt.Println(refresh()) // throttled: returns 0
	fmt.Println("fn ran", calls, "time(s)")
	// Output:
	// 1
	// 0
	// fn ran 1 time(s)
}

// WrapErr says why a call did not run: a throttled call returns an error
// matching ErrThrottled, which is a *ThrottledError with the retry-after.
func ExampleWrapErr() {
	fetchPrices := throttle.WrapErr("fetch-prices", time.Hour,
		func(ctx context.Context) (string, error) {
			return "prices", nil
		})
	ctx := context.Background()

	v, err := fetchPrices(ctx)
	fmt.Println(v, err)

	_, err = fetchPrices(ctx)
	fmt.Println(errors.Is(err, throttle.ErrThrottled))
	var te *throttle.ThrottledError
	if errors.As(err, &te) {
		fmt.Println("retry later:", te.RetryAfter > 0)
	}
	// Output:
	// prices <nil>
	// true
	// retry later: true
}

// New returns an error, where Wrap panics, when an argument is invalid.
func ExampleNew() {
	t, err := throttle.New("nightly-sync", 24*time.Hour, throttle.WithLimit(2))
	if err != nil {
		fmt.Println(err)
		return
	}
	d, _ := t.Allow(context.Background())
	fmt.Println(d.Allowed)

	_, err = throttle.New("", time.Hour)
	fmt.Println(err)
	// Output:
	// true
	// throttle: empty key
}

// Allow decides at once and never waits. A call that is not admitted is a
// Decision with Allowed false, not an error.
func ExampleThrottle_Allow() {
	t, err := throttle.New("alerts", time.Hour, throttle.WithLimit(2))
	if err != nil {
		fmt.Println(err)
		return
	}
	ctx := context.Background()

	for i := 1; i <= 3; i++ {
		d, err := t.Allow(ctx)
		if err != nil {
			fmt.Println(err) // the store failed
			return
		}
		fmt.Printf("alert %d: allowed=%t retry later=%t\n", i, d.Allowed, d.RetryAfter > 0)
	}
	// Output:
	// alert 1: allowed=true retry later=false
	// alert 2: allowed=true retry later=false
	// alert 3: allowed=false retry later=true
}

// Wait blocks until the call may start: here every poll starts at least
// 20 ms after the one before, and none is dropped.
func ExampleThrottle_Wait() {
	t, err := throttle.New("poll", 20*time.Millisecond)
	if err != nil {
		fmt.Println(err)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()

	for i := 1; i <= 3; i++ {
		if err := t.Wait(ctx); err != nil {
			fmt.Println(err) // ctx ended first
			return
		}
		fmt.Println("poll", i)
	}
	// Output:
	// poll 1
	// poll 2
	// poll 3
}

// WithLimit allows n calls per interval instead of one.
func ExampleWithLimit() {
	ran := 0
	notify := throttle.Wrap("notify", time.Hour, func() bool {
		ran++
		return true
	}, throttle.WithLimit(3))

	for range 5 {
		notify()
	}
	fmt.Println("ran", ran, "of 5 calls")
	// Output:
	// ran 3 of 5 calls
}

// Every process that runs this program with the same Redis server sends the
// report at most once per minute in total. The example needs a Redis server,
// so it is only compiled.
func ExampleNewRedisStore() {
	client := redis.NewClient(&redis.Options{
		Addr:                  "127.0.0.1:6379",
		ContextTimeoutEnabled: true, // let the throttle's timeout stop go-redis
	})
	defer client.Close()

	sendReport := throttle.Wrap("report", time.Minute, func() bool {
		fmt.Println("sending report")
		return true
	}, throttle.WithStore(throttle.NewRedisStore(client)))

	if !sendReport() {
		fmt.Println("report skipped: another process sent it, or Redis is down")
	}
}

// WrapKeyed throttles per key picked from the argument: here each
// customer's cache is refreshed at most once a minute, whatever the other
// customers do.
func ExampleWrapKeyed() {
	refresh := throttle.WrapKeyed(time.Minute,
		func(customer string) string { return "refresh:" + customer },
		func(ctx context.Context, customer string) (int, error) {
			fmt.Println("refreshing", customer)
			return 1, nil
		})

	ctx := context.Background()
	for _, customer := range []string{"acme", "globex", "acme"} {
		if _, err := refresh(ctx, customer); errors.Is(err, throttle.ErrThrottled) {
			fmt.Println("skipped", customer)
		}
	}
	// Output:
	// refreshing acme
	// refreshing globex
	// skipped acme
}

// A Keyed decides for any key under one interval and limit: here two calls
// per hour per account.
func ExampleKeyed_Allow() {
	k, err := throttle.NewKeyed(time.Hour, throttle.WithLimit(2))
	if err != nil {
		fmt.Println(err)
		return
	}
	ctx := context.Background()
	for _, account := range []string{"a", "a", "a", "b"} {
		d, err := k.Allow(ctx, account)
		if err != nil {
			fmt.Println(err) // the store failed
			return
		}
		fmt.Printf("%s: allowed=%t\n", account, d.Allowed)
	}
	// Output:
	// a: allowed=true
	// a: allowed=true
	// a: allowed=false
	// b: allowed=true
}
