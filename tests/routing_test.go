package tests

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// TestNewServiceIsProtected: a service added to the default Caddyfile the
// way Caddy teaches, with no other edit, needs a key and gets the chain.
func TestNewServiceIsProtected(t *testing.T) {
	cfg := withService(t, "/v1/widgets*", echoBackend(t))
	g := StartGateway(t, cfg, Options{})
	c := g.Client()
	AssertProblem(t, Do(t, c, "GET", g.URL("/v1/widgets"), ""), 401)
	r := Do(t, c, "GET", g.URL("/v1/widgets"), "", append(bearer("alice"), "X-Auth-User", "root")...)
	if r.StatusCode != 200 || !strings.HasPrefix(string(r.Body), "user=[alice]") || r.Header.Get("ETag") == "" || r.Header.Get("RateLimit") == "" {
		t.Errorf("with a key: %d %q ETag %q RateLimit %q", r.StatusCode, r.Body, r.Header.Get("ETag"), r.Header.Get("RateLimit"))
	}
}

// withService is the default Caddyfile with a service added as the
// README's "Add your own service" shows it: its caddyfile block, as
// pasted, with only the path and the backend's address changed.
func withService(t *testing.T, path, upstream string) string {
	t.Helper()
	block := readmeBlock(t, "caddyfile", "handle /v1/widgets* {")
	block = strings.NewReplacer("/v1/widgets*", path, "127.0.0.1:9100", upstream).Replace(block)
	cfg := strings.Replace(repoFile(t, "Caddyfile"), "\t# The resource collections, served in-process",
		indent(block)+"\n\t# The resource collections, served in-process", 1)
	if !strings.Contains(cfg, "reverse_proxy "+upstream) {
		t.Fatal("the default Caddyfile changed: no place for the service's block")
	}
	return cfg
}

// TestUnprotectedRouteIsRefused: a configuration that lets a request reach
// a handler without api_auth (here: api_auth only in one handle block)
// fails closed: the backend is never called, a success is not served, and
// the operator's log names the route.
func TestUnprotectedRouteIsRefused(t *testing.T) {
	var hits atomic.Int64
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		fmt.Fprint(w, "secret data")
	}))
	t.Cleanup(backend.Close)
	cfg := testGlobals("restgate") + fmt.Sprintf(`https://api.localhost:{$RESTGATE_HTTPS_PORT} {
	tls internal
	api_errors {
		require_auth
	}
	handle /v1/* {
		api_auth {
			keys_file {$RESTGATE_DATA}/api-keys.yaml
			public /v1/open
		}
		reverse_proxy %[1]s
	}
	handle /forgotten* {
		reverse_proxy %[1]s
	}
	handle /static {
		respond "static but unprotected"
	}
	handle {
		error "no route serves this path" 404
	}
}
`, strings.TrimPrefix(backend.URL, "http://"))
	g := StartGateway(t, cfg, Options{})
	c := g.Client()
	// seen statically: `restgate validate` (and every load) warns, naming
	// the routes
	cmd := exec.Command(binary, "validate", "--config", g.Config, "--adapter", "caddyfile")
	cmd.Env = g.Env
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("validate: %v\n%s", err, out)
	}
	for _, want := range []string{`"route":"host api.localhost → path /forgotten*","handler":"reverse_proxy"`, `"route":"host api.localhost → path /static","handler":"respond"`} {
		if !strings.Contains(string(out), want) || !strings.Contains(g.Logs(), want) {
			t.Errorf("validate output and startup log should warn with %s:\n%s", want, out)
		}
	}
	if strings.Contains(string(out), "/v1/*") {
		t.Errorf("the protected route was reported:\n%s", out)
	}
	for _, path := range []string{"/forgotten", "/forgotten/x", "/static"} {
		r := Do(t, c, "POST", g.URL(path), "{}", bearer("tester")...)
		m := AssertProblem(t, r, 500)
		if m["code"] != "unprotected_route" || strings.Contains(string(r.Body), "secret") || strings.Contains(string(r.Body), "static but") {
			t.Errorf("%s: %s", path, r.Body)
		}
	}
	if n := hits.Load(); n != 0 {
		t.Errorf("the backend was called %d times through an unprotected route", n)
	}
	waitFor(t, 5*time.Second, "the error line naming the route", func() bool {
		return strings.Contains(g.Logs(), "not behind api_auth") && strings.Contains(g.Logs(), `"uri":"/forgotten/x"`)
	})
	// protected and public routes, and errors, work as usual
	if r := Do(t, c, "GET", g.URL("/v1/data"), "", bearer("tester")...); r.StatusCode != 200 || hits.Load() != 1 {
		t.Errorf("a protected route: %d, backend hits %d", r.StatusCode, hits.Load())
	}
	if r := Do(t, c, "GET", g.URL("/v1/open"), ""); r.StatusCode != 200 {
		t.Errorf("a public route: %d", r.StatusCode)
	}
	AssertProblem(t, Do(t, c, "GET", g.URL("/v1/data"), ""), 401)
	AssertProblem(t, Do(t, c, "GET", g.URL("/nowhere"), ""), 404)
}
