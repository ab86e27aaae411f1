package apiauth

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/restgate/restgate/internal/testclock"
	"github.com/restgate/restgate/modules/problem"
)

func hashOf(token string) string {
	s := sha256.Sum256([]byte(token))
	return hex.EncodeToString(s[:])
}

const (
	readerKey = "rg_reader_key_0123456789"
	writerKey = "rg_writer_key_0123456789"
	adminKey  = "rg_admin_key_0123456789"
	oldKey    = "rg_expired_key_0123456789"
)

var testNow = time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)

func newAuth(t testing.TB, h *Handler) *Handler {
	t.Helper()
	t.Setenv(EnvAPIKey, "")
	t.Setenv(EnvAPIKeyFile, "")
	if h.Keys == nil && !h.Development && h.KeysFile == "" {
		h.Keys = []KeyEntry{
			{User: "rita", SHA256: hashOf(readerKey), Scopes: []string{"read"}},
			{User: "will", SHA256: hashOf(writerKey), Scopes: []string{"read", "write"}, ID: "will-1"},
			{User: "ada", SHA256: hashOf(adminKey), Scopes: []string{"read", "write", "admin"}},
			{User: "olga", SHA256: hashOf(oldKey), Scopes: []string{"read"}, Expires: "2026-10-01T00:00:00Z"},
		}
	}
	h.now = testclock.New(testNow, time.Millisecond).Now // moves on every read
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	t.Cleanup(cancel)
	if err := h.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	if err := h.Validate(); err != nil {
		t.Fatal(err)
	}
	return h
}

// serve runs a request through h to a backend that records what it saw.
func serve(h *Handler, method string, headers ...string) (seen *http.Request, w *httptest.ResponseRecorder, err error) {
	r := httptest.NewRequest(method, "/v1/events", nil)
	for i := 0; i+1 < len(headers); i += 2 {
		r.Header.Add(headers[i], headers[i+1])
	}
	repl := caddy.NewReplacer()
	r = r.WithContext(context.WithValue(r.Context(), caddy.ReplacerCtxKey, repl))
	w = httptest.NewRecorder()
	err = h.ServeHTTP(w, r, caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		seen = r
		w.WriteHeader(200)
		return nil
	}))
	return seen, w, err
}

func statusOf(err error) int {
	var he caddyhttp.HandlerError
	if errors.As(err, &he) {
		return he.StatusCode
	}
	if err != nil {
		return 500
	}
	return 200
}

func TestCredentialParsing(t *testing.T) {
	tests := []struct {
		name    string
		headers []string
		want    string
		wantP   presence
	}{
		{"none", nil, "", credNone},
		{"bearer", []string{"Authorization", "Bearer abc"}, "abc", credOne},
		{"bearer lower case", []string{"Authorization", "bearer abc"}, "abc", credOne},
		{"bearer upper case", []string{"Authorization", "BEARER abc"}, "abc", credOne},
		{"api-key", []string{"Authorization", "Api-Key abc"}, "abc", credOne},
		{"api-key mixed case", []string{"Authorization", "api-KEY abc"}, "abc", credOne},
		{"extra spaces", []string{"Authorization", "  Bearer    abc  "}, "abc", credOne},
		{"tab", []string{"Authorization", "Bearer \tabc"}, "abc", credOne},
		{"bearer alone", []string{"Authorization", "Bearer"}, "", credOne},
		{"bearer and space", []string{"Authorization", "Bearer "}, "", credOne},
		{"empty authorization", []string{"Authorization", ""}, "", credNone},
		{"basic is not ours", []string{"Authorization", "Basic YTpi"}, "", credNone},
		{"key header", []string{"X-Api-Key", "abc"}, "abc", credOne},
		{"key header empty", []string{"X-Api-Key", ""}, "", credOne},
		{"same key twice", []string{"Authorization", "Bearer abc", "X-Api-Key", "abc"}, "abc", credOne},
		{"two different keys", []string{"Authorization", "Bearer abc", "X-Api-Key", "def"}, "", credConflict},
		{"both schemes", []string{"Authorization", "Bearer abc", "Authorization", "Api-Key def"}, "", credConflict},
		{"two key headers", []string{"X-Api-Key", "abc", "X-Api-Key", "def"}, "", credConflict},
		{"non-ascii", []string{"Authorization", "Bearer äbc"}, "äbc", credOne},
		{"8 KiB", []string{"Authorization", "Bearer " + strings.Repeat("k", 8192)}, strings.Repeat("k", 8192), credOne},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := http.Header{}
			for i := 0; i+1 < len(tt.headers); i += 2 {
				h.Add(tt.headers[i], tt.headers[i+1])
			}
			got, p, _ := credential(h, "X-Api-Key")
			if got != tt.want || p != tt.wantP {
				t.Errorf("credential(%v) = %q, %v; want %q, %v", tt.headers, got, p, tt.want, tt.wantP)
			}
		})
	}
}

func TestPolicyMatrix(t *testing.T) {
	strict := newAuth(t, &Handler{})
	open := newAuth(t, &Handler{Anonymous: []string{"GET", "HEAD"}})
	cred := map[string][]string{
		"anonymous": nil,
		"read":      {"Authorization", "Bearer " + readerKey},
		"write":     {"Authorization", "Api-Key " + writerKey},
		"admin":     {"X-API-Key", adminKey},
	}
	// want[who][method] for the strict policy
	want := map[string]map[string]int{
		"anonymous": {"GET": 401, "HEAD": 401, "POST": 401, "PUT": 401, "PATCH": 401, "DELETE": 401, "OPTIONS": 401},
		"read":      {"GET": 200, "HEAD": 200, "POST": 403, "PUT": 403, "PATCH": 403, "DELETE": 403, "OPTIONS": 200},
		"write":     {"GET": 200, "HEAD": 200, "POST": 200, "PUT": 200, "PATCH": 200, "DELETE": 200, "OPTIONS": 200},
		"admin":     {"GET": 200, "HEAD": 200, "POST": 200, "PUT": 200, "PATCH": 200, "DELETE": 200, "OPTIONS": 200},
	}
	for who, methods := range want {
		for method, status := range methods {
			t.Run(who+" "+method, func(t *testing.T) {
				_, w, err := serve(strict, method, cred[who]...)
				if got := statusOf(err); got != status {
					t.Fatalf("strict: %s %s = %d, want %d", who, method, got, status)
				}
				switch status {
				case 401:
					if c := w.Header().Get("WWW-Authenticate"); c != `Bearer realm="restgate"` {
						t.Errorf("challenge = %q", c)
					}
				case 403:
					if c := w.Header().Get("WWW-Authenticate"); !strings.Contains(c, `error="insufficient_scope"`) || !strings.Contains(c, `scope="write"`) {
						t.Errorf("challenge = %q", c)
					}
				}
				openWant := status
				if who == "anonymous" && (method == "GET" || method == "HEAD") {
					openWant = 200
				}
				if _, _, err := serve(open, method, cred[who]...); statusOf(err) != openWant {
					t.Errorf("anonymous GET HEAD: %s %s = %d, want %d", who, method, statusOf(err), openWant)
				}
			})
		}
	}
	t.Run("cors preflight", func(t *testing.T) {
		if _, _, err := serve(strict, "OPTIONS", "Access-Control-Request-Method", "POST", "Origin", "https://app.example"); err != nil {
			t.Errorf("preflight: %v", err)
		}
	})
	t.Run("custom scope", func(t *testing.T) {
		h := newAuth(t, &Handler{Scopes: map[string]string{"DELETE": "admin"}})
		if _, _, err := serve(h, "DELETE", cred["write"]...); statusOf(err) != 403 {
			t.Errorf("write key DELETE = %d, want 403", statusOf(err))
		}
		if _, _, err := serve(h, "DELETE", cred["admin"]...); err != nil {
			t.Errorf("admin key DELETE: %v", err)
		}
	})
}

func TestBadKeysGetOneAnswer(t *testing.T) {
	h := newAuth(t, &Handler{})
	for name, headers := range map[string][]string{
		"unknown":       {"Authorization", "Bearer rg_nope"},
		"malformed":     {"Authorization", "Bearer \x01\x02"},
		"non-ascii":     {"Authorization", "Bearer äöü"},
		"empty":         {"Authorization", "Bearer"},
		"8 KiB":         {"Authorization", "Bearer " + strings.Repeat("k", 8192)},
		"expired":       {"Authorization", "Bearer " + oldKey},
		"key in header": {"X-API-Key", "wrong"},
		"prefix of key": {"Authorization", "Bearer " + readerKey[:10]},
	} {
		t.Run(name, func(t *testing.T) {
			_, w, err := serve(h, "GET", headers...)
			var p *problem.Problem
			if statusOf(err) != 401 || !errors.As(err, &p) || p.Detail != "the API key is not valid" || p.Code != "invalid_key" {
				t.Fatalf("got %v", err)
			}
			if c := w.Header().Get("WWW-Authenticate"); c != `Bearer realm="restgate", error="invalid_token"` {
				t.Errorf("challenge = %q", c)
			}
		})
	}
	if _, _, err := serve(h, "GET", "Authorization", "Bearer a", "X-API-Key", "b"); statusOf(err) != 400 {
		t.Errorf("two credentials = %d, want 400", statusOf(err))
	}
}

func TestIdentity(t *testing.T) {
	h := newAuth(t, &Handler{})
	seen, _, err := serve(h, "POST",
		"Authorization", "Bearer "+writerKey,
		"X-Auth-User", "mallory", "X-Auth-Scopes", "admin", "x-auth-user", "eve")
	if err != nil {
		t.Fatal(err)
	}
	if got := seen.Header.Values("X-Auth-User"); len(got) != 1 || got[0] != "will" {
		t.Errorf("X-Auth-User = %q, want [will]", got)
	}
	if got := seen.Header.Get("X-Auth-Scopes"); got != "read write" {
		t.Errorf("X-Auth-Scopes = %q", got)
	}
	if seen.Header.Get("Authorization") != "" {
		t.Error("the credential was forwarded")
	}
	repl := seen.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	for k, want := range map[string]string{"http.auth.user.id": "will", "http.auth.user.scopes": "read write", "http.auth.user.key_id": "will-1"} {
		if got, _ := repl.GetString(k); got != want {
			t.Errorf("{%s} = %q, want %q", k, got, want)
		}
	}

	// anonymous requests get no identity, and spoofed headers are still removed
	open := newAuth(t, &Handler{Anonymous: []string{"GET"}})
	seen, _, _ = serve(open, "GET", "X-Auth-User", "mallory", "X-Auth-Scopes", "admin")
	if seen.Header.Get("X-Auth-User") != "" || seen.Header.Get("X-Auth-Scopes") != "" {
		t.Errorf("spoofed identity reached the backend: %v", seen.Header)
	}
	seen, _, _ = serve(open, "OPTIONS", "Access-Control-Request-Method", "GET", "X-Auth-User", "mallory")
	if seen.Header.Get("X-Auth-User") != "" {
		t.Error("spoofed identity passed with a preflight")
	}

	keep := newAuth(t, &Handler{KeepCredential: true})
	seen, _, _ = serve(keep, "GET", "X-API-Key", readerKey)
	if seen.Header.Get("X-Api-Key") != readerKey {
		t.Error("keep_credential did not keep it")
	}
}

func TestAudit(t *testing.T) {
	h := newAuth(t, &Handler{})
	core, logs := observer.New(zap.InfoLevel)
	h.audit = zap.New(core)
	if _, _, err := serve(h, "GET", "Authorization", "Bearer "+writerKey); err != nil {
		t.Fatal(err)
	}
	if _, _, err := serve(h, "DELETE", "Authorization", "Bearer "+writerKey, "X-Request-Id", "req-1"); err != nil {
		t.Fatal(err)
	}
	if logs.Len() != 1 {
		t.Fatalf("audit lines = %v, want one for the DELETE", logs.All())
	}
	fields := logs.All()[0].ContextMap()
	for k, want := range map[string]any{"user": "will", "key_id": "will-1", "method": "DELETE", "status": int64(200), "request_id": "req-1"} {
		if fields[k] != want {
			t.Errorf("audit %s = %v, want %v", k, fields[k], want)
		}
	}
	line := fmt.Sprint(fields)
	if strings.Contains(line, writerKey) || strings.Contains(line, hashOf(writerKey)) {
		t.Error("the audit line holds the key or its hash")
	}
}

func TestKeySources(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "keys.yaml")
	writeKeys := func(content string) {
		t.Helper()
		tmp := file + ".tmp"
		if err := os.WriteFile(tmp, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, file); err != nil {
			t.Fatal(err)
		}
	}
	writeKeys(fmt.Sprintf("keys:\n  - user: alice\n    sha256: %s\n    scopes: [read]\napi_keys:\n  plaintoken: bob\n", hashOf("alice-key")))

	t.Setenv(EnvAPIKey, "envtoken:carol,alice-key:alice-from-env")
	h := newWatchless(t, &Handler{KeysFile: file, now: testclock.New(testNow, time.Millisecond).Now})
	userOf := func(token string) string {
		if k := h.lookup(token); k != nil {
			return k.user
		}
		return ""
	}
	if userOf("plaintoken") != "bob" || userOf("envtoken") != "carol" {
		t.Errorf("plaintext file key → %q, env key → %q", userOf("plaintoken"), userOf("envtoken"))
	}
	if got := userOf("alice-key"); got != "alice-from-env" {
		t.Errorf("env should win on conflict: got %q", got)
	}
	if k := h.lookup("envtoken"); k == nil || k.scopesString != "read write" {
		t.Errorf("env key scopes: %+v", k)
	}

	// rotation: a new key works and a removed one stops, without a restart
	writeKeys(fmt.Sprintf("keys:\n  - user: dave\n    sha256: %s\n", hashOf("dave-key")))
	if tried, err := h.reloadIfChanged(); !tried || err != nil {
		t.Fatalf("reload: tried %v, %v", tried, err)
	}
	if userOf("dave-key") != "dave" {
		t.Error("a key added to the file does not work")
	}
	if userOf("plaintoken") != "" {
		t.Error("a key removed from the file still works")
	}
	// a broken file keeps the previous keys
	writeKeys("keys: [this is: not {valid")
	if _, err := h.reloadIfChanged(); err == nil {
		t.Fatal("a broken key file loaded")
	}
	if userOf("dave-key") != "dave" {
		t.Error("a broken key file dropped the previous keys")
	}
}

// newWatchless provisions h without its watcher goroutine: the test calls
// reloadIfChanged itself, in place of the ticker.
func newWatchless(t *testing.T, h *Handler) *Handler {
	t.Helper()
	h.ReloadInterval = -1
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	t.Cleanup(cancel)
	if err := h.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	return h
}

// TestKeyFileEdits: what editors and operators do to a key file never
// leaves the gateway without its keys, and every change is picked up.
func TestKeyFileEdits(t *testing.T) {
	t.Setenv(EnvAPIKey, "")
	t.Setenv(EnvAPIKeyFile, "")
	file := filepath.Join(t.TempDir(), "keys.yaml")
	content := fmt.Sprintf("keys:\n  - user: alice\n    sha256: %s\n    scopes: [read]\n", hashOf("alice-key"))
	write := func(s string) {
		t.Helper()
		if err := os.WriteFile(file, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(content)
	core, logs := observer.New(zapcore.InfoLevel)
	h := newWatchless(t, &Handler{KeysFile: file})
	h.logger = zap.New(core)
	works := func() bool { return h.lookup("alice-key") != nil }

	// truncate-then-write: the empty file in between keeps the keys
	write("")
	if _, err := h.reloadIfChanged(); err == nil || !works() {
		t.Errorf("an empty key file: err %v, key works %v; want an error and the key kept", err, works())
	}
	write(content)
	h.reloadIfChanged()
	if !works() {
		t.Fatal("the rewritten file's key does not work")
	}
	// deleted, then restored with the same content
	failed := func() int { return logs.FilterMessage("reloading API keys failed; keeping the previous keys").Len() }
	before := failed()
	if err := os.Remove(file); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		h.reloadIfChanged()
	}
	if !works() {
		t.Error("the keys were dropped while the file was gone")
	}
	if n := failed() - before; n != 1 {
		t.Errorf("a missing file was logged %d times over three polls, want once", n)
	}
	write(content)
	if tried, err := h.reloadIfChanged(); !tried || err != nil || !works() {
		t.Errorf("restored with the same content: tried %v, err %v, works %v", tried, err, works())
	}
	// an explicit empty list does remove every key
	write("keys: []\n")
	if _, err := h.reloadIfChanged(); err != nil || works() {
		t.Errorf("keys: []: err %v, key still works %v", err, works())
	}
	// the state recorded is the hash of exactly what was parsed
	if h.fileStates[file].sum != sha256.Sum256([]byte("keys: []\n")) {
		t.Error("the recorded checksum is not that of the bytes that were parsed")
	}
}

func TestFailSecure(t *testing.T) {
	t.Setenv(EnvAPIKey, "")
	t.Setenv(EnvAPIKeyFile, "")
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	defer cancel()
	err := (&Handler{}).Provision(ctx)
	if err == nil || !strings.Contains(err.Error(), "restgate api-key") {
		t.Fatalf("Provision with no keys = %v, want a refusal that says how to add one", err)
	}
	if err := (&Handler{KeysFile: filepath.Join(t.TempDir(), "missing.yaml")}).Provision(ctx); err == nil {
		t.Error("a missing key file and no other key: want a refusal")
	}
	if err := (&Handler{Development: true}).Provision(ctx); err != nil {
		t.Errorf("development: %v", err)
	}
	bad := filepath.Join(t.TempDir(), "bad.yaml")
	_ = os.WriteFile(bad, []byte("keys:\n  - user: x\n    sha256: nothex\n"), 0o600)
	if err := (&Handler{KeysFile: bad}).Provision(ctx); err == nil {
		t.Error("an invalid hash was accepted")
	}
	_ = os.WriteFile(bad, []byte("kees: []\n"), 0o600)
	if err := (&Handler{KeysFile: bad}).Provision(ctx); err == nil {
		t.Error("an unknown key-file field was accepted")
	}
}

// TestKeyUserCannotBeATokenPrincipal: no key user, from any source, can
// take the name a token's principal has.
func TestKeyUserCannotBeATokenPrincipal(t *testing.T) {
	t.Setenv(EnvAPIKeyFile, "")
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	defer cancel()
	file := filepath.Join(t.TempDir(), "keys.yaml")
	for name, h := range map[string]func() *Handler{
		"key file": func() *Handler {
			_ = os.WriteFile(file, []byte("keys:\n  - user: \"jwt:https://issuer.example alice\"\n    sha256: "+hashOf("k")+"\n"), 0o600)
			return &Handler{KeysFile: file}
		},
		"plaintext key file": func() *Handler {
			_ = os.WriteFile(file, []byte("api_keys:\n  plaintoken: \"JWT:https://issuer.example alice\"\n"), 0o600)
			return &Handler{KeysFile: file}
		},
		"inline": func() *Handler {
			return &Handler{Keys: []KeyEntry{{User: "jwt:x y", SHA256: hashOf("k")}}}
		},
		"environment": func() *Handler {
			t.Setenv(EnvAPIKey, "tok:jwt:https://issuer.example alice")
			return &Handler{}
		},
	} {
		t.Run(name, func(t *testing.T) {
			t.Setenv(EnvAPIKey, "")
			err := h().Provision(ctx)
			if err == nil || !strings.Contains(err.Error(), `may not start with "jwt:"`) {
				t.Errorf("Provision = %v, want the reserved prefix named", err)
			}
		})
	}
}

func TestUnmarshalCaddyfile(t *testing.T) {
	input := `api_auth {
		keys_file /etc/restgate/keys.yaml
		key ` + hashOf("x") + ` alice read write
		anonymous get head
		scope admin DELETE
		header X-Token
		realm api
		keep_credential
		reload_interval 2s
		public /v1/openapi.json /docs*
		jwt https://issuer.example.org {
			jwks_url    https://issuer.example.org/jwks.json
			audience    https://api.example.org
			algorithms  RS256 ES256
			scope_map   storage.read:/ read
			scope_map   storage.modify:/ write
			leeway      10s
			token_types at+jwt JWT
			subjects_are_key_users
		}
	}`
	var h Handler
	if err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(input)); err != nil {
		t.Fatal(err)
	}
	if h.KeysFile != "/etc/restgate/keys.yaml" || len(h.Keys) != 1 || h.Keys[0].User != "alice" || len(h.Keys[0].Scopes) != 2 ||
		h.Anonymous[1] != "HEAD" || h.Scopes["DELETE"] != "admin" || h.Header != "X-Token" || !h.KeepCredential ||
		time.Duration(h.ReloadInterval) != 2*time.Second || len(h.Public) != 2 {
		t.Errorf("got %+v", h)
	}
	if len(h.JWT) != 1 || h.JWT[0].Issuer != "https://issuer.example.org" || h.JWT[0].JWKSURL != "https://issuer.example.org/jwks.json" ||
		len(h.JWT[0].Algorithms) != 2 || h.JWT[0].ScopeMap["storage.modify:/"] != "write" || time.Duration(h.JWT[0].Leeway) != 10*time.Second ||
		len(h.JWT[0].TokenTypes) != 2 || h.JWT[0].TokenTypes[1] != "JWT" || !h.JWT[0].SubjectsAreKeyUsers {
		t.Errorf("jwt: got %+v", h.JWT)
	}
	for name, in := range map[string]string{
		"unknown":              "api_auth {\n nope\n}",
		"duplicate file":       "api_auth {\n keys_file a\n keys_file b\n}",
		"key without user":     "api_auth {\n key abc\n}",
		"scope w/o methods":    "api_auth {\n scope write\n}",
		"bad interval":         "api_auth {\n reload_interval soon\n}",
		"flag with arg":        "api_auth {\n development yes\n}",
		"argument":             "api_auth x",
		"jwt without issuer":   "api_auth {\n jwt {\n  audience a\n }\n}",
		"jwt unknown option":   "api_auth {\n jwt https://i {\n  nope 1\n }\n}",
		"jwt bad leeway":       "api_auth {\n jwt https://i {\n  leeway soon\n }\n}",
		"jwt scope_map arity":  "api_auth {\n jwt https://i {\n  scope_map a\n }\n}",
		"jwt no token type":    "api_auth {\n jwt https://i {\n  token_types\n }\n}",
		"jwt opt-in with arg":  "api_auth {\n jwt https://i {\n  subjects_are_key_users yes\n }\n}",
		"public without paths": "api_auth {\n public\n}",
	} {
		t.Run(name, func(t *testing.T) {
			var h Handler
			if err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(in)); err == nil {
				t.Errorf("%q was accepted", in)
			}
		})
	}
}

func FuzzCredential(f *testing.F) {
	for _, s := range []string{"Bearer abc", "Api-Key x", "bearer", "", "Basic abc", "Bearer  \t a b", "BEARER \x00"} {
		f.Add(s, "k")
	}
	f.Fuzz(func(t *testing.T, auth, key string) {
		h := http.Header{"Authorization": {auth}, "X-Api-Key": {key}}
		token, p, from := credential(h, "X-Api-Key")
		switch p {
		case credNone:
			if token != "" || from != 0 {
				t.Fatalf("none with token %q from %v", token, from)
			}
		case credOne:
			if strings.Trim(token, " \t") != token {
				t.Fatalf("token %q is not trimmed", token)
			}
		}
	})
}

// BenchmarkDecision is an authorised GET with 100,000 keys loaded.
func BenchmarkDecision(b *testing.B) {
	entries := make([]KeyEntry, 100_000)
	for i := range entries {
		entries[i] = KeyEntry{User: fmt.Sprintf("user%d", i), SHA256: hashOf(fmt.Sprintf("rg_key_%d", i)), Scopes: []string{"read", "write"}}
	}
	entries[4242].SHA256 = hashOf(readerKey)
	h := newAuth(b, &Handler{Keys: entries})
	r := httptest.NewRequest("GET", "/v1/events", nil)
	repl := caddy.NewReplacer()
	r = r.WithContext(context.WithValue(r.Context(), caddy.ReplacerCtxKey, repl))
	next := caddyhttp.HandlerFunc(func(http.ResponseWriter, *http.Request) error { return nil })
	w := httptest.NewRecorder()
	b.ReportAllocs()
	for b.Loop() {
		r.Header["Authorization"] = authValue
		if err := h.ServeHTTP(w, r, next); err != nil {
			b.Fatal(err)
		}
	}
}

var authValue = []string{"Bearer " + readerKey}

// BenchmarkRefusal is an unknown key with 100,000 keys loaded.
func BenchmarkRefusal(b *testing.B) {
	h := newAuth(b, &Handler{})
	r := httptest.NewRequest("GET", "/v1/events", nil)
	r.Header.Set("Authorization", "Bearer rg_unknown_0123456789")
	next := caddyhttp.HandlerFunc(func(http.ResponseWriter, *http.Request) error { return nil })
	w := httptest.NewRecorder()
	b.ReportAllocs()
	for b.Loop() {
		_ = h.ServeHTTP(w, r, next)
	}
}

// TestKeyFileWatchReadsOnlyChanges: the watcher does not read a key file
// whose metadata shows no change (a 10,000-key file is about 1 MB, read
// and hashed every second otherwise), yet sees every edit: at once when
// the modification time moves, and within fullCheckEvery when a tool put
// an old modification time back on new bytes of the same size.
func TestKeyFileWatchReadsOnlyChanges(t *testing.T) {
	t.Setenv(EnvAPIKey, "")
	t.Setenv(EnvAPIKeyFile, "")
	file := filepath.Join(t.TempDir(), "keys.yaml")
	keyFile := func(user string) string { // the same length for both users
		return fmt.Sprintf("keys:\n  - user: %s\n    sha256: %s\n    scopes: [read]\n", user, hashOf(user+"-key"))
	}
	old := time.Now().Add(-time.Hour).Truncate(time.Second)
	write := func(s string, mtime time.Time) {
		t.Helper()
		if err := os.WriteFile(file, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
		if !mtime.IsZero() {
			if err := os.Chtimes(file, mtime, mtime); err != nil {
				t.Fatal(err)
			}
		}
	}
	reads := 0
	readKeyFile = func(name string) ([]byte, error) { reads++; return os.ReadFile(name) }
	t.Cleanup(func() { readKeyFile = os.ReadFile })

	write(keyFile("alice"), old)
	h := newWatchless(t, &Handler{KeysFile: file})
	works := func(user string) bool { return h.lookup(user+"-key") != nil }
	reads = 0
	for range 5 {
		if tried, _ := h.reloadIfChanged(); tried {
			t.Fatal("an unchanged file was reloaded")
		}
	}
	if reads != 0 {
		t.Errorf("an unchanged, settled key file was read %d times in 5 polls, want 0", reads)
	}

	// an ordinary edit moves the modification time: seen at the next poll
	write(keyFile("bobby"), time.Time{})
	if tried, err := h.reloadIfChanged(); !tried || err != nil || !works("bobby") || works("alice") {
		t.Fatalf("after an edit: tried %v, err %v, bobby %v, alice %v", tried, err, works("bobby"), works("alice"))
	}
	// a fresh file is read at every poll until it is racyWindow old
	reads = 0
	h.reloadIfChanged()
	if reads != 1 {
		t.Errorf("a file modified just now was read %d times at the next poll, want 1", reads)
	}

	// new bytes of the same size under the old modification time (as
	// `touch -d` or `rsync -t --inplace` can leave them): the metadata
	// cannot tell, the next full read does
	write(keyFile("bobby"), old)
	h.reloadIfChanged() // reads it once more (its metadata moved), same bytes
	write(keyFile("alice"), old)
	reads = 0
	if tried, _ := h.reloadIfChanged(); tried || reads != 0 {
		t.Fatalf("same size and time: tried %v after %d reads; the test expects the metadata to hide the change", tried, reads)
	}
	st := h.fileStates[file]
	st.readAt = st.readAt.Add(-fullCheckEvery)
	h.fileStates[file] = st
	if tried, err := h.reloadIfChanged(); !tried || err != nil || !works("alice") {
		t.Errorf("at the full check: tried %v, err %v, alice works %v", tried, err, works("alice"))
	}
}
