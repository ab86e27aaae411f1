package tests

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestAuthThroughGateway(t *testing.T) {
	g := StartGateway(t, repoFile(t, "Caddyfile"), Options{})
	c := g.Client()

	r := Do(t, c, "GET", g.URL("/v1/events"), "")
	AssertProblem(t, r, 401)
	if got := r.Header.Get("WWW-Authenticate"); got != `Bearer realm="restgate"` {
		t.Errorf("no key: challenge %q", got)
	}
	r = Do(t, c, "GET", g.URL("/v1/events"), "", "Authorization", "Bearer rg_not_a_key")
	if m := AssertProblem(t, r, 401); m["code"] != "invalid_key" {
		t.Errorf("bad key: code %v", m["code"])
	}
	if got := r.Header.Get("WWW-Authenticate"); got != `Bearer realm="restgate", error="invalid_token"` {
		t.Errorf("bad key: challenge %q", got)
	}
	r = Do(t, c, "POST", g.URL("/v1/events"), `{"name": "x"}`, bearer("reader")...)
	if m := AssertProblem(t, r, 403); m["code"] != "insufficient_scope" {
		t.Errorf("no scope: code %v", m["code"])
	}
	if got := r.Header.Get("WWW-Authenticate"); !strings.Contains(got, `error="insufficient_scope", scope="write"`) {
		t.Errorf("no scope: challenge %q", got)
	}
	AssertProblem(t, Do(t, c, "GET", g.URL("/v1/events"), "", "Authorization", "Bearer a", "X-API-Key", "b"), 400)
	if r := Do(t, c, "GET", g.URL("/v1/events"), "", "X-API-Key", testKeys["reader"].token); r.StatusCode != 200 {
		t.Errorf("X-API-Key: %d", r.StatusCode)
	}
	if r := Do(t, c, "GET", g.URL("/v1/events"), "", "Authorization", "Api-Key "+testKeys["reader"].token); r.StatusCode != 200 {
		t.Errorf("Api-Key scheme: %d", r.StatusCode)
	}
	if r := Do(t, c, "GET", g.URL("/v1/health"), ""); r.StatusCode != 200 {
		t.Errorf("health needs no key: %d", r.StatusCode)
	}

	// owned secrets: one user never sees another's, whatever it claims
	if r := Do(t, c, "POST", g.URL("/v1/secrets"), `{"name": "db", "value": "alice-s3cret"}`, bearer("alice")...); r.StatusCode != 201 {
		t.Fatalf("alice's secret: %d %s", r.StatusCode, r.Body)
	}
	spoof := append(bearer("bob"), "X-Auth-User", "alice", "X-Auth-Scopes", "admin")
	AssertProblem(t, Do(t, c, "GET", g.URL("/v1/secrets/db"), "", spoof...), 404)
	if m := Do(t, c, "GET", g.URL("/v1/secrets"), "", spoof...).JSON(t); m["pagination"].(map[string]any)["total_count"] != 0.0 {
		t.Errorf("bob (claiming to be alice) lists %v", m)
	}
	r = Do(t, c, "GET", g.URL("/v1/secrets/db"), "", bearer("admin")...)
	if r.StatusCode != 200 || r.JSON(t)["owner"] != "alice" || strings.Contains(string(r.Body), "alice-s3cret") {
		t.Errorf("admin reads %d %s", r.StatusCode, r.Body)
	}

	// audit lines for writes, and no key or hash in any log line
	waitFor(t, 5*time.Second, "the audit line", func() bool {
		return strings.Contains(g.Logs(), `"logger":"http.handlers.api_auth.audit"`)
	})
	if !regexp.MustCompile(`"logger":"http.handlers.api_auth.audit".*"user":"alice".*"method":"POST".*"status":201`).MatchString(g.Logs()) {
		t.Error("no audit line for alice's POST")
	}
	if !strings.Contains(g.Logs(), `"user_id":"alice"`) {
		t.Error("the access log has no user_id for alice")
	}
	for user, k := range testKeys {
		sum := sha256.Sum256([]byte(k.token))
		if strings.Contains(g.Logs(), k.token) || strings.Contains(g.Logs(), hex.EncodeToString(sum[:])) {
			t.Errorf("%s's key or its hash is in the logs", user)
		}
	}
}

// TestIdentityReachesBackend uses a backend that echoes the headers it got.
func TestIdentityReachesBackend(t *testing.T) {
	cfg := testGlobals("") + `https://api.localhost:{$RESTGATE_HTTPS_PORT} {
	tls internal
	api_errors
	api_auth {
		keys_file {$RESTGATE_DATA}/api-keys.yaml
		anonymous GET
	}
	reverse_proxy 127.0.0.1:{$RESTGATE_BACKEND_PORT}
}
http://:{$RESTGATE_BACKEND_PORT} {
	respond "user=[{http.request.header.X-Auth-User}] scopes=[{http.request.header.X-Auth-Scopes}] auth=[{http.request.header.Authorization}] key=[{http.request.header.X-Api-Key}]"
}
`
	g := StartGateway(t, cfg, Options{})
	c := g.Client()
	tests := []struct {
		name    string
		method  string
		headers []string
		want    string
	}{
		{"bearer", "POST", bearer("alice"), "user=[alice] scopes=[read write] auth=[] key=[]"},
		{"spoofed with key", "POST", append(bearer("bob"), "X-Auth-User", "alice", "X-Auth-Scopes", "admin"), "user=[bob] scopes=[read write] auth=[] key=[]"},
		{"spoofed anonymous", "GET", []string{"X-Auth-User", "alice", "X-Auth-Scopes", "admin"}, "user=[] scopes=[] auth=[] key=[]"},
		{"key header stripped", "GET", []string{"X-API-Key", testKeys["reader"].token}, "user=[reader] scopes=[read] auth=[] key=[]"},
		{"spoofed lower case", "GET", []string{"x-auth-user", "alice"}, "user=[] scopes=[] auth=[] key=[]"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := Do(t, c, tt.method, g.URL("/"), "", tt.headers...)
			if r.StatusCode != 200 || string(r.Body) != tt.want {
				t.Errorf("backend saw %d %q, want %q", r.StatusCode, r.Body, tt.want)
			}
		})
	}
}

// TestKeyRotationUnderLoad rewrites the key file while clients keep
// sending requests: valid keys never fail, a new key starts working and a
// removed one stops, with no restart; a broken file keeps the old keys.
func TestKeyRotationUnderLoad(t *testing.T) {
	g := StartGateway(t, repoFile(t, "Caddyfile"), Options{})
	c := g.Client()
	keyFile := filepath.Join(g.Dir, "api-keys.yaml")
	writeKeys := func(users ...string) {
		t.Helper()
		var b strings.Builder
		b.WriteString("keys:\n")
		for _, u := range users {
			k, ok := testKeys[u]
			if !ok {
				k.token, k.scopes = "rg_test_carol_0000000000000000000000000006", []string{"read"}
			}
			b.WriteString(keyEntry(u, k.token, k.scopes))
		}
		replaceFile(t, keyFile, b.String())
	}

	var failures, sent atomic.Int64
	stop := load(4, func(int, int) bool {
		r, err := Send(c, "GET", g.URL("/v1/events"), "", bearer("tester")...)
		sent.Add(1)
		if err != nil || r.StatusCode != 200 {
			failures.Add(1)
		}
		return true
	})
	carol := []string{"Authorization", "Bearer rg_test_carol_0000000000000000000000000006"}
	works := func(h []string) bool {
		r, err := Send(c, "GET", g.URL("/v1/events"), "", h...)
		return err == nil && r.StatusCode == 200
	}
	start := time.Now()
	writeKeys("tester", "carol")
	waitFor(t, 10*time.Second, "the new key to work", func() bool { return works(carol) })
	t.Logf("new key live after %v", time.Since(start).Round(10*time.Millisecond))
	if works(bearer("alice")) {
		t.Error("alice's key, not in the new file, still works")
	}
	replaceFile(t, keyFile, "keys: [this is: not {valid yaml")
	waitFor(t, 10*time.Second, "the broken file to be noticed", func() bool {
		return strings.Contains(g.Logs(), "reloading API keys failed")
	})
	if !works(carol) {
		t.Error("a broken key file dropped the previous keys")
	}
	// an editor's truncate-then-write: the empty file in between keeps the keys
	if err := os.WriteFile(keyFile, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the empty file to be noticed", func() bool {
		return strings.Contains(g.Logs(), "the key file is empty")
	})
	if !works(carol) || !works(bearer("tester")) {
		t.Error("an empty (truncated) key file dropped the keys")
	}
	// deleted, then restored with the same content: its keys stay, then reload
	writeKeys("tester", "carol")
	waitFor(t, 10*time.Second, "the rewritten file", func() bool {
		return strings.Count(g.Logs(), "API keys reloaded") >= 2
	})
	content, _ := os.ReadFile(keyFile)
	if err := os.Remove(keyFile); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the missing file to be noticed", func() bool {
		return strings.Contains(g.Logs(), "disappeared")
	})
	if !works(carol) {
		t.Error("a deleted key file dropped the keys at once")
	}
	replaceFile(t, keyFile, string(content))
	waitFor(t, 10*time.Second, "the restored file to be read again", func() bool {
		return strings.Count(g.Logs(), "API keys reloaded") >= 3
	})
	if n := strings.Count(g.Logs(), "disappeared"); n != 1 {
		t.Errorf("the missing file was logged %d times, want once", n)
	}
	stop()
	if failures.Load() > 0 {
		t.Errorf("%d of %d requests with a valid key failed during rotation", failures.Load(), sent.Load())
	}
	t.Logf("%d requests with a valid key during rotation, none failed", sent.Load())

	start = time.Now()
	writeKeys("carol")
	waitFor(t, 10*time.Second, "the removed key to stop working", func() bool { return !works(bearer("tester")) })
	t.Logf("removed key refused after %v", time.Since(start).Round(10*time.Millisecond))
}

func replaceFile(t *testing.T, path, content string) {
	t.Helper()
	tmp := path + ".new"
	if err := os.WriteFile(tmp, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

func TestFailSecureStart(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "Caddyfile")
	if err := os.WriteFile(cfg, []byte(":0 {\n\tapi_auth {\n\t\tkeys_file "+dir+"/none.yaml\n\t}\n\trespond ok\n}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(binary, "validate", "--config", cfg)
	cmd.Env = []string{"HOME=" + dir, "PATH=" + os.Getenv("PATH")}
	out, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "restgate api-key") {
		t.Fatalf("a config without keys validated (err %v):\n%s", err, out)
	}
	// what to do comes first, on its own line, not after Caddy's chain of
	// "loading module … provision …"
	if todo, chain := strings.Index(string(out), "restgate api-key"), strings.Index(string(out), "provision http"); chain >= 0 && todo > chain {
		t.Errorf("the sentence that says what to do comes after the provisioning chain:\n%s", out)
	}
	cmd = exec.Command(binary, "validate", "--config", cfg)
	cmd.Env = []string{"HOME=" + dir, "PATH=" + os.Getenv("PATH"), "RESTGATE_API_KEY=tok:someone"}
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("RESTGATE_API_KEY should satisfy it: %v\n%s", err, out)
	}
}

func TestAPIKeyCommand(t *testing.T) {
	file := filepath.Join(t.TempDir(), "keys.yaml")
	out, err := exec.Command(binary, "api-key", "--user", "erin", "--scopes", "read", "--out", file).CombinedOutput()
	if err != nil {
		t.Fatalf("api-key: %v\n%s", err, out)
	}
	token := regexp.MustCompile(`rg_[A-Za-z0-9_-]{43}`).FindString(string(out))
	if token == "" {
		t.Fatalf("no key in the output:\n%s", out)
	}
	content, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256([]byte(token))
	if !strings.Contains(string(content), hex.EncodeToString(sum[:])) || strings.Contains(string(content), token) {
		t.Errorf("key file:\n%s", content)
	}
	if fi, _ := os.Stat(file); fi.Mode().Perm() != 0o600 {
		t.Errorf("key file mode %v, want 0600", fi.Mode().Perm())
	}
	// a second key is appended, not overwritten
	if out, err := exec.Command(binary, "api-key", "--user", "finn", "--out", file).CombinedOutput(); err != nil {
		t.Fatalf("second api-key: %v\n%s", err, out)
	}
	content, _ = os.ReadFile(file)
	if !strings.Contains(string(content), "erin") || !strings.Contains(string(content), "finn") {
		t.Errorf("key file after two keys:\n%s", content)
	}
	if out, err := exec.Command(binary, "api-key").CombinedOutput(); err == nil {
		t.Errorf("api-key without --user succeeded:\n%s", out)
	}
}

// TestConcurrentAPIKeyMints: thirty `restgate api-key --out` runs on one
// file at once; every key they report as stored is in the file.
func TestConcurrentAPIKeyMints(t *testing.T) {
	file := filepath.Join(t.TempDir(), "keys.yaml")
	const n = 30
	var wg sync.WaitGroup
	users := make(chan string, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			user := fmt.Sprintf("minted%02d", i)
			if out, err := exec.Command(binary, "api-key", "--user", user, "--out", file).CombinedOutput(); err != nil {
				t.Errorf("api-key %s: %v\n%s", user, err, out)
				return
			}
			users <- user
		}()
	}
	wg.Wait()
	close(users)
	content, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	stored := 0
	for user := range users {
		stored++
		if !strings.Contains(string(content), "user: "+user+"\n") {
			t.Errorf("%s was reported stored but is not in the file", user)
		}
	}
	if stored != n {
		t.Errorf("%d of %d runs succeeded", stored, n)
	}
}

// echoBackend answers with the identity it received, in headers and in
// trailers, after reading the whole body.
func echoBackend(t *testing.T) string {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		fmt.Fprintf(w, "user=[%s] scopes=[%s] trailer-user=[%s] trailer-scopes=[%s]",
			r.Header.Get("X-Auth-User"), r.Header.Get("X-Auth-Scopes"), r.Trailer.Get("X-Auth-User"), r.Trailer.Get("X-Auth-Scopes"))
	}))
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://")
}

// TestIdentityCannotBeSpoofed: whatever a client sends, the backend sees
// the identity the gateway set, or none: not through a Connection
// nomination that would strip the gateway's header, not as a trailer, and
// not on a public route that has no api_auth.
func TestIdentityCannotBeSpoofed(t *testing.T) {
	cfg := testGlobals("") + `https://api.localhost:{$RESTGATE_HTTPS_PORT} {
	tls internal
	api_errors
	handle /public/* {
		reverse_proxy ` + echoBackend(t) + `
	}
	handle {
		api_auth {
			keys_file {$RESTGATE_DATA}/api-keys.yaml
		}
		reverse_proxy ` + echoBackend(t) + `
	}
}
`
	g := StartGateway(t, cfg, Options{})
	c := g.ClientHTTP1()
	const alice = "user=[alice] scopes=[read write] trailer-user=[] trailer-scopes=[]"
	const nobody = "user=[] scopes=[] trailer-user=[] trailer-scopes=[]"
	for _, tt := range []struct {
		name, path string
		headers    []string
		want       string
	}{
		{"Connection nominates the identity header", "/v1/x", append(bearer("alice"), "Connection", "X-Auth-User, X-Auth-Scopes"), alice},
		{"Connection nominates it in lower case", "/v1/x", append(bearer("alice"), "Connection", "keep-alive, x-auth-user"), alice},
		{"public route, spoofed headers", "/public/x", []string{"X-Auth-User", "root", "X-Auth-Scopes", "admin"}, nobody},
		{"public route, spoofed and nominated", "/public/x", []string{"X-Auth-User", "root", "Connection", "X-Auth-User"}, nobody},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := Do(t, c, "POST", g.URL(tt.path), "{}", tt.headers...)
			if r.StatusCode != 200 || string(r.Body) != tt.want {
				t.Errorf("backend saw %d %q, want %q", r.StatusCode, r.Body, tt.want)
			}
		})
	}
	// identity sent as a request trailer, declared or not
	for _, declared := range []bool{true, false} {
		for _, path := range []string{"/v1/x", "/public/x"} {
			req, _ := http.NewRequest("POST", g.URL(path), io.MultiReader(strings.NewReader(`{"a":`), strings.NewReader(`1}`)))
			req.ContentLength = -1 // chunked, so trailers can follow
			req.Trailer = http.Header{"X-Auth-User": {"root"}, "X-Auth-Scopes": {"admin"}}
			if !declared {
				req.Trailer = http.Header{}
			}
			req.Header["Authorization"] = []string{bearer("alice")[1]}
			resp, err := c.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if strings.Contains(string(body), "root") || strings.Contains(string(body), "admin") {
				t.Errorf("trailer on %s (declared %v): the backend saw %q", path, declared, body)
			}
		}
	}
}

// TestAPIKeyManagement: list (never a hash), revoke (the running gateway
// drops the key), and an entry printed for `>> key-file`.
func TestAPIKeyManagement(t *testing.T) {
	g := StartGateway(t, repoFile(t, "Caddyfile"), Options{})
	c := g.Client()
	file := filepath.Join(g.Dir, "api-keys.yaml")
	run := func(args ...string) (stdout, stderr string, err error) {
		cmd := exec.Command(binary, args...)
		var o, e strings.Builder
		cmd.Stdout, cmd.Stderr = &o, &e
		err = cmd.Run()
		return o.String(), e.String(), err
	}
	// an entry printed for appending: the key on stderr only
	out, errOut, err := run("api-key", "--user", "gina", "--id", "gina-1", "--scopes", "read")
	if err != nil {
		t.Fatalf("api-key: %v\n%s", err, errOut)
	}
	token := regexp.MustCompile(`rg_[A-Za-z0-9_-]{43}`).FindString(errOut)
	if token == "" || strings.Contains(out, token) || !strings.HasPrefix(out, "  - id: gina-1\n") {
		t.Fatalf("stdout %q must be the entry alone; stderr %q the key", out, errOut)
	}
	f, err := os.OpenFile(file, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString(out); err != nil {
		t.Fatal(err)
	}
	f.Close()
	gina := []string{"Authorization", "Bearer " + token}
	waitFor(t, 10*time.Second, "the appended key to work", func() bool {
		r, err := Send(c, "GET", g.URL("/v1/events"), "", gina...)
		return err == nil && r.StatusCode == 200
	})
	// list: ids, users, scopes; never a hash
	list, errOut, err := run("api-key", "list", "--file", file)
	if err != nil {
		t.Fatalf("list: %v\n%s", err, errOut)
	}
	if !strings.Contains(list, "gina-1") || !strings.Contains(list, "gina") || !strings.Contains(list, "tester") || regexp.MustCompile(`[0-9a-f]{64}`).MatchString(list) {
		t.Errorf("list:\n%s", list)
	}
	// revoke: the running gateway stops accepting the key
	if _, errOut, err := run("api-key", "revoke", "gina-1", "--file", file); err != nil {
		t.Fatalf("revoke: %v\n%s", err, errOut)
	}
	waitFor(t, 10*time.Second, "the revoked key to be refused", func() bool {
		r, err := Send(c, "GET", g.URL("/v1/events"), "", gina...)
		return err == nil && r.StatusCode == 401
	})
	if _, _, err := run("api-key", "revoke", "no-such-id", "--file", file); err == nil {
		t.Error("revoking an unknown id succeeded")
	}
	if r := Do(t, c, "GET", g.URL("/v1/events"), "", bearer("tester")...); r.StatusCode != 200 {
		t.Errorf("another key after the revoke: %d", r.StatusCode)
	}
}
