package httpthrottle_test

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/dthrottle/throttle"
	"github.com/dthrottle/throttle/httpthrottle"
)

// A Transport throttles every request of an http.Client: here one request
// per hour to each host, so the second request is not sent. Give the
// Keyed throttle.WithStore(throttle.NewRedisStore(client)) to share the
// limit with every process that uses the same Redis server.
func ExampleNewTransport() {
	api := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, "hello")
	}))
	defer api.Close()

	k, err := throttle.NewKeyed(time.Hour)
	if err != nil {
		fmt.Println(err)
		return
	}
	rt, err := httpthrottle.NewTransport(nil, k)
	if err != nil {
		fmt.Println(err)
		return
	}
	client := &http.Client{Transport: rt}

	resp, err := client.Get(api.URL)
	if err != nil {
		fmt.Println(err)
		return
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	fmt.Println(resp.StatusCode, string(body))

	_, err = client.Get(api.URL) // the same host within the hour: not sent
	fmt.Println("throttled:", errors.Is(err, throttle.ErrThrottled))
	// Output:
	// 200 hello
	// throttled: true
}

// When the upstream answers 429 Too Many Requests (or 503) with a
// Retry-After, the Transport returns the response as it is and holds off
// the host for that long: with a RedisStore, in every process at once.
func ExampleNewTransport_retryAfter() {
	api := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Retry-After", "120")
		w.WriteHeader(http.StatusTooManyRequests)
	}))
	defer api.Close()

	k, err := throttle.NewKeyed(time.Second)
	if err != nil {
		fmt.Println(err)
		return
	}
	rt, err := httpthrottle.NewTransport(nil, k)
	if err != nil {
		fmt.Println(err)
		return
	}
	client := &http.Client{Transport: rt}

	resp, err := client.Get(api.URL)
	if err != nil {
		fmt.Println(err)
		return
	}
	resp.Body.Close()
	fmt.Println(resp.StatusCode)

	_, err = client.Get(api.URL) // not sent: held off for 2 minutes, not 1 second

	var te *throttle.ThrottledError
	if errors.As(err, &te) {
		fmt.Println("retry after about", te.RetryAfter.Round(time.Minute))
	}
	// Output:
	// 429
	// retry after about 2m0s
}

// WithKeyFunc chooses the limit of each request: here one per API token,
// shared through Redis by every process, waiting up to 10 seconds for a
// turn. The example needs a Redis server, so it is only compiled.
func ExampleWithKeyFunc() {
	rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:6379", ContextTimeoutEnabled: true})
	defer rdb.Close()

	k, err := throttle.NewKeyed(time.Second,
		throttle.WithStore(throttle.NewRedisStore(rdb)),
		throttle.WithLimit(5)) // 5 requests per second per token
	if err != nil {
		panic(err)
	}
	rt, err := httpthrottle.NewTransport(nil, k,
		httpthrottle.WithKeyFunc(func(r *http.Request) string {
			return httpthrottle.HostKey(r) + "/" + r.Header.Get("X-Api-Token")
		}),
		httpthrottle.WithWait(10*time.Second)) // wait for a turn instead of failing
	if err != nil {
		panic(err)
	}
	client := &http.Client{Transport: rt, Timeout: 30 * time.Second}

	req, err := http.NewRequest(http.MethodGet, "https://api.example.com/v1/items", nil)
	if err != nil {
		panic(err)
	}
	req.Header.Set("X-Api-Token", "token-1")
	resp, err := client.Do(req)
	if err != nil {
		fmt.Println(err) // errors.Is(err, throttle.ErrThrottled) if no turn within 10s
		return
	}
	defer resp.Body.Close()
	fmt.Println(resp.Status)
}

func ExampleHostKey() {
	req, _ := http.NewRequest(http.MethodGet, "https://API.example.com/v1/items", nil)
	fmt.Println(httpthrottle.HostKey(req))
	// Output: api.example.com:443
}
