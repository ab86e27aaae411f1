package apihost

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

func provisioned(t *testing.T, m MatchAPIHost) MatchAPIHost {
	t.Helper()
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	t.Cleanup(cancel)
	if err := m.Provision(ctx); err != nil {
		t.Fatalf("Provision(%+v) = %v", m, err)
	}
	return m
}

func TestMatch(t *testing.T) {
	tests := []struct {
		name       string
		matcher    MatchAPIHost
		host       string
		want       bool
		wantDomain string
	}{
		{name: "localhost", host: "api.localhost", want: true, wantDomain: "localhost"},
		{name: "mixed case with port", host: "API.Example.COM:8443", want: true, wantDomain: "example.com"},
		{name: "trailing dot", host: "api.example.com.", want: true, wantDomain: "example.com"},
		{name: "trailing dot and port", host: "api.example.com.:443", want: true, wantDomain: "example.com"},
		{name: "deep domain", host: "api.eu.example.co.uk", want: true, wantDomain: "eu.example.co.uk"},
		{name: "punycode domain", host: "api.xn--bcher-kva.example", want: true, wantDomain: "xn--bcher-kva.example"},
		{name: "unicode domain", host: "api.bücher.example", want: true, wantDomain: "xn--bcher-kva.example"},
		{name: "www", host: "www.example.com", want: false},
		{name: "label prefix only", host: "apiary.example.com", want: false},
		{name: "api later", host: "www.api.example.com", want: false},
		{name: "bare domain", host: "example.com", want: false},
		{name: "bare label", host: "api", want: false},
		{name: "label and dot", host: "api.", want: false},
		{name: "empty label", host: "api..example.com", want: false},
		{name: "port out of range", host: "api.example.com:99999999", want: false},
		{name: "port not a number", host: "api.example.com:http", want: false},
		{name: "port zero", host: "api.example.com:0", want: false},
		{name: "empty port", host: "api.example.com:", want: false},
		{name: "ipv4", host: "127.0.0.1", want: false},
		{name: "ipv4 with port", host: "127.0.0.1:8443", want: false},
		{name: "ipv6", host: "[::1]:8443", want: false},
		{name: "empty", host: "", want: false},
		{name: "space", host: "api.exa mple.com", want: false},
		{name: "control byte", host: "api.exa\x01mple.com", want: false},
		{name: "too long", host: "api." + string(make([]byte, 300)), want: false},
		{name: "custom label", matcher: MatchAPIHost{Label: "gateway"}, host: "gateway.example.com", want: true, wantDomain: "example.com"},
		{name: "custom label refuses api", matcher: MatchAPIHost{Label: "gateway"}, host: "api.example.com", want: false},
		{name: "allow-list hit", matcher: MatchAPIHost{Domains: []string{"Example.com."}}, host: "api.example.com:443", want: true, wantDomain: "example.com"},
		{name: "allow-list miss", matcher: MatchAPIHost{Domains: []string{"example.com"}}, host: "api.example.org", want: false},
		{name: "allow-list unicode", matcher: MatchAPIHost{Domains: []string{"bücher.example"}}, host: "api.xn--bcher-kva.example", want: true, wantDomain: "xn--bcher-kva.example"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := provisioned(t, tt.matcher)
			req := httptest.NewRequest(http.MethodGet, "/", nil)
			req.Host = tt.host
			repl := caddy.NewReplacer()
			req = req.WithContext(context.WithValue(req.Context(), caddy.ReplacerCtxKey, repl))
			got, err := m.MatchWithError(req)
			if err != nil {
				t.Fatalf("MatchWithError(%q) error: %v", tt.host, err)
			}
			if got != tt.want {
				t.Fatalf("MatchWithError(%q) = %v, want %v", tt.host, got, tt.want)
			}
			domain, _ := repl.GetString("http.api_host.domain")
			if domain != tt.wantDomain {
				t.Errorf("{http.api_host.domain} = %q, want %q", domain, tt.wantDomain)
			}
		})
	}
}

func TestProvisionErrors(t *testing.T) {
	for name, m := range map[string]MatchAPIHost{
		"dotted label": {Label: "api.v1"},
		"bad domain":   {Domains: []string{"exa mple.com"}},
		"empty domain": {Domains: []string{"."}},
	} {
		t.Run(name, func(t *testing.T) {
			ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
			defer cancel()
			if err := m.Provision(ctx); err == nil {
				t.Fatalf("Provision(%+v) = nil, want an error", m)
			}
		})
	}
}

func TestUnmarshalCaddyfile(t *testing.T) {
	tests := []struct {
		input   string
		want    MatchAPIHost
		wantErr bool
	}{
		{input: "api_host", want: MatchAPIHost{}},
		{input: "api_host example.com example.org", want: MatchAPIHost{Domains: []string{"example.com", "example.org"}}},
		{input: "api_host {\n label gw\n domains a.example\n}", want: MatchAPIHost{Label: "gw", Domains: []string{"a.example"}}},
		{input: "api_host {\n label\n}", wantErr: true},
		{input: "api_host {\n label a b\n}", wantErr: true},
		{input: "api_host {\n label a\n label b\n}", wantErr: true},
		{input: "api_host {\n domains\n}", wantErr: true},
		{input: "api_host {\n nope 1\n}", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.input, func(t *testing.T) {
			var m MatchAPIHost
			err := m.UnmarshalCaddyfile(caddyfile.NewTestDispenser(tt.input))
			if (err != nil) != tt.wantErr {
				t.Fatalf("UnmarshalCaddyfile(%q) error = %v, wantErr %v", tt.input, err, tt.wantErr)
			}
			if err == nil && (m.Label != tt.want.Label || len(m.Domains) != len(tt.want.Domains)) {
				t.Errorf("UnmarshalCaddyfile(%q) = %+v, want %+v", tt.input, m, tt.want)
			}
		})
	}
}

func BenchmarkMatch(b *testing.B) {
	m := MatchAPIHost{}
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	defer cancel()
	_ = m.Provision(ctx)
	req := httptest.NewRequest(http.MethodGet, "/", nil)
	req.Host = "api.example.com:8443"
	req = req.WithContext(context.WithValue(req.Context(), caddy.ReplacerCtxKey, caddy.NewReplacer()))
	b.ReportAllocs()
	for b.Loop() {
		if ok, _ := m.MatchWithError(req); !ok {
			b.Fatal("no match")
		}
	}
}
