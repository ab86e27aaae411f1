package etag

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
)

// TestETagFieldOneAllocation: a generated ETag reaches the response header
// as one allocation (the value and its string together), spelled as
// formatETag spells it (two allocations with []string{formatETag(…)}).
func TestETagFieldOneAllocation(t *testing.T) {
	const sum = 0x290370838c287802
	var v []string
	if n := testing.AllocsPerRun(100, func() { v = etagField(sum) }); n != 1 {
		t.Errorf("etagField: %.0f allocations, want 1", n)
	}
	if len(v) != 1 || cap(v) != 1 || v[0] != formatETag(sum) || v[0] != `"290370838c287802"` {
		t.Errorf("etagField = %q (cap %d), want [%q] clipped", v, cap(v), formatETag(sum))
	}
}

// TestUpstreamRewriteKeepsTheCacheKey: the handlers behind api_etag may
// change the request in place (Caddy's rewrite, handle_path's prefix,
// request_header); the response is still stored under the path the client
// asked for, with the Vary values it sent, and upstream never sees the
// client's validators. Forwarding the client's own request once stored
// /v1/a's body under /v1/b.
func TestUpstreamRewriteKeepsTheCacheKey(t *testing.T) {
	h, _ := newETag(t, "api_etag {\n cache\n}")
	o := &scripted{script: func(n int, r *http.Request) (int, http.Header, string) {
		if r.Header.Get("If-None-Match") != "" || r.Header.Get("If-Modified-Since") != "" {
			t.Errorf("upstream got the client's validators: %v", r.Header)
		}
		body := "body of " + r.URL.Path
		// what rewrite and request_header do to the request they get
		r.URL.Path, r.URL.RawPath = "/v1/b", ""
		r.RequestURI = "/v1/b"
		r.Header.Set("Accept-Language", "xx")
		return 200, http.Header{"Cache-Control": {"max-age=60"}, "Vary": {"Accept-Language"}}, body
	}}
	get := func(path string, hdr ...string) *httptest.ResponseRecorder {
		t.Helper()
		r := httptest.NewRequest("GET", path, nil)
		r.Header.Set("Accept-Language", "en")
		for i := 0; i+1 < len(hdr); i += 2 {
			r.Header.Set(hdr[i], hdr[i+1])
		}
		r = r.WithContext(context.WithValue(r.Context(), caddy.ReplacerCtxKey, caddy.NewReplacer()))
		w := httptest.NewRecorder()
		if err := h.ServeHTTP(w, r, o); err != nil {
			t.Fatal(err)
		}
		if r.URL.Path != path || r.Header.Get("Accept-Language") != "en" {
			t.Errorf("the client's request was changed: %s %v", r.URL.Path, r.Header)
		}
		return w
	}
	if w := get("/v1/a", "If-None-Match", `"nope"`); w.Code != 200 || w.Body.String() != "body of /v1/a" {
		t.Fatalf("GET /v1/a: %d %q", w.Code, w.Body)
	}
	if w := get("/v1/b"); w.Body.String() != "body of /v1/b" || o.calls() != 2 {
		t.Errorf("GET /v1/b after /v1/a was rewritten upstream: %q (%s), %d upstream calls, want its own body from upstream",
			w.Body, w.Header().Get("Cache-Status"), o.calls())
	}
	if w := get("/v1/a"); w.Body.String() != "body of /v1/a" || !strings.Contains(w.Header().Get("Cache-Status"), "hit") {
		t.Errorf("GET /v1/a again: %q (%s), want /v1/a's body from the cache", w.Body, w.Header().Get("Cache-Status"))
	}
	if o.calls() != 2 {
		t.Errorf("%d upstream calls, want 2", o.calls())
	}
}
