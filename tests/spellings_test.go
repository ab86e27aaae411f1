package tests

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"path"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// coarseCounter is a backend that, like Express, DRF or Flask, ignores
// Host, a trailing slash, case and ;params: every spelling of
// /v1/counter is one counter, with a racy read-modify-write and no ETags.
// It also records the escaped path of every request to /v1/items/.
type coarseCounter struct {
	mu      sync.Mutex
	n       int
	escaped []string
}

func (b *coarseCounter) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	p := strings.ToLower(r.URL.Path)
	var segs []string
	for _, s := range strings.Split(p, "/") {
		s, _, _ = strings.Cut(s, ";")
		segs = append(segs, s)
	}
	p = strings.TrimSuffix(path.Clean("/"+strings.Join(segs, "/")), "/")
	w.Header().Set("Content-Type", "application/json")
	switch {
	case p == "/v1/counter" && r.Method == http.MethodGet:
		b.mu.Lock()
		n := b.n
		b.mu.Unlock()
		w.Header().Set("Cache-Control", "max-age=600")
		fmt.Fprintf(w, `{"n": %d}`, n)
	case p == "/v1/counter" && r.Method == http.MethodPut:
		var v struct{ N int }
		if err := json.NewDecoder(r.Body).Decode(&v); err != nil {
			w.WriteHeader(400)
			return
		}
		b.mu.Lock()
		b.n = v.N
		b.mu.Unlock()
		fmt.Fprintf(w, `{"n": %d}`, v.N)
	case strings.HasPrefix(p, "/v1/items/"):
		b.mu.Lock()
		b.escaped = append(b.escaped, r.URL.EscapedPath())
		b.mu.Unlock()
		w.Header().Set("Cache-Control", "max-age=600")
		fmt.Fprintf(w, `{"path": %q}`, r.URL.EscapedPath())
	default:
		w.WriteHeader(http.StatusNotFound)
	}
}

func (b *coarseCounter) count() int { b.mu.Lock(); defer b.mu.Unlock(); return b.n }

func startCoarseCounter(t *testing.T) (*coarseCounter, string) {
	t.Helper()
	b := &coarseCounter{}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: b, ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return b, l.Addr().String()
}

// spellingsOf are the spellings of one resource a careless client (or a
// load balancer that rewrites Host) produces, on g's port: canonical,
// Host without port, upper-case Host with port, trailing slash, `//`,
// upper-case segment, a ;param.
func spellingsOf(g *Gateway, p string) []string {
	port := strconv.Itoa(g.HTTPS)
	return []string{
		"https://api.localhost:" + port + p,
		"https://api.localhost" + p,
		"https://API.LOCALHOST:" + port + p,
		"https://api.localhost:" + port + p + "/",
		"https://api.localhost:" + port + "/" + p,
		"https://api.localhost:" + port + strings.ToUpper(p),
		"https://api.localhost:" + port + p + ";v=1",
	}
}

// withCounter is the default Caddyfile with the README's recipe for a
// service applied as written, for the coarse counter.
func withCounter(t *testing.T, upstream string) string {
	return withService(t, "/v1/counter*", upstream) // handle /v1/counter* { reverse_proxy … { import upstream } }
}

// TestOneResourceOneKey: 50 clients × 20 If-Match increments spread over
// every spelling of one resource end at exactly 1,000 (the If-Match lock
// is per resource, not per spelling), and a write through any spelling
// drops the canonical spelling's cached copy at once.
func TestOneResourceOneKey(t *testing.T) {
	backend, upstream := startCoarseCounter(t)
	g := StartGateway(t, withCounter(t, upstream), Options{})
	c := behindBalancer(g)
	spellings := spellingsOf(g, "/v1/counter")

	t.Run("a write through any spelling invalidates", func(t *testing.T) {
		canonical := spellings[0]
		for i, sp := range spellings[1:] {
			Do(t, c, "GET", canonical, "", bearer("tester")...)
			if r := Do(t, c, "GET", canonical, "", bearer("tester")...); r.Header.Get("Cache-Status") != "restgate; hit" {
				t.Fatalf("the canonical spelling was not cached: %q", r.Header.Get("Cache-Status"))
			}
			g := Do(t, c, "GET", sp, "", bearer("tester")...)
			want := fmt.Sprintf(`{"n": %d}`, 1000+i)
			if p := Do(t, c, "PUT", sp, want, append(bearer("tester"), "If-Match", g.Header.Get("ETag"))...); p.StatusCode != 200 {
				t.Fatalf("PUT %s: %d %s", sp, p.StatusCode, p.Body)
			}
			if r := Do(t, c, "GET", canonical, "", bearer("tester")...); string(r.Body) != want {
				t.Errorf("after a PUT through %s, GET %s = %s (%s), want %s", sp, canonical, r.Body, r.Header.Get("Cache-Status"), want)
			}
		}
	})

	t.Run("no lost update over spellings", func(t *testing.T) {
		backend.mu.Lock()
		backend.n = 0
		backend.mu.Unlock()
		exactIncrements(t, backend.count, func(int) (*http.Client, []string) { return c, spellings })
	})
}

// TestReservedEscapesReachTheBackendAsSent: `a;b` and `a%3Bb` are two
// resources to a backend: the gateway forwards each as sent (hex upper-
// cased, unreserved escapes decoded, as RFC 3986 §6.2.2 normalises) and
// never answers one from the other's cache entry. A path with a control
// character is refused with a 400 problem and never forwarded.
func TestReservedEscapesReachTheBackendAsSent(t *testing.T) {
	backend, upstream := startCoarseCounter(t)
	g := StartGateway(t, withService(t, "/v1/items/*", upstream), Options{})
	c := g.ClientHTTP1()
	tests := []struct{ give, want string }{
		{"/v1/items/a;b", "/v1/items/a;b"},
		{"/v1/items/a%3bb", "/v1/items/a%3Bb"},
		{"//v1/items/a%3Bb", "/v1/items/a%3Bb"},
		{"/v1/items/a,b", "/v1/items/a,b"},
		{"/v1/items/a%2cb", "/v1/items/a%2Cb"},
		{"/v1/items/a=b", "/v1/items/a=b"},
		{"/v1/items/a%3Db", "/v1/items/a%3Db"},
		{"/v1/items/a@b", "/v1/items/a@b"},
		{"/v1/items/a%40b", "/v1/items/a%40b"},
		{"/v1/items/%7Ea%2Db", "/v1/items/~a-b"},
	}
	for _, tt := range tests {
		r := Do(t, c, "GET", g.URL(tt.give), "", bearer("tester")...)
		if want := fmt.Sprintf(`{"path": %q}`, tt.want); r.StatusCode != 200 || string(r.Body) != want {
			t.Errorf("GET %s = %d %s (%s), want %s", tt.give, r.StatusCode, r.Body, r.Header.Get("Cache-Status"), want)
		}
	}
	backend.mu.Lock()
	forwarded := len(backend.escaped)
	backend.mu.Unlock()
	if want := len(tests) - 1; forwarded != want { // a%3bb and //…a%3Bb are one target: one fill, one hit
		t.Errorf("the backend was asked %d times, want %d (one per distinct target)", forwarded, want)
	}
	for _, bad := range []string{"/v1/items/a%00b", "/v1/items/a%0Ab", "/v1/items/a%0db", "/v1/items/%7f"} {
		r := Do(t, c, "GET", g.URL(bad), "", bearer("tester")...)
		if p := AssertProblem(t, r, 400); !strings.Contains(fmt.Sprint(p["detail"]), "control character") {
			t.Errorf("GET %s: detail %v", bad, p["detail"])
		}
	}
	backend.mu.Lock()
	defer backend.mu.Unlock()
	if len(backend.escaped) != forwarded {
		t.Errorf("a path with a control character reached the backend: %q", backend.escaped[forwarded:])
	}
}

// withSharedETag checks that cfg (the default Caddyfile) shares api_etag's
// locks and invalidations through the one switch, RESTGATE_REDIS (which
// the caller sets in the gateway's environment): `redis auto` follows the
// redis option's address.
func withSharedETag(t *testing.T, cfg string) string {
	t.Helper()
	for _, want := range []string{"\tredis {\n\t\taddress {$RESTGATE_REDIS}\n", "\tapi_etag {\n\t\tredis auto\n"} {
		if !strings.Contains(cfg, want) {
			t.Fatalf("the default Caddyfile's Redis switch changed: no %q", want)
		}
	}
	return cfg
}

// TestOneResourceOneKeyAcrossGateways: three gateways sharing Redis, each
// on its own port, its clients using every spelling of the resource on
// that port: 50 × 20 If-Match increments end at exactly 1,000, and a write
// through one gateway's odd spelling drops the others' canonical copies.
func TestOneResourceOneKeyAcrossGateways(t *testing.T) {
	backend, upstream := startCoarseCounter(t)
	cfg := withSharedETag(t, withCounter(t, upstream))
	gs := make([]*Gateway, 3)
	for i := range gs {
		gs[i] = StartGateway(t, cfg, Options{Env: map[string]string{"RESTGATE_REDIS": sharedRedis(t).Addr}})
	}

	t.Run("a write through any spelling invalidates every gateway", func(t *testing.T) {
		for i, sp := range spellingsOf(gs[0], "/v1/counter")[1:] {
			for _, g := range gs[1:] {
				c := behindBalancer(g)
				Do(t, c, "GET", g.URL("/v1/counter"), "", bearer("tester")...)
				if r := Do(t, c, "GET", g.URL("/v1/counter"), "", bearer("tester")...); r.Header.Get("Cache-Status") != "restgate; hit" {
					t.Fatalf("not cached: %q", r.Header.Get("Cache-Status"))
				}
			}
			c0 := behindBalancer(gs[0])
			r := Do(t, c0, "GET", sp, "", bearer("tester")...)
			want := fmt.Sprintf(`{"n": %d}`, 2000+i)
			if p := Do(t, c0, "PUT", sp, want, append(bearer("tester"), "If-Match", r.Header.Get("ETag"))...); p.StatusCode != 200 {
				t.Fatalf("PUT %s: %d %s", sp, p.StatusCode, p.Body)
			}
			for _, g := range gs[1:] {
				c := behindBalancer(g)
				waitFor(t, 5*time.Second, "the other gateway drops its copy after a PUT through "+sp, func() bool {
					return string(Do(t, c, "GET", g.URL("/v1/counter"), "", bearer("tester")...).Body) == want
				})
			}
		}
	})

	t.Run("no lost update over gateways and spellings", func(t *testing.T) {
		backend.mu.Lock()
		backend.n = 0
		backend.mu.Unlock()
		exactIncrements(t, backend.count, func(i int) (*http.Client, []string) {
			g := gs[i%len(gs)]
			return behindBalancer(g), spellingsOf(g, "/v1/counter")
		})
	})
}
