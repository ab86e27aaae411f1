package tests

import (
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// plainBackend is a small service that knows nothing of ETags or locking:
// a counter with a racy read-modify-write (as many real services are), a
// per-user document, and a collection. It listens on a free loopback port.
type plainBackend struct {
	mu       sync.Mutex
	counter  int
	items    []string
	docs     map[string]string
	tagged   int // a resource with ETags that ignores If-Match
	version  int
	writes   atomic.Int64 // PUTs that changed something
	meGets   atomic.Int64
	itemGets atomic.Int64
}

func (b *plainBackend) count() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.counter
}

func startPlainBackend(t *testing.T) (*plainBackend, int) {
	t.Helper()
	b := &plainBackend{docs: map[string]string{}}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: b, ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return b, l.Addr().(*net.TCPAddr).Port
}

func (b *plainBackend) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	switch {
	case r.URL.Path == "/v1/counter" && r.Method == http.MethodGet:
		b.mu.Lock()
		n := b.counter
		b.mu.Unlock()
		fmt.Fprintf(w, `{"n": %d}`, n)
	case r.URL.Path == "/v1/counter" && r.Method == http.MethodPut:
		var v struct{ N int }
		if err := json.NewDecoder(r.Body).Decode(&v); err != nil {
			w.WriteHeader(400)
			return
		}
		b.mu.Lock()
		b.counter = v.N
		b.mu.Unlock()
		b.writes.Add(1)
		fmt.Fprintf(w, `{"n": %d}`, v.N)
	case r.URL.Path == "/v1/tagged":
		// sends ETags, but never checks If-Match
		b.mu.Lock()
		defer b.mu.Unlock()
		if r.Method == http.MethodPut {
			var v struct{ N int }
			if err := json.NewDecoder(r.Body).Decode(&v); err != nil {
				w.WriteHeader(400)
				return
			}
			b.tagged, b.version = v.N, b.version+1
		}
		w.Header().Set("ETag", fmt.Sprintf(`"v%d"`, b.version))
		fmt.Fprintf(w, `{"n": %d}`, b.tagged)
	case r.URL.Path == "/v1/big" && r.Method == http.MethodGet:
		fmt.Fprintf(w, `{"pad": %q}`, strings.Repeat("x", 8<<10))
	case r.URL.Path == "/v1/broken" && r.Method == http.MethodGet:
		w.WriteHeader(500)
	case (r.URL.Path == "/v1/big" || r.URL.Path == "/v1/broken") && r.Method == http.MethodPut:
		b.writes.Add(1)
		w.WriteHeader(204)
	case strings.HasPrefix(r.URL.Path, "/v1/docs/"):
		b.mu.Lock()
		defer b.mu.Unlock()
		doc, ok := b.docs[r.URL.Path]
		switch {
		case r.Method == http.MethodPut:
			body, _ := io.ReadAll(r.Body)
			b.docs[r.URL.Path] = string(body)
			b.writes.Add(1)
			w.Write(body)
		case ok:
			io.WriteString(w, doc)
		default:
			w.WriteHeader(http.StatusNotFound)
		}
	case r.URL.Path == "/v1/whoami":
		w.Header().Set("Cache-Control", "max-age=300")
		fmt.Fprintf(w, `{"user": %q, "scopes": %q}`, r.Header.Get("X-Auth-User"), r.Header.Get("X-Auth-Scopes"))
	case r.URL.Path == "/v1/me":
		b.meGets.Add(1)
		w.Header().Set("Cache-Control", "max-age=300")
		fmt.Fprintf(w, `{"user": %q}`, r.Header.Get("X-Auth-User"))
	case r.URL.Path == "/v1/items" && r.Method == http.MethodGet:
		b.itemGets.Add(1)
		b.mu.Lock()
		items, _ := json.Marshal(b.items)
		b.mu.Unlock()
		w.Header().Set("Cache-Control", "max-age=300")
		w.Write(items)
	case r.URL.Path == "/v1/items" && r.Method == http.MethodPost:
		body, _ := io.ReadAll(r.Body)
		b.mu.Lock()
		b.items = append(b.items, string(body))
		b.mu.Unlock()
		w.Header().Set("Location", "/v1/items/"+strconv.Itoa(len(b.items)))
		w.WriteHeader(http.StatusCreated)
	default:
		w.WriteHeader(http.StatusNotFound)
		fmt.Fprint(w, `{"error": "no such thing"}`)
	}
}

var etagConfig = testGlobals("") + `https://api.localhost:{$RESTGATE_HTTPS_PORT} {
	tls internal
	api_errors
	api_auth {
		keys_file {$RESTGATE_DATA}/api-keys.yaml
	}
	api_etag {
		require_if_match /v1/counter
		max_body 4KiB
		cache
	}
	reverse_proxy 127.0.0.1:%d
}
`

// incrementAll runs clients concurrent increment loops of each
// increments, client i through clientFor(i), and fails the test on the
// first error.
func incrementAll(t *testing.T, clients, each int, clientFor func(i int) *http.Client, spellings ...string) {
	t.Helper()
	runIncrements(t, clients, each, func(i int) (*http.Client, []string) { return clientFor(i), spellings })
}

// runIncrements runs clients concurrent increment loops of each
// increments, client i through the client and the spellings of the URL
// that via(i) gives, and fails the test on the first error.
func runIncrements(t *testing.T, clients, each int, via func(i int) (*http.Client, []string)) {
	t.Helper()
	var wg sync.WaitGroup
	errs := make(chan error, clients)
	for i := range clients {
		c, spellings := via(i)
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- increment(c, each, bearer("tester"), spellings...)
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
}

// exactIncrements runs 50 clients × 20 If-Match increments (see
// runIncrements) and checks that count ends at exactly 1,000 (it must
// start at 0).
func exactIncrements(t *testing.T, count func() int, via func(i int) (*http.Client, []string)) {
	t.Helper()
	const clients, each = 50, 20
	start := time.Now()
	runIncrements(t, clients, each, via)
	if n := count(); n != clients*each {
		t.Errorf("counter = %d after %d acknowledged increments", n, clients*each)
	}
	t.Logf("%d clients × %d increments: counter %d in %v", clients, each, count(), time.Since(start).Round(time.Millisecond))
}

// increment does GET → +1 → PUT with If-Match, retrying on 412 (and on a
// 503 for a busy lock) with a jittered backoff that grows with each loss,
// n times, within five minutes (fifty clients on one resource on a loaded
// 2-core machine take ~10–60 s; a client that keeps losing must not fail
// the test, only a client that makes no progress at all). Each try uses
// the next of the spellings of the URL.
func increment(c *http.Client, n int, auth []string, spellings ...string) error {
	deadline := time.Now().Add(5 * time.Minute)
	losses := 0
	for done, try := 0, 0; done < n; try++ {
		if time.Now().After(deadline) {
			return fmt.Errorf("%d of %d increments done after five minutes of 412s", done, n)
		}
		url := spellings[try%len(spellings)]
		g, err := Send(c, "GET", url, "", auth...)
		if err != nil {
			return err
		}
		var v struct{ N int }
		if err := json.Unmarshal(g.Body, &v); err != nil {
			return fmt.Errorf("GET %s: %v: %s", url, err, g.Body)
		}
		body := fmt.Sprintf(`{"n": %d}`, v.N+1)
		p, err := Send(c, "PUT", url, body, append(auth, "If-Match", g.Header.Get("ETag"))...)
		if err != nil {
			return err
		}
		switch {
		case p.StatusCode == 200:
			done, losses = done+1, 0
		case p.StatusCode == 412, p.StatusCode == 503 && strings.Contains(string(p.Body), "resource_busy"):
			// someone else won: back off (up to 64 ms, jittered), read again
			losses++
			time.Sleep(time.Duration(rand.IntN(1<<min(losses, 6)+1)) * time.Millisecond)
		default:
			return fmt.Errorf("PUT: %d %s", p.StatusCode, p.Body)
		}
	}
	return nil
}

func TestETagWithPlainBackend(t *testing.T) {
	backend, port := startPlainBackend(t)
	g := StartGateway(t, fmt.Sprintf(etagConfig, port), Options{})
	c := g.Client()
	url := g.URL("/v1/counter")

	r := Do(t, c, "GET", url, "", bearer("tester")...)
	etag := r.Header.Get("ETag")
	if r.StatusCode != 200 || len(etag) != 18 {
		t.Fatalf("GET: %d ETag %q", r.StatusCode, etag)
	}
	nm := Do(t, c, "GET", url, "", append(bearer("tester"), "If-None-Match", etag)...)
	if nm.StatusCode != 304 || len(nm.Body) != 0 || nm.Header.Get("ETag") != etag {
		t.Errorf("If-None-Match: %d %q", nm.StatusCode, nm.Header.Get("ETag"))
	}
	AssertProblem(t, Do(t, c, "PUT", url, `{"n": 5}`, bearer("tester")...), 428)
	m := AssertProblem(t, Do(t, c, "PUT", url, `{"n": 5}`, append(bearer("tester"), "If-Match", `"stale"`)...), 412)
	if !strings.Contains(fmt.Sprint(m["detail"]), "GET it again") {
		t.Errorf("412 detail: %v", m["detail"])
	}
	p := Do(t, c, "PUT", url, `{"n": 5}`, append(bearer("tester"), "If-Match", etag)...)
	if p.StatusCode != 200 || p.Header.Get("ETag") == "" || p.Header.Get("ETag") == etag {
		t.Fatalf("PUT: %d ETag %q", p.StatusCode, p.Header.Get("ETag"))
	}
	if g2 := Do(t, c, "GET", url, "", bearer("tester")...); g2.Header.Get("ETag") != p.Header.Get("ETag") {
		t.Errorf("the PUT's ETag %q is not the GET's %q", p.Header.Get("ETag"), g2.Header.Get("ETag"))
	}
	// a 404 stays a 404 whatever the preconditions
	AssertProblem(t, Do(t, c, "GET", g.URL("/v1/nothing"), "", append(bearer("tester"), "If-None-Match", "*")...), 404)

	// one resource, five spellings: one lock
	spellings := []string{url, g.URL("//v1/counter"), g.URL("/v1/./counter"), g.URL("/v1/x/../counter"), g.URL("/v1//counter"),
		strings.Replace(url, "api.localhost", "API.Localhost", 1)}
	t.Run("no lost update", func(t *testing.T) {
		backend.mu.Lock()
		backend.counter = 0
		backend.mu.Unlock()
		exactIncrements(t, backend.count, func(int) (*http.Client, []string) { return c, spellings })
	})

	t.Run("principals never share", func(t *testing.T) {
		for i := 0; i < 3; i++ {
			for _, user := range []string{"alice", "bob"} {
				r := Do(t, c, "GET", g.URL("/v1/me"), "", bearer(user)...)
				if want := fmt.Sprintf(`{"user": %q}`, user); string(r.Body) != want {
					t.Fatalf("%s got %s", user, r.Body)
				}
				if !strings.HasPrefix(r.Header.Get("Cache-Control"), "private") {
					t.Errorf("%s's response: Cache-Control %q", user, r.Header.Get("Cache-Control"))
				}
				if cs := r.Header.Get("Cache-Status"); strings.Contains(cs, user) || strings.Contains(cs, "/v1/me") {
					t.Errorf("Cache-Status reveals the key: %q", cs)
				}
			}
		}
		if n := backend.meGets.Load(); n != 2 {
			t.Errorf("backend saw %d GETs of /v1/me, want 2 (one per user, then hits)", n)
		}
	})

	t.Run("the lock never fails open", func(t *testing.T) {
		before := backend.writes.Load()
		for range 20 {
			// larger than max_body: hashed as a stream, so a wrong tag is refused
			AssertProblem(t, Do(t, c, "PUT", g.URL("/v1/big"), `{}`, append(bearer("tester"), "If-Match", `"wrong"`)...), 412)
			// the backend's GET fails: the gateway cannot decide, so nothing is written
			AssertProblem(t, Do(t, c, "PUT", g.URL("/v1/broken"), `{}`, append(bearer("tester"), "If-Match", `"anything"`)...), 503)
		}
		if n := backend.writes.Load() - before; n != 0 {
			t.Errorf("%d conditional writes the gateway could not check reached the backend", n)
		}
	})

	t.Run("a backend with ETags that ignores If-Match", func(t *testing.T) {
		const clients, each = 10, 10
		incrementAll(t, clients, each, func(int) *http.Client { return c }, g.URL("/v1/tagged"))
		backend.mu.Lock()
		defer backend.mu.Unlock()
		if backend.tagged != clients*each {
			t.Errorf("counter = %d after %d acknowledged increments", backend.tagged, clients*each)
		}
	})

	t.Run("create-only is decided for a backend without ETags", func(t *testing.T) {
		var wg sync.WaitGroup
		var created, refused atomic.Int64
		for range 20 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				r, err := Send(c, "PUT", g.URL("/v1/docs/new"), `{"v": 1}`, append(bearer("tester"), "If-None-Match", "*")...)
				switch {
				case err != nil:
					t.Error(err)
				case r.StatusCode == 200:
					created.Add(1)
				case r.StatusCode == 412:
					refused.Add(1)
				default:
					t.Errorf("PUT If-None-Match: *: %d %s", r.StatusCode, r.Body)
				}
			}()
		}
		wg.Wait()
		if created.Load() != 1 || refused.Load() != 19 {
			t.Errorf("%d created, %d refused; want 1 and 19", created.Load(), refused.Load())
		}
	})

	t.Run("a slow upload does not hold the lock", func(t *testing.T) {
		Do(t, c, "PUT", g.URL("/v1/docs/slow"), `{"v": 0}`, bearer("tester")...)
		etag := Do(t, c, "GET", g.URL("/v1/docs/slow"), "", bearer("tester")...).Header.Get("ETag")
		pr, pw := io.Pipe()
		req, _ := http.NewRequest("PUT", g.URL("/v1/docs/slow"), pr)
		req.Header.Set("Authorization", bearer("alice")[1])
		req.Header.Set("If-Match", etag)
		req.Header.Set("Content-Type", "application/json")
		slow := make(chan int, 1)
		go func() {
			resp, err := c.Do(req)
			if err != nil {
				slow <- 0
				return
			}
			resp.Body.Close()
			slow <- resp.StatusCode
		}()
		pw.Write([]byte(`{"v":`)) // the upload has started, and stalls
		start := time.Now()
		r := Do(t, c, "PUT", g.URL("/v1/docs/slow"), `{"v": 2}`, append(bearer("bob"), "If-Match", etag)...)
		if r.StatusCode != 200 || time.Since(start) > 5*time.Second {
			t.Errorf("the other writer got %d after %v, want 200 at once", r.StatusCode, time.Since(start).Round(time.Millisecond))
		}
		pw.Write([]byte(` 1}`))
		pw.Close()
		select {
		case got := <-slow:
			if got != 412 {
				t.Errorf("the slow upload got %d, want 412 (its ETag went stale meanwhile)", got)
			}
		case <-time.After(20 * time.Second):
			t.Fatal("the slow upload never finished")
		}
	})

	t.Run("one resource, one cache entry", func(t *testing.T) {
		Do(t, c, "GET", g.URL("/v1/items"), "", bearer("tester")...)
		if r := Do(t, c, "GET", g.URL("//v1/./items"), "", bearer("tester")...); r.Header.Get("Cache-Status") != "restgate; hit" {
			t.Errorf("another spelling missed the entry: %q", r.Header.Get("Cache-Status"))
		}
		if r := Do(t, c, "POST", g.URL("/v1//items"), `"y"`, bearer("bob")...); r.StatusCode != 201 {
			t.Fatalf("POST: %d", r.StatusCode)
		}
		if r := Do(t, c, "GET", g.URL("/v1/items"), "", bearer("tester")...); !strings.Contains(string(r.Body), "y") {
			t.Errorf("a write through another spelling left a stale entry: %s", r.Body)
		}
		// an encoded slash names no resource the gateway can be sure of
		AssertProblem(t, Do(t, c, "GET", g.URL("/v1/items/a%2Fb"), "", bearer("tester")...), 400)
	})

	t.Run("writes invalidate the collection", func(t *testing.T) {
		first := Do(t, c, "GET", g.URL("/v1/items"), "", bearer("tester")...)
		if hit := Do(t, c, "GET", g.URL("/v1/items"), "", bearer("tester")...); hit.Header.Get("Cache-Status") != "restgate; hit" || hit.Header.Get("Age") == "" {
			t.Fatalf("second GET: Cache-Status %q", hit.Header.Get("Cache-Status"))
		}
		if r := Do(t, c, "POST", g.URL("/v1/items"), `"x"`, bearer("bob")...); r.StatusCode != 201 {
			t.Fatalf("POST: %d", r.StatusCode)
		}
		after := Do(t, c, "GET", g.URL("/v1/items"), "", bearer("tester")...)
		if string(after.Body) == string(first.Body) || !strings.Contains(string(after.Body), "x") {
			t.Errorf("listing after another user's POST: %s (was %s)", after.Body, first.Body)
		}
	})
}

func TestETagWithResourcesBackend(t *testing.T) {
	g := StartGateway(t, repoFile(t, "Caddyfile"), Options{})
	c := g.Client()
	auth := bearer("tester")
	if r := Do(t, c, "POST", g.URL("/v1/events"), `{"name": "counter", "meta": {"n": 0}}`, auth...); r.StatusCode != 201 {
		t.Fatalf("create: %d %s", r.StatusCode, r.Body)
	}
	url := g.URL("/v1/events/counter")
	r := Do(t, c, "GET", url, "", auth...)
	etag := r.Header.Get("ETag")
	if nm := Do(t, c, "GET", url, "", append(auth, "If-None-Match", etag)...); nm.StatusCode != 304 {
		t.Errorf("If-None-Match: %d", nm.StatusCode)
	}
	AssertProblem(t, Do(t, c, "PATCH", url, `{"repository": "x"}`, append(auth, "If-Match", `"stale"`)...), 412)

	// lost updates, decided by the backend inside its transaction
	const clients, each = 10, 10
	var wg sync.WaitGroup
	errs := make(chan error, clients)
	for i := 0; i < clients; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			deadline := time.Now().Add(5 * time.Minute)
			for done := 0; done < each; {
				if time.Now().After(deadline) {
					errs <- fmt.Errorf("%d of %d increments done after five minutes of 412s", done, each)
					return
				}
				g, err := Send(c, "GET", url, "", auth...)
				if err != nil {
					errs <- err
					return
				}
				var v struct{ Meta struct{ N int } }
				_ = json.Unmarshal(g.Body, &v)
				p, err := Send(c, "PATCH", url, fmt.Sprintf(`{"meta": {"n": %d}}`, v.Meta.N+1), append(auth, "If-Match", g.Header.Get("ETag"))...)
				if err != nil {
					errs <- err
					return
				}
				switch {
				case p.StatusCode == 200:
					done++
				case p.StatusCode == 412, p.StatusCode == 503 && strings.Contains(string(p.Body), "resource_busy"):
					time.Sleep(time.Duration(rand.IntN(8)+1) * time.Millisecond) // someone else won
				default:
					errs <- fmt.Errorf("PATCH: %d %s", p.StatusCode, p.Body)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	var v struct{ Meta struct{ N int } }
	_ = json.Unmarshal(Do(t, c, "GET", url, "", auth...).Body, &v)
	if v.Meta.N != clients*each {
		t.Errorf("n = %d after %d acknowledged increments", v.Meta.N, clients*each)
	}
}

// TestCacheKeyHasTheScopes: an answer made for one key of a user is not
// served to another key of the same user with fewer scopes.
func TestCacheKeyHasTheScopes(t *testing.T) {
	_, port := startPlainBackend(t)
	dir := t.TempDir()
	const readOnly = "rg_test_alice_readonly_00000000000000000007"
	var keys strings.Builder
	keys.WriteString("keys:\n")
	keys.WriteString(keyEntry("alice", testKeys["admin"].token, []string{"read", "write", "admin"}))
	keys.WriteString(keyEntry("alice", readOnly, []string{"read"}))
	if err := os.WriteFile(filepath.Join(dir, "api-keys.yaml"), []byte(keys.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	g := StartGateway(t, fmt.Sprintf(etagConfig, port), Options{Dir: dir})
	c := g.Client()
	admin := Do(t, c, "GET", g.URL("/v1/whoami"), "", "Authorization", "Bearer "+testKeys["admin"].token)
	if !strings.Contains(string(admin.Body), "admin") {
		t.Fatalf("admin key: %s", admin.Body)
	}
	ro := Do(t, c, "GET", g.URL("/v1/whoami"), "", "Authorization", "Bearer "+readOnly)
	if strings.Contains(string(ro.Body), "admin") || ro.Header.Get("Cache-Status") == "restgate; hit" {
		t.Errorf("the read-only key got the admin key's answer: %s (%s)", ro.Body, ro.Header.Get("Cache-Status"))
	}
}
