package redisapp

import (
	"encoding/json"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
)

// TestEmptyAddressDisables: an address line whose value is empty (an unset
// {$RESTGATE_REDIS}, replaced before tokens are read, leaves a bare
// `address`; or `address ""`) turns the app off, while a block without an
// address line keeps the 127.0.0.1:6379 default.
func TestEmptyAddressDisables(t *testing.T) {
	tests := []struct {
		give         string
		wantAddress  string
		wantDisabled bool
	}{
		{"redis {\n key_prefix gw:\n}", "", false},
		{"redis", "", false},
		{"redis {\n address\n}", "", true},
		{"redis {\n address \"\"\n password {env.RESTGATE_REDIS_PASSWORD}\n}", "", true},
		{"redis {\n address 10.0.0.5:6379\n}", "10.0.0.5:6379", false},
		{"redis 10.0.0.5:6379 {\n address\n}", "", true},
	}
	for _, tt := range tests {
		v, err := parseGlobalOption(caddyfile.NewTestDispenser(tt.give), nil)
		if err != nil {
			t.Errorf("%q: %v", tt.give, err)
			continue
		}
		var a App
		if err := json.Unmarshal(v.(httpcaddyfile.App).Value, &a); err != nil {
			t.Fatal(err)
		}
		if a.Address != tt.wantAddress || a.Disabled != tt.wantDisabled {
			t.Errorf("%q: address %q disabled %v, want %q %v", tt.give, a.Address, a.Disabled, tt.wantAddress, tt.wantDisabled)
		}
	}
}
