package instance

import (
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

// TestGlobalOptionErrors: a repeated or unknown option is refused, never
// silently resolved (a second upstream_timeout used to win unseen).
func TestGlobalOptionErrors(t *testing.T) {
	tests := map[string]struct{ give, want string }{
		"duplicate upstream_timeout": {"restgate {\n upstream_timeout 1s\n upstream_timeout 30s\n}", "duplicate restgate option"},
		"duplicate data_dir":         {"restgate {\n data_dir /a\n data_dir /b\n}", "duplicate restgate option"},
		"unknown option":             {"restgate {\n nope 1\n}", "unrecognized restgate option"},
		"bad duration":               {"restgate {\n upstream_timeout soon\n}", "not a positive duration"},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			_, err := parseGlobalOption(caddyfile.NewTestDispenser(tt.give), nil)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("parseGlobalOption(%q) = %v, want an error with %q", tt.give, err, tt.want)
			}
		})
	}
	if _, err := parseGlobalOption(caddyfile.NewTestDispenser("restgate {\n data_dir /a\n upstream_timeout 2s\n}"), nil); err != nil {
		t.Errorf("a valid block: %v", err)
	}
}
