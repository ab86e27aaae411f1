package tests

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// appPage is a browser app on another origin: it calls the API with a key
// and reports what it could read into window.__results.
const appPage = `<!doctype html><meta charset="utf-8"><title>app</title><script>
const api = new URLSearchParams(location.search).get("api");
const key = location.hash.slice(1);
const auth = {"Authorization": "Bearer " + key};
async function check() {
  const r = {};
  try {
    let res = await fetch(api + "/v1/events", {headers: auth});
    r.list = res.status; r.listRequestId = res.headers.get("X-Request-Id") || ""; r.listRateLimit = res.headers.get("RateLimit") || "";
    res = await fetch(api + "/v1/events", {method: "POST", headers: {...auth, "Content-Type": "application/json"}, body: JSON.stringify({name: "from-browser"})});
    r.create = res.status; r.location = res.headers.get("Location") || "";
    res = await fetch(api + "/v1/events/from-browser", {headers: auth});
    const etag = res.headers.get("ETag") || "";
    r.etag = etag;
    res = await fetch(api + "/v1/events/from-browser", {method: "PATCH", headers: {...auth, "Content-Type": "application/merge-patch+json", "If-Match": etag}, body: JSON.stringify({repository: "x"})});
    r.update = res.status;
    res = await fetch(api + "/v1/events/from-browser", {method: "PATCH", headers: {...auth, "Content-Type": "application/merge-patch+json", "If-Match": etag}, body: JSON.stringify({repository: "y"})});
    r.stale = res.status; r.staleCode = (await res.json()).code;
    res = await fetch(api + "/v1/events");
    r.unauthorized = res.status; r.unauthorizedBody = (await res.json()).status; r.unauthorizedChallenge = res.headers.get("WWW-Authenticate") || "";
    res = await fetch(api + "/v1/events/nothing-here", {headers: auth});
    r.notFound = res.status; r.notFoundCode = (await res.json()).code;
    for (let i = 0; i < 100; i++) {
      res = await fetch(api + "/v1/events", {headers: auth});
      if (res.status === 429) {
        r.limited = 429; r.retryAfter = res.headers.get("Retry-After") || ""; r.limitedRateLimit = res.headers.get("RateLimit") || "";
        r.limitedType = (await res.json()).type;
        break;
      }
    }
  } catch (e) { r.error = String(e); }
  window.__results = JSON.stringify(r);
}
async function blocked() {
  try { await fetch(api + "/v1/health"); window.__results = JSON.stringify({blocked: false}); }
  catch (e) { window.__results = JSON.stringify({blocked: true}); }
}
(location.pathname === "/evil" ? blocked : check)();
</script>`

// TestBrowser drives headless Chromium (Debian's chromium) against the
// binary: a page on http://app.localhost:<port> uses the API on
// https://api.localhost:<port> with a key, reads what CORS exposes, and a
// page on another origin is blocked. The browser trusts the gateway's CA
// through an NSS database in a temporary HOME.
func TestBrowser(t *testing.T) {
	app, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	appPort := app.Addr().(*net.TCPAddr).Port
	appOrigin := fmt.Sprintf("http://app.localhost:%d", appPort)
	srv := &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html")
		fmt.Fprint(w, appPage)
	})}
	go srv.Serve(app)
	t.Cleanup(func() { srv.Close() })

	g := StartGateway(t, repoFile(t, "Caddyfile"), Options{Env: map[string]string{
		"RESTGATE_CORS_ORIGINS": appOrigin, "RESTGATE_RATE_PER_USER": "20/1m",
	}})
	// a browser profile that trusts the gateway's CA, and nothing else new
	ctx := chromiumFor(t, g)

	api := fmt.Sprintf("https://api.localhost:%d", g.HTTPS)
	results := func(page string) map[string]any {
		t.Helper()
		err := chromedp.Do(ctx, chromedp.Navigate(page))
		var raw string
		if err == nil {
			raw, err = chromedp.Run(ctx, chromedp.Poll[string](`window.__results`, chromedp.WithPollingTimeout(45*time.Second)))
		}
		if err != nil {
			t.Fatalf("%s: %v\ngateway output:\n%s", page, err, g.Logs())
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(raw), &m); err != nil {
			t.Fatalf("%s: results %q: %v", page, raw, err)
		}
		return m
	}
	key := strings.TrimPrefix(bearer("tester")[1], "Bearer ")
	r := results(fmt.Sprintf("%s/?api=%s#%s", appOrigin, api, key))
	t.Logf("what the page could read: %v", r)
	want := map[string]any{
		"list": 200.0, "create": 201.0, "location": "/v1/events/from-browser", "update": 200.0, "stale": 412.0,
		"staleCode": "precondition_failed", "unauthorized": 401.0, "unauthorizedBody": 401.0, "notFound": 404.0,
		"notFoundCode": "not_found", "limited": 429.0, "limitedType": "https://iana.org/assignments/http-problem-types#quota-exceeded",
	}
	for k, v := range want {
		if r[k] != v {
			t.Errorf("%s = %v, want %v", k, r[k], v)
		}
	}
	for _, k := range []string{"listRequestId", "listRateLimit", "etag", "retryAfter", "limitedRateLimit", "unauthorizedChallenge"} {
		if s, _ := r[k].(string); s == "" {
			t.Errorf("the page could not read %s", k)
		}
	}
	if r["error"] != nil {
		t.Errorf("the page failed: %v", r["error"])
	}
	// a page on an origin that is not allowed is blocked by the browser
	evil := results(fmt.Sprintf("http://evil.localhost:%d/evil?api=%s", appPort, api))
	if evil["blocked"] != true {
		t.Errorf("a page on a disallowed origin read the API: %v", evil)
	}

	// the API reference renders its operations
	if err := chromedp.Do(ctx, chromedp.Navigate(api+"/docs/"), chromedp.WaitVisible(chromedp.CSS(".opblock"))); err != nil {
		t.Fatalf("/docs: %v", err)
	}
	ops, err := chromedp.Run(ctx, chromedp.Evaluate[int](`document.querySelectorAll(".opblock").length`))
	if err != nil {
		t.Fatal(err)
	}
	text, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS("body")))
	if err != nil {
		t.Fatal(err)
	}
	shot, err := chromedp.Run(ctx, chromedp.FullScreenshot(100)) // 100: PNG
	if err != nil {
		t.Fatal(err)
	}
	if ops < 10 || !strings.Contains(text, "List events") || !strings.Contains(text, "Create an event") {
		t.Errorf("/docs rendered %d operations; text has 'List events': %v", ops, strings.Contains(text, "List events"))
	}
	// "Try it out" with a key typed into the Authorize dialog: authorise
	// the way the dialog does, expand List events, press Try it out, execute it (as alice:
	// the app page used up tester's quota)
	alice := strings.TrimPrefix(bearer("alice")[1], "Bearer ")
	tryIt := `(async () => {
		ui.authActions.authorize({bearer: {name: "bearer", schema: {type: "http", scheme: "bearer"}, value: ` + "`" + alice + "`" + `}});
		document.querySelector("#operations-events-list_events .opblock-summary-control").click();
		// "Try it out" is off until pressed
		for (let i = 0; i < 100 && !document.querySelector("#operations-events-list_events .try-out__btn"); i++) await new Promise(r => setTimeout(r, 50));
		document.querySelector("#operations-events-list_events .try-out__btn").click();
		for (let i = 0; i < 100 && !document.querySelector("#operations-events-list_events .execute"); i++) await new Promise(r => setTimeout(r, 50));
		document.querySelector("#operations-events-list_events .execute").click();
		return true;
	})()`
	if _, err := chromedp.Run(ctx, chromedp.Evaluate[bool](tryIt, chromedp.EvalAwaitPromise)); err != nil {
		t.Fatalf("try it out: %v", err)
	}
	code, err := chromedp.Run(ctx, chromedp.Poll[string](`document.querySelector("#operations-events-list_events .live-responses-table tbody .response-col_status")?.innerText`,
		chromedp.WithPollingTimeout(20*time.Second)))
	if err != nil || strings.TrimSpace(code) != "200" {
		t.Errorf("try it out on List events: status %q, %v", code, err)
	}
	dir := t.TempDir()
	if d := os.Getenv("RESTGATE_SCREENSHOT_DIR"); d != "" {
		dir = d
	}
	if err := os.WriteFile(filepath.Join(dir, "docs.png"), shot, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("/docs rendered %d operations; screenshot %s", ops, filepath.Join(dir, "docs.png"))
}
