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
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

// TestJWTThroughGateway: an issuer on loopback HTTPS with its own CA; the
// gateway verifies its tokens against the JWKS and maps their scopes.
func TestJWTThroughGateway(t *testing.T) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	issuer := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "max-age=300")
		_ = json.NewEncoder(w).Encode(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: pub, KeyID: "k1", Algorithm: "EdDSA", Use: "sig"}}})
	}))
	t.Cleanup(issuer.Close)
	caFile := filepath.Join(t.TempDir(), "issuer-ca.pem")
	if err := os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: issuer.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := testGlobals("") + fmt.Sprintf(`https://api.localhost:{$RESTGATE_HTTPS_PORT} {
	tls internal
	api_errors
	api_auth {
		keys_file {$RESTGATE_DATA}/api-keys.yaml
		jwt %s {
			jwks_url    %s/jwks
			audience    https://api.example.org
			ca_file     %s
			scope_map   storage.read:/ read
			scope_map   storage.modify:/ write
		}
	}
	reverse_proxy %s
}
`, issuer.URL, issuer.URL, caFile, echoBackend(t))
	g := StartGateway(t, cfg, Options{})
	c := g.Client()

	sig, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.EdDSA, Key: priv}, (&jose.SignerOptions{}).WithType("at+jwt").WithHeader("kid", "k1")) // an access token (RFC 9068): api_auth's default token_types
	if err != nil {
		t.Fatal(err)
	}
	token := func(scope string) string {
		now := time.Now()
		tok, err := jwt.Signed(sig).Claims(map[string]any{
			"iss": issuer.URL, "aud": "https://api.example.org", "sub": "sci-user", "scope": scope,
			"iat": now.Unix(), "exp": now.Add(time.Hour).Unix(),
		}).Serialize()
		if err != nil {
			t.Fatal(err)
		}
		return "Bearer " + tok
	}
	read := token("storage.read:/")
	r := Do(t, c, "GET", g.URL("/v1/x"), "", "Authorization", read, "X-Auth-User", "root", "X-Auth-Scopes", "admin")
	if r.StatusCode != 200 || !strings.HasPrefix(string(r.Body), "user=[sci-user] scopes=[read]") {
		t.Errorf("GET with a read token: %d %s", r.StatusCode, r.Body)
	}
	m := AssertProblem(t, Do(t, c, "POST", g.URL("/v1/x"), "{}", "Authorization", read), 403)
	if m["code"] != "insufficient_scope" || !strings.HasPrefix(fmt.Sprint(m["detail"]), "this token lacks the write scope") {
		t.Errorf("POST with a read token: %v", m)
	}
	if r := Do(t, c, "POST", g.URL("/v1/x"), "{}", "Authorization", token("storage.read:/ storage.modify:/")); r.StatusCode != 200 {
		t.Errorf("POST with a write token: %d %s", r.StatusCode, r.Body)
	}
	bad := read[:len(read)-4] + "AAAA"
	m = AssertProblem(t, Do(t, c, "GET", g.URL("/v1/x"), "", "Authorization", bad), 401)
	if m["code"] != "invalid_token" {
		t.Errorf("a tampered token: %v", m)
	}
	// API keys still work beside tokens
	if r := Do(t, c, "GET", g.URL("/v1/x"), "", bearer("tester")...); r.StatusCode != 200 {
		t.Errorf("an API key: %d", r.StatusCode)
	}
}
