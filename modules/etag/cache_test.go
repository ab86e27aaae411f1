package etag

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// scripted is an origin whose every answer the test writes: answer n (from
// 0) is script(n, request). It records what it was sent.
type scripted struct {
	script func(n int, r *http.Request) (status int, hdr http.Header, body string)
	mu     sync.Mutex
	seen   []*http.Request
}

func (s *scripted) ServeHTTP(w http.ResponseWriter, r *http.Request) error {
	s.mu.Lock()
	n := len(s.seen)
	s.seen = append(s.seen, r)
	s.mu.Unlock()
	status, hdr, body := s.script(n, r)
	for k, v := range hdr {
		w.Header()[k] = v
	}
	w.WriteHeader(status)
	_, _ = io.WriteString(w, body)
	return nil
}

func (s *scripted) calls() int { s.mu.Lock(); defer s.mu.Unlock(); return len(s.seen) }

// at formats a time as an IMF-fixdate.
func at(t time.Time) string { return t.UTC().Format(http.TimeFormat) }

// TestRFC9111 drives the cache with a scripted origin, as a conformance
// suite does: each row scripts the origin's answers, sends requests
// through the cache and checks what it served and what it forwarded.
func TestRFC9111(t *testing.T) {
	start := time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)
	type req struct {
		user    string
		headers []string
		advance time.Duration // before the request
	}
	tests := []struct {
		name      string
		script    func(n int, r *http.Request) (int, http.Header, string)
		requests  []req
		wantCalls int                                                 // how many reached the origin
		check     func(t *testing.T, last *httptest.ResponseRecorder) // the last response
	}{
		{
			name: "§3.2 §4.3.4 a 304 updates every stored header it carries",
			script: func(n int, r *http.Request) (int, http.Header, string) {
				if n == 0 {
					return 200, http.Header{"Cache-Control": {"max-age=1"}, "Etag": {`"v1"`}, "X-Custom": {"first"}, "Content-Type": {"text/plain"}}, "body"
				}
				return 304, http.Header{"Cache-Control": {"max-age=60"}, "Etag": {`"v1"`}, "X-Custom": {"second"}, "X-New": {"added"}}, ""
			},
			requests:  []req{{}, {advance: 2 * time.Second}, {advance: time.Second}},
			wantCalls: 2,
			check: func(t *testing.T, w *httptest.ResponseRecorder) {
				if w.Header().Get("X-Custom") != "second" || w.Header().Get("X-New") != "added" || w.Body.String() != "body" {
					t.Errorf("after the 304: X-Custom %q, X-New %q, body %q", w.Header().Get("X-Custom"), w.Header().Get("X-New"), w.Body)
				}
				if w.Header().Get("Cache-Status") != statusHit {
					t.Errorf("the refreshed entry was not fresh: %q", w.Header().Get("Cache-Status"))
				}
			},
		},
		{
			name: "§3.1 a hit keeps the origin's Date",
			script: func(int, *http.Request) (int, http.Header, string) {
				return 200, http.Header{"Cache-Control": {"max-age=600"}, "Date": {at(start)}}, "x"
			},
			requests:  []req{{}, {advance: 30 * time.Second}},
			wantCalls: 1,
			check: func(t *testing.T, w *httptest.ResponseRecorder) {
				if w.Header().Get("Date") != at(start) {
					t.Errorf("Date = %q, want the origin's %q", w.Header().Get("Date"), at(start))
				}
			},
		},
		{
			name: "§5.3 Expires with two spaces is already expired",
			script: func(int, *http.Request) (int, http.Header, string) {
				return 200, http.Header{"Expires": {"Sun, 01 Nov 2026  13:00:00 GMT"}, "Date": {at(start)}}, "x"
			},
			requests: []req{{}, {}}, wantCalls: 2,
		},
		{
			name: "§5.3 Expires with a one-digit hour is already expired",
			script: func(int, *http.Request) (int, http.Header, string) {
				return 200, http.Header{"Expires": {"Sun, 01 Nov 2026 1:00:00 GMT"}, "Date": {at(start)}}, "x"
			},
			requests: []req{{}, {}}, wantCalls: 2,
		},
		{
			name: "§5.3 Expires on several lines is already expired",
			script: func(int, *http.Request) (int, http.Header, string) {
				return 200, http.Header{"Expires": {at(start.Add(time.Hour)), at(start.Add(2 * time.Hour))}, "Date": {at(start)}}, "x"
			},
			requests: []req{{}, {}}, wantCalls: 2,
		},
		{
			name: "§5.3 a valid Expires is fresh",
			script: func(int, *http.Request) (int, http.Header, string) {
				return 200, http.Header{"Expires": {at(start.Add(time.Hour))}, "Date": {at(start)}}, "x"
			},
			requests: []req{{}, {}}, wantCalls: 1,
		},
		{
			name: "§5.1 Age 7200, 0 is read by its first value",
			script: func(int, *http.Request) (int, http.Header, string) {
				return 200, http.Header{"Cache-Control": {"max-age=3600"}, "Age": {"7200, 0"}}, "x"
			},
			requests: []req{{}, {}}, wantCalls: 2,
		},
		{
			name: "§4.2.3 the apparent age counts",
			script: func(int, *http.Request) (int, http.Header, string) {
				// sent two hours ago by the origin's clock, fresh for one
				return 200, http.Header{"Cache-Control": {"max-age=3600"}, "Date": {at(start.Add(-2 * time.Hour))}}, "x"
			},
			requests: []req{{}, {}}, wantCalls: 2,
		},
		{
			name: "§3.5 Basic credentials: not stored, not served to the next anonymous request",
			script: func(n int, r *http.Request) (int, http.Header, string) {
				return 200, http.Header{"Cache-Control": {"max-age=60"}}, "for " + r.Header.Get("Authorization")
			},
			requests:  []req{{headers: []string{"Authorization", "Basic YWxpY2U6cGFzcw=="}}, {}},
			wantCalls: 2,
			check: func(t *testing.T, w *httptest.ResponseRecorder) {
				if strings.Contains(w.Body.String(), "Basic") {
					t.Errorf("an anonymous request got the Basic-authenticated response: %s", w.Body)
				}
			},
		},
		{
			name: "§3.5 a keyed user's request with Authorization is not served to the same user without",
			script: func(n int, r *http.Request) (int, http.Header, string) {
				return 200, http.Header{"Cache-Control": {"max-age=60"}}, "auth=" + r.Header.Get("Authorization")
			},
			requests: []req{
				{user: "alice", headers: []string{"Authorization", "Digest username=alice"}},
				{user: "alice"},
				{user: "alice", headers: []string{"Authorization", "Digest username=alice"}},
			},
			wantCalls: 3,
		},
		{
			name: "§3.5 with public, a response to a credentialed request is shared",
			script: func(n int, r *http.Request) (int, http.Header, string) {
				return 200, http.Header{"Cache-Control": {"public, max-age=60"}}, "public"
			},
			requests:  []req{{headers: []string{"Authorization", "Basic YWxpY2U6cGFzcw=="}}, {}},
			wantCalls: 1,
		},
		{
			name: "RFC 9211 an upstream cache's Cache-Status entry is kept and ours added",
			script: func(int, *http.Request) (int, http.Header, string) {
				return 200, http.Header{"Cache-Control": {"max-age=60"}, "Cache-Status": {"upstream; hit"}}, "x"
			},
			requests:  []req{{}},
			wantCalls: 1,
			check: func(t *testing.T, w *httptest.ResponseRecorder) {
				if got := strings.Join(w.Header().Values("Cache-Status"), ", "); got != "upstream; hit, "+statusMissStored {
					t.Errorf("Cache-Status = %q", got)
				}
			},
		},
		{
			name: "RFC 9211 a client's no-cache is fwd=request",
			script: func(int, *http.Request) (int, http.Header, string) {
				return 200, http.Header{"Cache-Control": {"max-age=60"}}, "x"
			},
			requests:  []req{{}, {headers: []string{"Cache-Control", "no-cache"}}},
			wantCalls: 2,
			check: func(t *testing.T, w *httptest.ResponseRecorder) {
				if got := w.Header().Get("Cache-Status"); !strings.HasPrefix(got, statusRequest) {
					t.Errorf("Cache-Status = %q, want fwd=request", got)
				}
			},
		},
		{
			name: "§5.2.2.7 a keyed user's max-age response is stored for that user and leaves private",
			script: func(int, *http.Request) (int, http.Header, string) {
				return 200, http.Header{"Cache-Control": {"max-age=60"}}, "mine"
			},
			requests:  []req{{user: "alice"}, {user: "alice"}},
			wantCalls: 1,
			check: func(t *testing.T, w *httptest.ResponseRecorder) {
				if w.Header().Get("Cache-Control") != "private, max-age=60" || w.Header().Get("Cache-Status") != statusHit {
					t.Errorf("Cache-Control %q, Cache-Status %q", w.Header().Get("Cache-Control"), w.Header().Get("Cache-Status"))
				}
			},
		},
		{
			name: "§5.2.2.7 a private response is not stored by the shared cache",
			script: func(int, *http.Request) (int, http.Header, string) {
				return 200, http.Header{"Cache-Control": {"private, max-age=60"}}, "mine"
			},
			requests:  []req{{user: "alice"}, {user: "alice"}},
			wantCalls: 2,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h, clk := newETag(t, "api_etag {\n cache\n}")
			clk.Set(start)
			o := &scripted{script: tt.script}
			var last *httptest.ResponseRecorder
			for _, rq := range tt.requests {
				clk.Add(rq.advance)
				w, err := call(h, o, "GET", "/v1/doc", rq.user, "", rq.headers...)
				if err != nil {
					t.Fatal(err)
				}
				last = w
			}
			if got := o.calls(); got != tt.wantCalls {
				t.Errorf("%d requests reached the origin, want %d", got, tt.wantCalls)
			}
			if tt.check != nil {
				tt.check(t, last)
			}
		})
	}
}

// TestRevalidationIsRaceFree: while one request refreshes an entry from a
// 304, others read it (run with -race: stored entries are immutable).
func TestRevalidationIsRaceFree(t *testing.T) {
	h, clk := newETag(t, "api_etag {\n cache\n}")
	o := &scripted{script: func(n int, r *http.Request) (int, http.Header, string) {
		if n == 0 {
			return 200, http.Header{"Cache-Control": {"max-age=1"}, "Etag": {`"v"`}}, "body"
		}
		return 304, http.Header{"Cache-Control": {"max-age=1"}, "Etag": {`"v"`}}, ""
	}}
	call(h, o, "GET", "/r", "", "")
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 50 {
				clk.Add(300 * time.Millisecond)
				if w, err := call(h, o, "GET", "/r", "", ""); err != nil || w.Body.String() != "body" {
					t.Errorf("read: %v %q", err, w.Body)
					return
				}
			}
		}()
	}
	wg.Wait()
}

// TestScopesAreInTheCacheKey: a response made for an admin key is not
// served to a read-only key of the same user.
func TestScopesAreInTheCacheKey(t *testing.T) {
	h, _ := newETag(t, "api_etag {\n cache\n}")
	o := &scripted{script: func(n int, r *http.Request) (int, http.Header, string) {
		return 200, http.Header{"Cache-Control": {"max-age=60"}}, "for " + r.Header.Get("X-Auth-Scopes")
	}}
	get := func(scopes string) string {
		r := httptest.NewRequest("GET", "/v1/report", nil)
		r.Host = "api.example.com"
		repl := caddy.NewReplacer()
		repl.Set("http.auth.user.id", "alice")
		repl.Set("http.auth.user.scopes", scopes)
		r.Header.Set("X-Auth-Scopes", scopes)
		r = r.WithContext(context.WithValue(r.Context(), caddy.ReplacerCtxKey, repl))
		w := httptest.NewRecorder()
		_ = h.ServeHTTP(w, r, o)
		return w.Body.String()
	}
	get("read admin")
	if got := get("read"); got != "for read" {
		t.Errorf("the read-only key got %q", got)
	}
	if get("read admin") != "for read admin" || o.calls() != 2 {
		t.Errorf("the admin key's answer was not cached for it: %d calls", o.calls())
	}
}

// TestSpellingsShareOneEntry: a write through any spelling of a resource
// invalidates what was stored under every other one.
func TestSpellingsShareOneEntry(t *testing.T) {
	h, _ := newETag(t, "api_etag {\n cache\n}")
	o := &origin{docs: map[string]string{"/v1/e/1": "1"}, headers: http.Header{"Cache-Control": {"max-age=600"}}}
	call(h, o, "GET", "/v1/e/1", "", "")
	for _, spelling := range []string{"//v1/e/1", "/v1/./e/1", "/v1/e/../e/1"} {
		w, _ := call(h, o, "GET", spelling, "", "")
		if w.Header().Get("Cache-Status") != statusHit {
			t.Errorf("GET %s: %q, want a hit on the one entry", spelling, w.Header().Get("Cache-Status"))
		}
	}
	// the origin sees the canonical path (api_errors normalises it first)
	o.docs["/v1/e/1"] = "2"
	call(h, o, "PUT", "//v1/./e/1", "", "2")
	if w, _ := call(h, o, "GET", "/v1/e/1", "", ""); w.Body.String() != "2" {
		t.Errorf("a write through another spelling left %q cached", w.Body)
	}
}

// TestCacheMemory: a flood of distinct URLs keeps the heap within twice
// max_size plus a fixed allowance: the accounting counts what an entry
// really holds.
func TestCacheMemory(t *testing.T) {
	const maxSize = 16 << 20
	h, _ := newETag(t, "api_etag {\n cache {\n  max_size 16MiB\n }\n}")
	o := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		w.Header().Set("Cache-Control", "max-age=600")
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"id":1}`)
		return nil
	})
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	for i := range 100_000 {
		call(h, o, "GET", fmt.Sprintf("/v1/things/%d?page=%d", i, i), "", "")
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	growth := int64(after.HeapAlloc) - int64(before.HeapAlloc)
	t.Logf("100,000 distinct URLs: heap +%.1f MiB, %d entries, %.1f MiB counted", float64(growth)/(1<<20), h.store.len(), float64(h.store.bytes)/(1<<20))
	if growth > 2*maxSize+8<<20 {
		t.Errorf("heap grew %.1f MiB with max_size 16 MiB, want at most 2×16 + 8 MiB", float64(growth)/(1<<20))
	}
}

// TestLockFailsClosed: when the gateway must decide a precondition and
// cannot read the resource, nothing is forwarded.
func TestLockFailsClosed(t *testing.T) {
	h, _ := newETag(t, "api_etag {\n max_body 1KiB\n}")
	var writes atomic.Int64
	for _, tt := range []struct {
		name    string
		getter  func(w http.ResponseWriter)
		ifMatch string
		want    int
	}{
		{"the backend's GET fails", func(w http.ResponseWriter) { w.WriteHeader(500) }, `"anything"`, 503},
		{"the backend's GET is refused", func(w http.ResponseWriter) { w.WriteHeader(403) }, `"anything"`, 503},
		// larger than max_body: hashed as a stream, so a wrong tag is a 412
		{"a resource larger than max_body", func(w http.ResponseWriter) { _, _ = io.WriteString(w, strings.Repeat("x", 4096)) }, `"wrong"`, 412},
	} {
		t.Run(tt.name, func(t *testing.T) {
			o := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
				if r.Method == "GET" {
					tt.getter(w)
					return nil
				}
				writes.Add(1)
				return nil
			})
			for range 20 {
				w, err := call(h, o, "PUT", "/v1/x", "", "{}", "If-Match", tt.ifMatch)
				if got := statusOf(w, err); got != tt.want {
					t.Fatalf("PUT: %d, want %d", got, tt.want)
				}
			}
			if writes.Load() != 0 {
				t.Errorf("%d writes reached the backend", writes.Load())
			}
		})
	}
}

// TestGatewayComparesBackendETags: a backend that sends ETags but ignores
// If-Match is protected by the gateway's own comparison; the precondition
// is still forwarded for backends that check it.
func TestGatewayComparesBackendETags(t *testing.T) {
	h, _ := newETag(t, "api_etag")
	var mu sync.Mutex
	n, version := 0, 1
	var forwarded atomic.Int64
	o := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		mu.Lock()
		defer mu.Unlock()
		w.Header().Set("ETag", fmt.Sprintf(`"v%d"`, version))
		if r.Method == "PUT" { // ignores If-Match
			if r.Header.Get("If-Match") != "" {
				forwarded.Add(1)
			}
			b, _ := io.ReadAll(r.Body)
			fmt.Sscan(string(b), &n)
			version++
			w.Header().Set("ETag", fmt.Sprintf(`"v%d"`, version))
		}
		fmt.Fprint(w, n)
		return nil
	})
	acked := incrementConcurrently(t, h, o, 10, 10)
	if n != 100 || acked != 100 {
		t.Errorf("counter = %d after %d acknowledged increments, want 100", n, acked)
	}
	if forwarded.Load() != 100 {
		t.Errorf("If-Match forwarded on %d of 100 writes, want all", forwarded.Load())
	}
}

// TestCreateOnlyIsDecided: If-None-Match: * on a PUT creates once, for a
// backend that knows nothing of preconditions.
func TestCreateOnlyIsDecided(t *testing.T) {
	h, _ := newETag(t, "api_etag")
	o := &origin{docs: map[string]string{}}
	var wg sync.WaitGroup
	var created atomic.Int64
	for range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			w, err := call(h, o, "PUT", "/v1/e/new", "", "{}", "If-None-Match", "*")
			switch statusOf(w, err) {
			case 200:
				created.Add(1)
			case 412:
			default:
				t.Errorf("PUT If-None-Match: *: %d", statusOf(w, err))
			}
		}()
	}
	wg.Wait()
	if created.Load() != 1 {
		t.Errorf("%d of 20 create-only PUTs succeeded, want 1", created.Load())
	}
}

// TestSlowUploadDoesNotHoldTheLock: the body is read before the lock is
// taken, so another writer is not kept waiting for it.
func TestSlowUploadDoesNotHoldTheLock(t *testing.T) {
	h, _ := newETag(t, "api_etag")
	o := &origin{docs: map[string]string{"/v1/e/1": "{}"}}
	g, _ := call(h, o, "GET", "/v1/e/1", "", "")
	etag := g.Header().Get("ETag")
	pr, pw := io.Pipe()
	slowDone := make(chan int, 1)
	go func() {
		r := httptest.NewRequest("PUT", "/v1/e/1", pr)
		r.Header.Set("If-Match", etag)
		r = r.WithContext(context.WithValue(r.Context(), caddy.ReplacerCtxKey, caddy.NewReplacer()))
		w := httptest.NewRecorder()
		slowDone <- statusOf(w, h.ServeHTTP(w, r, o))
	}()
	_, _ = pw.Write([]byte(`{"slow":`)) // the slow body has started
	fast := make(chan int, 1)
	go func() {
		w, err := call(h, o, "PUT", "/v1/e/1", "", `{"fast":1}`, "If-Match", etag)
		fast <- statusOf(w, err)
	}()
	select {
	case got := <-fast:
		if got != 200 {
			t.Errorf("the fast writer got %d, want 200", got)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the fast writer waited for the slow upload's body")
	}
	_, _ = pw.Write([]byte(`1}`))
	_ = pw.Close()
	select {
	case got := <-slowDone:
		if got != 412 { // its ETag is now stale
			t.Errorf("the slow writer got %d, want 412", got)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the slow writer never finished")
	}
}
