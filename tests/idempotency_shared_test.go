package tests

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// ordersStore is a backend that several gateways share, as a real service
// behind them would be: POST /v1/orders creates order {"id": …} (again on
// each run, so a second run is a second resource) and answers 201 with a
// Location, an ETag and a body that names the run. A held order waits
// before it commits until the test lets it go, and commits nothing if the
// gateway's connection goes away first (the gateway died).
type ordersStore struct {
	mu      sync.Mutex
	runs    int
	commits map[string]int
	started map[string]int
	aborted map[string]int
	holds   map[string]chan struct{}
}

func startOrdersStore(t *testing.T) (*ordersStore, string) {
	t.Helper()
	s := &ordersStore{commits: map[string]int{}, started: map[string]int{}, aborted: map[string]int{}, holds: map[string]chan struct{}{}}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: s, ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return s, l.Addr().String()
}

func (s *ordersStore) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	var order struct {
		ID string `json:"id"`
	}
	if r.Method != http.MethodPost || json.NewDecoder(r.Body).Decode(&order) != nil || order.ID == "" {
		w.WriteHeader(http.StatusBadRequest)
		return
	}
	s.mu.Lock()
	s.started[order.ID]++
	hold := s.holds[order.ID]
	delete(s.holds, order.ID) // only the first run is held
	s.mu.Unlock()
	if hold != nil {
		select {
		case <-hold:
		case <-r.Context().Done(): // the gateway is gone: nothing is committed
			s.mu.Lock()
			s.aborted[order.ID]++
			s.mu.Unlock()
			return
		}
	}
	s.mu.Lock()
	s.runs++
	run := s.runs
	s.commits[order.ID]++
	s.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Location", "/v1/orders/"+order.ID)
	w.Header().Set("ETag", fmt.Sprintf(`"run-%d"`, run))
	w.WriteHeader(http.StatusCreated)
	fmt.Fprintf(w, `{"id": %q, "run": %d}`, order.ID, run)
}

// hold makes the first run of order id wait, uncommitted; the returned
// func lets it go.
func (s *ordersStore) hold(id string) (release func()) {
	ch := make(chan struct{})
	s.mu.Lock()
	s.holds[id] = ch
	s.mu.Unlock()
	var once sync.Once
	return func() { once.Do(func() { close(ch) }) }
}

func (s *ordersStore) count(m map[string]int, id string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return m[id]
}

// volatileHeaders differ between two answers of one gateway, replayed or
// not: the date, the request's id, the rate-limit state, and Alt-Svc,
// which names the gateway's own port.
var volatileHeaders = []string{"Date", "X-Request-Id", "Ratelimit", "Alt-Svc"}

// sameReplay reports how a replay differs from want (status, body byte
// for byte, every header but the volatile ones); "" if it does not.
func sameReplay(got, want *Response) string {
	if got.StatusCode != want.StatusCode || string(got.Body) != string(want.Body) {
		return fmt.Sprintf("%d %s, want %d %s", got.StatusCode, got.Body, want.StatusCode, want.Body)
	}
	for _, h := range []http.Header{got.Header, want.Header} {
		for k := range h {
			if !slices.Contains(volatileHeaders, k) && strings.Join(got.Header[k], ", ") != strings.Join(want.Header[k], ", ") {
				return fmt.Sprintf("%s: %q, want %q", k, got.Header[k], want.Header[k])
			}
		}
	}
	return ""
}

// TestIdempotencySharedAcrossGateways: the default Caddyfile on two
// gateways started with RESTGATE_REDIS naming one Redis, in front of one
// backend: a request with an Idempotency-Key takes effect once wherever
// its retries go.
//   - A healthy: the retry sent to B replays A's 201 byte for byte (one
//     resource), a different request with the key is a 422 on B, and
//     while A's request is in flight B answers 409.
//   - A killed (SIGKILL) while the backend holds the request uncommitted:
//     B answers 409 while A's claim lives, then carries the request out
//     once (one resource, one 201); its retries on B, and on A restarted,
//     replay that 201 byte for byte.
//
// Before the records were shared, B carried out every retry again.
func TestIdempotencySharedAcrossGateways(t *testing.T) {
	rs := sharedRedis(t)
	orders, upstream := startOrdersStore(t)
	redisSwitch(t) // the shipped Caddyfile has the one switch
	cfg := withService(t, "/v1/orders*", upstream)
	if !strings.Contains(cfg, "\tapi_idempotency {\n\t\tstore auto\n\t}\n") {
		t.Fatal("the default Caddyfile's api_idempotency does not follow the switch (store auto)")
	}
	env := map[string]string{"RESTGATE_REDIS": rs.Addr}
	a, b := StartGateway(t, cfg, Options{Env: env}), StartGateway(t, cfg, Options{Env: env})
	post := func(g *Gateway, key, body string) *Response {
		t.Helper()
		return Do(t, g.Client(), "POST", g.URL("/v1/orders"), body, append(bearer("alice"), "Idempotency-Key", `"`+key+`"`)...)
	}

	t.Run("A healthy: B replays its 201", func(t *testing.T) {
		const key, body = "shared-healthy-1", `{"id": "o-healthy"}`
		first := post(a, key, body)
		if first.StatusCode != 201 || first.Header.Get("Idempotent-Replayed") != "" {
			t.Fatalf("A: %d replayed %q %s", first.StatusCode, first.Header.Get("Idempotent-Replayed"), first.Body)
		}
		onA := post(a, key, body)
		onB := post(b, key, body)
		if onB.Header.Get("Idempotent-Replayed") != "true" || string(onB.Body) != string(first.Body) || onB.Header.Get("ETag") != first.Header.Get("ETag") ||
			onB.Header.Get("Location") != first.Header.Get("Location") {
			t.Errorf("B: %d replayed %q ETag %q Location %q %s; want A's %d ETag %q Location %q %s", onB.StatusCode, onB.Header.Get("Idempotent-Replayed"),
				onB.Header.Get("ETag"), onB.Header.Get("Location"), onB.Body, first.StatusCode, first.Header.Get("ETag"), first.Header.Get("Location"), first.Body)
		}
		if diff := sameReplay(onB, onA); diff != "" {
			t.Errorf("B's replay differs from A's: %s", diff)
		}
		AssertProblem(t, post(b, key, `{"id": "o-other"}`), 422)
		if n := orders.count(orders.commits, "o-healthy") + orders.count(orders.commits, "o-other"); n != 1 {
			t.Errorf("%d resources created, want 1", n)
		}

		release := orders.hold("o-held")
		done := make(chan *Response, 1)
		go func() {
			r, _ := Send(a.Client(), "POST", a.URL("/v1/orders"), `{"id": "o-held"}`, append(bearer("alice"), "Idempotency-Key", `"shared-held-1"`)...)
			done <- r
		}()
		waitFor(t, 10*time.Second, "the backend holding A's request", func() bool { return orders.count(orders.started, "o-held") == 1 })
		m := AssertProblem(t, post(b, "shared-held-1", `{"id": "o-held"}`), 409)
		if m["code"] != "idempotency_key_in_use" {
			t.Errorf("B while A's request is in flight: %v, want idempotency_key_in_use", m["code"])
		}
		release()
		if r := <-done; r == nil || r.StatusCode != 201 {
			t.Fatalf("A's held request: %+v", r)
		}
		if n := orders.count(orders.started, "o-held"); n != 1 {
			t.Errorf("the backend ran the held request %d times, want once", n)
		}
	})

	t.Run("A killed mid-request: B runs it once after the claim lapses", func(t *testing.T) {
		const key, body = "shared-killed-1", `{"id": "o-killed"}`
		orders.hold("o-killed") // never released: A dies first
		go Send(a.Client(), "POST", a.URL("/v1/orders"), body, append(bearer("alice"), "Idempotency-Key", `"`+key+`"`)...)
		waitFor(t, 10*time.Second, "the backend holding A's request", func() bool { return orders.count(orders.started, "o-killed") == 1 })
		a.Kill()
		killed := time.Now()
		waitFor(t, 10*time.Second, "the backend seeing A's connection go", func() bool { return orders.count(orders.aborted, "o-killed") == 1 })

		r := post(b, key, body)
		if time.Since(killed) < 8*time.Second { // well within A's 10s claim lease
			m := AssertProblem(t, r, 409)
			if m["code"] != "idempotency_key_in_use" || r.Header.Get("Retry-After") == "" {
				t.Errorf("B while A's claim lives: %v Retry-After %q, want idempotency_key_in_use with a Retry-After", m["code"], r.Header.Get("Retry-After"))
			}
		}
		deadline := time.Now().Add(30 * time.Second)
		for r.StatusCode == 409 && strings.Contains(string(r.Body), "idempotency_key_in_use") {
			if time.Now().After(deadline) {
				t.Fatalf("B still answers 409 in use 30s after A died: %s", r.Body)
			}
			wait, _ := strconv.Atoi(r.Header.Get("Retry-After"))
			time.Sleep(time.Duration(max(wait, 1)) * time.Second)
			r = post(b, key, body)
		}
		t.Logf("B carried out the request %.1fs after A was killed", time.Since(killed).Seconds())
		if r.StatusCode != 201 || r.Header.Get("Idempotent-Replayed") != "" {
			t.Fatalf("B after A's claim lapsed: %d replayed %q %s, want a fresh 201", r.StatusCode, r.Header.Get("Idempotent-Replayed"), r.Body)
		}
		onB := post(b, key, body)
		if onB.Header.Get("Idempotent-Replayed") != "true" || string(onB.Body) != string(r.Body) {
			t.Errorf("B's retry: %d replayed %q %s, want the 201 %s replayed", onB.StatusCode, onB.Header.Get("Idempotent-Replayed"), onB.Body, r.Body)
		}
		restarted := StartGateway(t, cfg, Options{Env: env, Dir: a.Dir})
		if diff := sameReplay(post(restarted, key, body), onB); diff != "" {
			t.Errorf("A restarted replays otherwise than B: %s", diff)
		}
		if n := orders.count(orders.commits, "o-killed"); n != 1 {
			t.Errorf("%d resources created, want 1", n)
		}
	})
}

// TestIdempotencySharedFailsClosed: with RESTGATE_REDIS naming a Redis
// that cannot be reached, a request with an Idempotency-Key is refused
// with a 503 problem and a Retry-After and never reaches the backend
// (carried out unprotected, a retry could run it twice); one without a
// key is served (the rate limits here admit while Redis is down).
func TestIdempotencySharedFailsClosed(t *testing.T) {
	orders, upstream := startOrdersStore(t)
	dead := fmt.Sprintf("127.0.0.1:%d", freePorts(t, 1)[0])
	g := StartGateway(t, withService(t, "/v1/orders*", upstream), Options{Env: map[string]string{
		"RESTGATE_REDIS": dead, "RESTGATE_REDIS_ON_ERROR": "allow",
	}})
	for i := range 2 { // the first finds Redis gone, the second its circuit open
		r := Do(t, g.Client(), "POST", g.URL("/v1/orders"), `{"id": "o-closed"}`, append(bearer("alice"), "Idempotency-Key", `"closed-1"`)...)
		m := AssertProblem(t, r, 503)
		if s, _ := strconv.Atoi(r.Header.Get("Retry-After")); m["code"] != "idempotency_unavailable" || s < 1 {
			t.Errorf("request %d: %v Retry-After %q, want idempotency_unavailable with a Retry-After", i, m["code"], r.Header.Get("Retry-After"))
		}
	}
	if n := orders.count(orders.started, "o-closed"); n != 0 {
		t.Errorf("the backend ran a request with a key %d times while Redis was unreachable", n)
	}
	if r := Do(t, g.Client(), "POST", g.URL("/v1/orders"), `{"id": "o-open"}`, bearer("alice")...); r.StatusCode != 201 {
		t.Errorf("without a key: %d %s, want 201", r.StatusCode, r.Body)
	}
}
