package tests

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/restgate/restgate/internal/testredis"
)

// One redis-server for the package; each test uses its own key prefix.
var redisServer = &shared[*testredis.Server]{start: testredis.Start}

func sharedRedis(t testing.TB) *testredis.Server { return redisServer.get(t) }

// redisGlobals are test globals with the redis app on the shared server.
func redisGlobals(t *testing.T, prefix string) string {
	return testGlobals(fmt.Sprintf(`redis {
		address %s
		key_prefix %s:
		circuit_open 1s
	}`, sharedRedis(t).Addr, prefix))
}

// behindBalancer is a client of g as a load balancer makes it: whatever
// host and port the URL names, the connection goes to g.
func behindBalancer(g *Gateway) *http.Client {
	c := g.ClientHTTP1()
	dialer := &net.Dialer{Timeout: 5 * time.Second}
	c.Transport.(*http.Transport).DialContext = func(ctx context.Context, network, _ string) (net.Conn, error) {
		return dialer.DialContext(ctx, network, fmt.Sprintf("127.0.0.1:%d", g.HTTPS))
	}
	return c
}

// startGateways starts n gateways on one configuration.
func startGateways(t *testing.T, n int, cfg string) []*Gateway {
	gs := make([]*Gateway, n)
	for i := range gs {
		gs[i] = StartGateway(t, cfg, Options{})
	}
	return gs
}

// saturate sends requests through every gateway from workers clients
// each, for d, and counts the answers by status. span is the time from
// the first request's start to the last answer.
func saturate(t *testing.T, gs []*Gateway, workers int, d time.Duration, path string) (byStatus map[int]int, span time.Duration) {
	var mu sync.Mutex
	byStatus = map[int]int{}
	var first, last atomic.Int64
	var failed atomic.Value
	// one keep-alive client per worker, connected before the clock starts
	// (a TLS handshake inside the measured span would count as time in
	// which tokens accrue)
	clients := make([]*http.Client, workers*len(gs))
	for w := range clients {
		g := gs[w%len(gs)]
		clients[w] = g.ClientHTTP1()
		Do(t, clients[w], "GET", g.URL("/warm"), "", bearer("tester")...)
	}
	stop := load(workers*len(gs), func(w, i int) bool {
		g := gs[w%len(gs)]
		start := time.Now().UnixNano()
		first.CompareAndSwap(0, start)
		r, err := Send(clients[w], "GET", g.URL(path), "", bearer("tester")...)
		if err != nil {
			failed.Store(err)
			return false
		}
		last.Store(time.Now().UnixNano())
		mu.Lock()
		byStatus[r.StatusCode]++
		mu.Unlock()
		return true
	})
	time.Sleep(d)
	stop()
	if err, _ := failed.Load().(error); err != nil {
		t.Fatal(err)
	}
	return byStatus, time.Duration(last.Load() - first.Load())
}

// TestRedisSharedLimit: three gateways with the redis store enforce one
// limit: saturated together for 10 s, they admit burst + rate·t within 1%;
// three local stores admit about three times as much.
func TestRedisSharedLimit(t *testing.T) {
	const rate, burst = 100, 50
	cfg := func(store string) string {
		extra := ""
		if store == "redis" {
			extra = "store redis\n\t\ton_error deny"
		}
		return redisGlobals(t, "shared-limit-"+store) + fmt.Sprintf(`https://api.localhost:{$RESTGATE_HTTPS_PORT} {
	tls internal
	api_errors
	api_auth {
		keys_file {$RESTGATE_DATA}/api-keys.yaml
	}
	api_rate_limit {
		%s
		zone shared %d/1s {
			burst %d
			paths /limited
		}
	}
	respond "ok"
}
`, extra, rate, burst)
	}
	admitted := map[string]float64{}
	for _, store := range []string{"redis", "local"} {
		gs := startGateways(t, 3, cfg(store))
		byStatus, span := saturate(t, gs, 4, 10*time.Second, "/limited")
		for code := range byStatus {
			if code != 200 && code != 429 {
				t.Fatalf("%s: unexpected statuses %v", store, byStatus)
			}
		}
		want := burst + rate*span.Seconds()
		admitted[store] = float64(byStatus[200])
		t.Logf("%s store, 3 gateways, %v saturated: %d admitted, %d refused; burst + rate·t = %.0f (ratio %.4f)",
			store, span.Round(time.Millisecond), byStatus[200], byStatus[429], want, float64(byStatus[200])/want)
		if store == "redis" {
			if got := float64(byStatus[200]); got < want*0.99 || got > want*1.01 {
				t.Errorf("redis: admitted %v, want %.0f ± 1%%", got, want)
			}
			if byStatus[429] < byStatus[200] {
				t.Errorf("redis: only %d refused: the gateways were not saturated", byStatus[429])
			}
		}
		for _, g := range gs {
			g.Stop()
		}
	}
	ratio := admitted["local"] / admitted["redis"]
	t.Logf("three local stores admitted %.2f× what the shared store did", ratio)
	if ratio < 2.5 {
		t.Errorf("local stores admitted only %.2f× the shared limit: the comparison did not saturate", ratio)
	}
}

// TestRedisOutage: Redis is killed under load, then restarted. With
// on_error allow requests keep flowing, with deny they get 503 problems; the
// outage is logged once; after the restart both return to exact limiting
// without a gateway restart, and no goroutine or connection is left behind.
func TestRedisOutage(t *testing.T) {
	rs := sharedRedis(t)
	g := StartGateway(t, redisGlobals(t, "outage")+`https://api.localhost:{$RESTGATE_HTTPS_PORT} {
	tls internal
	api_errors
	api_auth {
		keys_file {$RESTGATE_DATA}/api-keys.yaml
	}
	handle /allow {
		api_rate_limit {
			store redis
			on_error allow
			zone open 5/1h
		}
		respond "ok"
	}
	handle /deny {
		api_rate_limit {
			store redis
			on_error deny
			zone closed 5/1h
		}
		respond "ok"
	}
}
`, Options{})
	c := g.ClientHTTP1()
	exact := func(phase string) {
		t.Helper()
		for _, path := range []string{"/allow", "/deny"} {
			for i := range 5 {
				if r := Do(t, c, "GET", g.URL(path), "", bearer("tester")...); r.StatusCode != 200 || r.Header.Get("RateLimit") == "" {
					t.Fatalf("%s: %s request %d: %d, RateLimit %q", phase, path, i, r.StatusCode, r.Header.Get("RateLimit"))
				}
			}
			AssertProblem(t, Do(t, c, "GET", g.URL(path), "", bearer("tester")...), 429)
		}
	}
	gauge := func(name string) float64 { return metricValue(scrape(t, g), name) }
	connections := func() int {
		rc := rs.Client()
		defer rc.Close()
		list, err := rc.ClientList(context.Background()).Result()
		if err != nil {
			t.Fatal(err)
		}
		return strings.Count(list, "\n") - 1 // minus this client
	}

	exact("before the outage")
	goroutinesBefore, connsBefore := gauge("go_goroutines"), connections()

	rs.Kill()
	t.Cleanup(func() { _ = rs.Restart() }) // the package's other tests need it back
	for i := range 20 {
		if r := Do(t, c, "GET", g.URL("/allow"), "", bearer("tester")...); r.StatusCode != 200 {
			t.Fatalf("on_error allow, Redis down, request %d: %d %s", i, r.StatusCode, r.Body)
		}
		m := AssertProblem(t, Do(t, c, "GET", g.URL("/deny"), "", bearer("tester")...), 503)
		if m["code"] != "rate_limit_unavailable" {
			t.Fatalf("on_error deny, Redis down: %v", m)
		}
	}
	if n := strings.Count(g.Logs(), "Redis is unavailable"); n != 1 {
		t.Errorf("the outage was logged %d times, want once", n)
	}
	goroutinesDown := gauge("go_goroutines")

	if err := rs.Restart(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, "the deny route to answer again after the restart", func() bool {
		r, err := Send(c, "GET", g.URL("/deny"), "", bearer("bob")...)
		return err == nil && r.StatusCode == 200
	})
	exact("after the restart") // the new Redis is empty: full buckets again
	if n := strings.Count(g.Logs(), "Redis is reachable again"); n != 1 {
		t.Errorf("the recovery was logged %d times, want once", n)
	}
	goroutinesAfter, connsAfter := gauge("go_goroutines"), connections()
	t.Logf("goroutines: %v before, %v during the outage, %v after; Redis connections: %d before, %d after",
		goroutinesBefore, goroutinesDown, goroutinesAfter, connsBefore, connsAfter)
	if goroutinesAfter > goroutinesBefore+10 {
		t.Errorf("goroutines grew from %v to %v across the outage", goroutinesBefore, goroutinesAfter)
	}
	if connsAfter > connsBefore+2 {
		t.Errorf("Redis connections grew from %d to %d across the outage", connsBefore, connsAfter)
	}
}

// redisEtagConfig: api_etag with the cache and Redis in front of the plain
// backend (no ETags, no locking of its own).
func redisEtagConfig(t *testing.T, prefix string, backendPort int) string {
	return redisGlobals(t, prefix) + fmt.Sprintf(`https://api.localhost:{$RESTGATE_HTTPS_PORT} {
	tls internal
	api_errors
	api_auth {
		keys_file {$RESTGATE_DATA}/api-keys.yaml
	}
	api_etag {
		cache
		redis
	}
	reverse_proxy 127.0.0.1:%d
}
`, backendPort)
}

// TestRedisNoLostUpdates: 50 clients spread over three gateways, 20
// GET→+1→PUT with If-Match each, against a backend without ETags: the
// Redis lock makes the count exactly 1,000. As behind a load balancer,
// every client names the same host (the first gateway's URL); each client
// connects to its own gateway.
func TestRedisNoLostUpdates(t *testing.T) {
	backend, port := startPlainBackend(t)
	gs := startGateways(t, 3, redisEtagConfig(t, "lost-updates", port))
	const clients, each = 50, 20
	start := time.Now()
	incrementAll(t, clients, each, func(i int) *http.Client { return behindBalancer(gs[i%len(gs)]) }, gs[0].URL("/v1/counter"))
	if n := backend.count(); n != clients*each {
		t.Errorf("counter = %d after %d acknowledged increments through three gateways", n, clients*each)
	}
	t.Logf("%d clients × %d increments over 3 gateways: counter %d in %v", clients, each, backend.count(), time.Since(start).Round(time.Millisecond))
}

// TestRedisInvalidation: a write through gateway A drops gateway B's cached
// copy (B then serves the new document), and a gateway whose subscription
// broke (Redis restarted) drops its whole cache. Both are reached by one
// name (A's URL), as behind a load balancer.
func TestRedisInvalidation(t *testing.T) {
	rs := sharedRedis(t)
	_, port := startPlainBackend(t)
	gs := startGateways(t, 2, redisEtagConfig(t, "invalidation", port))
	a := gs[0]
	ca, cb := a.ClientHTTP1(), behindBalancer(gs[1])
	b := struct {
		URL  func(string) string
		Logs func() string
	}{a.URL, gs[1].Logs}
	if r := Do(t, ca, "POST", a.URL("/v1/items"), `"first"`, bearer("tester")...); r.StatusCode != 201 {
		t.Fatalf("POST: %d", r.StatusCode)
	}
	Do(t, cb, "GET", b.URL("/v1/items"), "", bearer("tester")...)
	if r := Do(t, cb, "GET", b.URL("/v1/items"), "", bearer("tester")...); r.Header.Get("Cache-Status") != "restgate; hit" {
		t.Fatalf("B did not cache /v1/items: %q", r.Header.Get("Cache-Status"))
	}
	// the collection changes through A
	if r := Do(t, ca, "POST", a.URL("/v1/items"), `"second"`, bearer("tester")...); r.StatusCode != 201 {
		t.Fatalf("POST: %d", r.StatusCode)
	}
	written := time.Now()
	var delay time.Duration
	waitFor(t, 5*time.Second, "B to serve the new collection", func() bool {
		r, err := Send(cb, "GET", b.URL("/v1/items"), "", bearer("tester")...)
		if err == nil && strings.Contains(string(r.Body), "second") {
			delay = time.Since(written)
			return true
		}
		return false
	})
	t.Logf("a write through A reached B's cache in %v (write acknowledged → B serves the new document)", delay)

	// Redis restarts: B's subscription breaks and comes back; what B held
	// may have missed an invalidation, so it is dropped
	if r := Do(t, cb, "GET", b.URL("/v1/items"), "", bearer("tester")...); r.Header.Get("Cache-Status") != "restgate; hit" {
		t.Fatalf("B did not cache /v1/items again: %q", r.Header.Get("Cache-Status"))
	}
	rs.Kill()
	if err := rs.Restart(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, "B to re-establish its subscription", func() bool {
		return strings.Contains(b.Logs(), "event subscription re-established")
	})
	if r := Do(t, cb, "GET", b.URL("/v1/items"), "", bearer("tester")...); strings.Contains(r.Header.Get("Cache-Status"), "hit") {
		t.Errorf("B served a cached response after missing its events: %q", r.Header.Get("Cache-Status"))
	}
}
