package tests

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/restgate/restgate/internal/testredis"
)

// TestAPIHostBypassIsRefused: a site block that answers for the API host
// outside its site (a second block with a path, the API host on plain
// HTTP) and serves without api_auth would serve without a key and carry a
// client's X-Auth-User to its backend: the configuration is refused at
// load time with an error naming the route and the handler. What cannot
// answer for the API host, or only redirects, still loads.
func TestAPIHostBypassIsRefused(t *testing.T) {
	tests := []struct {
		name  string
		cfg   string
		wants []string // in the refusal; none: the configuration loads
	}{
		{"the default Caddyfile", repoFile(t, "Caddyfile"), nil},
		{"a service added as the README shows", withService(t, "/v1/widgets*", "127.0.0.1:9"), nil},
		{"a second site block for the API host with a path", repoFile(t, "Caddyfile") + `
https://api.localhost:{$RESTGATE_HTTPS_PORT:8443}/forgotten/* {
	tls internal
	reverse_proxy 127.0.0.1:9
}
`, []string{"host api.localhost path /forgotten/*", "serves with reverse_proxy", "for API host api.localhost"}},
		{"a second site block that responds", repoFile(t, "Caddyfile") + `
https://api.localhost:{$RESTGATE_HTTPS_PORT:8443}/ping {
	tls internal
	respond "pong"
}
`, []string{"host api.localhost path /ping", "serves with respond"}},
		{"the API host over plain HTTP", repoFile(t, "Caddyfile") + `
http://api.localhost:{$RESTGATE_HTTP_PORT:8080}/legacy/* {
	reverse_proxy 127.0.0.1:9
}
`, []string{"host api.localhost path /legacy/*", "serves with reverse_proxy"}},
		{"a redirect of the API host on plain HTTP", repoFile(t, "Caddyfile") + `
http://api.localhost:{$RESTGATE_HTTP_PORT:8080}/old/* {
	redir https://api.localhost:{$RESTGATE_HTTPS_PORT:8443}{uri} 308
}
`, nil},
		{"a wildcard site the API site shadows", repoFile(t, "Caddyfile") + `
https://*.localhost:{$RESTGATE_HTTPS_PORT:8443}/static/* {
	tls internal
	respond "static"
}
`, nil},
		{"another host", repoFile(t, "Caddyfile") + `
https://www.localhost:{$RESTGATE_HTTPS_PORT:8443}/x/* {
	tls internal
	respond "www"
}
`, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, err := validateCaddyfile(t, tt.cfg)
			if len(tt.wants) == 0 {
				if err != nil {
					t.Fatalf("validate: %v\n%s", err, out)
				}
				return
			}
			if err == nil {
				t.Fatalf("validate accepted a route that answers for the API host without api_auth:\n%s", out)
			}
			for _, want := range append(tt.wants, "refusing this configuration", "without api_auth", "handle <path>") {
				if !strings.Contains(out, want) {
					t.Errorf("the refusal does not say %q:\n%s", want, out)
				}
			}
		})
	}
}

// validateCaddyfile runs `restgate validate` on cfg with the environment a
// test gateway has.
func validateCaddyfile(t *testing.T, cfg string) (string, error) {
	t.Helper()
	dir := t.TempDir()
	if err := writeTestKeys(filepath.Join(dir, "api-keys.yaml")); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "Caddyfile")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(binary, "validate", "--config", path, "--adapter", "caddyfile")
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + dir, "RESTGATE_DATA=" + dir,
		"XDG_DATA_HOME=" + filepath.Join(dir, "data"), "XDG_CONFIG_HOME=" + filepath.Join(dir, "config")}
	out, err := cmd.CombinedOutput()
	return strings.ReplaceAll(string(out), `\n`, "\n"), err
}

// redisSwitch is the default Caddyfile as shipped, checked to have its
// one Redis switch: the redis option's address from RESTGATE_REDIS, and
// both rate limits following it (`store auto`) with RESTGATE_REDIS_ON_ERROR.
func redisSwitch(t *testing.T) string {
	t.Helper()
	cfg := repoFile(t, "Caddyfile")
	for _, want := range []string{
		"\tredis {\n\t\taddress {$RESTGATE_REDIS}\n",
		"\t\tzone per-ip {$RESTGATE_RATE_PER_IP:600/1m}\n\t\tstore auto\n\t\ton_error {$RESTGATE_REDIS_ON_ERROR:deny}\n",
		"\t\tzone per-user {$RESTGATE_RATE_PER_USER:1200/1m}\n\t\tstore auto\n\t\ton_error {$RESTGATE_REDIS_ON_ERROR:deny}\n",
		"\tapi_etag {\n\t\tredis auto\n",
		"start each with\n\t# RESTGATE_REDIS=host:port",
	} {
		if !strings.Contains(cfg, want) {
			t.Fatalf("the default Caddyfile's Redis switch changed: no %q", want)
		}
	}
	return cfg
}

// TestDefaultRedisRecipeBeforeAuth: the default Caddyfile's own Redis
// switch (RESTGATE_REDIS, RESTGATE_REDIS_ON_ERROR) puts the per-IP limit, which runs before api_auth, in Redis.
// With a healthy Redis every request is answered, the per-IP limit is
// enforced (429 after the zone's count, decided in Redis) with on_error
// deny and with allow, and when Redis goes away the operator's log says
// why a decision could not be made.
func TestDefaultRedisRecipeBeforeAuth(t *testing.T) {
	const perIP = 5
	for _, onError := range []string{"deny", "allow"} {
		t.Run(onError, func(t *testing.T) {
			rs, err := testredis.Start()
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(rs.Stop)
			g := StartGateway(t, redisSwitch(t), Options{Env: map[string]string{
				"RESTGATE_REDIS":          rs.Addr,
				"RESTGATE_REDIS_ON_ERROR": onError,
				"RESTGATE_RATE_PER_IP":    fmt.Sprintf("%d/1h", perIP),
			}})
			c := g.Client()
			for i := range perIP {
				path := []string{"/v1/health", "/v1/events"}[i%2]
				r := Do(t, c, "GET", g.URL(path), "", bearer("tester")...)
				if r.StatusCode != 200 {
					t.Fatalf("request %d (%s) with Redis healthy: %d %s", i+1, path, r.StatusCode, r.Body)
				}
			}
			m := AssertProblem(t, Do(t, c, "GET", g.URL("/v1/health"), "", bearer("tester")...), 429)
			if vp, _ := m["violated-policies"].([]any); len(vp) != 1 || vp[0] != "per-ip" {
				t.Errorf("the 429 names %v, want the per-ip zone", m["violated-policies"])
			}
			keys, err := rs.Client().Keys(context.Background(), "restgate:rl:per-ip:*").Result()
			if err != nil || len(keys) != 1 {
				t.Errorf("the per-ip bucket in Redis: %v (%v); want one key", keys, err)
			}

			// Redis goes away: the answer follows on_error, and the log
			// says why
			rs.Kill()
			r := Do(t, c, "GET", g.URL("/v1/health"), "", bearer("tester")...)
			if onError == "deny" {
				if m := AssertProblem(t, r, 503); m["code"] != "rate_limit_unavailable" {
					t.Errorf("with Redis down: %v", m)
				}
			} else if r.StatusCode != 200 {
				t.Errorf("with Redis down and on_error allow: %d %s", r.StatusCode, r.Body)
			}
			waitFor(t, 5*time.Second, "a warning that names why the per-ip limit was undecided", func() bool {
				for _, l := range strings.Split(g.Logs(), "\n") {
					if strings.Contains(l, `"level":"warn"`) && strings.Contains(l, "rate limit undecided") &&
						strings.Contains(l, `"per-ip"`) && strings.Contains(l, `"error":"redis unavailable`) {
						return true
					}
				}
				return false
			})
		})
	}
}

// TestUpstreamTimeoutByDefault: a reverse_proxy added to the API site
// without `import upstream` gets restgate's response-header timeout (here
// `restgate { upstream_timeout 1s }`): a backend that accepts the
// connection and never answers is a 504 problem after it, not a client
// held forever; the load says so.
func TestUpstreamTimeoutByDefault(t *testing.T) {
	hung := hungBackend(t)
	cfg := strings.Replace(repoFile(t, "Caddyfile"), "\t# The resource collections, served in-process", `	handle /v1/hung* {
		reverse_proxy `+hung+`
	}

	# The resource collections, served in-process`, 1)
	if !strings.Contains(cfg, "handle /v1/hung*") || !strings.Contains(cfg, "\t\tupstream_timeout {$RESTGATE_UPSTREAM_TIMEOUT:30s}\n") {
		t.Fatal("the default Caddyfile changed: no place for the service, or no upstream_timeout from RESTGATE_UPSTREAM_TIMEOUT")
	}

	// the default, seen at load time
	out, err := validateCaddyfile(t, cfg)
	if err != nil || !strings.Contains(out, "restgate's default applies") || !strings.Contains(out, `"reverse_proxies":1,"response_header_timeout":30`) {
		t.Fatalf("validate (%v) does not report the default timeout for the one proxy without one:\n%s", err, out)
	}

	// the default Caddyfile sets upstream_timeout from the variable
	g := StartGateway(t, cfg, Options{Env: map[string]string{"RESTGATE_UPSTREAM_TIMEOUT": "1s"}})
	c := g.Client()
	start := time.Now()
	r, err := Send(c, "GET", g.URL("/v1/hung"), "", bearer("tester")...)
	took := time.Since(start)
	if err != nil {
		t.Fatalf("after %v: %v (want a 504 problem after about 1 s)", took, err)
	}
	AssertProblem(t, r, 504)
	if took < 900*time.Millisecond || took > 10*time.Second {
		t.Errorf("the 504 came after %v, want about 1 s", took)
	}
}

// hungBackend accepts connections, reads what is sent, and never answers.
func hungBackend(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			conn, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, conn)
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, _ = io.Copy(io.Discard, conn)
			}()
		}
	}()
	t.Cleanup(func() {
		l.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return l.Addr().String()
}
