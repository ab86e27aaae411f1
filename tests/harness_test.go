// Package tests holds restgate's black-box tests: they build the binary once,
// start it on free loopback ports with a temporary data directory, speak real
// HTTP(S) to it (trusting the temporary CA root) and stop it.
package tests

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// binary is the restgate binary under test: $RESTGATE_BIN (what `make test`
// passes after `make build`), or one built once for this test run.
var binary string

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	binary = os.Getenv("RESTGATE_BIN")
	if binary == "" {
		dir, err := os.MkdirTemp("", "restgate-bin-")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer os.RemoveAll(dir)
		binary = filepath.Join(dir, "restgate")
		cmd := exec.Command("go", "build", "-o", binary, "../cmd/restgate")
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		if err := cmd.Run(); err != nil {
			fmt.Fprintln(os.Stderr, "building restgate:", err)
			return 1
		}
	}
	if _, err := os.Stat(binary); err != nil {
		fmt.Fprintln(os.Stderr, "restgate binary:", err)
		return 1
	}
	defer redisServer.stop()
	defer postgresServer.stop()
	return m.Run()
}

// shared is a server the whole package uses (Redis, PostgreSQL): started
// by the first test that needs it, stopped by TestMain. A server that
// cannot start fails every test that needs it, with the reason.
type shared[S interface{ Stop() }] struct {
	start func() (S, error)
	once  sync.Once
	s     S
	err   error
	up    bool
}

func (l *shared[S]) get(t testing.TB) S {
	t.Helper()
	l.once.Do(func() {
		l.s, l.err = l.start()
		l.up = l.err == nil
	})
	if l.err != nil {
		t.Fatal(l.err)
	}
	return l.s
}

func (l *shared[S]) stop() {
	if l.up {
		l.s.Stop()
	}
}

// Gateway is one running restgate process.
type Gateway struct {
	t       testing.TB
	Dir     string // data directory (RESTGATE_DATA)
	Config  string // path of the Caddyfile it runs
	HTTPS   int
	HTTP    int
	Admin   int
	Backend int // a free port the config may use for a loopback backend ({$RESTGATE_BACKEND_PORT})
	Env     []string

	cmd  *exec.Cmd
	done chan struct{}
	logs *syncBuffer
	ca   *x509.CertPool
}

// Options adjust how a gateway starts.
type Options struct {
	Env     map[string]string // extra environment
	Dir     string            // reuse a data directory (default: a new temp dir)
	NoHTTPS bool              // the config serves no HTTPS site: wait for plain HTTP
}

// StartGateway writes caddyfile to a temp dir and runs restgate on it with
// free loopback ports, a temporary data dir and a temporary HOME. It returns
// once the gateway answers, and stops it when the test ends.
func StartGateway(t testing.TB, caddyfile string, opt Options) *Gateway {
	t.Helper()
	var lastErr error
	for attempt := 0; attempt < 3; attempt++ { // a free port can be taken between pick and bind
		g, err := startGateway(t, caddyfile, opt)
		if err == nil {
			return g
		}
		lastErr = err
	}
	t.Fatalf("starting restgate: %v", lastErr)
	return nil
}

func startGateway(t testing.TB, caddyfile string, opt Options) (*Gateway, error) {
	dir := opt.Dir
	if dir == "" {
		dir = t.TempDir()
	}
	ports := freePorts(t, 4)
	g := &Gateway{
		t: t, Dir: dir, HTTPS: ports[0], HTTP: ports[1], Admin: ports[2], Backend: ports[3],
		logs: new(syncBuffer), done: make(chan struct{}),
	}
	if err := writeTestKeys(filepath.Join(dir, "api-keys.yaml")); err != nil {
		return nil, err
	}
	g.Config = filepath.Join(dir, "Caddyfile")
	if err := os.WriteFile(g.Config, []byte(caddyfile), 0o600); err != nil {
		return nil, err
	}
	home := filepath.Join(dir, "home")
	g.Env = []string{
		"PATH=" + os.Getenv("PATH"),
		"HOME=" + home,
		"XDG_DATA_HOME=" + filepath.Join(home, "data"),
		"XDG_CONFIG_HOME=" + filepath.Join(home, "config"),
		"RESTGATE_DATA=" + dir,
		fmt.Sprintf("RESTGATE_HTTPS_PORT=%d", g.HTTPS),
		fmt.Sprintf("RESTGATE_HTTP_PORT=%d", g.HTTP),
		fmt.Sprintf("RESTGATE_ADMIN=127.0.0.1:%d", g.Admin),
		fmt.Sprintf("RESTGATE_BACKEND_PORT=%d", g.Backend),
		"RESTGATE_BIND=127.0.0.1",
		// limits no functional test reaches; the rate-limit tests set their own
		"RESTGATE_RATE_PER_IP=1000000/1s",
		"RESTGATE_RATE_PER_USER=1000000/1s",
	}
	for k, v := range opt.Env {
		g.Env = append(g.Env, k+"="+v)
	}
	g.cmd = exec.Command(binary, "run", "--config", g.Config, "--adapter", "caddyfile")
	g.cmd.Env = g.Env
	g.cmd.Dir = dir
	g.cmd.Stdout, g.cmd.Stderr = g.logs, g.logs
	if err := g.cmd.Start(); err != nil {
		return nil, err
	}
	go func() { _ = g.cmd.Wait(); close(g.done) }()
	t.Cleanup(func() {
		g.Stop()
		if t.Failed() {
			t.Logf("restgate output:\n%s", g.Logs())
		}
	})
	if err := g.waitReady(opt.NoHTTPS); err != nil {
		g.Stop()
		return nil, fmt.Errorf("%v\n%s", err, g.Logs())
	}
	return g, nil
}

// waitReady polls until the gateway accepts connections: a verified TLS
// handshake for api.localhost, or a TCP connect for plain HTTP.
func (g *Gateway) waitReady(noHTTPS bool) error {
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-g.done:
			return fmt.Errorf("restgate exited: %v", g.cmd.ProcessState)
		default:
		}
		if noHTTPS {
			if c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", g.HTTP), time.Second); err == nil {
				c.Close()
				return nil
			}
		} else if g.loadCA() == nil {
			c, err := tls.DialWithDialer(&net.Dialer{Timeout: time.Second}, "tcp",
				fmt.Sprintf("127.0.0.1:%d", g.HTTPS), &tls.Config{ServerName: "api.localhost", RootCAs: g.ca})
			if err == nil {
				c.Close()
				return nil
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("restgate did not become ready in time")
}

// RootCA is the path of the gateway's local CA root certificate.
func (g *Gateway) RootCA() string {
	return filepath.Join(g.Dir, "caddy", "pki", "authorities", "local", "root.crt")
}

func (g *Gateway) loadCA() error {
	if g.ca != nil {
		return nil
	}
	pem, err := os.ReadFile(g.RootCA())
	if err != nil {
		return err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return fmt.Errorf("no certificate in %s", g.RootCA())
	}
	g.ca = pool
	return nil
}

// Stop ends the gateway gracefully (SIGTERM), killing it if it lingers.
func (g *Gateway) Stop() {
	if g.cmd.Process == nil {
		return
	}
	select {
	case <-g.done:
		return
	default:
	}
	_ = g.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-g.done:
	case <-time.After(15 * time.Second):
		_ = g.cmd.Process.Kill()
		<-g.done
	}
}

// Kill ends the gateway with SIGKILL, as a crash would.
func (g *Gateway) Kill() {
	_ = g.cmd.Process.Kill()
	<-g.done
}

// Logs returns everything the gateway has printed so far.
func (g *Gateway) Logs() string { return g.logs.String() }

// Client returns an HTTP client that trusts the gateway's CA and sends
// every connection to the gateway, whatever the URL's host.
func (g *Gateway) Client() *http.Client {
	if g.ca == nil {
		_ = g.loadCA()
	}
	dialer := &net.Dialer{Timeout: 5 * time.Second}
	return &http.Client{
		Timeout: 30 * time.Second,
		Transport: &http.Transport{
			TLSClientConfig:     &tls.Config{RootCAs: g.ca},
			ForceAttemptHTTP2:   true,
			MaxIdleConnsPerHost: 64,
			DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
				_, port, _ := net.SplitHostPort(addr)
				return dialer.DialContext(ctx, network, "127.0.0.1:"+port)
			},
		},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

// ClientHTTP1 is Client speaking HTTP/1.1 only, for what HTTP/2 forbids
// (Connection nominations, undeclared trailers).
func (g *Gateway) ClientHTTP1() *http.Client {
	c := g.Client()
	tr := c.Transport.(*http.Transport)
	tr.ForceAttemptHTTP2 = false
	tr.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{}
	return c
}

// URL is the gateway's API base URL for a path.
func (g *Gateway) URL(path string) string {
	return fmt.Sprintf("https://api.localhost:%d%s", g.HTTPS, path)
}

// Response is a finished response with its body read.
type Response struct {
	*http.Response
	Body []byte
}

// JSON decodes the body into a map, failing the test if it is not JSON.
func (r *Response) JSON(t testing.TB) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(r.Body, &m); err != nil {
		t.Fatalf("%s %s: body is not a JSON object: %v\n%s", r.Request.Method, r.Request.URL, err, r.Body)
	}
	return m
}

// Do sends a request and reads the whole response.
func Do(t testing.TB, c *http.Client, method, url string, body string, headers ...string) *Response {
	t.Helper()
	resp, err := Send(c, method, url, body, headers...)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	return resp
}

// Send is Do without a test: it returns the error.
func Send(c *http.Client, method, url string, body string, headers ...string) (*Response, error) {
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, url, rd)
	if err != nil {
		return nil, err
	}
	for i := 0; i+1 < len(headers); i += 2 {
		if strings.EqualFold(headers[i], "Host") {
			req.Host = headers[i+1]
			continue
		}
		req.Header.Add(headers[i], headers[i+1])
	}
	if body != "" && req.Header.Get("Content-Type") == "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	return &Response{Response: resp, Body: b}, nil
}

// AssertProblem checks that r is a problem+json document with the status,
// whose status member and request_id agree with the response.
func AssertProblem(t testing.TB, r *Response, status int) map[string]any {
	t.Helper()
	if r.StatusCode != status {
		t.Fatalf("%s %s: status = %d, want %d\n%s", r.Request.Method, r.Request.URL, r.StatusCode, status, r.Body)
	}
	if ct := r.Header.Get("Content-Type"); ct != "application/problem+json" {
		t.Fatalf("%s %s: Content-Type = %q, want application/problem+json", r.Request.Method, r.Request.URL, ct)
	}
	if r.Request.Method == http.MethodHead {
		if len(r.Body) != 0 {
			t.Fatalf("HEAD response has a body: %q", r.Body)
		}
		return nil
	}
	m := r.JSON(t)
	if got, _ := m["status"].(float64); int(got) != status {
		t.Errorf("problem status = %v, want %d", m["status"], status)
	}
	id := r.Header.Get("X-Request-Id")
	if id == "" || m["request_id"] != id {
		t.Errorf("problem request_id = %v, X-Request-Id = %q: want equal and non-empty", m["request_id"], id)
	}
	for _, k := range []string{"type", "title", "code"} {
		if s, _ := m[k].(string); s == "" {
			t.Errorf("problem member %q is missing: %s", k, r.Body)
		}
	}
	return m
}

// testGlobals is the global options block of every test Caddyfile: admin,
// ports, storage and data from the harness's environment, loopback only,
// with extra options inside it.
func testGlobals(extra string) string {
	return `{
	admin {$RESTGATE_ADMIN}
	persist_config off
	skip_install_trust
	storage file_system {$RESTGATE_DATA}/caddy
	http_port {$RESTGATE_HTTP_PORT}
	https_port {$RESTGATE_HTTPS_PORT}
	default_bind 127.0.0.1
	` + extra + `
}
`
}

// testKeys are the API keys every test gateway knows: the harness writes
// their hashes to $RESTGATE_DATA/api-keys.yaml (the default Caddyfile's key
// file) unless the data directory already has one.
var testKeys = map[string]struct {
	token  string
	scopes []string
}{
	"tester": {"rg_test_tester_0000000000000000000000000001", []string{"read", "write"}},
	"reader": {"rg_test_reader_0000000000000000000000000002", []string{"read"}},
	"alice":  {"rg_test_alice_00000000000000000000000000003", []string{"read", "write"}},
	"bob":    {"rg_test_bob_0000000000000000000000000000004", []string{"read", "write"}},
	"admin":  {"rg_test_admin_00000000000000000000000000005", []string{"read", "write", "admin"}},
}

// bearer returns the Authorization header for a test user's key.
func bearer(user string) []string {
	k, ok := testKeys[user]
	if !ok {
		panic("no test key for " + user)
	}
	return []string{"Authorization", "Bearer " + k.token}
}

func keyEntry(user, token string, scopes []string) string {
	sum := sha256.Sum256([]byte(token))
	return fmt.Sprintf("  - user: %s\n    sha256: %s\n    scopes: [%s]\n", user, hex.EncodeToString(sum[:]), strings.Join(scopes, ", "))
}

func writeTestKeys(path string) error {
	if _, err := os.Stat(path); err == nil {
		return nil
	}
	var b strings.Builder
	b.WriteString("keys:\n")
	for user, k := range testKeys {
		b.WriteString(keyEntry(user, k.token, k.scopes))
	}
	return os.WriteFile(path, []byte(b.String()), 0o600)
}

// freePorts returns n distinct loopback ports that were free a moment ago.
func freePorts(t testing.TB, n int) []int {
	t.Helper()
	var ls []net.Listener
	var ports []int
	for i := 0; i < n; i++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	for _, l := range ls {
		l.Close()
	}
	return ports
}

// load runs n workers, each calling fn(worker, i) for i = 0, 1, … until
// fn returns false or stop is called; stop returns once all have ended.
func load(n int, fn func(worker, i int) bool) (stop func()) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	for w := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-done:
					return
				default:
				}
				if !fn(w, i) {
					return
				}
			}
		}()
	}
	return func() {
		close(done)
		wg.Wait()
	}
}

// waitFor polls cond until it holds or the timeout passes.
func waitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// repoFile reads a file from the repository root.
func repoFile(t testing.TB, name string) string {
	t.Helper()
	_, here, _, _ := runtime.Caller(0)
	b, err := os.ReadFile(filepath.Join(filepath.Dir(here), "..", name))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
