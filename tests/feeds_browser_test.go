package tests

import (
	"fmt"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// feedPage follows /v1/events with fetch() streaming (the README's
// client: the key in the Authorization header, never in the URL) and
// records each event's type and name in window.__feed.
const feedPage = `<!doctype html><meta charset="utf-8"><title>feed</title><script>
const api = new URLSearchParams(location.search).get("api");
const key = location.hash.slice(1);
window.__feed = [];
(async () => {
  try {
    const res = await fetch(api + "/v1/events", {headers: {Accept: "text/event-stream", Authorization: "Bearer " + key}});
    window.__status = res.status;
    const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
    let buf = "";
    for (;;) {
      const {value, done} = await reader.read();
      if (done) break;
      buf += value;
      let end;
      while ((end = buf.indexOf("\n\n")) >= 0) {
        const block = buf.slice(0, end); buf = buf.slice(end + 2);
        const ev = {};
        for (const line of block.split("\n")) {
          const i = line.indexOf(": ");
          if (line.startsWith(":") || i < 0) continue;
          ev[line.slice(0, i)] = line.slice(i + 2);
        }
        if (ev.event) window.__feed.push(ev.event + " " + (JSON.parse(ev.data).resource || {}).name);
      }
    }
  } catch (e) { window.__error = String(e); }
})();
</script>`

// TestFeedsBrowser: a page on an allowed origin follows a collection live
// in headless Chromium, through CORS, with fetch() streaming.
func TestFeedsBrowser(t *testing.T) {
	app, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	appOrigin := fmt.Sprintf("http://app.localhost:%d", app.Addr().(*net.TCPAddr).Port)
	srv := &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html")
		fmt.Fprint(w, feedPage)
	})}
	go srv.Serve(app)
	t.Cleanup(func() { srv.Close() })
	g := StartGateway(t, repoFile(t, "Caddyfile"), Options{Env: map[string]string{"RESTGATE_CORS_ORIGINS": appOrigin}})

	ctx := chromiumFor(t, g)

	api := fmt.Sprintf("https://api.localhost:%d", g.HTTPS)
	key := strings.TrimPrefix(bearer("tester")[1], "Bearer ")
	if err := chromedp.Do(ctx, chromedp.Navigate(fmt.Sprintf("%s/?api=%s#%s", appOrigin, api, key))); err != nil {
		t.Fatal(err)
	}
	if _, err := chromedp.Run(ctx, chromedp.Poll[int](`window.__status`, chromedp.WithPollingTimeout(45*time.Second))); err != nil {
		t.Fatalf("the page's stream did not open: %v\n%s", err, g.Logs())
	}
	c := g.Client()
	Do(t, c, "POST", g.URL("/v1/events"), `{"name": "live-1"}`, bearer("tester")...)
	Do(t, c, "PATCH", g.URL("/v1/events/live-1"), `{"repository": "r"}`, append(bearer("tester"), "Content-Type", "application/merge-patch+json")...)
	got, err := chromedp.Run(ctx, chromedp.Poll[string](`window.__feed.length >= 2 ? window.__feed.join(",") : null`, chromedp.WithPollingTimeout(45*time.Second)))
	if err != nil {
		msg, _ := chromedp.Run(ctx, chromedp.Evaluate[string](`String(window.__error || window.__status)`))
		t.Fatalf("the page saw no live events: %v (%s)", err, msg)
	}
	if got != "created live-1,updated live-1" {
		t.Errorf("the page saw %q", got)
	}
	if strings.Contains(g.Logs(), key) {
		t.Error("the key reached the gateway's log")
	}
}
