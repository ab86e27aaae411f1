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

// TestMissForwardsTheRequestAsIs: a GET the cache misses goes upstream as
// it came when it carries no validator (no copy of the request); with one,
// upstream gets a copy without it, so that the answer is a full 200 the
// cache can store, and the client's request keeps it for its own 304.
func TestMissForwardsTheRequestAsIs(t *testing.T) {
	tests := []struct {
		name     string
		headers  []string
		wantSame bool
	}{
		{"no validators", nil, true},
		{"If-None-Match", []string{"If-None-Match", `"x"`}, false},
		{"If-Modified-Since", []string{"If-Modified-Since", "Sun, 06 Nov 1994 08:49:37 GMT"}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h, _ := newETag(t, "api_etag {\n cache\n}")
			var sent *http.Request
			o := &scripted{script: func(n int, r *http.Request) (int, http.Header, string) {
				sent = r
				return 200, http.Header{"Cache-Control": {"max-age=60"}}, "doc"
			}}
			r := httptest.NewRequest("GET", "/v1/doc/"+strings.ReplaceAll(tt.name, " ", "-"), nil)
			for i := 0; i+1 < len(tt.headers); i += 2 {
				r.Header.Set(tt.headers[i], tt.headers[i+1])
			}
			r = r.WithContext(context.WithValue(r.Context(), caddy.ReplacerCtxKey, caddy.NewReplacer()))
			if err := h.ServeHTTP(httptest.NewRecorder(), r, o); err != nil {
				t.Fatal(err)
			}
			if got := sent == r; got != tt.wantSame {
				t.Errorf("upstream got the client's request: %v, want %v", got, tt.wantSame)
			}
			if sent.Header.Get("If-None-Match") != "" || sent.Header.Get("If-Modified-Since") != "" {
				t.Errorf("upstream got the client's validators: %v", sent.Header)
			}
			if len(tt.headers) > 0 && r.Header.Get(tt.headers[0]) == "" {
				t.Errorf("the client's request lost %s", tt.headers[0])
			}
		})
	}
}
