package tests

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/pb33f/libopenapi"
	validator "github.com/pb33f/libopenapi-validator"
)

// fastAPIOrders is a FastAPI-style service on loopback: its OpenAPI
// document at /openapi.json, its orders at /v1/orders, and three broken
// documents (a 500, invalid JSON, one larger than the gateway accepts).
func fastAPIOrders(t *testing.T) int {
	t.Helper()
	fixture := repoFile(t, "modules/docs/testdata/fastapi_orders.json")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		switch r.URL.Path {
		case "/openapi.json":
			fmt.Fprint(w, fixture)
		case "/broken/500":
			w.WriteHeader(500)
			fmt.Fprint(w, `{"detail": "Internal Server Error"}`)
		case "/broken/json":
			fmt.Fprint(w, fixture[:len(fixture)/2])
		case "/broken/large":
			fmt.Fprintf(w, `{"openapi": "3.1.0", "info": {"title": "%s", "version": "1"}, "paths": {"/big": {}}}`, strings.Repeat("x", 100<<10))
		case "/v1/orders":
			fmt.Fprintf(w, `{"items": [], "pagination": {"page": 1, "pages": 1, "total": 0}, "owner": %q}`, r.Header.Get("X-Auth-User"))
		default:
			w.WriteHeader(404)
			fmt.Fprint(w, `{"detail": "Not Found"}`)
		}
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().(*net.TCPAddr).Port
}

// withServices is the default Caddyfile with the orders service added the
// Caddy way (its route, and its document named in api_docs) and three
// services whose documents are broken.
func withServices(t *testing.T, port int) string {
	t.Helper()
	cf := repoFile(t, "Caddyfile")
	docs := fmt.Sprintf(`	api_docs {
		max_size 64KiB
		service /v1/orders* http://127.0.0.1:%[1]d/openapi.json
		service /v1/crashes http://127.0.0.1:%[1]d/broken/500
		service /v1/garbled http://127.0.0.1:%[1]d/broken/json
		service /v1/huge http://127.0.0.1:%[1]d/broken/large
	}
`, port)
	route := fmt.Sprintf(`	handle /v1/orders* {
		reverse_proxy 127.0.0.1:%d {
			import upstream
		}
	}

	handle /v1/* {
`, port)
	for old, new := range map[string]string{"\tapi_docs {\n\t}\n": docs, "\thandle /v1/* {\n": route} {
		if strings.Count(cf, old) != 1 {
			t.Fatalf("the default Caddyfile has %d %q, want 1", strings.Count(cf, old), old)
		}
		cf = strings.Replace(cf, old, new, 1)
	}
	return cf
}

// TestDocsMerge: a FastAPI service's OpenAPI document, fetched by the
// gateway, appears in /v1/openapi.json under the route's prefix with what
// the gateway adds, next to the resources collections; three broken
// documents are left out with a warn log each; the merged document is
// valid OpenAPI 3.1 (libopenapi-validator) with no Spectral error; and the
// page in Chromium lists the service's operations.
func TestDocsMerge(t *testing.T) {
	port := fastAPIOrders(t)
	g := StartGateway(t, withServices(t, port), Options{})
	c := g.Client()

	var doc map[string]any
	var raw []byte
	waitFor(t, 30*time.Second, "the orders service in /v1/openapi.json", func() bool {
		r := Do(t, c, "GET", g.URL("/v1/openapi.json"), "")
		raw = r.Body
		return r.StatusCode == 200 && json.Unmarshal(r.Body, &doc) == nil && at(doc, "paths", "/v1/orders") != nil
	})
	waitFor(t, 30*time.Second, "a warn line for each broken document", func() bool {
		return warned(g.Logs(), "/v1/crashes", "status 500") && warned(g.Logs(), "/v1/garbled", "invalid JSON") &&
			warned(g.Logs(), "/v1/huge", "larger than max_size")
	})

	// the service's paths under the prefix, the collections still there,
	// nothing of the broken ones
	for _, p := range []string{"/v1/orders", "/v1/orders/{order_id}", "/v1/events", "/v1/secrets/{name}", "/v1/health"} {
		if at(doc, "paths", p) == nil {
			t.Errorf("no %s in /v1/openapi.json", p)
		}
	}
	for p := range doc["paths"].(map[string]any) {
		if strings.HasPrefix(p, "/v1/crashes") || strings.HasPrefix(p, "/v1/garbled") || strings.HasPrefix(p, "/v1/huge") || p == "/big" {
			t.Errorf("a broken document's path %s is in the document", p)
		}
	}
	// the gateway's additions, on every operation of the service
	for _, tt := range []struct {
		path, method, scope string
		want, absent        []string
	}{
		{"/v1/orders", "get", "read", []string{"GatewayUnauthorized", "GatewayForbidden", "GatewayTooManyRequests", "GatewayServiceUnavailable", "#/components/headers/ETag", "#/components/headers/RateLimit", "#/components/headers/RateLimit-Policy", "#/components/headers/X-Request-Id"}, []string{"IdempotencyKey", "x-auth-user", "GatewayPreconditionFailed"}},
		{"/v1/orders", "post", "write", []string{"#/components/parameters/IdempotencyKey", "GatewayUnauthorized", "GatewayTooManyRequests", "#/components/headers/X-Request-Id"}, []string{"x-auth-user", "GatewayPreconditionRequired"}},
		{"/v1/orders/{order_id}", "patch", "write", []string{"#/components/parameters/IdempotencyKey", "#/components/parameters/IfMatch", "GatewayPreconditionFailed", "GatewayPreconditionRequired"}, []string{"x-auth-user"}},
		{"/v1/orders/{order_id}", "delete", "write", []string{"#/components/parameters/IfMatch", "GatewayPreconditionFailed", "GatewayPreconditionRequired", "GatewayServiceUnavailable"}, nil},
	} {
		op, _ := at(doc, "paths", tt.path, tt.method).(map[string]any)
		b, _ := json.Marshal(op)
		s := string(b)
		sec, _ := json.Marshal(op["security"])
		if want := fmt.Sprintf(`[{"bearer":[%q]},{"apiKey":[%q]}]`, tt.scope, tt.scope); string(sec) != want {
			t.Errorf("%s %s: security %s, want %s", tt.method, tt.path, sec, want)
		}
		for _, w := range tt.want {
			if !strings.Contains(s, w) {
				t.Errorf("%s %s lacks %s", tt.method, tt.path, w)
			}
		}
		for _, a := range tt.absent {
			if strings.Contains(s, a) {
				t.Errorf("%s %s has %s", tt.method, tt.path, a)
			}
		}
		if at(op, "responses", "422", "content", "application/problem+json") == nil && tt.method != "delete" {
			t.Errorf("%s %s: the backend's 422 is not a problem: %v", tt.method, tt.path, at(op, "responses", "422"))
		}
	}
	// one shared Problem, examples whose type is a real URI
	if at(doc, "components", "schemas", "Problem") == nil || at(doc, "components", "schemas", "orders_Pagination") == nil ||
		at(doc, "components", "schemas", "Pagination", "properties", "total_count") == nil {
		t.Errorf("components: %v", keysOf(at(doc, "components", "schemas")))
	}
	for name, r := range at(doc, "components", "responses").(map[string]any) {
		typ, _ := at(r, "content", "application/problem+json", "example", "type").(string)
		if typ != "about:blank" && !strings.HasPrefix(typ, "https://") {
			t.Errorf("response %s: example type %q", name, typ)
		}
	}
	if strings.Contains(string(raw), "127.0.0.1") {
		t.Error("/v1/openapi.json names a service's internal address")
	}
	// the service itself, through the gateway
	if r := Do(t, c, "GET", g.URL("/v1/orders"), "", bearer("tester")...); r.StatusCode != 200 || !strings.Contains(string(r.Body), `"owner": "tester"`) {
		t.Errorf("GET /v1/orders: %d %s", r.StatusCode, r.Body)
	}
	// a conditional GET of the merged document
	r := Do(t, c, "GET", g.URL("/v1/openapi.json"), "")
	if et := r.Header.Get("ETag"); et == "" || Do(t, c, "GET", g.URL("/v1/openapi.json"), "", "If-None-Match", et).StatusCode != 304 {
		t.Errorf("ETag %q: no 304 for it", et)
	}

	validateOpenAPI(t, raw)
	lintOpenAPI(t, raw)
	docsPage(t, g)
}

// warned reports whether the logs have a warn line of api_docs for the
// service with the reason.
func warned(logs, prefix, reason string) bool {
	for _, line := range strings.Split(logs, "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(line), &m) != nil {
			continue
		}
		if m["level"] == "warn" && m["logger"] == "http.handlers.api_docs" && m["service"] == prefix && strings.Contains(fmt.Sprint(m["error"]), reason) {
			return true
		}
	}
	return false
}

// at walks a decoded JSON value by object keys.
func at(v any, path ...string) any {
	for _, p := range path {
		m, _ := v.(map[string]any)
		v = m[p]
	}
	return v
}

func keysOf(v any) []string {
	m, _ := v.(map[string]any)
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

// validateOpenAPI checks a document against the OpenAPI 3.1 schema.
func validateOpenAPI(t *testing.T, raw []byte) {
	t.Helper()
	d, err := libopenapi.NewDocument(raw)
	if err != nil {
		t.Fatal(err)
	}
	v, errs := validator.NewValidator(d)
	if len(errs) > 0 {
		t.Fatalf("building the validator: %v", errs)
	}
	if ok, verrs := v.ValidateDocument(); !ok {
		for _, e := range verrs {
			t.Errorf("not valid OpenAPI 3.1: %s: %s (%v)", e.Message, e.Reason, e.SchemaValidationErrors)
		}
	}
}

// lintOpenAPI runs Spectral (pinned in tools/spectral) with the
// spectral:oas ruleset: an error fails the test; warnings are logged.
func lintOpenAPI(t *testing.T, raw []byte) {
	t.Helper()
	spectral := spectralCLI(t)
	f := filepath.Join(t.TempDir(), "openapi.json")
	if err := os.WriteFile(f, raw, 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, spectral, "lint", "--ruleset", filepath.Join(repoDir(t), "tools", "spectral", "ruleset.yaml"), "--format", "json", "--quiet", f)
	out, err := cmd.Output()
	var results []struct {
		Code     string `json:"code"`
		Message  string `json:"message"`
		Path     []any  `json:"path"`
		Severity int    `json:"severity"`
	}
	if jerr := json.Unmarshal(out, &results); jerr != nil {
		t.Fatalf("spectral: %v (%v)\n%s", err, jerr, out)
	}
	counts := map[string]int{}
	for _, r := range results {
		if r.Severity == 0 {
			t.Errorf("spectral error %s at %v: %s", r.Code, r.Path, r.Message)
		}
		counts[fmt.Sprintf("%s (severity %d)", r.Code, r.Severity)]++
	}
	t.Logf("spectral:oas on the merged document (%d bytes): %d findings %v", len(raw), len(results), counts)
}

// spectralCLI returns the pinned Spectral CLI, installed from
// tools/spectral's lock file with npm ci into the user's cache directory
// the first time (one directory per lock file).
func spectralCLI(t *testing.T) string {
	t.Helper()
	npm, err := exec.LookPath("npm")
	if err != nil {
		t.Fatal("npm is not installed; apt-get install nodejs npm")
	}
	pkg, lock := repoFile(t, "tools/spectral/package.json"), repoFile(t, "tools/spectral/package-lock.json")
	sum := sha256.Sum256([]byte(pkg + "\x00" + lock))
	cache, err := os.UserCacheDir()
	if err != nil {
		cache = os.TempDir()
	}
	dir := filepath.Join(cache, "restgate", "spectral-"+hex.EncodeToString(sum[:6]))
	bin := filepath.Join(dir, "node_modules", ".bin", "spectral")
	if _, err := os.Stat(bin); err == nil {
		return bin
	}
	tmp := dir + ".tmp-" + rand.Text()
	if err := os.MkdirAll(tmp, 0o755); err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(tmp)
	for name, content := range map[string]string{"package.json": pkg, "package-lock.json": lock} {
		if err := os.WriteFile(filepath.Join(tmp, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, npm, "ci", "--no-audit", "--no-fund", "--ignore-scripts")
	cmd.Dir = tmp
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("installing Spectral (npm ci in tools/spectral): %v\n%s", err, out)
	}
	if err := os.Rename(tmp, dir); err != nil {
		if _, serr := os.Stat(bin); serr != nil { // not another test's install
			t.Fatal(err)
		}
	}
	return bin
}

// docsPage renders /docs/ in headless Chromium (trusting the gateway's CA
// through an NSS database in a temporary HOME) and checks that the
// service's operations are listed with the gateway's additions, and that
// "Try it out" waits to be pressed.
func docsPage(t *testing.T, g *Gateway) {
	t.Helper()
	ctx := chromiumFor(t, g)
	page := g.URL("/docs/")
	const post = "#operations-orders-create_order_v1_orders_post"
	if err := chromedp.Do(ctx, chromedp.Navigate(page), chromedp.WaitVisible(chromedp.CSS(post))); err != nil {
		t.Fatalf("/docs: %v\ngateway output:\n%s", err, g.Logs())
	}
	open := `(async () => {
		document.querySelector("` + post + ` .opblock-summary-control").click();
		for (let i = 0; i < 200 && !document.querySelector("` + post + ` .responses-table"); i++) await new Promise(r => setTimeout(r, 50));
		return document.querySelector("` + post + `").innerText;
	})()`
	text, err := chromedp.Run(ctx, chromedp.Evaluate[string](open, chromedp.EvalAwaitPromise))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"Create Order", "/v1/orders", "Idempotency-Key", "401", "403", "429", "503", "422", "X-Request-Id", "RateLimit-Policy", "Try it out"} {
		if !strings.Contains(text, want) {
			t.Errorf("/docs: Create Order does not show %q:\n%s", want, text)
		}
	}
	counts, err := chromedp.Run(ctx, chromedp.Evaluate[map[string]int](`({
		orders: document.querySelectorAll("[id^='operations-orders-']").length,
		events: document.querySelectorAll("[id^='operations-events-']").length,
		execute: document.querySelectorAll(".execute").length,
		errors: document.querySelectorAll(".errors-wrapper").length,
	})`))
	if err != nil {
		t.Fatal(err)
	}
	if counts["orders"] != 5 || counts["events"] < 5 || counts["execute"] != 0 || counts["errors"] != 0 {
		t.Errorf("/docs: %v: want the 5 orders operations and the events collection's, no Execute button before Try it out, no errors", counts)
	}
	shot, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if d := os.Getenv("RESTGATE_SCREENSHOT_DIR"); d != "" {
		dir = d
	}
	if err := os.WriteFile(filepath.Join(dir, "docs-merge.png"), shot, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("/docs: %v; screenshot %s", counts, filepath.Join(dir, "docs-merge.png"))
}

// chromiumFor starts headless Chromium (Debian's chromium) with a profile
// that trusts g's CA (an NSS database in a temporary HOME, verification
// on) and nothing else new, stops it when the test ends, and returns a
// context with a deadline to drive it with. TestBrowser uses it too.
func chromiumFor(t *testing.T, g *Gateway) context.Context {
	t.Helper()
	chromium, err := exec.LookPath("chromium")
	if err != nil {
		t.Fatal("chromium is not installed; .ci/run installs it (apt-get install chromium libnss3-tools)")
	}
	certutil, err := exec.LookPath("certutil")
	if err != nil {
		t.Fatal("certutil is not installed; .ci/run installs it (apt-get install libnss3-tools)")
	}
	home := t.TempDir()
	nssdb := filepath.Join(home, ".pki", "nssdb")
	if err := os.MkdirAll(nssdb, 0o700); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{
		{"-d", "sql:" + nssdb, "-N", "--empty-password"},
		{"-d", "sql:" + nssdb, "-A", "-t", "C,,", "-n", "restgate-test-ca", "-i", g.RootCA()},
	} {
		if out, err := exec.Command(certutil, args...).CombinedOutput(); err != nil {
			t.Fatalf("certutil %v: %v\n%s", args, err, out)
		}
	}
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chromium),
		chromedp.UserDataDir(filepath.Join(home, "profile")),
		chromedp.Env("HOME="+home),
		chromedp.NoSandbox,
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.WindowSize(1280, 900),
	)
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	t.Cleanup(cancelAlloc)
	browser, cancel := chromedp.NewContext(actx)
	t.Cleanup(cancel)
	if err := chromedp.Do(browser); err != nil { // starts the browser (with no deadline: that would stop it)
		t.Fatalf("starting chromium: %v", err)
	}
	ctx, cancelTimeout := context.WithTimeout(browser, 90*time.Second)
	t.Cleanup(cancelTimeout)
	return ctx
}
