package etag

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/restgate/restgate/internal/testclock"
)

// origin is a backend that knows nothing of ETags: a map of path → body,
// per user when the identity header says so. It counts the GETs it serves.
type origin struct {
	mu       sync.Mutex
	docs     map[string]string
	headers  http.Header // extra response headers for GETs
	gets     atomic.Int64
	perUser  bool
	withETag bool // behave as a backend with its own ETags
}

func (o *origin) ServeHTTP(w http.ResponseWriter, r *http.Request) error {
	key := r.URL.Path
	if o.perUser {
		key = r.Header.Get("X-Auth-User") + key
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	switch r.Method {
	case http.MethodGet:
		o.gets.Add(1)
		body, ok := o.docs[key]
		if !ok {
			w.WriteHeader(http.StatusNotFound)
			return nil
		}
		for k, v := range o.headers {
			w.Header()[k] = v
		}
		if o.withETag {
			w.Header().Set("ETag", `"origin-`+fmt.Sprint(len(body))+`"`)
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, body)
	case http.MethodPut:
		b, _ := io.ReadAll(r.Body)
		if o.withETag && r.Header.Get("If-Match") != "" && r.Header.Get("If-Match") != `"origin-`+fmt.Sprint(len(o.docs[key]))+`"` {
			w.WriteHeader(http.StatusPreconditionFailed)
			return nil
		}
		o.docs[key] = string(b)
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(b)
	case http.MethodDelete:
		delete(o.docs, key)
		w.WriteHeader(http.StatusNoContent)
	case http.MethodPost:
		o.docs[key+"/new"] = "{}"
		w.Header().Set("Location", key+"/new")
		w.WriteHeader(http.StatusCreated)
	}
	return nil
}

func newETag(t testing.TB, cfg string) (*Handler, *testclock.Clock) {
	t.Helper()
	h := new(Handler)
	if err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(cfg)); err != nil {
		t.Fatal(err)
	}
	c := testclock.New(time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC), time.Millisecond)
	h.now = c.Now
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	t.Cleanup(cancel)
	if err := h.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	h.logger = zap.NewNop()
	if err := h.Validate(); err != nil {
		t.Fatal(err)
	}
	return h, c
}

// call sends a request through h to o as user (anonymous if "").
func call(h *Handler, o caddyhttp.Handler, method, path, user, body string, headers ...string) (*httptest.ResponseRecorder, error) {
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	r := httptest.NewRequest(method, path, rd)
	r.Host = "api.example.com"
	for i := 0; i+1 < len(headers); i += 2 {
		r.Header.Add(headers[i], headers[i+1])
	}
	repl := caddy.NewReplacer()
	if user != "" {
		repl.Set("http.auth.user.id", user)
		r.Header.Set("X-Auth-User", user)
	}
	r = r.WithContext(context.WithValue(r.Context(), caddy.ReplacerCtxKey, repl))
	w := httptest.NewRecorder()
	return w, h.ServeHTTP(w, r, o)
}

func statusOf(w *httptest.ResponseRecorder, err error) int {
	var he caddyhttp.HandlerError
	if errors.As(err, &he) {
		return he.StatusCode
	}
	return w.Code
}

func TestETagsAndConditionalReads(t *testing.T) {
	h, _ := newETag(t, "api_etag")
	o := &origin{docs: map[string]string{"/v1/e/1": `{"n":1}`}}
	w, err := call(h, o, "GET", "/v1/e/1", "", "")
	etag := w.Header().Get("ETag")
	if err != nil || w.Code != 200 || len(etag) != 18 || etag[0] != '"' || w.Body.String() != `{"n":1}` {
		t.Fatalf("GET: %d %q %q %v", w.Code, etag, w.Body, err)
	}
	if w2, _ := call(h, o, "GET", "/v1/e/1", "", ""); w2.Header().Get("ETag") != etag {
		t.Error("the ETag is not stable")
	}
	head, _ := call(h, o, "HEAD", "/v1/e/1", "", "")
	if head.Header().Get("ETag") != etag || head.Body.Len() != 0 || head.Header().Get("Content-Length") != "7" {
		t.Errorf("HEAD: %q %q %q", head.Header().Get("ETag"), head.Body, head.Header().Get("Content-Length"))
	}
	for _, inm := range []string{etag, "W/" + etag, `"x", ` + etag, "*"} {
		w, _ := call(h, o, "GET", "/v1/e/1", "", "", "If-None-Match", inm)
		if w.Code != 304 || w.Body.Len() != 0 || w.Header().Get("ETag") != etag || w.Header().Get("Content-Type") != "" {
			t.Errorf("If-None-Match %s: %d %q %v", inm, w.Code, w.Body, w.Header())
		}
	}
	if w, _ := call(h, o, "GET", "/v1/e/1", "", "", "If-None-Match", `"other"`); w.Code != 200 {
		t.Errorf("stale If-None-Match: %d", w.Code)
	}
	// preconditions apply only to what would otherwise succeed
	if w, _ := call(h, o, "GET", "/v1/e/404", "", "", "If-None-Match", "*"); w.Code != 404 {
		t.Errorf("If-None-Match on a 404: %d", w.Code)
	}
	// a backend's own validators are kept
	o2 := &origin{docs: map[string]string{"/x": "{}"}, withETag: true, headers: http.Header{"Last-Modified": {"Sun, 01 Nov 2026 10:00:00 GMT"}}}
	w, _ = call(h, o2, "GET", "/x", "", "")
	if w.Header().Get("ETag") != `"origin-2"` {
		t.Errorf("backend ETag replaced: %q", w.Header().Get("ETag"))
	}
	if w, _ := call(h, o2, "GET", "/x", "", "", "If-Modified-Since", "Sun, 01 Nov 2026 11:00:00 GMT"); w.Code != 304 {
		t.Errorf("If-Modified-Since: %d", w.Code)
	}
}

func TestLargeAndStreamingPassThrough(t *testing.T) {
	h, _ := newETag(t, "api_etag {\n max_body 1KiB\n}")
	big := strings.Repeat("x", 4096)
	o := &origin{docs: map[string]string{"/big": big}}
	w, err := call(h, o, "GET", "/big", "", "")
	if err != nil || w.Body.String() != big || w.Header().Get("ETag") != "" {
		t.Errorf("large body: %v etag %q len %d", err, w.Header().Get("ETag"), w.Body.Len())
	}
	sse := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		w.Header().Set("Content-Type", "text/event-stream")
		w.WriteHeader(200)
		_, _ = io.WriteString(w, "data: 1\n\n")
		return http.NewResponseController(w).Flush()
	})
	rec, _ := call(h, sse, "GET", "/events", "", "")
	if !rec.Flushed || rec.Header().Get("ETag") != "" {
		t.Errorf("event stream: flushed %v etag %q", rec.Flushed, rec.Header().Get("ETag"))
	}
}

func TestConditionalWrites(t *testing.T) {
	h, _ := newETag(t, "api_etag {\n require_if_match /v1/locked/*\n}")
	o := &origin{docs: map[string]string{"/v1/e/1": `{"n":1}`, "/v1/locked/1": `{}`}}
	w, _ := call(h, o, "GET", "/v1/e/1", "", "")
	etag := w.Header().Get("ETag")

	if w, err := call(h, o, "PUT", "/v1/e/1", "", `{"n":2}`, "If-Match", `"stale"`); statusOf(w, err) != 412 || o.docs["/v1/e/1"] != `{"n":1}` {
		t.Fatalf("stale If-Match: %d, doc %s", statusOf(w, err), o.docs["/v1/e/1"])
	}
	w, err := call(h, o, "PUT", "/v1/e/1", "", `{"n":2}`, "If-Match", etag)
	if err != nil || w.Code != 200 || o.docs["/v1/e/1"] != `{"n":2}` {
		t.Fatalf("fresh If-Match: %d %v", w.Code, err)
	}
	newTag := w.Header().Get("ETag")
	if newTag == "" || newTag == etag {
		t.Errorf("the write did not return the new ETag: %q", newTag)
	}
	if g, _ := call(h, o, "GET", "/v1/e/1", "", ""); g.Header().Get("ETag") != newTag {
		t.Errorf("ETag after write %q, GET says %q", newTag, g.Header().Get("ETag"))
	}
	if w, err := call(h, o, "PUT", "/v1/e/1", "", `{"n":3}`, "If-Match", etag); statusOf(w, err) != 412 {
		t.Error("the old ETag still matched")
	}
	if w, err := call(h, o, "PUT", "/v1/e/9", "", `{}`, "If-Match", "*"); statusOf(w, err) != 412 {
		t.Error("If-Match: * on a missing resource")
	}
	if w, err := call(h, o, "DELETE", "/v1/e/1", "", "", "If-Unmodified-Since", "Sun, 01 Nov 2026 10:00:00 GMT"); statusOf(w, err) != 204 {
		t.Errorf("If-Unmodified-Since without Last-Modified is ignored: %d %v", statusOf(w, err), err)
	}
	// 428
	if w, err := call(h, o, "PUT", "/v1/locked/1", "", `{}`); statusOf(w, err) != 428 {
		t.Errorf("unconditional PUT on a locked path: %d", statusOf(w, err))
	}
	if w, err := call(h, o, "PUT", "/v1/other", "", `{}`); statusOf(w, err) != 200 {
		t.Errorf("unconditional PUT elsewhere: %d", statusOf(w, err))
	}
	// a backend with its own ETags decides
	ob := &origin{docs: map[string]string{"/b": "{}"}, withETag: true}
	if w, err := call(h, ob, "PUT", "/b", "", `{"a":1}`, "If-Match", `"origin-2"`); statusOf(w, err) != 200 {
		t.Errorf("backend ETag, fresh: %d", statusOf(w, err))
	}
	if w, err := call(h, ob, "PUT", "/b", "", `{"a":2}`, "If-Match", `"origin-2"`); statusOf(w, err) != 412 {
		t.Errorf("backend ETag, stale: %d (the backend must decide)", statusOf(w, err))
	}
}

// TestNoLostUpdates: concurrent read-modify-write cycles with If-Match
// through one gateway lose nothing.
func TestNoLostUpdates(t *testing.T) {
	h, _ := newETag(t, "api_etag")
	o := &origin{docs: map[string]string{"/n": "0"}}
	if acked := incrementConcurrently(t, h, o, 10, 10); o.docs["/n"] != "100" || acked != 100 {
		t.Errorf("counter = %s after %d acknowledged increments", o.docs["/n"], acked)
	}
}

// incrementConcurrently runs clients × each GET → +1 → PUT-with-If-Match
// cycles on /n through h, retrying on 412 for at most a minute, and
// returns how many PUTs were acknowledged.
func incrementConcurrently(t *testing.T, h *Handler, o caddyhttp.Handler, clients, each int) int64 {
	t.Helper()
	var wg sync.WaitGroup
	var acked atomic.Int64
	for range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			deadline := time.Now().Add(time.Minute)
			for done := 0; done < each; {
				if time.Now().After(deadline) {
					t.Errorf("%d of %d increments done after a minute of 412s", done, each)
					return
				}
				g, _ := call(h, o, "GET", "/n", "", "")
				var n int
				fmt.Sscan(g.Body.String(), &n)
				w, err := call(h, o, "PUT", "/n", "", fmt.Sprint(n+1), "If-Match", g.Header().Get("ETag"))
				if statusOf(w, err) == 200 {
					done++
					acked.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	return acked.Load()
}

func TestCache(t *testing.T) {
	h, clk := newETag(t, "api_etag {\n cache {\n  max_size 1MiB\n }\n}")
	o := &origin{docs: map[string]string{"/v1/e/1": `{"n":1}`, "/v1/e": `[1]`}, headers: http.Header{"Cache-Control": {"max-age=60"}}}
	w, _ := call(h, o, "GET", "/v1/e/1", "", "")
	if w.Header().Get("Cache-Status") != "restgate; fwd=uri-miss; stored" {
		t.Fatalf("first GET: Cache-Status %q", w.Header().Get("Cache-Status"))
	}
	clk.Add(10 * time.Second)
	w, _ = call(h, o, "GET", "/v1/e/1", "", "")
	if w.Header().Get("Cache-Status") != "restgate; hit" || w.Header().Get("Age") != "10" || w.Body.String() != `{"n":1}` || o.gets.Load() != 1 {
		t.Errorf("hit: %q age %q body %q gets %d", w.Header().Get("Cache-Status"), w.Header().Get("Age"), w.Body, o.gets.Load())
	}
	if w, _ := call(h, o, "GET", "/v1/e/1", "", "", "If-None-Match", w.Header().Get("ETag")); w.Code != 304 || o.gets.Load() != 1 {
		t.Errorf("304 from the cache: %d", w.Code)
	}
	// no-cache revalidates because the client asked (RFC 9211 fwd=request);
	// the origin has no ETag so it answers in full
	w, _ = call(h, o, "GET", "/v1/e/1", "", "", "Cache-Control", "no-cache")
	if o.gets.Load() != 2 || !strings.Contains(w.Header().Get("Cache-Status"), "fwd=request") {
		t.Errorf("no-cache: gets %d, %q", o.gets.Load(), w.Header().Get("Cache-Status"))
	}
	// stale after max-age
	clk.Add(61 * time.Second)
	call(h, o, "GET", "/v1/e/1", "", "")
	if o.gets.Load() != 3 {
		t.Errorf("a stale entry was served: gets %d", o.gets.Load())
	}
	// writes invalidate the resource and its collection
	call(h, o, "GET", "/v1/e", "", "")
	call(h, o, "GET", "/v1/e?page=2", "", "")
	before := o.gets.Load()
	if w, err := call(h, o, "PUT", "/v1/e/1", "", `{"n":2}`); err != nil || w.Code != 200 {
		t.Fatal(err)
	}
	for _, p := range []string{"/v1/e/1", "/v1/e", "/v1/e?page=2"} {
		call(h, o, "GET", p, "", "")
	}
	if got := o.gets.Load() - before; got != 3 {
		t.Errorf("after a write, %d of 3 GETs reached the origin", got)
	}
	w, _ = call(h, o, "GET", "/v1/e/1", "", "")
	if w.Body.String() != `{"n":2}` {
		t.Errorf("stale body after write: %s", w.Body)
	}
	// POST invalidates the collection and the Location
	call(h, o, "GET", "/v1/e/1/new", "", "")
	before = o.gets.Load()
	call(h, o, "POST", "/v1/e/1", "", "{}")
	call(h, o, "GET", "/v1/e/1/new", "", "")
	if o.gets.Load() == before {
		t.Error("Location was not invalidated")
	}
}

// TestCacheNeverCrossesPrincipals: two users with different data at the
// same URL, and an anonymous client, each get their own.
func TestCacheNeverCrossesPrincipals(t *testing.T) {
	h, _ := newETag(t, "api_etag {\n cache\n}")
	o := &origin{perUser: true, docs: map[string]string{"alice/v1/me": `"alice"`, "bob/v1/me": `"bob"`, "/v1/me": `"nobody"`},
		headers: http.Header{"Cache-Control": {"max-age=300"}}}
	for i := 0; i < 3; i++ {
		for user, want := range map[string]string{"alice": `"alice"`, "bob": `"bob"`, "": `"nobody"`} {
			w, _ := call(h, o, "GET", "/v1/me", user, "")
			if w.Body.String() != want {
				t.Fatalf("round %d: %q got %s", i, user, w.Body)
			}
			cc := w.Header().Get("Cache-Control")
			if user != "" && !strings.HasPrefix(cc, "private") {
				t.Errorf("%s's response leaves without private: %q", user, cc)
			}
			if user == "" && strings.Contains(cc, "private") {
				t.Errorf("anonymous response marked private: %q", cc)
			}
		}
	}
	if o.gets.Load() != 3 {
		t.Errorf("origin GETs %d, want 3 (one per principal)", o.gets.Load())
	}
	// public responses are shared deliberately
	o2 := &origin{perUser: true, docs: map[string]string{"alice/pub": `1`, "bob/pub": `2`}, headers: http.Header{"Cache-Control": {"public, max-age=60"}}}
	call(h, o2, "GET", "/pub", "alice", "")
	if w, _ := call(h, o2, "GET", "/pub", "bob", ""); w.Body.String() != "1" || o2.gets.Load() != 1 {
		t.Errorf("public response not shared: %s", w.Body)
	}
}

func TestStorability(t *testing.T) {
	tests := []struct {
		name    string
		headers http.Header
		reqCC   string
		stored  bool
	}{
		{"max-age", http.Header{"Cache-Control": {"max-age=60"}}, "", true},
		{"s-maxage", http.Header{"Cache-Control": {"s-maxage=60"}}, "", true},
		{"expires", http.Header{"Expires": {"Sun, 01 Nov 2026 13:00:00 GMT"}, "Date": {"Sun, 01 Nov 2026 12:00:00 GMT"}}, "", true},
		{"no freshness", http.Header{}, "", false},
		{"no-store", http.Header{"Cache-Control": {"no-store, max-age=60"}}, "", false},
		{"private", http.Header{"Cache-Control": {"private, max-age=60"}}, "", false},
		{"set-cookie", http.Header{"Cache-Control": {"max-age=60"}, "Set-Cookie": {"a=b"}}, "", false},
		{"vary star", http.Header{"Cache-Control": {"max-age=60"}, "Vary": {"*"}}, "", false},
		{"request no-store", http.Header{"Cache-Control": {"max-age=60"}}, "no-store", false},
		{"quoted value", http.Header{"Cache-Control": {`max-age="60"`}}, "", true},
		{"bad max-age", http.Header{"Cache-Control": {"max-age=soon"}}, "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h, _ := newETag(t, "api_etag {\n cache\n}")
			o := &origin{docs: map[string]string{"/x": "{}"}, headers: tt.headers}
			var hdr []string
			if tt.reqCC != "" {
				hdr = []string{"Cache-Control", tt.reqCC}
			}
			call(h, o, "GET", "/x", "", "", hdr...)
			if got := h.store.len() == 1; got != tt.stored {
				t.Errorf("stored = %v, want %v", got, tt.stored)
			}
		})
	}
	t.Run("default ttl opt-in", func(t *testing.T) {
		h, _ := newETag(t, "api_etag {\n cache {\n  default_ttl 30s\n }\n}")
		call(h, &origin{docs: map[string]string{"/x": "{}"}}, "GET", "/x", "", "")
		if h.store.len() != 1 {
			t.Error("default_ttl did not store")
		}
	})
	t.Run("vary", func(t *testing.T) {
		h, _ := newETag(t, "api_etag {\n cache\n}")
		o := &origin{docs: map[string]string{"/x": "{}"}, headers: http.Header{"Cache-Control": {"max-age=60"}, "Vary": {"Accept-Language"}}}
		call(h, o, "GET", "/x", "", "", "Accept-Language", "en")
		call(h, o, "GET", "/x", "", "", "Accept-Language", "en")
		call(h, o, "GET", "/x", "", "", "Accept-Language", "fr")
		if o.gets.Load() != 2 {
			t.Errorf("gets %d, want 2 (en cached, fr not)", o.gets.Load())
		}
	})
	t.Run("byte bound", func(t *testing.T) {
		h, _ := newETag(t, "api_etag {\n cache {\n  max_size 10KiB\n }\n}")
		o := &origin{docs: map[string]string{}, headers: http.Header{"Cache-Control": {"max-age=60"}}}
		for i := 0; i < 50; i++ {
			o.docs[fmt.Sprintf("/d%d", i)] = strings.Repeat("x", 1000)
			call(h, o, "GET", fmt.Sprintf("/d%d", i), "", "")
		}
		if h.store.bytes > 10<<10 || h.store.len() == 0 || h.store.len() >= 50 {
			t.Errorf("store: %d bytes in %d entries", h.store.bytes, h.store.len())
		}
	})
}

func TestParentPath(t *testing.T) {
	for give, want := range map[string]string{"/v1/events/E1": "/v1/events", "/v1/events/": "/v1", "/v1": "", "/": ""} {
		if got := parentPath(give); got != want {
			t.Errorf("parentPath(%q) = %q, want %q", give, got, want)
		}
	}
}

func TestCaddyfileErrors(t *testing.T) {
	for name, in := range map[string]string{
		"unknown":        "api_etag {\n nope\n}",
		"bad size":       "api_etag {\n max_body lots\n}",
		"no paths":       "api_etag {\n require_if_match\n}",
		"cache unknown":  "api_etag {\n cache {\n  nope\n }\n}",
		"bad ttl":        "api_etag {\n cache {\n  default_ttl soon\n }\n}",
		"duplicate":      "api_etag {\n max_body 1KiB\n max_body 2KiB\n}",
		"cache argument": "api_etag {\n cache big\n}",
	} {
		t.Run(name, func(t *testing.T) {
			var h Handler
			if err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(in)); err == nil {
				t.Errorf("%q accepted", in)
			}
		})
	}
}

func BenchmarkETag10KiB(b *testing.B) {
	body := []byte(strings.Repeat("0123456789", 1024))
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	for b.Loop() {
		_ = strongETag(body)
	}
}

type discard struct{ h http.Header }

func (d *discard) Header() http.Header         { return d.h }
func (d *discard) Write(p []byte) (int, error) { return len(p), nil }
func (d *discard) WriteHeader(int)             {}

func BenchmarkCacheHit(b *testing.B) {
	h, _ := newETag(b, "api_etag {\n cache\n}")
	// a nanosecond a read: a millisecond, millions of times, would expire
	// the entry's max-age in the middle of the run
	h.now = testclock.New(time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC), time.Nanosecond).Now
	o := &origin{docs: map[string]string{"/v1/e/1": strings.Repeat("x", 1024)}, headers: http.Header{"Cache-Control": {"max-age=600"}}}
	call(h, o, "GET", "/v1/e/1", "alice", "")
	r := httptest.NewRequest("GET", "/v1/e/1", nil)
	r.Host = "api.example.com"
	repl := caddy.NewReplacer()
	repl.Set("http.auth.user.id", "alice")
	r = r.WithContext(context.WithValue(r.Context(), caddy.ReplacerCtxKey, repl))
	w := &discard{h: http.Header{}}
	b.ReportAllocs()
	for b.Loop() {
		clear(w.h)
		if err := h.ServeHTTP(w, r, o); err != nil {
			b.Fatal(err)
		}
	}
	if o.gets.Load() != 1 {
		b.Fatalf("origin GETs %d", o.gets.Load())
	}
}

// BenchmarkPassThroughWrite is a non-cacheable request: a POST.
func BenchmarkPassThroughWrite(b *testing.B) {
	h, _ := newETag(b, "api_etag")
	next := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error { w.WriteHeader(201); return nil })
	r := httptest.NewRequest("POST", "/v1/e", nil)
	w := &discard{h: http.Header{}}
	b.ReportAllocs()
	for b.Loop() {
		_ = h.ServeHTTP(w, r, next)
	}
}

func BenchmarkBare(b *testing.B) {
	next := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error { w.WriteHeader(201); return nil })
	r := httptest.NewRequest("POST", "/v1/e", nil)
	w := &discard{h: http.Header{}}
	b.ReportAllocs()
	for b.Loop() {
		_ = next.ServeHTTP(w, r)
	}
}

// BenchmarkGetMiss is a GET without cache: the backend's 1 KiB body is
// held, hashed into an ETag and written.
func BenchmarkGetMiss(b *testing.B) {
	h, _ := newETag(b, "api_etag")
	body := []byte(strings.Repeat("x", 1024))
	next := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		w.Header().Set("Content-Type", "application/json")
		_, err := w.Write(body)
		return err
	})
	r := httptest.NewRequest("GET", "/v1/e/1", nil)
	r = r.WithContext(context.WithValue(r.Context(), caddy.ReplacerCtxKey, caddy.NewReplacer()))
	w := &discard{h: http.Header{}}
	b.ReportAllocs()
	for b.Loop() {
		clear(w.h)
		_ = h.ServeHTTP(w, r, next)
	}
}

// TestRedisAndRedisAutoContradict: a JSON config that sets both redis
// (Redis required) and redis_auto (Redis if configured) is refused instead
// of silently taking the first.
func TestRedisAndRedisAutoContradict(t *testing.T) {
	h := &Handler{Redis: true, RedisAuto: true}
	if err := h.Validate(); err == nil || !strings.Contains(err.Error(), "redis_auto") {
		t.Errorf("Validate() = %v, want the contradiction named", err)
	}
	for _, ok := range []*Handler{{Redis: true}, {RedisAuto: true}, {}} {
		if err := ok.Validate(); err != nil {
			t.Errorf("Validate(%+v) = %v, want nil", *ok, err)
		}
	}
}

// TestRequireIfMatchSpellings: require_if_match covers a resource however
// its path is spelled, as its lock does: a trailing slash is no way around
// the 428 (it was: the path matcher does not match /x/ for /x).
func TestRequireIfMatchSpellings(t *testing.T) {
	h, _ := newETag(t, "api_etag {\n require_if_match /v1/config /v1/locked/*\n}")
	o := &origin{docs: map[string]string{"/v1/config": `{}`, "/v1/config/": `{}`, "/v1/locked/1": `{}`, "/v1/locked/1/": `{}`, "/v1/other/": `{}`,
		"/v1/config;v=1": `{}`, "/v1/CONFIG": `{}`, "/v1/locked;x/1": `{}`, "/v1/locked/1;v=2/": `{}`, "/v1/other;v=1": `{}`}}
	tests := []struct {
		path string
		want int
	}{
		{"/v1/config", 428},
		{"/v1/config/", 428},
		{"/v1/config//", 428},
		{"/v1/locked/1", 428},
		{"/v1/locked/1/", 428},
		{"/v1/config;v=1", 428},
		{"/v1/CONFIG", 428},
		{"/v1/locked;x/1", 428},
		{"/v1/locked/1;v=2/", 428},
		{"/v1/other/", 200},
		{"/v1/other;v=1", 200},
		{"/", 200},
	}
	for _, tt := range tests {
		w, err := call(h, o, "PUT", tt.path, "", `{"n":2}`)
		if got := statusOf(w, err); got != tt.want {
			t.Errorf("PUT %s without If-Match: %d, want %d", tt.path, got, tt.want)
		}
	}
}
