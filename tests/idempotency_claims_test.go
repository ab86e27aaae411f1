package tests

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"
)

// ordersBackend creates an order for each POST it is sent and counts how
// many times it carried out each one (by the order's id). An order whose
// id was gated waits, the first time only, until the test opens the gate.
// Its answer is a 201 with a Location and a body of the size asked for.
type ordersBackend struct {
	mu    sync.Mutex
	runs  map[string]int
	gates map[string]chan struct{}
}

func startOrdersBackend(t *testing.T) (*ordersBackend, int) {
	t.Helper()
	b := &ordersBackend{runs: map[string]int{}, gates: map[string]chan struct{}{}}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: b, ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(l)
	t.Cleanup(func() {
		b.openAll() // nothing stays blocked past the test
		srv.Close()
	})
	return b, l.Addr().(*net.TCPAddr).Port
}

func (b *ordersBackend) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	var order struct {
		ID   string `json:"id"`
		Size int    `json:"size"`
	}
	if r.Method != http.MethodPost || json.NewDecoder(r.Body).Decode(&order) != nil || order.ID == "" {
		w.WriteHeader(http.StatusBadRequest)
		return
	}
	b.mu.Lock()
	b.runs[order.ID]++
	gate := b.gates[order.ID]
	delete(b.gates, order.ID) // the first run waits; any other goes through
	b.mu.Unlock()
	if gate != nil {
		<-gate
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Location", "/v1/orders/"+order.ID)
	w.WriteHeader(http.StatusCreated)
	fmt.Fprintf(w, `{"id": %q, "padding": %q}`, order.ID, strings.Repeat("x", order.Size))
}

// gate makes the first run of order id wait until the returned func is called.
func (b *ordersBackend) gate(id string) (open func()) {
	ch := make(chan struct{})
	b.mu.Lock()
	b.gates[id] = ch
	b.mu.Unlock()
	var once sync.Once
	return func() { once.Do(func() { close(ch) }) }
}

func (b *ordersBackend) openAll() {
	b.mu.Lock()
	defer b.mu.Unlock()
	for id, ch := range b.gates {
		close(ch)
		delete(b.gates, id)
	}
}

func (b *ordersBackend) ran(id string) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.runs[id]
}

func ordersGateway(t *testing.T, idempotency string) (*Gateway, *ordersBackend) {
	t.Helper()
	b, port := startOrdersBackend(t)
	cfg := testGlobals("") + `https://api.localhost:{$RESTGATE_HTTPS_PORT} {
	tls internal
	api_errors
	api_auth {
		keys_file {$RESTGATE_DATA}/api-keys.yaml
	}
	api_idempotency {
		` + idempotency + `
	}
	reverse_proxy 127.0.0.1:` + fmt.Sprint(port) + `
}
`
	return StartGateway(t, cfg, Options{}), b
}

// postOrder sends a POST of order id (with a response of size bytes) as
// user, with an Idempotency-Key.
func postOrder(c *http.Client, g *Gateway, user, key, id string, size int) (*Response, error) {
	body := fmt.Sprintf(`{"id": %q, "size": %d}`, id, size)
	return Send(c, "POST", g.URL("/v1/orders"), body, append(bearer(user), "Idempotency-Key", `"`+key+`"`)...)
}

// flood stores n responses of size bytes for user, each under a new key,
// four at a time.
func flood(t *testing.T, c *http.Client, g *Gateway, user, prefix string, n, size int) {
	t.Helper()
	var wg sync.WaitGroup
	next := make(chan int)
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				id := fmt.Sprintf("%s-%d", prefix, i)
				r, err := postOrder(c, g, user, id, id, size)
				if err != nil || r.StatusCode != http.StatusCreated {
					t.Errorf("flood %s: %v %s", id, err, outcome(r))
				}
			}
		}()
	}
	for i := range n {
		next <- i
	}
	close(next)
	wg.Wait()
}

// TestIdempotencyUnderPressure: a retried POST takes effect once while
// another user floods the store with large responses, and no user's flood
// pushes out another's records. The store is 1 MiB; each flood is 60
// responses of 60 KB (3.5 MiB), enough to turn the whole store over
// three times.
func TestIdempotencyUnderPressure(t *testing.T) {
	g, b := ordersGateway(t, "max_size 1MiB\n\t\tmax_body 128KiB")
	c := g.Client()
	const floodN, floodSize = 60, 60_000

	t.Run("a flood during a slow first request does not run its retry twice", func(t *testing.T) {
		open := b.gate("slow-1")
		defer open()
		first := make(chan *Response, 1)
		go func() {
			r, err := postOrder(c, g, "bob", "bob-slow", "slow-1", 100)
			if err != nil {
				t.Error(err)
			}
			first <- r
		}()
		waitFor(t, 10*time.Second, "the slow first request to reach the backend", func() bool { return b.ran("slow-1") == 1 })

		flood(t, c, g, "alice", "flood-a", floodN, floodSize)

		r, err := postOrder(c, g, "bob", "bob-slow", "slow-1", 100)
		if err != nil {
			t.Fatal(err)
		}
		if r.StatusCode != http.StatusConflict || !strings.Contains(string(r.Body), "idempotency_key_in_use") || b.ran("slow-1") != 1 {
			t.Errorf("a retry while the first is in flight: %s; the backend carried the order out %d times, want once and a 409",
				outcome(r), b.ran("slow-1"))
		}
		open()
		var fr *Response
		select {
		case fr = <-first:
		case <-time.After(20 * time.Second):
			t.Fatal("the first request did not finish within 20s of its backend answering")
		}
		if fr == nil || fr.StatusCode != http.StatusCreated {
			t.Fatalf("the first request: %s", outcome(fr))
		}
		r = Do(t, c, "POST", g.URL("/v1/orders"), `{"id": "slow-1", "size": 100}`, append(bearer("bob"), "Idempotency-Key", `"bob-slow"`)...)
		if r.StatusCode != http.StatusCreated || r.Header.Get("Idempotent-Replayed") != "true" || string(r.Body) != string(fr.Body) {
			t.Errorf("a retry after the first finished: %d replayed %q, want the first's 201 replayed", r.StatusCode, r.Header.Get("Idempotent-Replayed"))
		}
		if n := b.ran("slow-1"); n != 1 {
			t.Errorf("the backend carried the order out %d times, want once", n)
		}
	})

	t.Run("one user's flood does not push out another's records", func(t *testing.T) {
		for _, user := range []string{"bob", "tester"} {
			if r, err := postOrder(c, g, user, user+"-kept", user+"-kept", 500); err != nil || r.StatusCode != http.StatusCreated {
				t.Fatalf("%s: %v %s", user, err, outcome(r))
			}
		}
		flood(t, c, g, "alice", "flood-b", floodN, floodSize)
		for _, user := range []string{"bob", "tester"} {
			r, err := postOrder(c, g, user, user+"-kept", user+"-kept", 500)
			if err != nil {
				t.Fatal(err)
			}
			if r.StatusCode != http.StatusCreated || r.Header.Get("Idempotent-Replayed") != "true" || b.ran(user+"-kept") != 1 {
				t.Errorf("%s's retry after alice's flood: %d replayed %q, the backend carried it out %d times; want a replay and once",
					user, r.StatusCode, r.Header.Get("Idempotent-Replayed"), b.ran(user+"-kept"))
			}
		}
		// the flooder is still served: its next record is kept (its own
		// oldest make room)
		for range 2 {
			if r, err := postOrder(c, g, "alice", "alice-next", "alice-next", floodSize); err != nil || r.StatusCode != http.StatusCreated || b.ran("alice-next") != 1 {
				t.Errorf("alice after her flood: %v %s, carried out %d times", err, outcome(r), b.ran("alice-next"))
			}
		}
	})

	t.Run("a response too large to keep is not carried out again", func(t *testing.T) {
		if r, err := postOrder(c, g, "bob", "bob-large", "large-1", 200_000); err != nil || r.StatusCode != http.StatusCreated {
			t.Fatalf("first: %v %s", err, outcome(r))
		}
		r, err := postOrder(c, g, "bob", "bob-large", "large-1", 200_000)
		if err != nil {
			t.Fatal(err)
		}
		m := AssertProblem(t, r, http.StatusConflict)
		if m["code"] != "idempotency_response_not_stored" || m["original_status"] != float64(201) || m["original_location"] != "/v1/orders/large-1" {
			t.Errorf("the retry's problem: %s", outcome(r))
		}
		if n := b.ran("large-1"); n != 1 {
			t.Errorf("the backend carried the order out %d times, want once", n)
		}
	})
}

// TestIdempotencyInFlightBound: a user with as many requests in flight as
// max_in_flight allows gets a 429 problem for one more, which is not
// carried out; another user is not held back.
func TestIdempotencyInFlightBound(t *testing.T) {
	g, b := ordersGateway(t, "max_in_flight 2")
	c := g.Client()
	var wg sync.WaitGroup
	var opens []func()
	defer func() {
		for _, open := range opens {
			open()
		}
		wg.Wait()
	}()
	for i := range 2 {
		id := fmt.Sprintf("held-%d", i)
		opens = append(opens, b.gate(id))
		wg.Add(1)
		go func() {
			defer wg.Done()
			if r, err := postOrder(c, g, "alice", id, id, 10); err != nil || r.StatusCode != http.StatusCreated {
				t.Errorf("%s: %v %s", id, err, outcome(r))
			}
		}()
	}
	waitFor(t, 10*time.Second, "two requests in flight", func() bool { return b.ran("held-0") == 1 && b.ran("held-1") == 1 })

	r, err := postOrder(c, g, "alice", "one-more", "one-more", 10)
	if err != nil {
		t.Fatal(err)
	}
	m := AssertProblem(t, r, http.StatusTooManyRequests)
	if m["code"] != "idempotency_in_flight_limit" || r.Header.Get("Retry-After") == "" || b.ran("one-more") != 0 {
		t.Errorf("one more request: %s Retry-After %q, carried out %d times; want a 429 problem and not carried out",
			r.Body, r.Header.Get("Retry-After"), b.ran("one-more"))
	}
	if r, err := postOrder(c, g, "bob", "bob-1", "bob-1", 10); err != nil || r.StatusCode != http.StatusCreated {
		t.Errorf("bob while alice is at her bound: %v %s", err, outcome(r))
	}
}

// outcome is a response's status and body, for a failure message.
func outcome(r *Response) string {
	if r == nil {
		return "no response"
	}
	body := string(r.Body)
	if len(body) > 300 {
		body = body[:300] + "…"
	}
	return fmt.Sprintf("%d %s", r.StatusCode, body)
}
