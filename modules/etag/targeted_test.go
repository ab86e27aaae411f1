package etag

import (
	"net/http"
	"reflect"
	"testing"
)

func TestParseTargeted(t *testing.T) {
	tests := []struct {
		give   string
		want   directives
		wantOK bool
	}{
		{"max-age=60", directives{"max-age": "60"}, true},
		{"max-age=60, private", directives{"max-age": "60", "private": ""}, true},
		{"no-store", directives{"no-store": ""}, true},
		{"s-maxage=10;foo=bar, public", directives{"s-maxage": "10", "public": ""}, true},
		{"private=?0, max-age=5", directives{"max-age": "5"}, true},
		{"max-age=5, max-age=7", directives{"max-age": "7"}, true}, // the last wins (RFC 8941 §4.2.2)
		{`x="a \"q\"", y=tok/en, z=:YWJj:`, directives{"x": `a "q"`, "y": "tok/en", "z": ":YWJj:"}, true},
		{"", directives{}, true},
		{"max-age=60,", nil, false}, // trailing comma
		{"Max-Age=60", nil, false},  // keys are lower case
		{"max-age=", nil, false},    // no value
		{"max-age=6O", nil, false},  // junk after the integer
		{`x="unterminated`, nil, false},
		{"max-age=1234567890123456", nil, false}, // more than 15 digits
		{"a;=b", nil, false},
	}
	for _, tt := range tests {
		got, ok := parseTargeted(tt.give)
		if ok != tt.wantOK || (ok && !reflect.DeepEqual(got, tt.want)) {
			t.Errorf("parseTargeted(%q) = %v, %v, want %v, %v", tt.give, got, ok, tt.want, tt.wantOK)
		}
	}
}

// TestTargetedCacheControl: the gateway's cache follows CDN-Cache-Control
// (RFC 9213) over Cache-Control when it is valid, and ignores it when not;
// the client still gets the backend's Cache-Control.
func TestTargetedCacheControl(t *testing.T) {
	tests := []struct {
		name       string
		hdr        http.Header
		wantStored bool
	}{
		{"CDN-Cache-Control lets the gateway store what browsers must not", http.Header{"Cache-Control": {"no-store"}, "Cdn-Cache-Control": {"max-age=60"}}, true},
		{"CDN-Cache-Control forbids what Cache-Control allows", http.Header{"Cache-Control": {"max-age=60"}, "Cdn-Cache-Control": {"no-store"}}, false},
		{"CDN-Cache-Control private", http.Header{"Cache-Control": {"max-age=60"}, "Cdn-Cache-Control": {"private"}}, false},
		{"an invalid CDN-Cache-Control is ignored", http.Header{"Cache-Control": {"max-age=60"}, "Cdn-Cache-Control": {"max-age=60,,"}}, true},
		{"an invalid one does not make a response storable", http.Header{"Cache-Control": {"no-store"}, "Cdn-Cache-Control": {"Max-Age=60"}}, false},
		{"no CDN-Cache-Control: Cache-Control", http.Header{"Cache-Control": {"max-age=60"}}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h, _ := newETag(t, "api_etag {\n cache\n}")
			o := &scripted{script: func(n int, r *http.Request) (int, http.Header, string) {
				return 200, tt.hdr.Clone(), "body"
			}}
			w, _ := call(h, o, "GET", "/v1/r", "", "")
			if got := w.Header().Get("Cache-Control"); got != tt.hdr.Get("Cache-Control") {
				t.Errorf("the client got Cache-Control %q, want the backend's %q", got, tt.hdr.Get("Cache-Control"))
			}
			w, _ = call(h, o, "GET", "/v1/r", "", "")
			if hit := w.Header().Get("Cache-Status") == statusHit; hit != tt.wantStored {
				t.Errorf("second GET: Cache-Status %q, want stored=%v", w.Header().Get("Cache-Status"), tt.wantStored)
			}
		})
	}
}

// TestTargetedFreshness: CDN-Cache-Control's max-age sets how long the
// gateway serves its copy, whatever Cache-Control says.
func TestTargetedFreshness(t *testing.T) {
	h, clk := newETag(t, "api_etag {\n cache\n}")
	o := &scripted{script: func(n int, r *http.Request) (int, http.Header, string) {
		return 200, http.Header{"Cache-Control": {"max-age=3600"}, "Cdn-Cache-Control": {"max-age=2"}}, "body"
	}}
	call(h, o, "GET", "/v1/r", "", "")
	if w, _ := call(h, o, "GET", "/v1/r", "", ""); w.Header().Get("Cache-Status") != statusHit {
		t.Fatalf("not stored: %q", w.Header().Get("Cache-Status"))
	}
	clk.Add(3 * 1e9)
	if w, _ := call(h, o, "GET", "/v1/r", "", ""); w.Header().Get("Cache-Status") == statusHit {
		t.Errorf("served 3 s after a CDN max-age of 2 s: %q", w.Header().Get("Cache-Status"))
	}
}
