package tests

import (
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/dunglas/httpsfv"
)

func TestRateLimitThroughGateway(t *testing.T) {
	g := StartGateway(t, repoFile(t, "Caddyfile"), Options{Env: map[string]string{
		"RESTGATE_RATE_PER_USER": "3/1m",
		"RESTGATE_RATE_PER_IP":   "1000/1m",
	}})
	c := g.Client()
	for i := 0; i < 3; i++ {
		r := Do(t, c, "GET", g.URL("/v1/events"), "", bearer("alice")...)
		if r.StatusCode != 200 {
			t.Fatalf("request %d: %d %s", i, r.StatusCode, r.Body)
		}
		list, err := httpsfv.UnmarshalList(r.Header.Values("RateLimit"))
		if err != nil || len(list) != 2 {
			t.Fatalf("RateLimit %q: %v", r.Header.Values("RateLimit"), err)
		}
		if _, err := httpsfv.UnmarshalList(r.Header.Values("RateLimit-Policy")); err != nil {
			t.Fatalf("RateLimit-Policy %q: %v", r.Header.Values("RateLimit-Policy"), err)
		}
		for _, m := range list {
			it := m.(httpsfv.Item)
			rem, _ := it.Params.Get("r")
			if it.Value == "per-user" && rem != int64(2-i) {
				t.Errorf("request %d: per-user r=%v, want %d", i, rem, 2-i)
			}
		}
	}
	r := Do(t, c, "GET", g.URL("/v1/events"), "", bearer("alice")...)
	m := AssertProblem(t, r, 429)
	if m["type"] != "https://iana.org/assignments/http-problem-types#quota-exceeded" || fmt.Sprint(m["violated-policies"]) != "[per-user]" {
		t.Errorf("429 body: %s", r.Body)
	}
	if ra, err := strconv.Atoi(r.Header.Get("Retry-After")); err != nil || ra < 1 || ra > 20 {
		t.Errorf("Retry-After = %q, want 1..20 (a token per 20s)", r.Header.Get("Retry-After"))
	}
	if r.Header.Get("RateLimit") == "" || r.Header.Get("RateLimit-Policy") == "" {
		t.Error("a 429 without RateLimit headers")
	}
	// another user is unaffected
	if r := Do(t, c, "GET", g.URL("/v1/events"), "", bearer("bob")...); r.StatusCode != 200 {
		t.Errorf("bob: %d", r.StatusCode)
	}
	waitFor(t, 5*time.Second, "the refusal log line", func() bool { return strings.Contains(g.Logs(), `"msg":"rate limit exceeded"`) })
	if strings.Contains(g.Logs(), `"key":"alice"`) {
		t.Error("the key was logged without log_key")
	}
}

// limitConfig takes the extra global options, the zone's rate and the response.
func limitConfig(globals, rate, body string) string {
	return testGlobals(globals) + fmt.Sprintf(`https://api.localhost:{$RESTGATE_HTTPS_PORT} {
	tls internal
	api_errors
	api_rate_limit_ip {
		zone per-ip %s
	}
	respond "%s"
}
`, rate, body)
}

func TestRetryAfterIsHonoured(t *testing.T) {
	// one request per 2 s: the second request must come within 2 s of the
	// first to be refused, which a loaded machine still manages
	g := StartGateway(t, limitConfig("", "1/2s", "ok"), Options{})
	c := g.Client()
	if r := Do(t, c, "GET", g.URL("/"), ""); r.StatusCode != 200 {
		t.Fatalf("first: %d", r.StatusCode)
	}
	r := Do(t, c, "GET", g.URL("/"), "")
	if r.StatusCode != 429 {
		t.Fatalf("second: %d", r.StatusCode)
	}
	ra, _ := strconv.Atoi(r.Header.Get("Retry-After"))
	if ra < 1 || ra > 2 {
		t.Fatalf("Retry-After = %q, want 1 or 2", r.Header.Get("Retry-After"))
	}
	time.Sleep(time.Duration(ra) * time.Second) // what a well-behaved client does
	if r := Do(t, c, "GET", g.URL("/"), ""); r.StatusCode != 200 {
		t.Errorf("after waiting Retry-After: %d %s", r.StatusCode, r.Body)
	}
}

func TestRateLimitStateSurvivesReload(t *testing.T) {
	g := StartGateway(t, limitConfig("", "2/1h", "one"), Options{})
	c := g.Client()
	for i := 0; i < 2; i++ {
		Do(t, c, "GET", g.URL("/"), "")
	}
	AssertProblem(t, Do(t, c, "GET", g.URL("/"), ""), 429)
	if err := os.WriteFile(g.Config, []byte(limitConfig("", "3/1h", "two")), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(binary, "reload", "--config", g.Config, "--adapter", "caddyfile", "--address", fmt.Sprintf("127.0.0.1:%d", g.Admin))
	cmd.Env = g.Env
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("reload: %v\n%s", err, b)
	}
	// the new config is live when its response changes; until the bucket
	// refills (20 minutes at 3/h) it must still refuse
	waitFor(t, 10*time.Second, "the reloaded config", func() bool {
		r, err := Send(c, "GET", g.URL("/"), "")
		return err == nil && (string(r.Body) == "two" || strings.Contains(r.Header.Get("RateLimit-Policy"), "q=3"))
	})
	r := Do(t, c, "GET", g.URL("/"), "")
	if r.StatusCode != 429 || !strings.Contains(r.Header.Get("RateLimit-Policy"), "q=3") {
		t.Errorf("after reload: %d %q %s (the bucket must survive the reload)", r.StatusCode, r.Header.Get("RateLimit-Policy"), r.Body)
	}
}

func TestTrustedProxies(t *testing.T) {
	trusted := StartGateway(t, limitConfig("servers {\n\t\ttrusted_proxies static 127.0.0.1/32\n\t\tclient_ip_headers X-Forwarded-For\n\t}", "1/1h", "ok"), Options{})
	untrusted := StartGateway(t, limitConfig("", "1/1h", "ok"), Options{})
	status := func(g *Gateway, xff string) int {
		return Do(t, g.Client(), "GET", g.URL("/"), "", "X-Forwarded-For", xff).StatusCode
	}
	// behind a trusted proxy, each forwarded client has its own bucket
	if status(trusted, "198.51.100.1") != 200 || status(trusted, "198.51.100.2") != 200 || status(trusted, "198.51.100.1") != 429 {
		t.Error("trusted proxy: forwarded clients are not keyed separately")
	}
	// from an untrusted peer, X-Forwarded-For is ignored: one bucket
	if status(untrusted, "198.51.100.1") != 200 || status(untrusted, "198.51.100.2") != 429 {
		t.Error("untrusted peer: a spoofed X-Forwarded-For got its own bucket")
	}
}

// TestRefusedRequestsSpendNothing: a request refused by the per-user zone
// gives its per-IP token back, however long it spent in between (through
// the binary, in real time).
func TestRefusedRequestsSpendNothing(t *testing.T) {
	g := StartGateway(t, repoFile(t, "Caddyfile"), Options{Env: map[string]string{
		"RESTGATE_RATE_PER_USER": "1/1h",
		"RESTGATE_RATE_PER_IP":   "100/1h",
	}})
	c := g.Client()
	perIP := func(r *Response) int64 {
		t.Helper()
		list, err := httpsfv.UnmarshalList(r.Header.Values("RateLimit"))
		if err != nil {
			t.Fatalf("RateLimit %q: %v", r.Header.Values("RateLimit"), err)
		}
		for _, m := range list {
			if it := m.(httpsfv.Item); it.Value == "per-ip" {
				rem, _ := it.Params.Get("r")
				return rem.(int64)
			}
		}
		t.Fatalf("no per-ip item in %q", r.Header.Values("RateLimit"))
		return 0
	}
	if r := Do(t, c, "GET", g.URL("/v1/events"), "", bearer("alice")...); r.StatusCode != 200 || perIP(r) != 99 {
		t.Fatalf("first request: %d, per-ip r=%d", r.StatusCode, perIP(r))
	}
	for range 3 {
		AssertProblem(t, Do(t, c, "GET", g.URL("/v1/events"), "", bearer("alice")...), 429)
	}
	// bob's request takes one more per-IP token: 98 left if the three
	// refused requests gave theirs back, 95 if they did not
	if r := Do(t, c, "GET", g.URL("/v1/events"), "", bearer("bob")...); r.StatusCode != 200 || perIP(r) != 98 {
		t.Errorf("after three refused requests: %d, per-ip r=%d, want 200 and 98", r.StatusCode, perIP(r))
	}
}
