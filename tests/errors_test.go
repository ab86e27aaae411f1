package tests

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"
)

// TestCaddyRaisedErrors: errors that Caddy's own handlers raise leave the
// real binary as problem+json: backend down, upstream timeout, body too
// large, no route, and a backend's 5xx body never reaches the client.
func TestCaddyRaisedErrors(t *testing.T) {
	// a backend that accepts and then never answers until the test ends
	hang := make(chan struct{})
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{ReadHeaderTimeout: 10 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/hang":
			<-hang
		case "/crash":
			w.WriteHeader(500)
			fmt.Fprint(w, "Traceback: KeyError at /srv/app/db.py line 42 (db.internal:5432) connect(password=hunter2-secret)")
		default:
			_, _ = io.Copy(io.Discard, r.Body)
			w.Write([]byte("ok"))
		}
	})}
	go srv.Serve(l)
	t.Cleanup(func() { close(hang); srv.Close() })
	slowPort := l.Addr().(*net.TCPAddr).Port
	down := freePorts(t, 1)[0] // nothing listens here

	cfg := testGlobals("") + upstreamSnippet(t) + fmt.Sprintf(`https://api.localhost:{$RESTGATE_HTTPS_PORT} {
	tls internal
	api_errors
	handle_errors {
		api_errors
	}
	handle /down {
		reverse_proxy 127.0.0.1:%d
	}
	handle /hang {
		reverse_proxy 127.0.0.1:%d {
			import upstream
		}
	}
	handle /crash {
		reverse_proxy 127.0.0.1:%d
	}
	handle /upload {
		request_body {
			max_size 16
		}
		reverse_proxy 127.0.0.1:%d
	}
}
`, down, slowPort, slowPort, slowPort)
	// the default Caddyfile's upstream timeouts, made short for the test
	g := StartGateway(t, cfg, Options{Env: map[string]string{"RESTGATE_UPSTREAM_TIMEOUT": "300ms"}})
	c := g.Client()

	tests := []struct {
		name, method, path, body string
		want                     int
	}{
		{"backend down", "GET", "/down", "", 502},
		{"upstream timeout", "GET", "/hang", "", 504},
		{"backend 500", "GET", "/crash", "", 500},
		{"body too large", "POST", "/upload", strings.Repeat("x", 1024), 413},
		{"no route", "GET", "/nowhere", "", 404},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := Do(t, c, tt.method, g.URL(tt.path), tt.body)
			AssertProblem(t, r, tt.want)
			for _, leak := range []string{"127.0.0.1", "Traceback", "db.internal", "/srv/", "dial tcp"} {
				if strings.Contains(string(r.Body), leak) {
					t.Errorf("the problem leaks %q: %s", leak, r.Body)
				}
			}
		})
	}
	// a body the client garbled is the client's error, not a bad gateway
	// (reverse_proxy labels a failed body read 502)
	for _, body := range []string{"5\r\nhello\r\nzz\r\n\r\n", "5\r\nhello\r\nfffffffffffffffffff\r\n\r\n"} {
		status := rawTLSRequest(t, g, "POST /upload HTTP/1.1\r\nHost: api.localhost\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"+body)
		if status != 400 {
			t.Errorf("malformed chunked body %q: status %d, want 400", body, status)
		}
	}
	// the operator sees that it happened, with the request id; the body
	// (which may hold anything) is for the debug log only, redacted
	waitFor(t, 5*time.Second, "the backend error line", func() bool {
		return strings.Contains(g.Logs(), `"msg":"backend error response"`)
	})
	for _, leak := range []string{"Traceback", "hunter2"} {
		if strings.Contains(g.Logs(), leak) {
			t.Errorf("the backend's 5xx body reached the log at the default level (%q)", leak)
		}
	}
}

// upstreamSnippet is the default Caddyfile's `(upstream)` snippet, so that
// the tests use the timeouts the README documents.
func upstreamSnippet(t *testing.T) string {
	t.Helper()
	m := regexp.MustCompile(`(?s)\n\(upstream\) \{\n.*?\n\}\n`).FindString(repoFile(t, "Caddyfile"))
	if m == "" {
		t.Fatal("the default Caddyfile has no (upstream) snippet")
	}
	return m
}
