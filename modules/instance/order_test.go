package instance_test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	_ "github.com/caddyserver/caddy/v2/modules/standard"

	_ "github.com/restgate/restgate/caddyfile"
)

// Handlers as JSON, each with what it needs to provision.
const (
	jEncode  = `{"handler":"encode","encodings":{"gzip":{}}}`
	jErrors  = `{"handler":"api_errors","require_auth":true}`
	jCORS    = `{"handler":"api_cors","origins":["http://localhost:3000"]}`
	jLimitIP = `{"handler":"api_rate_limit","share_refunds":true,"zones":[{"name":"per-ip","key":"{client_ip}","events":100}]}`
	jAuth    = `{"handler":"api_auth","development":true}`
	jLimit   = `{"handler":"api_rate_limit","zones":[{"name":"per-user","events":100}]}`
	jIdem    = `{"handler":"api_idempotency"}`
	jETag    = `{"handler":"api_etag"}`
	jProxy   = `{"handler":"reverse_proxy","upstreams":[{"dial":"127.0.0.1:9"}]}`
)

// chain is a route list, as JSON, with these handlers in one route.
func chain(handlers ...string) string {
	return `[{"handle":[` + strings.Join(handlers, ",") + `]}]`
}

// sub is a subroute handler (what `handle` and `route` adapt to) holding routes.
func sub(routes string) string { return `{"handler":"subroute","routes":` + routes + `}` }

// at is a route with a path matcher.
func at(path string, handlers ...string) string {
	return `{"match":[{"path":["` + path + `"]}],"handle":[` + strings.Join(handlers, ",") + `]}`
}

// site is a server whose one route, for api.localhost, holds routes (as
// the Caddyfile adapts a site block).
func site(routes string) string {
	return `{"listen":["127.0.0.1:0"],"automatic_https":{"disable":true},"routes":[` +
		`{"match":[{"host":["api.localhost"]}],"handle":[` + sub(routes) + `],"terminal":true}]}`
}

// load provisions a configuration with the restgate app, as `restgate
// validate` does, and returns its error.
func load(t *testing.T, cfg []byte) error {
	t.Helper()
	var c caddy.Config
	if err := json.Unmarshal(cfg, &c); err != nil {
		t.Fatalf("%v\n%s", err, cfg)
	}
	return caddy.Validate(&c)
}

func loadServers(t *testing.T, servers string) error {
	t.Helper()
	t.Setenv("RESTGATE_API_KEY", "")
	t.Setenv("RESTGATE_API_KEYS_FILE", "")
	storage := `{"module":"file_system","root":` + quote(t.TempDir()) + `}`
	return load(t, []byte(`{"admin":{"disabled":true},"storage":`+storage+`,"apps":{"restgate":{},"http":{"servers":`+servers+`}}}`))
}

func quote(s string) string { b, _ := json.Marshal(s); return string(b) }

// TestOrder: each rule's good order loads; the bad one is refused, with
// the server, the route and what to change.
func TestOrder(t *testing.T) {
	tests := []struct {
		name    string
		servers string
		want    []string // in the refusal, in order; none: it loads
	}{
		{"the default chain", `{"srv0":` + site(chain(jEncode, jErrors, jCORS, jLimitIP, jAuth, jLimit, jIdem, jETag, jProxy)) + `}`, nil},
		{"the default chain, one route a handler", `{"srv0":` + site(`[{"handle":[`+jErrors+`]},{"handle":[`+jCORS+`]},{"handle":[`+jLimitIP+`]},{"handle":[`+jAuth+`]},{"handle":[`+jLimit+`]},{"handle":[`+jIdem+`]},{"handle":[`+jETag+`]},{"handle":[`+jProxy+`]}]`) + `}`, nil},
		{"absent handlers impose nothing", `{"srv0":` + site(chain(jErrors, jAuth, jProxy)) + `}`, nil},
		{"api_auth in one handle, the rest at the site's level", `{"srv0":` + site(`[{"handle":[`+jErrors+`,`+jCORS+`]},`+at("/v1/*", sub(chain(jAuth, jETag, jProxy)))+`]`) + `}`, nil},

		{"encode inside api_errors", `{"srv0":` + site(chain(jErrors, jEncode, jAuth, jProxy)) + `}`,
			[]string{`api_errors runs before encode on srv0 route "host api.localhost": api_errors reads a backend's error body`, "put api_errors after encode (at the site's level the Caddyfile orders them for you)"}},
		{"encode inside api_etag", `{"srv0":` + site(chain(jErrors, jAuth, jETag, jEncode, jProxy)) + `}`,
			[]string{`api_etag runs before encode on srv0 route "host api.localhost": api_etag would hash and cache compressed bytes`, "put api_etag after encode"}},
		{"api_errors inside api_auth", `{"srv0":` + site(chain(jAuth, jErrors, jProxy)) + `}`,
			[]string{`api_auth runs before api_errors on srv0 route "host api.localhost": api_errors must be outermost`, "put api_auth after api_errors"}},
		{"api_errors in a handle, api_auth at the site's level", `{"srv0":` + site(`[{"handle":[`+jAuth+`]},`+at("/v1/*", sub(chain(jErrors, jProxy)))+`]`) + `}`,
			[]string{`api_auth runs before api_errors on srv0 route "host api.localhost → path /v1/*"`}},
		{"a handle that api_errors does not cover", `{"srv0":` + site(`[`+at("/v1/*", sub(chain(jErrors, jAuth, jProxy)))+`,{"handle":[`+sub(chain(jAuth, jETag, jProxy))+`]}]`) + `}`,
			[]string{`api_auth runs without api_errors before it on srv0 route "host api.localhost": api_errors must be outermost`, "put api_errors before api_auth, at the site's level",
				`api_etag runs without api_errors before it on srv0 route "host api.localhost"`}},
		{"api_cors after a limit", `{"srv0":` + site(chain(jErrors, jLimitIP, jCORS, jAuth, jProxy)) + `}`,
			[]string{`api_rate_limit_ip runs before api_cors on srv0 route "host api.localhost": api_cors answers preflights`, "put api_rate_limit_ip after api_cors"}},
		{"the per-IP limit after api_auth", `{"srv0":` + site(chain(jErrors, jAuth, jLimitIP, jProxy)) + `}`,
			[]string{`api_auth runs before api_rate_limit_ip on srv0 route "host api.localhost": the per-IP limit throttles guessed keys`, "put api_auth after api_rate_limit_ip (at the site's level the Caddyfile orders them for you); a limit that keys on the principal, after api_auth, is api_rate_limit (without share_refunds)"}},
		{"the per-IP limit after the per-principal one", `{"srv0":` + site(chain(jErrors, jLimit, jLimitIP, jProxy)) + `}`,
			[]string{`api_rate_limit runs before api_rate_limit_ip on srv0 route "host api.localhost": api_rate_limit refunds`}},
		{"the per-principal limit before api_auth", `{"srv0":` + site(chain(jErrors, jLimit, jAuth, jProxy)) + `}`,
			[]string{`api_rate_limit runs before api_auth on srv0 route "host api.localhost": it keys on the principal`, "put api_rate_limit after api_auth (at the site's level the Caddyfile orders them for you); a limit meant for before api_auth is api_rate_limit_ip (share_refunds in JSON)"}},
		{"api_idempotency before api_auth", `{"srv0":` + site(chain(jErrors, jIdem, jAuth, jProxy)) + `}`,
			[]string{`api_idempotency runs before api_auth on srv0 route "host api.localhost": it scopes each Idempotency-Key`}},
		{"api_etag before api_auth, in a matched route", `{"srv0":` + site(`[{"handle":[`+jErrors+`]},`+at("/v1/*", jETag)+`,{"handle":[`+jAuth+`,`+jProxy+`]}]`) + `}`,
			[]string{`api_etag runs before api_auth on srv0 route "host api.localhost → path /v1/*": its cache could answer a request api_auth would refuse; put api_etag after api_auth (at the site's level the Caddyfile orders them for you)`}},
		{"api_etag before a limit", `{"srv0":` + site(chain(jErrors, jAuth, jETag, jLimit, jProxy)) + `}`,
			[]string{`api_etag runs before api_rate_limit on srv0 route "host api.localhost": a request a limit refuses must never claim`}},
		{"api_idempotency before a limit", `{"srv0":` + site(chain(jErrors, jAuth, jIdem, jLimit, jProxy)) + `}`,
			[]string{`api_idempotency runs before api_rate_limit on srv0 route "host api.localhost"`}},
		{"api_etag before api_idempotency", `{"srv0":` + site(chain(jErrors, jAuth, jETag, jIdem, jProxy)) + `}`,
			[]string{`api_etag runs before api_idempotency on srv0 route "host api.localhost": api_idempotency answers a retry`}},

		{"a site without api_errors", `{"srv0":` + site(chain(jCORS, jAuth, jETag, jProxy)) + `}`, nil},
		{"a handler that answers ends the way", `{"srv0":` + site(`[{"handle":[`+jErrors+`]},`+at("/health", jETag, `{"handler":"static_response","body":"ok"}`)+`,{"handle":[`+jAuth+`,`+jProxy+`]}]`) + `}`, nil},
		{"a group lets one route of it run", `{"srv0":` + site(`[{"handle":[`+jErrors+`]},{"group":"g","match":[{"path":["/a"]}],"handle":[`+jETag+`]},{"group":"g","handle":[`+jAuth+`,`+jProxy+`]}]`) + `}`, nil},
		{"a terminal route ends the way", `{"srv0":` + site(`[{"handle":[`+jErrors+`]},{"match":[{"path":["/a"]}],"handle":[`+jETag+`],"terminal":true},{"handle":[`+jAuth+`,`+jProxy+`]}]`) + `}`, nil},
		{"api_errors in handle_errors is not in the request chain", `{"srv0":{"listen":["127.0.0.1:0"],"automatic_https":{"disable":true},"routes":[{"handle":[` + sub(chain(jErrors, jAuth, jProxy)) + `]}],"errors":{"routes":[{"handle":[` + jAuth + `,` + jErrors + `]}]}}}`, nil},
		{"a named route that runs api_auth before api_errors", `{"srv0":{"listen":["127.0.0.1:0"],"automatic_https":{"disable":true},"named_routes":{"chain":{"handle":[` + jAuth + `]}},"routes":[{"handle":[{"handler":"invoke","name":"chain"},` + jErrors + `,` + jProxy + `]}]}}`,
			[]string{`api_auth runs before api_errors on srv0 (every request)`}},
		{"top-level routes in the wrong order", `{"srv0":{"listen":["127.0.0.1:0"],"automatic_https":{"disable":true},"routes":[{"handle":[` + jAuth + `]},{"handle":[` + jErrors + `,` + jProxy + `]}]}}`,
			[]string{`api_auth runs before api_errors on srv0 (every request)`}},
		{"a site without api_errors or api_auth is not checked", `{"srv0":` + site(chain(jETag, jEncode, jProxy)) + `}`, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := loadServers(t, tt.servers)
			if len(tt.want) == 0 {
				if err != nil {
					t.Fatalf("load() = %v, want no error", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("load() = nil, want a refusal with %q", tt.want)
			}
			msg, rest := err.Error(), err.Error()
			for _, want := range append([]string{"refusing this configuration: restgate's handlers run out of the order they depend on"}, tt.want...) {
				i := strings.Index(rest, want)
				if i < 0 {
					t.Fatalf("load() = %s\nwant it to say, in order, %q", msg, want)
				}
				rest = rest[i+len(want):]
			}
		})
	}
}

// TestOrderCaddyfileRoute: a `route` block keeps its written order, so
// the Caddyfile's own ordering does not help there.
func TestOrderCaddyfileRoute(t *testing.T) {
	tests := []struct {
		name, block string
		want        string // "": it loads
	}{
		{"route in the request path's order", "route {\n\t\tapi_errors {\n\t\t\trequire_auth\n\t\t}\n\t\tapi_auth {\n\t\t\tdevelopment\n\t\t}\n\t\tapi_etag\n\t}", ""},
		{"route with api_errors last", "route {\n\t\tapi_auth {\n\t\t\tdevelopment\n\t\t}\n\t\tapi_etag\n\t\tapi_errors {\n\t\t\trequire_auth\n\t\t}\n\t}",
			`api_auth runs before api_errors on srv0 route "host api.localhost": api_errors must be outermost`},
		{"the same directives at the site's level", "api_auth {\n\t\tdevelopment\n\t}\n\tapi_etag\n\tapi_errors {\n\t\trequire_auth\n\t}", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := adapt(t, "{\n\tadmin off\n\tstorage file_system "+t.TempDir()+"\n\tauto_https off\n\trestgate\n}\n\nhttp://api.localhost:0 {\n\t"+tt.block+"\n\treverse_proxy 127.0.0.1:9\n}\n")
			err := load(t, cfg)
			switch {
			case tt.want == "" && err != nil:
				t.Fatalf("load() = %v, want no error", err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Fatalf("load() = %v, want an error with %q", err, tt.want)
			}
		})
	}
}

// TestOrderShippedConfigs: the default Caddyfile, the golden adapt inputs
// and deploy/'s Caddyfiles load with the check on.
func TestOrderShippedConfigs(t *testing.T) {
	data := t.TempDir()
	t.Setenv("RESTGATE_DATA", data)
	t.Setenv("RESTGATE_STORAGE", filepath.Join(data, "caddy"))
	t.Setenv("RESTGATE_GATEWAYS", "127.0.0.1:9")
	t.Setenv("RESTGATE_API_KEY", "rg_test_0000000000000000000000000000001:tester")
	files := map[string]string{}
	read := func(path string) string {
		raw, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		return string(raw)
	}
	files["Caddyfile"] = read("../../Caddyfile")
	golden, _ := filepath.Glob("../../caddyfile/testdata/*.caddyfiletest")
	deploy, _ := filepath.Glob("../../deploy/*.caddyfile")
	for _, f := range golden {
		files[f], _, _ = strings.Cut(read(f), "\n----------\n")
	}
	for _, f := range deploy {
		files[f] = read(f)
	}
	if len(golden) == 0 || len(deploy) == 0 {
		t.Fatalf("no golden or deploy Caddyfiles found (%d, %d)", len(golden), len(deploy))
	}
	for name, text := range files {
		t.Run(filepath.Base(name), func(t *testing.T) {
			if err := load(t, withRestgate(t, adapt(t, text))); err != nil {
				t.Errorf("%s: %v", name, err)
			}
		})
	}
}

// withRestgate adds the restgate app (which makes the check) to a
// configuration that lacks it.
func withRestgate(t *testing.T, cfg []byte) []byte {
	t.Helper()
	var c map[string]any
	if err := json.Unmarshal(cfg, &c); err != nil {
		t.Fatal(err)
	}
	apps, _ := c["apps"].(map[string]any)
	if apps == nil {
		apps = map[string]any{}
		c["apps"] = apps
	}
	if _, ok := apps["restgate"]; !ok {
		apps["restgate"] = map[string]any{}
	}
	out, err := json.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func adapt(t *testing.T, text string) []byte {
	t.Helper()
	cfg, warn, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(text), nil)
	if err != nil {
		t.Fatalf("adapt: %v\n%s", err, text)
	}
	for _, w := range warn {
		t.Logf("adapt: %s", w.Message)
	}
	return cfg
}
