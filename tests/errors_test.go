package tests

import (
	"fmt"
	"net"
	"net/http"
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
			fmt.Fprint(w, "Traceback: KeyError at /srv/app/db.py line 42 (db.internal:5432)")
		default:
			w.Write([]byte("ok"))
		}
	})}
	go srv.Serve(l)
	t.Cleanup(func() { close(hang); srv.Close() })
	slowPort := l.Addr().(*net.TCPAddr).Port
	down := freePorts(t, 1)[0] // nothing listens here

	cfg := testGlobals("") + fmt.Sprintf(`https://api.localhost:{$RESTGATE_HTTPS_PORT} {
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
			transport http {
				response_header_timeout 300ms
			}
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
	g := StartGateway(t, cfg, Options{})
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
	// the operator still sees what happened, with the request id
	if !strings.Contains(g.Logs(), "Traceback: KeyError") {
		t.Error("the backend's 5xx body is not in the operator's log")
	}
}
