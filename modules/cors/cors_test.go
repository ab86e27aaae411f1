package cors

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

func newCORS(t *testing.T, cfg string) *Handler {
	t.Helper()
	h := new(Handler)
	if err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(cfg)); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	t.Cleanup(cancel)
	if err := h.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	if err := h.Validate(); err != nil {
		t.Fatal(err)
	}
	return h
}

var reached bool

var backend = caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
	reached = true
	w.WriteHeader(200)
	return nil
})

func do(h *Handler, method string, headers ...string) (*httptest.ResponseRecorder, error) {
	r := httptest.NewRequest(method, "/v1/events", nil)
	for i := 0; i+1 < len(headers); i += 2 {
		r.Header.Add(headers[i], headers[i+1])
	}
	w := httptest.NewRecorder()
	reached = false
	return w, h.ServeHTTP(w, r, backend)
}

func TestOrigins(t *testing.T) {
	h := newCORS(t, "api_cors {\n origins https://app.example.com,http://localhost:3000 https://*.example.org null\n}")
	tests := []struct {
		origin string
		want   bool
	}{
		{"https://app.example.com", true},
		{"HTTPS://APP.EXAMPLE.COM", true},
		{"http://localhost:3000", true},
		{"http://localhost:3001", false},
		{"https://a.example.org", true},
		{"https://a.b.example.org", true},
		{"https://example.org", false},
		{"https://evilexample.org", false},
		{"http://a.example.org", false},
		{"https://a.example.org:8443", false},
		{"https://app.example.com.evil.net", false},
		{"null", true},
		{"", false},
	}
	for _, tt := range tests {
		if got := h.allowed(tt.origin); got != tt.want {
			t.Errorf("allowed(%q) = %v, want %v", tt.origin, got, tt.want)
		}
	}
	strict := newCORS(t, "api_cors {\n origins https://app.example.com\n}")
	if strict.allowed("null") {
		t.Error("null allowed without being listed")
	}
}

func TestPreflight(t *testing.T) {
	h := newCORS(t, "api_cors {\n origins https://app.example.com\n max_age 1h\n}")
	w, err := do(h, "OPTIONS", "Origin", "https://app.example.com", "Access-Control-Request-Method", "PUT",
		"Access-Control-Request-Headers", "authorization, if-match, content-type")
	if err != nil || w.Code != 204 || reached {
		t.Fatalf("preflight: %d %v, forwarded %v", w.Code, err, reached)
	}
	if w.Header().Get("Access-Control-Allow-Origin") != "https://app.example.com" || !strings.Contains(w.Header().Get("Access-Control-Allow-Methods"), "PUT") ||
		!strings.Contains(w.Header().Get("Access-Control-Allow-Headers"), "If-Match") || w.Header().Get("Access-Control-Max-Age") != "3600" {
		t.Errorf("preflight headers: %v", w.Header())
	}
	for name, headers := range map[string][]string{
		"disallowed origin": {"Origin", "https://evil.example", "Access-Control-Request-Method", "GET"},
		"disallowed method": {"Origin", "https://app.example.com", "Access-Control-Request-Method", "TRACE"},
		"disallowed header": {"Origin", "https://app.example.com", "Access-Control-Request-Method", "GET", "Access-Control-Request-Headers", "x-evil"},
	} {
		w, _ := do(h, "OPTIONS", headers...)
		if w.Code != 204 || reached || w.Header().Get("Access-Control-Allow-Origin") != "" {
			t.Errorf("%s: %d, forwarded %v, Allow-Origin %q; want a 204 that allows nothing", name, w.Code, reached, w.Header().Get("Access-Control-Allow-Origin"))
		}
	}
	// an OPTIONS that is not a preflight goes on
	if do(h, "OPTIONS"); !reached {
		t.Error("a plain OPTIONS was not forwarded")
	}
}

// TestEveryResponse: an allowed origin's responses, errors included, carry
// the CORS headers; Vary: Origin is on every response; a disallowed origin
// gets none and is otherwise served as usual.
func TestEveryResponse(t *testing.T) {
	h := newCORS(t, "api_cors {\n origins https://app.example.com\n}")
	failing := caddyhttp.HandlerFunc(func(http.ResponseWriter, *http.Request) error {
		return caddyhttp.Error(http.StatusUnauthorized, nil)
	})
	w := httptest.NewRecorder()
	r := httptest.NewRequest("GET", "/v1/events", nil)
	r.Header.Set("Origin", "https://app.example.com")
	_ = h.ServeHTTP(w, r, failing)
	if w.Header().Get("Access-Control-Allow-Origin") != "https://app.example.com" || !strings.Contains(w.Header().Get("Access-Control-Expose-Headers"), "RateLimit") ||
		w.Header().Get("Vary") != "Origin" {
		t.Errorf("an error to an allowed origin: %v", w.Header())
	}
	w, _ = do(h, "GET", "Origin", "https://evil.example")
	if !reached || w.Header().Get("Access-Control-Allow-Origin") != "" || w.Header().Get("Vary") != "Origin" {
		t.Errorf("a disallowed origin: reached %v, %v", reached, w.Header())
	}
	w, _ = do(h, "GET")
	if w.Header().Get("Vary") != "Origin" {
		t.Error("a same-origin response lacks Vary: Origin")
	}
	any := newCORS(t, "api_cors {\n origins *\n}")
	if w, _ := do(any, "GET", "Origin", "https://anyone.example"); w.Header().Get("Access-Control-Allow-Origin") != "*" || w.Header().Get("Vary") != "" {
		t.Errorf("origins *: %v", w.Header())
	}
}

func TestConfigErrors(t *testing.T) {
	for name, cfg := range map[string]string{
		"wildcard port":         "api_cors {\n origins http://localhost:*\n}",
		"wildcard in middle":    "api_cors {\n origins https://a.*.example.com\n}",
		"wildcard tld":          "api_cors {\n origins https://*.com\n}",
		"a path":                "api_cors {\n origins https://app.example.com/app\n}",
		"no scheme":             "api_cors {\n origins app.example.com\n}",
		"star with credentials": "api_cors {\n origins *\n credentials\n}",
		"no origins":            "api_cors",
	} {
		t.Run(name, func(t *testing.T) {
			h := new(Handler)
			if err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(cfg)); err != nil {
				return
			}
			ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
			defer cancel()
			if err := h.Provision(ctx); err == nil && h.Validate() == nil {
				t.Errorf("%q accepted", cfg)
			}
		})
	}
}
