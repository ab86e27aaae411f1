package redact

import (
	"strings"
	"testing"
)

func TestCredentialName(t *testing.T) {
	for _, name := range []string{"API_KEY", "apiKey", "api-key", "X-Api-Key", "access-token", "access_token", "password", "auth",
		"Authorization", "X-Auth-Token", "X-Access-Token", "Token", "Api-Key", "client_secret", "key", "Cookie", "sig", "session_id", "private_key"} {
		if !CredentialName(name) {
			t.Errorf("CredentialName(%q) = false, want true", name)
		}
	}
	for _, name := range []string{"page", "limit", "sort", "name", "Content-Type", "X-Request-Id", "User-Agent", "Accept", "q", "pipeline"} {
		if CredentialName(name) {
			t.Errorf("CredentialName(%q) = true, want false", name)
		}
	}
}

func TestText(t *testing.T) {
	tests := []struct{ in, leak string }{
		{`{"error": "db login failed", "password": "hunter2hunter2"}`, "hunter2hunter2"},
		{`Traceback: connect(user=app, password=s3cr3t-pw) failed`, "s3cr3t-pw"},
		{`Authorization: Bearer rg_live_abcdefghijklmnop`, "rg_live_abcdefghijklmnop"},
		{`{"api_key":"k-123456789"}`, "k-123456789"},
		{`GET /x?token=tok_987654321&page=2`, "tok_987654321"},
	}
	for _, tt := range tests {
		got := Text([]byte(tt.in), 1024)
		if strings.Contains(got, tt.leak) || !strings.Contains(got, Replacement) {
			t.Errorf("Text(%q) = %q: the secret %q must be replaced", tt.in, got, tt.leak)
		}
	}
	if got := Text([]byte(`{"error": "no such pipeline", "page": 2}`), 1024); got != `{"error": "no such pipeline", "page": 2}` {
		t.Errorf("Text changed a body without credentials: %q", got)
	}
	if got := Text([]byte(strings.Repeat("x", 5000)), 512); len(got) != 512 {
		t.Errorf("Text kept %d bytes, want 512", len(got))
	}
}
