package tests

import (
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// scrape reads the gateway's Prometheus metrics from its admin API and
// parses them with Prometheus's own text parser.
func scrape(t testing.TB, g *Gateway) map[string]*dto.MetricFamily {
	t.Helper()
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/metrics", g.Admin))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("GET /metrics: %d", resp.StatusCode)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("parsing the scrape: %v", err)
	}
	return fams
}

// metricValue is the value of the series of family name whose labels
// include want (label=value pairs); -1 when there is none.
func metricValue(fams map[string]*dto.MetricFamily, name string, want ...string) float64 {
	f := fams[name]
	if f == nil {
		return -1
	}
	for _, m := range f.Metric {
		labels := map[string]string{}
		for _, l := range m.Label {
			labels[l.GetName()] = l.GetValue()
		}
		ok := true
		for i := 0; i+1 < len(want); i += 2 {
			ok = ok && labels[want[i]] == want[i+1]
		}
		if !ok {
			continue
		}
		switch {
		case m.Counter != nil:
			return m.Counter.GetValue()
		case m.Gauge != nil:
			return m.Gauge.GetValue()
		}
	}
	return -1
}

// TestMetrics: the default Caddyfile serves Prometheus metrics on the
// admin API, restgate's counters count what happened, and no label carries
// a key, user, path or address.
func TestMetrics(t *testing.T) {
	widgets := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "max-age=60")
		fmt.Fprint(w, `{"widgets":[]}`)
	}))
	t.Cleanup(widgets.Close)
	g := StartGateway(t, withService(t, "/v1/widgets*", strings.TrimPrefix(widgets.URL, "http://")), Options{})
	c := g.Client()

	AssertProblem(t, Do(t, c, "GET", g.URL("/v1/events"), ""), 401)                                                    // missing
	AssertProblem(t, Do(t, c, "GET", g.URL("/v1/events"), "", "Authorization", "Bearer rg_nope_000000000000000"), 401) // invalid
	AssertProblem(t, Do(t, c, "POST", g.URL("/v1/events"), `{"name":"x"}`, bearer("reader")...), 403)                  // insufficient_scope
	if r := Do(t, c, "GET", g.URL("/v1/health"), ""); r.StatusCode != 200 {                                            // anonymous (public)
		t.Fatalf("health: %d", r.StatusCode)
	}
	if r := Do(t, c, "POST", g.URL("/v1/events"), `{"name":"m1"}`, bearer("tester")...); r.StatusCode != 201 {
		t.Fatalf("create: %d %s", r.StatusCode, r.Body)
	}
	first := Do(t, c, "GET", g.URL("/v1/widgets"), "", bearer("tester")...) // miss, stored
	etag := first.Header.Get("ETag")
	if first.StatusCode != 200 || etag == "" {
		t.Fatalf("GET: %d, ETag %q", first.StatusCode, etag)
	}
	if r := Do(t, c, "GET", g.URL("/v1/widgets"), "", bearer("tester")...); r.StatusCode != 200 || !strings.Contains(r.Header.Get("Cache-Status"), "hit") {
		t.Fatalf("second GET: %d, Cache-Status %q", r.StatusCode, r.Header.Get("Cache-Status"))
	}
	if r := Do(t, c, "GET", g.URL("/v1/widgets"), "", append(bearer("tester"), "If-None-Match", etag)...); r.StatusCode != 304 {
		t.Fatalf("If-None-Match: %d", r.StatusCode)
	}
	AssertProblem(t, Do(t, c, "PATCH", g.URL("/v1/events/m1"), `{"meta":{}}`, append(bearer("tester"), "Content-Type", "application/merge-patch+json", "If-Match", `"stale"`)...), 412)

	fams := scrape(t, g)
	for _, want := range []struct {
		name   string
		labels []string
		min    float64
	}{
		{"restgate_auth_requests_total", []string{"outcome", "missing"}, 1},
		{"restgate_auth_requests_total", []string{"outcome", "invalid"}, 1},
		{"restgate_auth_requests_total", []string{"outcome", "insufficient_scope"}, 1},
		{"restgate_auth_requests_total", []string{"outcome", "anonymous"}, 1},
		{"restgate_auth_requests_total", []string{"outcome", "ok"}, 5},
		{"restgate_auth_keys_loaded", nil, float64(len(testKeys))},
		{"restgate_auth_key_reloads_total", []string{"result", "failed"}, 0},
		{"restgate_cache_events_total", []string{"event", "miss"}, 1},
		{"restgate_cache_events_total", []string{"event", "stored"}, 1},
		{"restgate_cache_events_total", []string{"event", "hit"}, 2},
		{"restgate_cache_events_total", []string{"event", "evicted"}, 0},
		{"restgate_cache_bytes", nil, 1},
		{"restgate_http_conditional_responses_total", []string{"status", "304"}, 1},
		{"restgate_http_conditional_responses_total", []string{"status", "412"}, 1},
		{"restgate_http_conditional_responses_total", []string{"status", "428"}, 0},
		{"restgate_errors_rendered_total", []string{"class", "4xx", "source", "gateway"}, 3},
		{"restgate_errors_rendered_total", []string{"class", "5xx", "source", "backend"}, 0},
		{"restgate_rate_limit_decisions_total", []string{"zone", "per-user", "outcome", "admitted"}, 5},
		{"caddy_http_requests_total", nil, 1}, // Caddy's own, turned on by `metrics`
	} {
		if v := metricValue(fams, want.name, want.labels...); v < want.min {
			t.Errorf("%s%v = %v, want ≥ %v", want.name, want.labels, v, want.min)
		}
	}
	// a failed key-file reload is counted, and the keys stay
	if err := os.WriteFile(filepath.Join(g.Dir, "api-keys.yaml"), []byte("keys: [ {broken"), 0o600); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "a failed key reload in the metrics", func() bool {
		return metricValue(scrape(t, g), "restgate_auth_key_reloads_total", "result", "failed") >= 1
	})

	allowed := []string{"outcome", "result", "event", "status", "class", "source", "zone"}
	secrets := []string{"tester", "rg_test", "/v1", "127.0.0.1", "m1", "widgets"}
	for name, f := range scrape(t, g) {
		if !strings.HasPrefix(name, "restgate_") {
			continue
		}
		for _, m := range f.Metric {
			for _, l := range m.Label {
				if !slices.Contains(allowed, l.GetName()) {
					t.Errorf("%s has label %q: labels must stay bounded", name, l.GetName())
				}
				for _, s := range secrets {
					if strings.Contains(l.GetValue(), s) {
						t.Errorf("%s{%s=%q} carries a request's value", name, l.GetName(), l.GetValue())
					}
				}
			}
		}
	}
}

// TestOneInstancePerDataDir: a second gateway on the same data directory
// refuses to start and names the first's PID; one with its own directory
// on the same ports refuses too, instead of sharing them through
// SO_REUSEPORT.
func TestOneInstancePerDataDir(t *testing.T) {
	g := StartGateway(t, repoFile(t, "Caddyfile"), Options{})
	pid := g.cmd.Process.Pid
	b, err := os.ReadFile(filepath.Join(g.Dir, "restgate.pid"))
	if err != nil || strings.TrimSpace(string(b)) != strconv.Itoa(pid) {
		t.Fatalf("restgate.pid = %q (%v), want %d", b, err, pid)
	}

	second := func(env ...string) string {
		t.Helper()
		ports := freePorts(t, 3)
		cmd := exec.Command(binary, "run", "--config", g.Config, "--adapter", "caddyfile")
		cmd.Env = append(slices.Clone(g.Env),
			fmt.Sprintf("RESTGATE_HTTPS_PORT=%d", ports[0]),
			fmt.Sprintf("RESTGATE_HTTP_PORT=%d", ports[1]),
			fmt.Sprintf("RESTGATE_ADMIN=127.0.0.1:%d", ports[2]))
		cmd.Env = append(cmd.Env, env...)
		cmd.Dir = t.TempDir()
		done := make(chan struct{})
		var out []byte
		go func() { out, err = cmd.CombinedOutput(); close(done) }()
		select {
		case <-done:
		case <-time.After(60 * time.Second):
			_ = cmd.Process.Kill()
			<-done
			t.Fatalf("the second gateway kept running:\n%s", out)
		}
		if err == nil {
			t.Fatalf("the second gateway exited cleanly:\n%s", out)
		}
		return string(out)
	}

	out := second()
	if want := fmt.Sprintf("is in use by restgate PID %d", pid); !strings.Contains(out, want) {
		t.Errorf("same data directory: want %q in:\n%s", want, out)
	}

	other := t.TempDir()
	if err := writeTestKeys(filepath.Join(other, "api-keys.yaml")); err != nil {
		t.Fatal(err)
	}
	out = second("RESTGATE_DATA="+other, fmt.Sprintf("RESTGATE_HTTPS_PORT=%d", g.HTTPS))
	if want := fmt.Sprintf("127.0.0.1:%d: another process listens on it", g.HTTPS); !strings.Contains(out, want) {
		t.Errorf("same port, other data directory: want %q in:\n%s", want, out)
	}
	// a port that is only an outgoing connection's source port is not
	// "another restgate": the refusal says what holds it
	held := freePorts(t, 1)[0]
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: held}}
	conn, err := d.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", g.HTTPS))
	if err != nil {
		t.Fatal(err)
	}
	out = second("RESTGATE_DATA="+other, fmt.Sprintf("RESTGATE_HTTP_PORT=%d", held))
	conn.Close()
	if want := fmt.Sprintf("127.0.0.1:%d: no process listens on it, but a connection of this machine uses it as its local port (ESTABLISHED)", held); !strings.Contains(out, want) {
		t.Errorf("a port held by an outgoing connection: want %q in:\n%s", want, out)
	}
	if strings.Contains(out, "another restgate") {
		t.Errorf("a port held by an outgoing connection is called another restgate:\n%s", out)
	}
	// the first gateway never noticed
	if r := Do(t, g.Client(), "GET", g.URL("/v1/health"), ""); r.StatusCode != 200 {
		t.Errorf("the first gateway: %d", r.StatusCode)
	}
	// validating next to a running gateway is fine
	cmd := exec.Command(binary, "validate", "--config", g.Config, "--adapter", "caddyfile")
	cmd.Env = g.Env
	if b, err := cmd.CombinedOutput(); err != nil || !strings.Contains(string(b), "Valid configuration") {
		t.Errorf("validate next to the running gateway: %v\n%s", err, b)
	}
}

// TestReloadFromBareShell: a reload adapted without the RESTGATE_*
// variables the gateway runs with is refused with a message naming them,
// and the gateway stays where it was; from the same environment it works.
func TestReloadFromBareShell(t *testing.T) {
	g := StartGateway(t, repoFile(t, "Caddyfile"), Options{})
	reload := func(env []string) (string, error) {
		cmd := exec.Command(binary, "reload", "--config", g.Config, "--adapter", "caddyfile", "--address", fmt.Sprintf("127.0.0.1:%d", g.Admin), "--force")
		cmd.Env = env
		b, err := cmd.CombinedOutput()
		return string(b), err
	}
	bare := []string{"PATH=" + os.Getenv("PATH"), "HOME=" + filepath.Join(g.Dir, "home")}
	out, err := reload(bare)
	if err == nil {
		t.Fatalf("a reload from a bare shell was accepted:\n%s", out)
	}
	for _, want := range []string{"reload refused", "RESTGATE_HTTPS_PORT", "RESTGATE_DATA", "is running with", "make reload", "drop a variable on purpose"} {
		if !strings.Contains(out, want) {
			t.Errorf("the refusal lacks %q:\n%s", want, out)
		}
	}
	if r := Do(t, g.Client(), "GET", g.URL("/v1/health"), ""); r.StatusCode != 200 {
		t.Fatalf("after the refused reload: %d", r.StatusCode)
	}
	// a changed value is an intended change: accepted
	changed := append(slices.Clone(g.Env), "RESTGATE_RATE_PER_USER=999999/1s")
	if out, err := reload(changed); err != nil {
		t.Fatalf("reload with the gateway's environment: %v\n%s", err, out)
	}
	if r := Do(t, g.Client(), "GET", g.URL("/v1/events"), "", bearer("tester")...); r.StatusCode != 200 || !strings.Contains(strings.Join(r.Header.Values("RateLimit-Policy"), ","), "q=999999") {
		t.Errorf("after the reload: %d, RateLimit-Policy %q", r.StatusCode, r.Header.Get("RateLimit-Policy"))
	}
}
