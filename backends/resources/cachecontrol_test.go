package resources

import (
	"bytes"
	"context"
	"path/filepath"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

// cacheConfig has a collection of each kind: shared with the default,
// owned with the default, shared and owned with their own Cache-Control.
const cacheConfig = `resources {
	collection notes
	collection secrets {
		owned
	}
	collection pages {
		key name
		cache_control public,   max-age=60
	}
	collection diaries {
		owned
		cache_control no-store
	}
}`

// TestCacheControl: every response of a collection carries its
// Cache-Control (documents, lists, 304s, answers to writes), problems
// carry no-store, and an owned collection is private by default.
func TestCacheControl(t *testing.T) {
	h := newTestHandler(t, cacheConfig)
	alice := []string{"X-Auth-User", "alice"}
	secret := do(t, h, "POST", "/v1/secrets", `{"v": 1}`, alice...).want(201).Header().Get("Location")
	note := do(t, h, "POST", "/v1/notes", `{"v": 1}`).want(201)
	page := do(t, h, "POST", "/v1/pages", `{"name": "p"}`).want(201)
	tests := []struct {
		name, method, target string
		headers              []string
		status               int
		want                 string
	}{
		{"document", "GET", note.Header().Get("Location"), nil, 200, "no-cache"},
		{"document HEAD", "HEAD", note.Header().Get("Location"), nil, 200, "no-cache"},
		{"not modified", "GET", note.Header().Get("Location"), []string{"If-None-Match", note.Header().Get("ETag")}, 304, "no-cache"},
		{"list", "GET", "/v1/notes", nil, 200, "no-cache"},
		{"replace", "PUT", note.Header().Get("Location"), nil, 200, "no-cache"},
		{"owned document", "GET", secret, alice, 200, "private, no-cache"},
		{"owned list", "GET", "/v1/secrets", alice, 200, "private, no-cache"},
		{"configured", "GET", "/v1/pages/p", []string{"If-None-Match", page.Header().Get("ETag")}, 304, "public, max-age=60"},
		{"configured owned", "GET", "/v1/diaries", alice, 200, "no-store"},
		{"missing document", "GET", "/v1/notes/nope", nil, 404, "no-store"},
		{"owned, anonymous", "GET", "/v1/secrets", nil, 401, "no-store"},
		{"method", "DELETE", "/v1/notes", nil, 405, "no-store"},
		{"no collection", "GET", "/v1/nope", nil, 404, "no-store"},
		{"openapi", "GET", "/v1/openapi.json", nil, 200, "no-cache"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			body := ""
			if tt.method == "PUT" {
				body = `{"v": 2}`
			}
			r := do(t, h, tt.method, tt.target, body, tt.headers...).want(tt.status)
			if got := r.Header().Get("Cache-Control"); got != tt.want {
				t.Errorf("Cache-Control = %q, want %q", got, tt.want)
			}
		})
	}
}

// TestCacheControlConfig: the option in JSON and the Caddyfile, and the
// values refused (an owned collection must stay out of shared caches).
func TestCacheControlConfig(t *testing.T) {
	tests := []struct {
		name, give string
		owned      bool
		want       string // "" for refused
	}{
		{"default", "", false, "no-cache"},
		{"owned default", "", true, "private, no-cache"},
		{"normalised", " private,max-age=0 ,  must-revalidate", true, "private, max-age=0, must-revalidate"},
		{"qualified private", `private="Set-Cookie", max-age=5`, true, `private="Set-Cookie", max-age=5`},
		{"no-store owned", "no-store", true, "no-store"},
		{"public", "public, max-age=60", false, "public, max-age=60"},
		{"owned public", "public, max-age=60", true, ""},
		{"owned max-age", "max-age=60", true, ""},
		{"spaces for commas", "private no-cache", false, ""},
		{"control character", "no-cache\r\nX-Evil: 1", false, ""},
		{"empty directive", "no-cache,,private", false, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := &Collection{Name: "c", Owned: tt.owned, CacheControl: tt.give}
			err := c.prepare()
			switch {
			case tt.want == "" && err == nil:
				t.Errorf("cache_control %q accepted as %q", tt.give, c.CacheControl)
			case tt.want != "" && err != nil:
				t.Errorf("cache_control %q: %v", tt.give, err)
			case tt.want != "" && c.CacheControl != tt.want:
				t.Errorf("cache_control %q = %q, want %q", tt.give, c.CacheControl, tt.want)
			}
		})
	}

	h := new(Handler)
	if err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(cacheConfig)); err != nil {
		t.Fatal(err)
	}
	if got := h.Collections[2].CacheControl; got != "public, max-age=60" {
		t.Errorf("Caddyfile cache_control = %q", got)
	}
	for _, cfg := range []string{
		"resources {\n collection a {\n  cache_control\n }\n}",
		"resources {\n collection a {\n  cache_control no-cache\n  cache_control private\n }\n}",
		"resources {\n collection a {\n  owned\n  cache_control public\n }\n}",
	} {
		h := new(Handler)
		err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(cfg))
		if err == nil {
			h.Database = filepath.Join(t.TempDir(), "x.db")
			ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
			err = h.Provision(ctx)
			_ = h.Cleanup()
			cancel()
		}
		if err == nil {
			t.Errorf("config %q was accepted", cfg)
		}
	}
}

// TestOpenAPIVariesOnNothing: the document is the same whatever Host or
// scheme it is fetched by (its server URL is relative), so it sends no
// Vary and one ETag.
func TestOpenAPIVariesOnNothing(t *testing.T) {
	h := newTestHandler(t, testConfig)
	a := do(t, h, "GET", "http://api.localhost:8443/v1/openapi.json", "").want(200)
	b := do(t, h, "GET", "https://other.example/v1/openapi.json", "", "X-Forwarded-Proto", "https").want(200)
	if v := a.Header().Values("Vary"); len(v) > 0 {
		t.Errorf("Vary = %q, want none", v)
	}
	if a.Header().Get("ETag") != b.Header().Get("ETag") || !bytes.Equal(a.Body.Bytes(), b.Body.Bytes()) {
		t.Errorf("two hosts got two documents: ETags %s and %s", a.Header().Get("ETag"), b.Header().Get("ETag"))
	}
	if strings.Contains(a.Body.String(), "api.localhost") {
		t.Error("the document names the Host it was fetched by")
	}
	if r := do(t, h, "GET", "/v1/openapi.json", "", "If-None-Match", a.Header().Get("ETag")); r.Code != 304 {
		t.Errorf("revalidation with the ETag: %d, want 304", r.Code)
	}
}
