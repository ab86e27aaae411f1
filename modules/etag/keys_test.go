package etag

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/restgate/restgate/internal/canon"
)

// send sends a request for host and target through h to o, normalised as
// api_errors normalises it.
func send(t *testing.T, h *Handler, o caddyhttp.Handler, method, host, target, body string) *httptest.ResponseRecorder {
	t.Helper()
	r := httptest.NewRequest(method, "https://"+host+target, strings.NewReader(body))
	r.Host = host
	if err := canon.Normalize(r); err != nil {
		t.Fatalf("%s %s%s: %v", method, host, target, err)
	}
	r = r.WithContext(context.WithValue(r.Context(), caddy.ReplacerCtxKey, caddy.NewReplacer()))
	w := httptest.NewRecorder()
	if err := h.ServeHTTP(w, r, o); err != nil {
		t.Fatalf("%s %s%s: %v", method, host, target, err)
	}
	return w
}

// TestWriteThroughAnySpellingInvalidates: a backend that ignores Host, a
// trailing slash, case and ;params treats all these spellings as one
// resource, so a write through any of them drops what the canonical
// spelling (and the collection) had cached.
func TestWriteThroughAnySpellingInvalidates(t *testing.T) {
	spellings := []struct{ host, target string }{
		{"api.example.com", "/v1/e/1/"},
		{"api.example.com:8443", "/v1/e/1"},
		{"API.EXAMPLE.COM", "/v1/e/1"},
		{"api.example.com", "//v1/e/1"},
		{"api.example.com", "/v1/E/1"},
		{"api.example.com", "/v1/e/1;v=2"},
		{"api2.example.com", "/v1/e/1"},
		{"api.example.com", "/v1/e/%31"},
	}
	for _, sp := range spellings {
		t.Run(sp.host+sp.target, func(t *testing.T) {
			h, _ := newETag(t, "api_etag {\n cache\n}")
			o := &coarseOrigin{body: "1"}
			send(t, h, o, "GET", "api.example.com", "/v1/e/1", "")
			send(t, h, o, "GET", "api.example.com", "/v1/e", "")
			if w := send(t, h, o, "GET", "api.example.com", "/v1/e/1", ""); w.Header().Get("Cache-Status") != statusHit {
				t.Fatalf("the canonical spelling was not cached: %q", w.Header().Get("Cache-Status"))
			}
			o.set("2")
			send(t, h, o, "PUT", sp.host, sp.target, "2")
			for _, target := range []string{"/v1/e/1", "/v1/e"} {
				if w := send(t, h, o, "GET", "api.example.com", target, ""); w.Body.String() != "2" {
					t.Errorf("after a PUT to %s%s, GET %s = %q (%s), want the new body", sp.host, sp.target, target, w.Body, w.Header().Get("Cache-Status"))
				}
			}
		})
	}
}

// TestReservedEscapesAreDistinctEntries: a;b and a%3Bb are different
// resources to a backend, so they never share a cache entry.
func TestReservedEscapesAreDistinctEntries(t *testing.T) {
	h, _ := newETag(t, "api_etag {\n cache\n}")
	o := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		w.Header().Set("Cache-Control", "max-age=600")
		_, err := w.Write([]byte(r.URL.EscapedPath()))
		return err
	})
	for _, pair := range [][2]string{{"/v1/items/a;b", "/v1/items/a%3Bb"}, {"/v1/items/a,b", "/v1/items/a%2Cb"},
		{"/v1/items/a=b", "/v1/items/a%3Db"}, {"/v1/items/a@b", "/v1/items/a%40b"}, {"/v1/items/a%3bb", "/v1/items/a%3Bb"}} {
		send(t, h, o, "GET", "api.example.com", pair[0], "")
		w := send(t, h, o, "GET", "api.example.com", pair[1], "")
		want := canon.EscapedPath(pair[1])
		if pair[0] == "/v1/items/a%3bb" {
			// the same resource in two hex cases: one entry
			if w.Header().Get("Cache-Status") != statusHit {
				t.Errorf("GET %s after %s: %q, want a hit", pair[1], pair[0], w.Header().Get("Cache-Status"))
			}
			continue
		}
		if w.Body.String() != want || w.Header().Get("Cache-Status") == statusHit {
			t.Errorf("GET %s after %s = %q (%s), want %q from the backend", pair[1], pair[0], w.Body, w.Header().Get("Cache-Status"), want)
		}
	}
}

// TestFillOverlappingAWriteIsNotStored: a read that went upstream before a
// write and came back after the write's invalidation carries the old body;
// it is answered but not stored, so the next read sees the write.
func TestFillOverlappingAWriteIsNotStored(t *testing.T) {
	h, _ := newETag(t, "api_etag {\n cache\n}")
	o := &coarseOrigin{body: "old"}
	release := make(chan struct{})
	started := make(chan struct{})
	slow := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		if r.Method == http.MethodGet {
			body := o.get()
			close(started)
			select {
			case <-release:
			case <-time.After(10 * time.Second):
				t.Error("the slow read was never released")
			}
			w.Header().Set("Cache-Control", "max-age=600")
			_, err := w.Write([]byte(body))
			return err
		}
		return o.ServeHTTP(w, r)
	})
	var wg sync.WaitGroup
	var first *httptest.ResponseRecorder
	wg.Add(1)
	go func() {
		defer wg.Done()
		first = send(t, h, slow, "GET", "api.example.com", "/v1/e/1", "")
	}()
	select {
	case <-started:
	case <-time.After(10 * time.Second):
		t.Fatal("the first read never reached the backend")
	}
	if w := send(t, h, o, "PUT", "api.example.com", "/v1/e/1/", "new"); w.Code != http.StatusOK {
		t.Fatalf("PUT = %d", w.Code)
	}
	close(release)
	wg.Wait()
	if first.Body.String() != "old" || strings.Contains(first.Header().Get("Cache-Status"), "stored") {
		t.Errorf("the overlapping read = %q (%s), want the old body, not stored", first.Body, first.Header().Get("Cache-Status"))
	}
	if w := send(t, h, o, "GET", "api.example.com", "/v1/e/1", ""); w.Body.String() != "new" {
		t.Errorf("after the write, GET = %q (%s), want the new body", w.Body, w.Header().Get("Cache-Status"))
	}
}

// TestForgottenInvalidationsRefuseFills: the generations of invalidated
// keys are bounded; what the store forgets refuses fills that started
// before it, never accepts one.
func TestForgottenInvalidationsRefuseFills(t *testing.T) {
	s := newStore(1 << 20)
	since := s.ticket()
	for i := range maxInvalidated + 1 {
		s.invalidate("/k/" + string(rune('a'+i%26)) + strings.Repeat("x", i/26))
	}
	if s.invalidated.Len() > maxInvalidated {
		t.Errorf("remembers %d invalidations, want at most %d", s.invalidated.Len(), maxInvalidated)
	}
	e := &entry{key: "never", pathKey: "/never/invalidated", size: 1}
	if s.put(e, since) {
		t.Error("a fill that started before a forgotten invalidation was stored")
	}
	if !s.put(e, s.ticket()) {
		t.Error("a fill that started after every invalidation was refused")
	}
	s.purge()
	if s.put(e, since) || s.len() != 0 {
		t.Error("a fill that started before a purge was stored")
	}
}

// TestInvalidationMessagesAreFramed: keys travel between gateways as one
// JSON array, so no key can split into two; a message that cannot be read
// drops the whole cache.
func TestInvalidationMessagesAreFramed(t *testing.T) {
	h, _ := newETag(t, "api_etag {\n cache\n}")
	put := func(pathKey string) {
		e := &entry{key: "k" + pathKey, pathKey: pathKey, size: 1}
		if !h.store.put(e, h.store.ticket()) {
			t.Fatalf("put %q refused", pathKey)
		}
	}
	put("/v1/a")
	put("/v1/b")
	put("/v1/a\n/v1/b") // not a key restgate makes, but one a peer might send
	h.applyInvalidation(`["/v1/a\n/v1/b"]`)
	if h.store.get("k/v1/a") == nil || h.store.get("k/v1/b") == nil || h.store.get("k/v1/a\n/v1/b") != nil {
		t.Error("a key with a newline was split, or not applied")
	}
	h.applyInvalidation("/v1/a\n/v1/b") // an older gateway's newline-joined message
	if h.store.len() != 0 {
		t.Errorf("an unreadable message left %d entries", h.store.len())
	}
}

// coarseOrigin is a backend that ignores Host, a trailing slash, case and
// ;params: one document for every spelling.
type coarseOrigin struct {
	mu   sync.Mutex
	body string
}

func (o *coarseOrigin) get() string  { o.mu.Lock(); defer o.mu.Unlock(); return o.body }
func (o *coarseOrigin) set(b string) { o.mu.Lock(); defer o.mu.Unlock(); o.body = b }

func (o *coarseOrigin) ServeHTTP(w http.ResponseWriter, r *http.Request) error {
	switch r.Method {
	case http.MethodGet, http.MethodHead:
		w.Header().Set("Cache-Control", "max-age=600")
		_, err := w.Write([]byte(o.get()))
		return err
	default:
		var b strings.Builder
		buf := make([]byte, 512)
		for {
			n, err := r.Body.Read(buf)
			b.Write(buf[:n])
			if err != nil {
				break
			}
		}
		o.set(b.String())
		w.WriteHeader(http.StatusOK)
		return nil
	}
}
