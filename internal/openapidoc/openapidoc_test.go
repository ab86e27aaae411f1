package openapidoc

import (
	"encoding/json"
	"strings"
	"testing"
)

// TestHeaders: every header a document names is defined, with a
// description and a schema; a name this package does not define panics
// (a typo in a document's list would otherwise leave a dangling $ref).
func TestHeaders(t *testing.T) {
	tests := []struct {
		give      string
		wantPanic bool
	}{
		{give: "ETag"},
		{give: "Last-Modified"},
		{give: "Location"},
		{give: "X-Request-Id"},
		{give: "RateLimit"},
		{give: "RateLimit-Policy"},
		{give: "Retry-After"},
		{give: "WWW-Authenticate"},
		{give: "Etag", wantPanic: true},
		{give: "", wantPanic: true},
	}
	for _, tt := range tests {
		t.Run(tt.give, func(t *testing.T) {
			defer func() {
				if r := recover(); (r != nil) != tt.wantPanic {
					t.Errorf("Headers(%q) panic = %v, want a panic %v", tt.give, r, tt.wantPanic)
				}
			}()
			h, _ := Headers(tt.give)[tt.give].(obj)
			if h["description"] == "" || h["schema"] == nil {
				t.Errorf("Headers(%q) = %v, want a description and a schema", tt.give, h)
			}
		})
	}
}

// TestFreshCopies: a caller may change what it got (api_docs merges into
// its copy) without changing what the next caller gets.
func TestFreshCopies(t *testing.T) {
	tests := []struct {
		name string
		get  func() map[string]any
	}{
		{"Headers", func() map[string]any { return Headers("ETag", "Retry-After") }},
		{"Parameters", Parameters},
		{"SecuritySchemes", func() map[string]any { return SecuritySchemes("X-API-Key") }},
		{"ProblemContent", ProblemContent},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			want, _ := json.Marshal(tt.get())
			scribble(tt.get())
			if got, _ := json.Marshal(tt.get()); string(got) != string(want) {
				t.Errorf("%s() after a caller changed its copy = %s, want %s", tt.name, got, want)
			}
		})
	}
}

// scribble changes every object in v.
func scribble(v any) {
	m, ok := v.(map[string]any)
	if !ok {
		return
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	for _, k := range keys {
		scribble(m[k])
		m[k+"!"] = true
	}
}

// TestSecuritySchemes: both schemes name the configured API-key header.
func TestSecuritySchemes(t *testing.T) {
	s := SecuritySchemes("X-Key")
	if got := s[SchemeAPIKey].(obj)["name"]; got != "X-Key" {
		t.Errorf("SecuritySchemes(X-Key)[apiKey].name = %v, want X-Key", got)
	}
	for _, n := range []string{SchemeBearer, SchemeAPIKey} {
		if d, _ := s[n].(obj)["description"].(string); !strings.Contains(d, "`X-Key: <key>`") {
			t.Errorf("SecuritySchemes(X-Key)[%s].description = %q, want it to name X-Key", n, d)
		}
	}
}
