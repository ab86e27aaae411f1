package redactlog

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/restgate/restgate/modules/apiauth"
)

const knownKey = "rg_test_known_key_0000000000000000000000001"

func provisionKey(t *testing.T) {
	t.Helper()
	t.Setenv(apiauth.EnvAPIKey, "")
	t.Setenv(apiauth.EnvAPIKeyFile, "")
	sum := sha256.Sum256([]byte(knownKey))
	h := &apiauth.Handler{Keys: []apiauth.KeyEntry{{User: "alice", SHA256: hex.EncodeToString(sum[:])}}}
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	t.Cleanup(cancel)
	if err := h.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = h.Cleanup() })
}

func TestURI(t *testing.T) {
	provisionKey(t)
	tests := []struct{ give, want string }{
		{"/v1/events?page=2&limit=10", "/v1/events?page=2&limit=10"},
		{"/v1/events?API_KEY=abc&page=2", "/v1/events?API_KEY=REDACTED&page=2"},
		{"/v1/x?apiKey=abc&access-token=def&password=ghi&auth=jkl", "/v1/x?apiKey=REDACTED&access-token=REDACTED&password=REDACTED&auth=REDACTED"},
		{"/v1/x?q=" + knownKey, "/v1/x?q=REDACTED"},
		{"/v1/x", "/v1/x"},
	}
	for _, tt := range tests {
		if got := redactURI(tt.give); got != tt.want {
			t.Errorf("redactURI(%q) = %q, want %q", tt.give, got, tt.want)
		}
	}
}

func TestHeaders(t *testing.T) {
	provisionKey(t)
	core, logs := observer.New(zapcore.InfoLevel)
	hdr := http.Header{
		"Api-Key": {"secret1"}, "Token": {"secret2"}, "X-Auth-Token": {"secret3"}, "X-Access-Token": {"secret4"},
		"X-Custom": {knownKey}, "Accept": {"application/json"},
	}
	f := Filter{}.Filter(zap.Object("headers", caddyhttp.LoggableHTTPHeader{Header: hdr}))
	zap.New(core).Info("request", f)
	got := fmt.Sprint(logs.All()[0].ContextMap())
	for _, secret := range []string{"secret1", "secret2", "secret3", "secret4", knownKey} {
		if strings.Contains(got, secret) {
			t.Errorf("%s reached the log: %s", secret, got)
		}
	}
	if !strings.Contains(got, "application/json") {
		t.Errorf("an ordinary header was redacted: %s", got)
	}
	if hdr.Get("X-Custom") != knownKey {
		t.Error("the filter changed the request's own header map")
	}
}
