package riverthrottle_test

import (
	"context"
	"encoding/json"
	"errors"
	"log"
	"net/http"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"
	"github.com/riverqueue/river/rivertype"

	"github.com/dthrottle/throttle"
	"github.com/dthrottle/throttle/riverthrottle"
)

// SendEmailArgs are the arguments of an example job.
type SendEmailArgs struct {
	To string `json:"to"`
}

func (SendEmailArgs) Kind() string { return "send_email" }

// SendEmailWorker sends one email.
type SendEmailWorker struct {
	river.WorkerDefaults[SendEmailArgs]
}

func (w *SendEmailWorker) Work(ctx context.Context, job *river.Job[SendEmailArgs]) error {
	log.Printf("sending to %s", job.Args.To)
	return nil
}

// Every process that runs this sends at most 2 emails per second together.
// It needs PostgreSQL and Redis, so it is compiled but not run.
func Example() {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, "postgres://127.0.0.1:5432/app")
	if err != nil {
		log.Fatal(err)
	}
	rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:6379"})

	lim, err := throttle.NewKeyed(time.Second,
		throttle.WithStore(throttle.NewRedisStore(rdb)), throttle.WithLimit(2))
	if err != nil {
		log.Fatal(err)
	}

	workers := river.NewWorkers()
	river.AddWorker(workers, &SendEmailWorker{})
	client, err := river.NewClient(riverpgxv5.New(pool), &river.Config{
		Queues:     map[string]river.QueueConfig{river.QueueDefault: {MaxWorkers: 10}},
		Workers:    workers,
		Middleware: []rivertype.Middleware{riverthrottle.New(lim)},
	})
	if err != nil {
		log.Fatal(err)
	}
	if err := client.Start(ctx); err != nil {
		log.Fatal(err)
	}
}

// Throttle reports per tenant, with the tenant taken from the job's
// arguments. The middleware runs before River decodes the arguments, so the
// key function decodes the one field it needs.
func ExampleWithKeyFunc() {
	byTenant := riverthrottle.WithKeyFunc(func(job *rivertype.JobRow) (string, error) {
		var args struct {
			Tenant string `json:"tenant"`
		}
		if err := json.Unmarshal(job.EncodedArgs, &args); err != nil {
			return "", err // the job fails this attempt, as River's own decode would
		}
		return job.Kind + ":" + args.Tenant, nil
	})

	rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:6379"})
	// One report per tenant per minute.
	lim, err := throttle.NewKeyed(time.Minute, throttle.WithStore(throttle.NewRedisStore(rdb)))
	if err != nil {
		log.Fatal(err)
	}
	_ = &river.Config{Middleware: []rivertype.Middleware{riverthrottle.New(lim, byTenant)}}
}

// CallAPIArgs are the arguments of a job that calls a rate-limited API.
type CallAPIArgs struct {
	URL string `json:"url"`
}

func (CallAPIArgs) Kind() string { return "call_api" }

// CallAPIWorker calls the API and, when it answers 429, holds off every
// job of its kind in every process for the Retry-After it sent.
type CallAPIWorker struct {
	river.WorkerDefaults[CallAPIArgs]
}

func (w *CallAPIWorker) Work(ctx context.Context, job *river.Job[CallAPIArgs]) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, job.Args.URL, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusTooManyRequests {
		wait := 30 * time.Second
		if s, err := strconv.Atoi(resp.Header.Get("Retry-After")); err == nil {
			wait = time.Duration(s) * time.Second
		}
		return riverthrottle.HoldOff(wait, errors.New(resp.Status))
	}
	return nil
}

// A job that gets a 429 holds off its key: the other jobs of the kind are
// snoozed until the hold ends instead of each being refused by the API.
func ExampleHoldOff() {
	rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:6379"})
	// At most 5 calls per second, fewer while the API asks to back off.
	lim, err := throttle.NewKeyed(time.Second,
		throttle.WithStore(throttle.NewRedisStore(rdb)), throttle.WithLimit(5))
	if err != nil {
		log.Fatal(err)
	}
	workers := river.NewWorkers()
	river.AddWorker(workers, &CallAPIWorker{})
	_ = &river.Config{
		Workers:    workers,
		Middleware: []rivertype.Middleware{riverthrottle.New(lim)},
	}
}

// At most 3 report jobs run at once across every process, and at most 1
// starts per second; the cap holds a lease while each job runs.
func ExampleNew_concurrency() {
	rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:6379"})
	lim, err := throttle.NewKeyed(time.Second,
		throttle.WithStore(throttle.NewRedisStore(rdb)), throttle.WithConcurrency(3))
	if err != nil {
		log.Fatal(err)
	}
	mw := riverthrottle.New(lim, riverthrottle.WithCapacityDelay(5*time.Second))
	_ = &river.Config{Middleware: []rivertype.Middleware{mw}}
}
