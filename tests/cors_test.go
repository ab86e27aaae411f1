package tests

import (
	"strings"
	"testing"
)

// TestCORSThroughGateway: the default Caddyfile's api_cors, without a
// browser (the browser test drives the same from a real page).
func TestCORSThroughGateway(t *testing.T) {
	const app = "http://app.localhost:3000"
	g := StartGateway(t, repoFile(t, "Caddyfile"), Options{Env: map[string]string{"RESTGATE_CORS_ORIGINS": app + ", https://*.example.org"}})
	c := g.Client()

	// a preflight is answered at the edge: no key, never forwarded
	r := Do(t, c, "OPTIONS", g.URL("/v1/events"), "", "Origin", app, "Access-Control-Request-Method", "PUT",
		"Access-Control-Request-Headers", "authorization, if-match, content-type, idempotency-key")
	if r.StatusCode != 204 || r.Header.Get("Access-Control-Allow-Origin") != app || !strings.Contains(r.Header.Get("Access-Control-Allow-Headers"), "If-Match") {
		t.Errorf("preflight: %d %v", r.StatusCode, r.Header)
	}
	if r.Header.Get("Allow") != "" || r.Header.Get("Ratelimit") != "" {
		t.Errorf("the preflight reached the backend or a limit: %v", r.Header)
	}
	// every answer to an allowed origin carries the headers, problems too
	for _, tt := range []struct {
		path    string
		headers []string
		status  int
	}{
		{"/v1/health", nil, 200},
		{"/v1/events", nil, 401},
		{"/v1/events/nothing", bearer("tester"), 404},
		{"/nowhere", nil, 401}, // fail closed: a path that is not public needs a key first
	} {
		r := Do(t, c, "GET", g.URL(tt.path), "", append([]string{"Origin", app}, tt.headers...)...)
		if r.StatusCode != tt.status || r.Header.Get("Access-Control-Allow-Origin") != app ||
			!strings.Contains(r.Header.Get("Access-Control-Expose-Headers"), "X-Request-Id") || !strings.Contains(strings.Join(r.Header.Values("Vary"), ","), "Origin") {
			t.Errorf("GET %s from %s: %d %v", tt.path, app, r.StatusCode, r.Header)
		}
	}
	if r := Do(t, c, "GET", g.URL("/v1/health"), "", "Origin", "https://team.example.org"); r.Header.Get("Access-Control-Allow-Origin") != "https://team.example.org" {
		t.Errorf("a pattern origin: %v", r.Header)
	}
	// a disallowed origin: no CORS headers, otherwise served as usual
	for _, origin := range []string{"https://evil.example", "null", "http://app.localhost:3001"} {
		r := Do(t, c, "GET", g.URL("/v1/health"), "", "Origin", origin)
		if r.StatusCode != 200 || r.Header.Get("Access-Control-Allow-Origin") != "" {
			t.Errorf("origin %s: %d Allow-Origin %q", origin, r.StatusCode, r.Header.Get("Access-Control-Allow-Origin"))
		}
	}
	// the API reference is public
	d := Do(t, c, "GET", g.URL("/docs/"), "")
	if d.StatusCode != 200 || !strings.Contains(d.Header.Get("Content-Type"), "text/html") || !strings.Contains(string(d.Body), "/v1/openapi.json") {
		t.Errorf("/docs/: %d %q", d.StatusCode, d.Header.Get("Content-Type"))
	}
	if strings.Contains(string(d.Body), "cdn") || strings.Contains(string(d.Body), "unpkg") {
		t.Error("/docs loads assets from a CDN")
	}
}
