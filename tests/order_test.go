package tests

import (
	"errors"
	"os/exec"
	"regexp"
	"strings"
	"testing"
)

// TestOrderIsChecked: `restgate validate` refuses a configuration whose
// restgate handlers run out of the order they depend on, where the
// Caddyfile's own ordering cannot help (a `route` block keeps its written
// order; a handler moved into a `handle` runs after the site's level), and
// says what to change; the same handlers in the right order load.
func TestOrderIsChecked(t *testing.T) {
	site := func(block string) string {
		return `{
	admin off
	skip_install_trust
	storage file_system {$RESTGATE_DATA}/caddy
	http_port 18080
	https_port 18443
	restgate
}

https://api.localhost:18443 {
	tls internal
	` + block + `
	reverse_proxy 127.0.0.1:9
}
`
	}
	const (
		front = "api_errors {\n\t\t\trequire_auth\n\t\t}\n\t\t"
		auth  = "api_auth {\n\t\t\tkeys_file {$RESTGATE_DATA}/api-keys.yaml\n\t\t}\n\t\t"
	)
	// the default Caddyfile with api_auth moved into the resources' handle
	defaultCfg := repoFile(t, "Caddyfile")
	authBlock := regexp.MustCompile(`(?s)\n\tapi_auth \{\n.*?\n\t\}\n`).FindString(defaultCfg)
	if authBlock == "" || !strings.Contains(defaultCfg, "\thandle /v1/* {\n") {
		t.Fatal("the default Caddyfile changed: no site-level api_auth or handle /v1/*")
	}
	moved := strings.Replace(strings.Replace(defaultCfg, authBlock, "\n", 1),
		"\thandle /v1/* {\n", "\thandle /v1/* {"+strings.ReplaceAll(authBlock, "\n\t", "\n\t\t"), 1)

	tests := []struct {
		name  string
		cfg   string
		wants []*regexp.Regexp // in the refusal; none: it loads
	}{
		{"a route block in the request path's order", site("route {\n\t\t" + front + auth + "api_etag\n\t}"), nil},
		{"a route block with api_errors last", site("route {\n\t\t" + auth + "api_etag\n\t\t" + front + "}"), []*regexp.Regexp{
			regexp.MustCompile(regexp.QuoteMeta(`api_auth runs before api_errors on srv0 route "host api.localhost": api_errors must be outermost`) + `.*` +
				regexp.QuoteMeta(`; put api_auth after api_errors (at the site's level the Caddyfile orders them for you)`)),
			regexp.MustCompile(regexp.QuoteMeta(`api_etag runs before api_errors on srv0 route "host api.localhost"`)),
		}},
		{"the same directives at the site's level", site(auth + "api_etag\n\t" + strings.ReplaceAll(front, "\t\t", "\t")), nil},
		{"the default Caddyfile with api_auth moved into a handle", moved, []*regexp.Regexp{
			regexp.MustCompile(`api_rate_limit runs before api_auth on srv\d+ route "host api.localhost → path /v1/\*": it keys on the principal api_auth sets`),
			regexp.MustCompile(`api_etag runs before api_auth on srv\d+ route "host api.localhost → path /v1/\*": its cache could answer a request api_auth would refuse; put api_etag after api_auth`),
			regexp.MustCompile(`api_idempotency runs before api_auth on srv\d+ route "host api.localhost → path /v1/\*"`),
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, err := validateCaddyfile(t, tt.cfg)
			out = strings.NewReplacer(`\"`, `"`, `\t`, "\t").Replace(out) // the log line's JSON string
			if len(tt.wants) == 0 {
				if err != nil {
					t.Fatalf("validate: %v\n%s", err, out)
				}
				return
			}
			var exit *exec.ExitError
			if !errors.As(err, &exit) || exit.ExitCode() == 0 {
				t.Fatalf("validate = %v, want a non-zero exit:\n%s", err, out)
			}
			for _, want := range append(tt.wants, regexp.MustCompile(`refusing this configuration: restgate's handlers run out of the order they depend on`)) {
				if !want.MatchString(out) {
					t.Errorf("the refusal does not match %s:\n%s", want, out)
				}
			}
		})
	}
}
