package throttletest_test

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/dthrottle/throttle"
	"github.com/dthrottle/throttle/throttletest"
)

// PriceClient calls a prices API that allows one request per minute, for
// all the workers that use it together.
type PriceClient struct {
	requests int
	fetch    func(context.Context) (string, error)
}

// NewPriceClient returns a PriceClient whose throttle uses opts. In
// production, opts holds throttle.WithStore(throttle.NewRedisStore(rdb)).
func NewPriceClient(opts ...throttle.Option) *PriceClient {
	c := &PriceClient{}
	c.fetch = throttle.WrapErr("prices-api", time.Minute, c.request, opts...)
	return c
}

func (c *PriceClient) request(ctx context.Context) (string, error) {
	c.requests++ // the real client sends an HTTP request here
	return fmt.Sprintf("prices #%d", c.requests), nil
}

// Prices returns the latest prices. It returns an error that matches
// throttle.ErrThrottled if another call sent a request within the last
// minute.
func (c *PriceClient) Prices(ctx context.Context) (string, error) {
	return c.fetch(ctx)
}

// This example tests PriceClient through a one-minute interval. It takes
// milliseconds of real time. In a test, write s := throttletest.New(t)
// instead of calling Run and Close.
func Example() {
	s, err := throttletest.Run()
	if err != nil {
		fmt.Println(err)
		return
	}
	defer s.Close()
	start := s.Now()
	c := NewPriceClient(s.Options()...)
	ctx := context.Background()

	fmt.Println(c.Prices(ctx)) // runs

	_, err = c.Prices(ctx) // throttled
	var te *throttle.ThrottledError
	if errors.As(err, &te) {
		fmt.Println("throttled, retry after", te.RetryAfter)
	}

	s.Advance(time.Minute)
	fmt.Println(c.Prices(ctx)) // runs again

	for _, t := range s.Admitted("prices-api") {
		fmt.Println("request at", t.Sub(start))
	}
	// Output:
	// prices #1 <nil>
	// throttled, retry after 1m0s
	// prices #2 <nil>
	// request at 0s
	// request at 1m0s
}

// Fail makes the store fail. By default the throttle fails closed: the call
// does not run, and the error matches throttle.ErrStoreUnavailable. With
// throttle.WithFailOpen, the call runs.
func ExampleStore_Fail() {
	s, err := throttletest.Run()
	if err != nil {
		fmt.Println(err)
		return
	}
	defer s.Close()
	ctx := context.Background()
	closed := NewPriceClient(s.Options()...)
	open := NewPriceClient(append(s.Options(), throttle.WithFailOpen())...)

	s.Fail(errors.New("connection refused"))
	_, err = closed.Prices(ctx)
	fmt.Println(errors.Is(err, throttle.ErrStoreUnavailable), err)
	fmt.Println(open.Prices(ctx))

	s.Fail(nil)
	fmt.Println(closed.Prices(ctx))
	// Output:
	// true throttle: store unavailable for "prices-api": connection refused
	// prices #1 <nil>
	// prices #1 <nil>
}

// SetLatency makes the store slow, in real time. A decision that takes
// longer than the throttle's timeout is a store failure.
func ExampleStore_SetLatency() {
	s, err := throttletest.Run()
	if err != nil {
		fmt.Println(err)
		return
	}
	defer s.Close()
	c := NewPriceClient(append(s.Options(), throttle.WithTimeout(50*time.Millisecond))...)

	s.SetLatency(time.Second)
	_, err = c.Prices(context.Background()) // returns after 50ms
	fmt.Println(errors.Is(err, throttle.ErrStoreUnavailable))
	fmt.Println(errors.Is(err, context.DeadlineExceeded))
	// Output:
	// true
	// true
}

// With auto-advance, calls that wait for their turn (throttle.WithWait) run
// at once, and the fake clock moves to each booked start. A booked start
// comes 1 ms after the previous start's interval, as on Redis.
func ExampleStore_SetAutoAdvance() {
	s, err := throttletest.Run()
	if err != nil {
		fmt.Println(err)
		return
	}
	defer s.Close()
	s.SetAutoAdvance(true)
	start := s.Now()
	sent := 0
	send := throttle.Wrap("emails", time.Minute, func() bool { sent++; return true },
		append(s.Options(), throttle.WithWait(time.Hour))...)

	for range 3 {
		send() // waits for its turn on the fake clock
	}

	fmt.Println("sent", sent)
	for _, t := range s.Admitted("emails") {
		fmt.Println("sent at", t.Sub(start))
	}
	fmt.Println("clock at", s.Now().Sub(start))
	// Output:
	// sent 3
	// sent at 0s
	// sent at 1m0.001s
	// sent at 2m0.002s
	// clock at 2m0.002s
}
