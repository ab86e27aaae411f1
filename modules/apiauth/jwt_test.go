package apiauth

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/restgate/restgate/internal/testclock"
	"github.com/restgate/restgate/modules/problem"
)

// issuerServer is an OpenID issuer on loopback HTTPS: its JWKS can be
// changed, and it counts fetches.
type issuerServer struct {
	srv     *httptest.Server
	caFile  string
	mu      sync.Mutex
	keys    []jose.JSONWebKey
	maxAge  int // the JWKS's Cache-Control max-age, seconds
	fetches atomic.Int64
}

func newIssuerServer(t testing.TB) *issuerServer {
	t.Helper()
	is := &issuerServer{maxAge: 300}
	is.srv = httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/.well-known/openid-configuration":
			fmt.Fprintf(w, `{"issuer": %q, "jwks_uri": %q}`, is.srv.URL, is.srv.URL+"/jwks")
		case "/jwks":
			is.fetches.Add(1)
			is.mu.Lock()
			defer is.mu.Unlock()
			w.Header().Set("Cache-Control", fmt.Sprintf("max-age=%d", is.maxAge))
			_ = json.NewEncoder(w).Encode(jose.JSONWebKeySet{Keys: is.keys})
		default:
			w.WriteHeader(404)
		}
	}))
	t.Cleanup(is.srv.Close)
	is.caFile = filepath.Join(t.TempDir(), "ca.pem")
	pemBytes := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: is.srv.Certificate().Raw})
	if err := os.WriteFile(is.caFile, pemBytes, 0o600); err != nil {
		t.Fatal(err)
	}
	return is
}

// signer is a private key the test signs with, published under kid.
type signer struct {
	kid  string
	alg  jose.SignatureAlgorithm
	priv any
}

func (s signer) public() jose.JSONWebKey {
	var pub any
	switch k := s.priv.(type) {
	case *rsa.PrivateKey:
		pub = &k.PublicKey
	case *ecdsa.PrivateKey:
		pub = &k.PublicKey
	case ed25519.PrivateKey:
		pub = k.Public()
	}
	return jose.JSONWebKey{Key: pub, KeyID: s.kid, Algorithm: string(s.alg), Use: "sig"}
}

func (is *issuerServer) publish(signers ...signer) {
	is.mu.Lock()
	defer is.mu.Unlock()
	is.keys = nil
	for _, s := range signers {
		is.keys = append(is.keys, s.public())
	}
}

var (
	rsaKey, _   = rsa.GenerateKey(rand.Reader, 2048)
	ecKey, _    = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	_, edKey, _ = ed25519.GenerateKey(rand.Reader)

	rsaSigner = signer{"rsa-1", jose.RS256, rsaKey}
	ecSigner  = signer{"ec-1", jose.ES256, ecKey}
	edSigner  = signer{"ed-1", jose.EdDSA, edKey}
)

// mint signs claims with s as an access token (`typ: at+jwt`), with extra
// JOSE header fields (a nil value removes one).
func mint(t testing.TB, s signer, claims map[string]any, extra map[jose.HeaderKey]any) string {
	t.Helper()
	opts := (&jose.SignerOptions{}).WithType("at+jwt").WithHeader("kid", s.kid)
	for k, v := range extra {
		if v == nil {
			delete(opts.ExtraHeaders, k)
			continue
		}
		opts = opts.WithHeader(k, v)
	}
	sig, err := jose.NewSigner(jose.SigningKey{Algorithm: s.alg, Key: s.priv}, opts)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := jwt.Signed(sig).Claims(claims).Serialize()
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// claimsFor are valid claims for the issuer at testNow.
func claimsFor(is *issuerServer, scope string) map[string]any {
	return map[string]any{
		"iss": is.srv.URL, "aud": "https://api.example.org", "sub": "sci-user", "jti": "tok-1",
		"iat": testNow.Unix() - 60, "nbf": testNow.Unix() - 60, "exp": testNow.Unix() + 3600, "scope": scope,
	}
}

func with(c map[string]any, k string, v any) map[string]any {
	out := map[string]any{}
	for key, val := range c {
		out[key] = val
	}
	if v == nil {
		delete(out, k)
	} else {
		out[k] = v
	}
	return out
}

// newJWTAuth provisions api_auth with the test API keys and one issuer,
// on a clock that moves a millisecond a read, and a refetch interval;
// configure (if any) adjusts the issuer before it is provisioned.
func newJWTAuth(t testing.TB, is *issuerServer, minRefetch time.Duration, configure ...func(*JWTIssuer)) *Handler {
	t.Helper()
	return newJWTAuthStep(t, is, minRefetch, time.Millisecond, configure...)
}

// newJWTAuthStep is newJWTAuth with the clock's step per read: a benchmark
// reads it millions of times, and a millisecond each would expire its
// token.
func newJWTAuthStep(t testing.TB, is *issuerServer, minRefetch, step time.Duration, configure ...func(*JWTIssuer)) *Handler {
	t.Helper()
	t.Setenv(EnvAPIKey, "")
	t.Setenv(EnvAPIKeyFile, "")
	h := &Handler{
		Keys: []KeyEntry{{User: "rita", SHA256: hashOf(readerKey), Scopes: []string{"read"}}},
		JWT: []*JWTIssuer{{
			Issuer: is.srv.URL, Audience: []string{"https://api.example.org"}, CAFile: is.caFile,
			ScopeMap:   map[string]string{"storage.read:/": "read", "storage.modify:/": "write"},
			MinRefetch: caddy.Duration(minRefetch),
		}},
		now: testclock.New(testNow, step).Now,
	}
	for _, c := range configure {
		c(h.JWT[0])
	}
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	t.Cleanup(cancel)
	if err := h.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	return h
}

func TestJWTAccepted(t *testing.T) {
	is := newIssuerServer(t)
	is.publish(rsaSigner, ecSigner, edSigner)
	h := newJWTAuth(t, is, 0)
	for _, s := range []signer{rsaSigner, ecSigner, edSigner} {
		tok := mint(t, s, claimsFor(is, "storage.read:/ storage.modify:/"), nil)
		seen, _, err := serve(h, "POST", "Authorization", "Bearer "+tok, "X-Auth-User", "root")
		if err != nil {
			t.Fatalf("%s: %v", s.alg, err)
		}
		if seen.Header.Get("X-Auth-User") != "sci-user" || seen.Header.Get("X-Auth-Scopes") != "read write" || seen.Header.Get("Authorization") != "" {
			t.Errorf("%s: backend saw user %q scopes %q auth %q", s.alg, seen.Header.Get("X-Auth-User"), seen.Header.Get("X-Auth-Scopes"), seen.Header.Get("Authorization"))
		}
		repl := seen.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
		if iss, _ := repl.GetString("http.auth.user.issuer"); iss != is.srv.URL {
			t.Errorf("issuer placeholder %q", iss)
		}
		if p, _ := repl.GetString("http.auth.user.principal"); p != "jwt:"+is.srv.URL+" sci-user" {
			t.Errorf("principal placeholder %q, want the subject qualified by the issuer", p)
		}
		if got := seen.Header.Values("X-Auth-Issuer"); len(got) != 1 || got[0] != is.srv.URL {
			t.Errorf("X-Auth-Issuer = %q, want the issuer", got)
		}
		if id, _ := repl.GetString("http.auth.user.key_id"); id != "tok-1" {
			t.Errorf("key_id placeholder %q, want the jti", id)
		}
	}
	// a read-only token cannot write
	ro := mint(t, rsaSigner, claimsFor(is, "storage.read:/"), nil)
	if _, _, err := serve(h, "GET", "Authorization", "Bearer "+ro); err != nil {
		t.Errorf("read-only token, GET: %v", err)
	}
	if _, w, err := serve(h, "POST", "Authorization", "Bearer "+ro); statusOf(err) != 403 || !strings.Contains(w.Header().Get("WWW-Authenticate"), "insufficient_scope") {
		t.Errorf("read-only token, POST: %d %q", statusOf(err), w.Header().Get("WWW-Authenticate"))
	}
	// API keys still work beside tokens
	if _, _, err := serve(h, "GET", "Authorization", "Bearer "+readerKey); err != nil {
		t.Errorf("an API key with a jwt issuer configured: %v", err)
	}
}

// TestBadTokensGetOneAnswer: every bad token is the same 401.
func TestBadTokensGetOneAnswer(t *testing.T) {
	is := newIssuerServer(t)
	is.publish(rsaSigner, ecSigner)
	h := newJWTAuth(t, is, 0)
	good := claimsFor(is, "storage.read:/")
	stranger := signer{"rsa-1", jose.RS256, mustRSA(t)} // same kid, unknown key
	pubDER, _ := x509.MarshalPKIXPublicKey(&rsaKey.PublicKey)
	pubPEM := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER})
	valid := mint(t, rsaSigner, good, nil)
	parts := strings.Split(valid, ".")
	tests := map[string]string{
		"expired":                       mint(t, rsaSigner, with(good, "exp", testNow.Unix()-3600), nil),
		"not yet valid":                 mint(t, rsaSigner, with(good, "nbf", testNow.Unix()+3600), nil),
		"issued in the future":          mint(t, rsaSigner, with(good, "iat", testNow.Unix()+3600), nil),
		"wrong issuer":                  mint(t, rsaSigner, with(good, "iss", "https://evil.example"), nil),
		"wrong audience":                mint(t, rsaSigner, with(good, "aud", "https://other.example"), nil),
		"no exp":                        mint(t, rsaSigner, with(good, "exp", nil), nil),
		"no sub":                        mint(t, rsaSigner, with(good, "sub", nil), nil),
		"unknown kid":                   mint(t, signer{"nope", jose.RS256, rsaKey}, good, nil),
		"unknown key":                   mint(t, stranger, good, nil),
		"alg none":                      unsigned(t, map[string]any{"alg": "none", "kid": "rsa-1"}, good),
		"HS256 with the RSA public key": hmacSigned(t, map[string]any{"alg": "HS256", "kid": "rsa-1"}, good, pubPEM),
		"HS256 with the DER public key": hmacSigned(t, map[string]any{"alg": "HS256", "kid": "rsa-1"}, good, pubDER),
		"alg not allowed":               mint(t, signer{"rsa-1", jose.RS512, rsaKey}, good, nil),
		"tampered payload":              parts[0] + "." + base64.RawURLEncoding.EncodeToString([]byte(`{"iss":"`+is.srv.URL+`","aud":"https://api.example.org","sub":"admin","exp":9999999999,"scope":"storage.modify:/"}`)) + "." + parts[2],
		"tampered signature":            parts[0] + "." + parts[1] + "." + flip(parts[2]),
		"100 KiB token":                 mint(t, rsaSigner, with(good, "pad", strings.Repeat("x", 100<<10)), nil),
		"unknown crit header":           mint(t, rsaSigner, good, map[jose.HeaderKey]any{"crit": []string{"x-custom"}, "x-custom": true}),
		"an ID token (typ JWT)":         mint(t, rsaSigner, good, map[jose.HeaderKey]any{jose.HeaderType: "JWT"}),
		"untyped":                       mint(t, rsaSigner, good, map[jose.HeaderKey]any{jose.HeaderType: nil}),
	}
	var first string
	for name, tok := range tests {
		t.Run(name, func(t *testing.T) {
			_, w, err := serve(h, "GET", "Authorization", "Bearer "+tok)
			var p *problem.Problem
			if statusOf(err) != 401 || !errors.As(err, &p) || !strings.Contains(w.Header().Get("WWW-Authenticate"), `error="invalid_token"`) {
				t.Fatalf("got %d %v %q, want 401 invalid_token", statusOf(err), err, w.Header().Get("WWW-Authenticate"))
			}
			answer := p.Code + "|" + p.Detail + "|" + w.Header().Get("WWW-Authenticate")
			if first == "" {
				first = answer
			} else if answer != first {
				t.Errorf("answer %q differs from %q: an oracle", answer, first)
			}
		})
	}
	if _, _, err := serve(h, "GET", "Authorization", "Bearer "+valid); err != nil {
		t.Errorf("the valid token was refused: %v", err)
	}
}

func mustRSA(t testing.TB) *rsa.PrivateKey {
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func b64json(v any) string {
	b, _ := json.Marshal(v)
	return base64.RawURLEncoding.EncodeToString(b)
}

func unsigned(t testing.TB, header, claims map[string]any) string {
	return b64json(header) + "." + b64json(claims) + "."
}

func hmacSigned(t testing.TB, header, claims map[string]any, secret []byte) string {
	input := b64json(header) + "." + b64json(claims)
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(input))
	return input + "." + base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}

func flip(s string) string {
	b := []byte(s)
	if b[10] == 'A' {
		b[10] = 'B'
	} else {
		b[10] = 'A'
	}
	return string(b)
}

// TestKeyRotation: a token signed by a new key works after one refetch;
// once the issuer drops a key and the JWKS is fetched again, its tokens
// (even ones verified and cached before) stop working.
func TestKeyRotation(t *testing.T) {
	is := newIssuerServer(t)
	is.publish(rsaSigner)
	h := newJWTAuth(t, is, time.Millisecond)
	old := mint(t, rsaSigner, claimsFor(is, "storage.read:/"), nil)
	if _, _, err := serve(h, "GET", "Authorization", "Bearer "+old); err != nil {
		t.Fatal(err)
	}
	before := is.fetches.Load()
	is.publish(rsaSigner, ecSigner)
	fresh := mint(t, ecSigner, claimsFor(is, "storage.read:/"), nil)
	if _, _, err := serve(h, "GET", "Authorization", "Bearer "+fresh); err != nil {
		t.Fatalf("a token of the new key: %v", err)
	}
	if n := is.fetches.Load() - before; n != 1 {
		t.Errorf("%d JWKS fetches for the new kid, want 1", n)
	}
	is.publish(ecSigner)                                            // the issuer drops the old key
	if _, err := h.JWT[0].fetch(context.Background()); err != nil { // what the refresh loop does when the cache expires
		t.Fatal(err)
	}
	if _, _, err := serve(h, "GET", "Authorization", "Bearer "+old); statusOf(err) != 401 {
		t.Errorf("a token of a dropped key: %d, want 401", statusOf(err))
	}
}

// TestCacheControlExpiry: the JWKS is fetched again when its max-age runs
// out, in the background; then a dropped key's tokens stop working.
func TestCacheControlExpiry(t *testing.T) {
	is := newIssuerServer(t)
	is.maxAge = 1
	is.publish(rsaSigner, ecSigner)
	h := newJWTAuth(t, is, time.Millisecond)
	old := mint(t, rsaSigner, claimsFor(is, "storage.read:/"), nil)
	if _, _, err := serve(h, "GET", "Authorization", "Bearer "+old); err != nil {
		t.Fatal(err)
	}
	is.publish(ecSigner) // the issuer drops the RSA key; nobody asks the gateway to refetch
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, _, err := serve(h, "GET", "Authorization", "Bearer "+old); statusOf(err) == 401 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the dropped key's token still worked 10s after the JWKS's 1s max-age ran out")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestForgedKidFlood: 10,000 tokens with random kids cause at most a
// handful of JWKS fetches.
func TestForgedKidFlood(t *testing.T) {
	is := newIssuerServer(t)
	is.publish(rsaSigner)
	h := newJWTAuth(t, is, 0) // the default: one refetch a minute
	before := is.fetches.Load()
	claims := claimsFor(is, "storage.read:/")
	// properly signed (Ed25519: quick to sign), each with a kid the issuer never published
	for i := range 10_000 {
		forged := mint(t, signer{fmt.Sprintf("forged-%d", i), jose.EdDSA, edKey}, claims, nil)
		if _, _, err := serve(h, "GET", "Authorization", "Bearer "+forged); statusOf(err) != 401 {
			t.Fatalf("forged token %d: %d", i, statusOf(err))
		}
	}
	n := is.fetches.Load() - before
	t.Logf("10,000 forged kids: %d JWKS fetches", n)
	if n > 3 {
		t.Errorf("%d JWKS fetches for 10,000 forged kids, want at most a handful", n)
	}
}

// TestIssuerDownAtStart: the gateway starts (with a warning), refuses the
// issuer's tokens, and accepts them once the keys arrive.
func TestIssuerDownAtStart(t *testing.T) {
	is := newIssuerServer(t)
	is.publish() // no keys yet: every fetch fails
	h := newJWTAuth(t, is, time.Millisecond)
	tok := mint(t, rsaSigner, claimsFor(is, "storage.read:/"), nil)
	if _, _, err := serve(h, "GET", "Authorization", "Bearer "+tok); statusOf(err) != 401 {
		t.Fatalf("before the keys arrived: %d, want 401", statusOf(err))
	}
	is.publish(rsaSigner)
	if _, _, err := serve(h, "GET", "Authorization", "Bearer "+tok); err != nil {
		t.Errorf("after the keys arrived: %v", err)
	}
}

// TestTokenTypes: by default only access tokens (`at+jwt`) pass; an
// issuer may list the types it sends, or turn the check off.
func TestTokenTypes(t *testing.T) {
	is := newIssuerServer(t)
	is.publish(rsaSigner)
	claims := claimsFor(is, "storage.read:/")
	typed := func(typ any) string { return mint(t, rsaSigner, claims, map[jose.HeaderKey]any{jose.HeaderType: typ}) }
	for _, tt := range []struct {
		types []string
		typ   any // nil: no typ
		ok    bool
	}{
		{nil, "at+jwt", true},
		{nil, "AT+JWT", true},
		{nil, "application/at+jwt", true},
		{nil, "JWT", false},
		{nil, nil, false},
		{nil, "id_token+jwt", false},
		{[]string{"JWT"}, "JWT", true},
		{[]string{"JWT"}, "application/jwt", true},
		{[]string{"JWT"}, "at+jwt", false},
		{[]string{"JWT"}, nil, false},
		{[]string{"application/at+jwt", "JWT"}, "at+jwt", true},
		{[]string{"any"}, nil, true},
		{[]string{"any"}, "JWT", true},
	} {
		t.Run(fmt.Sprintf("%v/%v", tt.types, tt.typ), func(t *testing.T) {
			h := newJWTAuth(t, is, 0, func(j *JWTIssuer) { j.TokenTypes = tt.types })
			_, _, err := serve(h, "GET", "Authorization", "Bearer "+typed(tt.typ))
			if (err == nil) != tt.ok {
				t.Errorf("accepted %v, want %v (%v)", err == nil, tt.ok, err)
			}
		})
	}
}

// TestTokenPrincipals: a token's subject is its own principal, qualified
// by the issuer, unless the issuer's subjects are declared to be the key
// file's users.
func TestTokenPrincipals(t *testing.T) {
	is := newIssuerServer(t)
	is.publish(rsaSigner)
	tok := mint(t, rsaSigner, with(claimsFor(is, "storage.read:/"), "sub", "rita"), nil)
	principal := func(h *Handler) (string, []string) {
		t.Helper()
		seen, _, err := serve(h, "GET", "Authorization", "Bearer "+tok, "X-Auth-Issuer", "https://forged.example")
		if err != nil {
			t.Fatal(err)
		}
		p, _ := seen.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer).GetString("http.auth.user.principal")
		return p, seen.Header.Values("X-Auth-Issuer")
	}
	h := newJWTAuth(t, is, 0)
	if p, iss := principal(h); p != "jwt:"+is.srv.URL+" rita" || len(iss) != 1 || iss[0] != is.srv.URL {
		t.Errorf("default: principal %q, X-Auth-Issuer %q", p, iss)
	}
	// the key user rita is rita, with no issuer, whatever the client sends
	seen, _, err := serve(h, "GET", "Authorization", "Bearer "+readerKey, "X-Auth-Issuer", "https://forged.example")
	if err != nil {
		t.Fatal(err)
	}
	if p, _ := seen.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer).GetString("http.auth.user.principal"); p != "rita" || seen.Header.Get("X-Auth-Issuer") != "" {
		t.Errorf("API key: principal %q, X-Auth-Issuer %q", p, seen.Header.Get("X-Auth-Issuer"))
	}
	optIn := newJWTAuth(t, is, 0, func(j *JWTIssuer) { j.SubjectsAreKeyUsers = true })
	if p, iss := principal(optIn); p != "rita" || len(iss) != 0 {
		t.Errorf("subjects_are_key_users: principal %q, X-Auth-Issuer %q; want the key user rita, no issuer header", p, iss)
	}
	// a subject that would be another issuer's principal is refused there,
	// and is its own principal without the opt-in
	impostor := mint(t, rsaSigner, with(claimsFor(is, "storage.read:/"), "sub", "jwt:https://other.example rita"), nil)
	if _, _, err := serve(optIn, "GET", "Authorization", "Bearer "+impostor); statusOf(err) != 401 {
		t.Errorf("subjects_are_key_users, sub jwt:…: %d, want 401", statusOf(err))
	}
	if seen, _, err = serve(h, "GET", "Authorization", "Bearer "+impostor); err != nil {
		t.Fatalf("sub jwt:… without the opt-in: %v", err)
	}
	if p, _ := seen.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer).GetString("http.auth.user.principal"); p != "jwt:"+is.srv.URL+" jwt:https://other.example rita" {
		t.Errorf("sub jwt:… without the opt-in: principal %q", p)
	}
}

func TestJWTConfigErrors(t *testing.T) {
	is := newIssuerServer(t)
	for name, j := range map[string]*JWTIssuer{
		"no audience":       {Issuer: is.srv.URL},
		"issuer with space": {Issuer: is.srv.URL + " x", Audience: []string{"a"}},
		"any and a type":    {Issuer: is.srv.URL, Audience: []string{"a"}, TokenTypes: []string{"any", "JWT"}},
		"empty type":        {Issuer: is.srv.URL, Audience: []string{"a"}, TokenTypes: []string{" "}},
		"hs256":             {Issuer: is.srv.URL, Audience: []string{"a"}, Algorithms: []string{"HS256"}},
		"none":              {Issuer: is.srv.URL, Audience: []string{"a"}, Algorithms: []string{"none"}},
		"http jwks":         {Issuer: is.srv.URL, Audience: []string{"a"}, JWKSURL: "http://127.0.0.1/jwks"},
		"http issuer":       {Issuer: "http://issuer.example", Audience: []string{"a"}},
	} {
		t.Run(name, func(t *testing.T) {
			ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
			defer cancel()
			h := &Handler{Development: true, JWT: []*JWTIssuer{j}}
			if err := h.Provision(ctx); err == nil {
				t.Error("accepted")
			}
		})
	}
}

func BenchmarkJWTVerify(b *testing.B) {
	is := newIssuerServer(b)
	is.publish(rsaSigner, ecSigner)
	h := newJWTAuthStep(b, is, 0, time.Nanosecond)
	for _, s := range []signer{rsaSigner, ecSigner} {
		tok := mint(b, s, claimsFor(is, "storage.read:/"), nil)
		b.Run(string(s.alg), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				h.verified.cache.Purge()
				if _, err := h.authenticate(context.Background(), tok, fromAuthorization); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
	tok := mint(b, rsaSigner, claimsFor(is, "storage.read:/"), nil)
	b.Run("cached", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := h.authenticate(context.Background(), tok, fromAuthorization); err != nil {
				b.Fatal(err)
			}
		}
	})
}
