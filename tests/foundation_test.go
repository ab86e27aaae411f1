package tests

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func TestDefaultCaddyfile(t *testing.T) {
	g := StartGateway(t, repoFile(t, "Caddyfile"), Options{})
	c := g.Client()

	t.Run("health over verified TLS", func(t *testing.T) {
		r := Do(t, c, "GET", g.URL("/v1/health"), "")
		if r.StatusCode != 200 || r.Header.Get("Content-Type") != "application/json" {
			t.Fatalf("got %d %q: %s", r.StatusCode, r.Header.Get("Content-Type"), r.Body)
		}
		m := r.JSON(t)
		if m["status"] != "ok" || m["version"] != "v1" {
			t.Errorf("health = %s", r.Body)
		}
		if r.TLS == nil || r.TLS.VerifiedChains == nil {
			t.Error("TLS was not verified against the gateway's CA")
		}
		if r.Header.Get("X-Request-Id") == "" {
			t.Error("no X-Request-Id")
		}
	})

	t.Run("unknown path is a JSON 404", func(t *testing.T) {
		AssertProblem(t, Do(t, c, "GET", g.URL("/v1/nothing/here"), "", bearer("tester")...), 404)
		// without a key, /v1 paths are 401 before anything says whether they exist
		AssertProblem(t, Do(t, c, "GET", g.URL("/v1/nothing/here"), ""), 401)
		// every path that is not declared public needs a key first (fail closed)
		AssertProblem(t, Do(t, c, "GET", g.URL("/"), ""), 401)
		AssertProblem(t, Do(t, c, "GET", g.URL("/"), "", bearer("tester")...), 404)
		AssertProblem(t, Do(t, c, "HEAD", g.URL("/nothing"), "", bearer("tester")...), 404)
	})

	t.Run("other host is a JSON 404", func(t *testing.T) {
		r := Do(t, c, "GET", g.URL("/v1/health"), "", "Host", "www.example.com")
		m := AssertProblem(t, r, 404)
		if !strings.Contains(fmt.Sprint(m["detail"]), "API host") {
			t.Errorf("detail = %v", m["detail"])
		}
	})

	t.Run("plain HTTP never reaches the API", func(t *testing.T) {
		plain := &http.Client{Timeout: 10 * time.Second, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
		r := Do(t, plain, "GET", fmt.Sprintf("http://127.0.0.1:%d/v1/health", g.HTTP), "", "Host", "api.localhost")
		m := AssertProblem(t, r, 403)
		if !strings.Contains(fmt.Sprint(m["detail"]), "HTTPS") {
			t.Errorf("detail = %v, want it to say HTTPS", m["detail"])
		}
		if r.Header.Get("Location") != "" {
			t.Error("plain HTTP was redirected; it must be refused")
		}
		AssertProblem(t, Do(t, plain, "GET", fmt.Sprintf("http://127.0.0.1:%d/", g.HTTP), "", "Host", "www.example.com"), 404)
	})

	t.Run("credentials never reach the log", func(t *testing.T) {
		const key = "rg_SECRETKEY_5f0e1d2c3b4a"
		known := testKeys["tester"].token // a real key, sent where keys do not go
		sent := 0
		send := func(path string, headers ...string) {
			Do(t, c, "GET", g.URL(path), "", headers...)
			sent++
		}
		for _, h := range []string{"X-Api-Key", "Api-Key", "Token", "X-Auth-Token", "X-Access-Token"} {
			send("/v1/health", h, key)
		}
		send("/v1/health", "Authorization", "Bearer "+key)
		send("/v1/health", "Authorization", "Api-Key "+key)
		for _, p := range []string{"api_key", "API_KEY", "apiKey", "access-token", "password", "auth", "token"} {
			send("/v1/health?"+p+"="+key, "")
		}
		send("/v1/health?q="+known, "X-Custom", known)
		waitFor(t, 5*time.Second, "access log lines", func() bool {
			return strings.Count(g.Logs(), `"uri":"/v1/health`) >= sent
		})
		for _, secret := range []string{key, known} {
			if strings.Contains(g.Logs(), secret) {
				t.Errorf("a key reached the log:\n%s", g.Logs())
			}
		}
	})

	t.Run("another name still gets a handshake and a problem", func(t *testing.T) {
		for _, name := range []string{"localhost", "127.0.0.1", ""} {
			conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", fmt.Sprintf("127.0.0.1:%d", g.HTTPS), &tls.Config{
				ServerName: name, InsecureSkipVerify: true, NextProtos: []string{"http/1.1"},
				// verify by hand: the API host's certificate, from the gateway's CA
				VerifyConnection: func(cs tls.ConnectionState) error {
					inter := x509.NewCertPool()
					for _, c := range cs.PeerCertificates[1:] {
						inter.AddCert(c)
					}
					_, err := cs.PeerCertificates[0].Verify(x509.VerifyOptions{Roots: g.ca, Intermediates: inter, DNSName: "api.localhost"})
					return err
				},
			})
			if err != nil {
				t.Errorf("TLS to %q: %v", name, err)
				continue
			}
			fmt.Fprintf(conn, "GET / HTTP/1.1\r\nHost: %s:%d\r\nConnection: close\r\n\r\n", name, g.HTTPS)
			resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
			conn.Close()
			if err != nil || resp.StatusCode != 404 || resp.Header.Get("Content-Type") != "application/problem+json" {
				t.Errorf("GET https://%s: %v %v", name, err, resp)
			}
		}
	})

	t.Run("the access log has the request id", func(t *testing.T) {
		r := Do(t, c, "GET", g.URL("/v1/health"), "", "X-Request-Id", "trace-me-123")
		if r.Header.Get("X-Request-Id") != "trace-me-123" {
			t.Fatalf("X-Request-Id = %q", r.Header.Get("X-Request-Id"))
		}
		waitFor(t, 5*time.Second, "a log line with the request id", func() bool {
			return strings.Contains(g.Logs(), `"request_id":"trace-me-123"`)
		})
		// the three fields the Caddyfile leaves out of the line are in the
		// response, and the line's other response fields are kept
		for _, f := range []string{"X-Request-Id", "Ratelimit-Policy", "Strict-Transport-Security"} {
			if r.Header.Get(f) == "" {
				t.Errorf("the response has no %s", f)
			}
		}
		for _, line := range strings.Split(g.Logs(), "\n") {
			if !strings.Contains(line, `"request_id":"trace-me-123"`) {
				continue
			}
			var entry struct {
				RespHeaders http.Header `json:"resp_headers"`
			}
			if err := json.Unmarshal([]byte(line), &entry); err != nil {
				t.Fatalf("the access log line: %v: %s", err, line)
			}
			for _, f := range []string{"X-Request-Id", "Ratelimit-Policy", "Strict-Transport-Security"} {
				if _, ok := entry.RespHeaders[f]; ok {
					t.Errorf("the access log line has resp_headers>%s, which the Caddyfile deletes: %s", f, line)
				}
			}
			if entry.RespHeaders.Get("Content-Type") == "" || entry.RespHeaders.Get("Ratelimit") == "" {
				t.Errorf("the access log line lost a response field it keeps: %s", line)
			}
		}
	})

	t.Run("HSTS on the API host", func(t *testing.T) {
		r := Do(t, c, "GET", g.URL("/v1/health"), "")
		if !strings.HasPrefix(r.Header.Get("Strict-Transport-Security"), "max-age=") {
			t.Errorf("Strict-Transport-Security = %q", r.Header.Get("Strict-Transport-Security"))
		}
	})

	t.Run("malformed requests get a 4xx", func(t *testing.T) {
		tests := []struct {
			name, request string
			want          int // 0: any 4xx
		}{
			{"host with space", "GET /v1/health HTTP/1.1\r\nHost: api.local host\r\n\r\n", 400},
			{"host with control byte", "GET /v1/health HTTP/1.1\r\nHost: api.\x01localhost\r\n\r\n", 400},
			{"very long host", "GET /v1/health HTTP/1.1\r\nHost: api." + strings.Repeat("a", 70000) + "\r\n\r\n", 0},
			{"no host", "GET /v1/health HTTP/1.1\r\n\r\n", 400},
			{"two hosts", "GET /v1/health HTTP/1.1\r\nHost: api.localhost\r\nHost: api.localhost\r\n\r\n", 400},
			{"absolute-form other host", "GET https://evil.example/v1/health HTTP/1.1\r\nHost: api.localhost\r\n\r\n", 404},
			{"malformed host port", "GET /v1/health HTTP/1.1\r\nHost: api.localhost:99999999\r\n\r\n", 0},
			{"dots only", "GET /v1/health HTTP/1.1\r\nHost: ...\r\n\r\n", 400},
			{"ip literal host", "GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 404},
			{"malformed chunked body", "POST /v1/events HTTP/1.1\r\nHost: api.localhost\r\n" + bearerLine("tester") +
				"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{\"a\":\r\nzz\r\n\r\n", 400},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				status := rawTLSRequest(t, g, tt.request)
				if status < 400 || status > 499 || (tt.want != 0 && status != tt.want) {
					t.Errorf("status = %d, want %v (a 4xx)", status, tt.want)
				}
			})
		}
		// still alive and well
		if r := Do(t, c, "GET", g.URL("/v1/health"), ""); r.StatusCode != 200 {
			t.Errorf("health after bad input = %d", r.StatusCode)
		}
		if strings.Contains(g.Logs(), "panic") {
			t.Error("the gateway logged a panic")
		}
	})
}

func bearerLine(user string) string { return "Authorization: " + bearer(user)[1] + "\r\n" }

// rawTLSRequest writes bytes as they are over a verified TLS connection to
// api.localhost and returns the response's status code.
func rawTLSRequest(t *testing.T, g *Gateway, request string) int {
	t.Helper()
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp",
		fmt.Sprintf("127.0.0.1:%d", g.HTTPS), &tls.Config{ServerName: "api.localhost", RootCAs: g.ca, NextProtos: []string{"http/1.1"}})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := conn.Write([]byte(request)); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("reading response: %v", err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

func TestCommands(t *testing.T) {
	out := func(args ...string) string {
		t.Helper()
		cmd := exec.Command(binary, args...)
		cmd.Dir = ".."
		cmd.Env = append(cmd.Environ(), "RESTGATE_DATA="+t.TempDir(), "RESTGATE_API_KEY=rg_cmd_test:tester")
		b, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("restgate %s: %v\n%s", strings.Join(args, " "), err, b)
		}
		return string(b)
	}
	// restgate's version, then Caddy's as Caddy prints it, in the form the
	// README shows
	if v := out("version"); !regexp.MustCompile(`^restgate \S+ v2\.\d+\.\d+ h1:\S+\n$`).MatchString(v) {
		t.Errorf("version = %q, want `restgate <version> v2.x.y h1:…`", v)
	}
	if !strings.Contains(repoFile(t, "README.md"), "`restgate <git describe> v2.") {
		t.Error("the README no longer shows `restgate version`'s form")
	}
	mods := out("list-modules")
	for _, id := range []string{"http.matchers.api_host", "http.handlers.api_errors", "http.handlers.reverse_proxy"} {
		if !strings.Contains(mods, id+"\n") {
			t.Errorf("list-modules lacks %s", id)
		}
	}
	if v := out("validate", "--config", "Caddyfile"); !strings.Contains(v, "Valid configuration") {
		t.Errorf("validate: %s", v)
	}
	if a := out("adapt", "--config", "Caddyfile"); !strings.Contains(a, `"handler":"api_errors"`) {
		t.Errorf("adapt: no api_errors handler in %s", a)
	}
}

// TestReloadUnderLoad: reloads while clients read and write with a steady
// key: not one request fails (the collections and their store live
// through a reload, as rate-limit state does).
func TestReloadUnderLoad(t *testing.T) {
	g := StartGateway(t, repoFile(t, "Caddyfile"), Options{})
	c := g.Client()
	var failures, sent atomic.Int64
	var firstFailure atomic.Value
	stop := load(4, func(w, i int) bool {
		var r *Response
		var err error
		if w%2 == 0 {
			r, err = Send(c, "POST", g.URL("/v1/events"), fmt.Sprintf(`{"name": "e-%d-%d"}`, w, i), bearer("tester")...)
		} else {
			r, err = Send(c, "GET", g.URL("/v1/events"), "", bearer("tester")...)
		}
		sent.Add(1)
		if err != nil || r.StatusCode >= 300 {
			failures.Add(1)
			firstFailure.CompareAndSwap(nil, fmt.Sprint(err, r))
		}
		return true
	})
	for range 12 {
		cmd := exec.Command(binary, "reload", "--force", "--config", g.Config, "--adapter", "caddyfile", "--address", fmt.Sprintf("127.0.0.1:%d", g.Admin))
		cmd.Env = g.Env
		if b, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("reload: %v\n%s", err, b)
		}
	}
	stop()
	if failures.Load() > 0 {
		t.Errorf("%d of %d requests failed during 12 reloads; first: %v", failures.Load(), sent.Load(), firstFailure.Load())
	}
	t.Logf("%d requests during 12 reloads, none failed", sent.Load())
}

// TestSlowBodiesAreCutOff: a client that trickles its body is cut off
// after read_body (RESTGATE_READ_BODY_TIMEOUT), so it cannot hold a
// connection and a descriptor for as long as it likes.
func TestSlowBodiesAreCutOff(t *testing.T) {
	g := StartGateway(t, repoFile(t, "Caddyfile"), Options{Env: map[string]string{"RESTGATE_READ_BODY_TIMEOUT": "1s"}})
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp",
		fmt.Sprintf("127.0.0.1:%d", g.HTTPS), &tls.Config{ServerName: "api.localhost", RootCAs: g.ca, NextProtos: []string{"http/1.1"}})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	start := time.Now()
	fmt.Fprintf(conn, "POST /v1/events HTTP/1.1\r\nHost: api.localhost\r\n%sContent-Type: application/json\r\nContent-Length: 100\r\n\r\n", bearerLine("tester"))
	closed := make(chan time.Duration, 1)
	go func() {
		_, _ = io.Copy(io.Discard, conn) // returns when the gateway closes the connection
		closed <- time.Since(start)
	}()
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	deadline := time.After(15 * time.Second)
	for {
		select {
		case d := <-closed:
			t.Logf("a trickling upload was cut off after %v", d.Round(10*time.Millisecond))
			if d < 900*time.Millisecond {
				t.Errorf("cut off after %v: before read_body (1s) ran out, so something else closed it", d)
			}
			return
		case <-tick.C:
			_, _ = conn.Write([]byte("x"))
		case <-deadline:
			t.Fatal("a body sent one byte every 200ms was still open after 15s with read_body 1s")
		}
	}
}

func TestReload(t *testing.T) {
	before := testGlobals("") + `https://api.localhost:{$RESTGATE_HTTPS_PORT} {
	tls internal
	api_errors
	respond "one" 200
}
`
	g := StartGateway(t, before, Options{})
	c := g.Client()
	if r := Do(t, c, "GET", g.URL("/"), ""); string(r.Body) != "one" {
		t.Fatalf("before reload: %q", r.Body)
	}
	if err := os.WriteFile(g.Config, []byte(strings.Replace(before, `"one"`, `"two"`, 1)), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(binary, "reload", "--config", g.Config, "--adapter", "caddyfile", "--address", fmt.Sprintf("127.0.0.1:%d", g.Admin))
	cmd.Env = g.Env
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("reload: %v\n%s", err, b)
	}
	waitFor(t, 10*time.Second, "the reloaded config", func() bool {
		r, err := Send(c, "GET", g.URL("/"), "")
		return err == nil && string(r.Body) == "two"
	})
}
