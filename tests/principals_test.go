package tests

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dunglas/httpsfv"
	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

// tokenIssuer is an issuer on loopback HTTPS (its own CA) that signs
// access tokens with one Ed25519 key and serves it as a JWKS.
type tokenIssuer struct {
	url    string
	caFile string
	sig    jose.Signer
}

func newTokenIssuer(t *testing.T) *tokenIssuer {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "max-age=300")
		_ = json.NewEncoder(w).Encode(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: pub, KeyID: "k1", Algorithm: "EdDSA", Use: "sig"}}})
	}))
	t.Cleanup(srv.Close)
	is := &tokenIssuer{url: srv.URL, caFile: filepath.Join(t.TempDir(), "issuer-ca.pem")}
	if err := os.WriteFile(is.caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	if is.sig, err = jose.NewSigner(jose.SigningKey{Algorithm: jose.EdDSA, Key: priv}, (&jose.SignerOptions{}).WithType("at+jwt").WithHeader("kid", "k1")); err != nil {
		t.Fatal(err)
	}
	return is
}

// bearer is the Authorization header of an access token for sub.
func (is *tokenIssuer) bearer(t *testing.T, sub string) []string {
	t.Helper()
	now := time.Now()
	tok, err := jwt.Signed(is.sig).Claims(map[string]any{
		"iss": is.url, "aud": "https://api.example.org", "sub": sub, "scope": "read write",
		"iat": now.Unix(), "exp": now.Add(time.Hour).Unix(),
	}).Serialize()
	if err != nil {
		t.Fatal(err)
	}
	return []string{"Authorization", "Bearer " + tok}
}

// principalsConfig is the default Caddyfile with a service at
// /v1/widgets (the echo backend), its /v1/widgets/public* declared public,
// GET allowed without a key, and the issuers' tokens accepted.
func principalsConfig(t *testing.T, echo string, issuers ...*tokenIssuer) string {
	t.Helper()
	const public = "\t\tpublic /v1/health /v1/openapi.json /docs /docs/*\n"
	extra := "\t\tpublic /v1/widgets/public*\n\t\tanonymous GET\n"
	for _, is := range issuers {
		extra += fmt.Sprintf("\t\tjwt %s {\n\t\t\tjwks_url %s/jwks\n\t\t\taudience https://api.example.org\n\t\t\tca_file %s\n\t\t}\n", is.url, is.url, is.caFile)
	}
	cfg := withService(t, "/v1/widgets*", echo)
	if !strings.Contains(cfg, public) {
		t.Fatal("the default Caddyfile changed: no api_auth public line to extend")
	}
	return strings.Replace(cfg, public, public+extra, 1)
}

// identityEcho is a backend that answers with every request header it
// received (as JSON) and a count of the requests it served, with the
// Cache-Control it is given.
func identityEcho(t *testing.T, cacheControl string) (addr string, served *atomic.Int64) {
	t.Helper()
	served = new(atomic.Int64)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := served.Add(1)
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", cacheControl)
		if r.Method == http.MethodPost {
			w.WriteHeader(http.StatusCreated)
		}
		_ = json.NewEncoder(w).Encode(map[string]any{"n": n, "headers": r.Header})
	}))
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://"), served
}

// echoed is what identityEcho saw, read from its answer.
type echoed struct {
	N       int64               `json:"n"`
	Headers map[string][]string `json:"headers"`
}

func readEcho(t *testing.T, r *Response) echoed {
	t.Helper()
	var e echoed
	if err := json.Unmarshal(r.Body, &e); err != nil {
		t.Fatalf("%s %s: %d %s", r.Request.Method, r.Request.URL, r.StatusCode, r.Body)
	}
	return e
}

// rateRemaining is the `r` (what is left) of a zone's member of r's
// RateLimit header.
func rateRemaining(t *testing.T, r *Response, zone string) int64 {
	t.Helper()
	list, err := httpsfv.UnmarshalList(r.Header.Values("RateLimit"))
	if err != nil {
		t.Fatalf("RateLimit %q: %v", r.Header.Values("RateLimit"), err)
	}
	for _, m := range list {
		if it, ok := m.(httpsfv.Item); ok && it.Value == zone {
			left, _ := it.Params.Get("r")
			n, _ := left.(int64)
			return n
		}
	}
	t.Fatalf("no %s member in RateLimit %q", zone, r.Header.Values("RateLimit"))
	return 0
}

// TestPrincipalsDoNotCollide: the API-key user alice and the subject alice
// of two token issuers are three principals. They share no cached answer,
// no Idempotency-Key record, no rate-limit bucket and no owned secret; the
// backend tells them apart by X-Auth-Issuer.
func TestPrincipalsDoNotCollide(t *testing.T) {
	one, two := newTokenIssuer(t), newTokenIssuer(t)
	echo, served := identityEcho(t, "max-age=300")
	const quota = 100
	g := StartGateway(t, principalsConfig(t, echo, one, two), Options{Env: map[string]string{
		"RESTGATE_RATE_PER_USER": fmt.Sprintf("%d/1h", quota), // no refill within the test
	}})
	c := g.Client()
	type principal struct {
		name   string
		auth   []string
		issuer string // what the backend must see in X-Auth-Issuer
	}
	principals := []principal{
		{"API key alice", bearer("alice"), ""},
		{"issuer one's alice", one.bearer(t, "alice"), one.url},
		{"issuer two's alice", two.bearer(t, "alice"), two.url},
	}

	// rate limits: each principal's first request finds a full bucket
	// (the key user spends a few first)
	for range 4 {
		Do(t, c, "GET", g.URL("/v1/widgets/limit"), "", principals[0].auth...)
	}
	for _, p := range principals[1:] {
		r := Do(t, c, "GET", g.URL("/v1/widgets/limit"), "", p.auth...)
		if left := rateRemaining(t, r, "per-user"); r.StatusCode != 200 || left != quota-1 {
			t.Errorf("%s: first request %d, per-user r=%d, want %d: a bucket shared with another alice", p.name, r.StatusCode, left, quota-1)
		}
	}

	// the cache: each principal's first GET reaches the backend and
	// carries its own identity; its second is its own cached answer
	for _, p := range principals {
		before := served.Load()
		r := Do(t, c, "GET", g.URL("/v1/widgets/cached"), "", p.auth...)
		e := readEcho(t, r)
		if served.Load() != before+1 || strings.Join(e.Headers["X-Auth-User"], ",") != "alice" || strings.Join(e.Headers["X-Auth-Issuer"], ",") != p.issuer {
			t.Errorf("%s: first GET answered %s (Cache-Status %q): want a miss carrying its own identity", p.name, r.Body, r.Header.Get("Cache-Status"))
		}
		again := Do(t, c, "GET", g.URL("/v1/widgets/cached"), "", p.auth...)
		if readEcho(t, again).N != e.N {
			t.Errorf("%s: second GET answered n=%d, want its own cached n=%d", p.name, readEcho(t, again).N, e.N)
		}
	}

	// Idempotency-Key: the same key and body from each principal runs
	// once for each, never replaying another's answer
	for _, p := range principals {
		before := served.Load()
		r := Do(t, c, "POST", g.URL("/v1/widgets"), `{"a": 1}`, append(p.auth, "Idempotency-Key", `"same-key"`)...)
		e := readEcho(t, r)
		if r.StatusCode != 201 || r.Header.Get("Idempotent-Replayed") != "" || served.Load() != before+1 ||
			strings.Join(e.Headers["X-Auth-Issuer"], ",") != p.issuer {
			t.Errorf("%s: POST %d replayed %q: %s: want its own first execution", p.name, r.StatusCode, r.Header.Get("Idempotent-Replayed"), r.Body)
		}
	}

	// owned secrets: each sees only its own
	for i, p := range principals {
		body := fmt.Sprintf(`{"name": "s%d", "value": "v%d"}`, i, i)
		if r := Do(t, c, "POST", g.URL("/v1/secrets"), body, p.auth...); r.StatusCode != 201 {
			t.Fatalf("%s: creating its secret: %d %s", p.name, r.StatusCode, r.Body)
		}
	}
	for i, p := range principals {
		m := Do(t, c, "GET", g.URL("/v1/secrets"), "", p.auth...).JSON(t)
		if n := m["pagination"].(map[string]any)["total_count"]; n != 1.0 {
			t.Errorf("%s lists %v secrets, want only its own: %v", p.name, n, m)
		}
		for j := range principals {
			r := Do(t, c, "GET", g.URL(fmt.Sprintf("/v1/secrets/s%d", j)), "", p.auth...)
			if want := map[bool]int{true: 200, false: 404}[i == j]; r.StatusCode != want {
				t.Errorf("%s reads s%d: %d, want %d", p.name, j, r.StatusCode, want)
			}
		}
	}
	r := Do(t, c, "GET", g.URL("/v1/secrets/s1"), "", bearer("admin")...)
	if owner := r.JSON(t)["owner"]; owner != "jwt:"+one.url+" alice" {
		t.Errorf("s1 is owned by %v, want issuer one's qualified alice", owner)
	}
}

// TestNoIdentityInAnySpelling: no identity header a client sends reaches a
// backend, in any spelling (the CGI/WSGI underscore ones included), on a
// public, an anonymous or a keyed route, over HTTP/1.1 or HTTP/2.
func TestNoIdentityInAnySpelling(t *testing.T) {
	is := newTokenIssuer(t)
	echo, _ := identityEcho(t, "no-store")
	g := StartGateway(t, principalsConfig(t, echo, is), Options{})
	names := []string{
		"X-Auth-User", "X-Auth-Scopes", "X-Auth-Issuer",
		"X_Auth_User", "X_Auth_Scopes", "X_Auth_Issuer", "x_auth_user", "X-Auth_Issuer",
	}
	routes := []struct {
		name, method, path string
		auth               []string
		want               map[string]string // the identity the gateway sets
	}{
		{"public", "POST", "/v1/widgets/public/x", nil, nil},
		{"anonymous", "GET", "/v1/widgets/x", nil, nil},
		{"keyed", "POST", "/v1/widgets/x", bearer("alice"), map[string]string{"X-Auth-User": "alice", "X-Auth-Scopes": "read write"}},
		{"token", "POST", "/v1/widgets/x", is.bearer(t, "alice"), map[string]string{"X-Auth-User": "alice", "X-Auth-Scopes": "read write", "X-Auth-Issuer": is.url}},
	}
	for proto, c := range map[string]*http.Client{"HTTP/1.1": g.ClientHTTP1(), "HTTP/2": g.Client()} {
		for _, rt := range routes {
			for _, name := range names {
				t.Run(proto+"/"+rt.name+"/"+name, func(t *testing.T) {
					headers := append([]string{name, "forged-" + name}, rt.auth...)
					r := Do(t, c, rt.method, g.URL(rt.path), map[string]string{"GET": "", "POST": "{}"}[rt.method], headers...)
					e := readEcho(t, r)
					for h, vs := range e.Headers {
						for _, v := range vs {
							if strings.Contains(v, "forged") {
								t.Errorf("the backend saw %s: %q", h, v)
							}
						}
					}
					for _, h := range []string{"X-Auth-User", "X-Auth-Scopes", "X-Auth-Issuer"} {
						if got := strings.Join(e.Headers[h], ","); got != rt.want[h] {
							t.Errorf("the backend saw %s: %q, want %q", h, got, rt.want[h])
						}
					}
				})
			}
		}
	}
}
