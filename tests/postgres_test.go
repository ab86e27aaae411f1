package tests

import (
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/restgate/restgate/internal/testpg"
)

// One PostgreSQL for the package; each test has its own database.
var postgresServer = &shared[*testpg.Server]{start: testpg.Start}

func sharedPostgres(t testing.TB) *testpg.Server { return postgresServer.get(t) }

// pgConfig: resources on database url behind api_auth, without api_etag,
// so that only the store's transactions decide preconditions.
func pgConfig(url string) string {
	return testGlobals("") + `https://api.localhost:{$RESTGATE_HTTPS_PORT} {
	tls internal
	api_errors
	api_auth {
		keys_file {$RESTGATE_DATA}/api-keys.yaml
	}
	resources {
		database ` + url + `
		collection counters {
			key name
			field name string
			field n number
		}
		collection notes {
			key name
			field name string
			field text string
		}
	}
}
`
}

func newPGDatabase(t *testing.T) string {
	url, err := sharedPostgres(t).NewDatabase("gateways")
	if err != nil {
		t.Fatal(err)
	}
	return url
}

// TestPostgresAcrossGateways: three gateways on one database keep every
// guarantee the store gives one: no lost update, no lost create, one
// winner for a key.
func TestPostgresAcrossGateways(t *testing.T) {
	gs := startGateways(t, 3, pgConfig(newPGDatabase(t)))
	c0 := behindBalancer(gs[0])
	if r := Do(t, c0, "POST", gs[0].URL("/v1/counters"), `{"name": "c", "n": 0}`, bearer("tester")...); r.StatusCode != 201 {
		t.Fatalf("creating the counter: %d %s", r.StatusCode, r.Body)
	}

	t.Run("no lost update", func(t *testing.T) {
		const clients, each = 50, 20
		start := time.Now()
		incrementAll(t, clients, each, func(i int) *http.Client { return behindBalancer(gs[i%len(gs)]) }, gs[0].URL("/v1/counters/c"))
		n := Do(t, c0, "GET", gs[0].URL("/v1/counters/c"), "", bearer("tester")...).JSON(t)["n"]
		if n != float64(clients*each) {
			t.Errorf("n = %v after %d acknowledged increments through three gateways", n, clients*each)
		}
		t.Logf("%d clients × %d If-Match increments over 3 gateways on PostgreSQL: n = %v in %v", clients, each, n, time.Since(start).Round(time.Millisecond))
	})

	t.Run("no lost create", func(t *testing.T) {
		var wg sync.WaitGroup
		var created atomic.Int64
		for i := range 200 {
			c := behindBalancer(gs[i%len(gs)])
			wg.Add(1)
			go func() {
				defer wg.Done()
				r, err := Send(c, "POST", gs[0].URL("/v1/notes"), fmt.Sprintf(`{"name": "n%03d"}`, i), bearer("tester")...)
				if err != nil || r.StatusCode != 201 {
					t.Errorf("create n%03d: %v %v", i, err, r)
					return
				}
				created.Add(1)
			}()
		}
		wg.Wait()
		list := Do(t, c0, "GET", gs[0].URL("/v1/notes?limit=1"), "", bearer("tester")...).JSON(t)
		if total := list["pagination"].(map[string]any)["total_count"]; created.Load() != 200 || total != 200.0 {
			t.Errorf("%d created, total_count %v, want 200", created.Load(), total)
		}
	})

	t.Run("one winner per key", func(t *testing.T) {
		for i := range 20 {
			codes := make(chan int, 2)
			for _, g := range gs[:2] {
				c := behindBalancer(g)
				go func() {
					r, err := Send(c, "POST", gs[0].URL("/v1/notes"), fmt.Sprintf(`{"name": "same%d"}`, i), bearer("tester")...)
					if err != nil {
						codes <- 0
						return
					}
					codes <- r.StatusCode
				}()
			}
			a, b := <-codes, <-codes
			if min(a, b) != 201 || max(a, b) != 409 {
				t.Fatalf("key same%d created on two gateways at once: %d and %d, want one 201 and one 409", i, a, b)
			}
		}
	})
}

// TestPostgresKillAndRestart: a gateway killed with SIGKILL during a write
// burst loses no acknowledged write; PostgreSQL restarted under load gives
// 503 problems while it is down, and the gateways recover without a
// restart.
func TestPostgresKillAndRestart(t *testing.T) {
	pg := sharedPostgres(t)
	gs := startGateways(t, 2, pgConfig(newPGDatabase(t)))
	a, b := gs[0], gs[1]

	var acked sync.Map
	var n atomic.Int64
	stop := load(8, func(w, i int) bool {
		key := fmt.Sprintf("w%d-%d", w, i)
		r, err := Send(behindBalancer(a), "POST", a.URL("/v1/notes"), `{"name": "`+key+`"}`, bearer("tester")...)
		if err != nil {
			return false // the gateway is gone
		}
		if r.StatusCode == 201 {
			acked.Store(key, true)
			n.Add(1)
		}
		return true
	})
	waitFor(t, 30*time.Second, "100 acknowledged creates", func() bool { return n.Load() >= 100 })
	a.Kill()
	stop()
	cb := behindBalancer(b)
	missing := 0
	acked.Range(func(k, _ any) bool {
		if r := Do(t, cb, "GET", a.URL("/v1/notes/"+k.(string)), "", bearer("tester")...); r.StatusCode != 200 {
			missing++
		}
		return true
	})
	t.Logf("%d writes acknowledged before SIGKILL; %d missing", n.Load(), missing)
	if missing > 0 {
		t.Errorf("%d acknowledged writes lost", missing)
	}

	// PostgreSQL goes down under load and comes back
	var down, other atomic.Int64
	var sawBody atomic.Value
	stop = load(4, func(w, i int) bool {
		r, err := Send(cb, "GET", a.URL("/v1/notes?limit=1"), "", bearer("tester")...)
		switch {
		case err != nil:
			other.Add(1)
		case r.StatusCode == 503 && r.Header.Get("Content-Type") == "application/problem+json" && r.Header.Get("Retry-After") != "":
			down.Add(1)
		case r.StatusCode != 200:
			other.Add(1)
			sawBody.Store(fmt.Sprintf("%d %s", r.StatusCode, r.Body))
		}
		time.Sleep(5 * time.Millisecond)
		return true
	})
	if err := pg.Crash(); err != nil {
		stop()
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, "503 problems while PostgreSQL is down", func() bool { return down.Load() >= 10 })
	if err := pg.Restart(); err != nil {
		stop()
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, "the gateway to serve again after PostgreSQL's restart", func() bool {
		r, err := Send(cb, "POST", a.URL("/v1/notes"), `{"name": "after-restart"}`, bearer("tester")...)
		return err == nil && (r.StatusCode == 201 || r.StatusCode == 409)
	})
	stop()
	t.Logf("during the outage: %d answers were 503 problems with Retry-After, %d were anything else", down.Load(), other.Load())
	if other.Load() > 0 {
		t.Errorf("%d answers during the outage were neither 200 nor a 503 problem (e.g. %v)", other.Load(), sawBody.Load())
	}
}
