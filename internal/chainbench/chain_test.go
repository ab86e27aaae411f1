package chainbench

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	_ "github.com/caddyserver/caddy/v2/modules/standard"

	_ "github.com/restgate/restgate"
	"github.com/restgate/restgate/internal/testnet"
)

// doc is the upstream's 1 KiB JSON document, as in `make bench`.
var doc = Doc

func init() { caddy.RegisterModule(memoryTransport{}) }

// started is the upstream's Date: when the test binary started, so that
// /cached stays fresh (max-age=3600) for as long as any benchmark runs.
var started = time.Now().UTC().Format(http.TimeFormat)

// memoryTransport answers every upstream request with doc, as the bench
// backend does (/cached adds an hour of freshness), without a connection.
type memoryTransport struct{}

func (memoryTransport) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.reverse_proxy.transport.bench_memory",
		New: func() caddy.Module { return new(memoryTransport) },
	}
}

func (memoryTransport) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next()
	return nil
}

func (memoryTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.Body != nil {
		io.Copy(io.Discard, r.Body)
		r.Body.Close()
	}
	h := http.Header{
		"Content-Type":   {"application/json"},
		"Content-Length": {"1024"},
		"Date":           {started},
	}
	if r.URL.Path == "/cached" {
		h["Cache-Control"] = []string{"max-age=3600"}
	}
	return &http.Response{
		Status: "200 OK", StatusCode: http.StatusOK,
		Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
		Header: h, Body: io.NopCloser(bytes.NewReader(doc)), ContentLength: int64(len(doc)),
		Request: r,
	}, nil
}

// The default chain's handlers, in order, as each site adds them.
var chain = []struct{ host, handler string }{
	{"errors", "api_errors\n"},
	{"ip", "api_rate_limit_ip {\n zone per-ip 1000000000/1s\n}\n"},
	{"auth", "api_auth {\n keys_file {keys}\n no_env\n}\n"},
	{"user", "api_rate_limit {\n zone per-user 1000000000/1s\n}\n"},
	{"full", "api_etag\n"},
}

// The sites, one per host on one server: bare, then each adding the next
// handler of the chain; cache is the full chain with api_etag's cache. The
// default Caddyfile's sites (defaultSites) are added once it is read.
var sites = func() []site {
	out := []site{{"bare", ""}}
	handlers := ""
	for _, c := range chain {
		handlers += c.handler
		out = append(out, site{c.host, handlers})
	}
	cache := strings.TrimSuffix(handlers, chain[len(chain)-1].handler) + "api_etag {\n cache\n}\n"
	return append(out, site{"cache", cache})
}()

type site struct{ host, handlers string }

// shippedEnv is what the benchmarks set of the default Caddyfile's
// environment: limits that never refuse, and the data directory (its
// api-keys.yaml holds the benchmark's keys).
func shippedEnv(dir string) map[string]string {
	return map[string]string{
		"RESTGATE_RATE_PER_IP":   "1000000000/1s",
		"RESTGATE_RATE_PER_USER": "1000000000/1s",
		"RESTGATE_DATA":          dir,
	}
}

// defaultSites are the default Caddyfile's chain as shipped, read from the
// file (its access log to a file, through api_redact; the request id
// appended to every line; HSTS; api_errors with require_auth; api_cors;
// both limits; api_auth; api_idempotency; api_etag's cache): default is
// the whole chain, default_caddy Caddy's part of it alone (the same access
// log and HSTS), and one site per restgate handler alone (h_<directive>),
// each in front of the site's upstream. Handler sites answer from `respond`
// (see handlerTerminal); api_errors alone runs without require_auth, which
// refuses every request no api_auth let through.
func defaultSites(s Shipped) []site {
	out := []site{{"default", s.Chain}, {"defaultcaddy", s.Caddy}}
	for _, p := range s.Parts {
		if !strings.HasPrefix(p.Directive, "api_") {
			continue
		}
		text := p.Text
		if p.Directive == "api_errors" {
			text = "api_errors\n"
		}
		out = append(out, site{"h-" + strings.ReplaceAll(p.Directive, "_", "-"), text})
	}
	return out
}

// handlerTerminal answers the handler sites from memory, as Caddy's
// `respond` does: /cached with an hour of freshness.
const handlerTerminal = "handle /cached {\nheader Cache-Control max-age=3600\nheader Content-Type application/json\nrespond `%[1]s` 200\n}\nheader Content-Type application/json\nrespond `%[1]s` 200\n"

const keyCount = 10_000

// caddyfilePath is the Caddyfile whose API chain the default sites run: the
// repository's, unless a developer measures an edit of it
// (go test -bench . ./internal/chainbench -args -caddyfile /tmp/Caddyfile).
var caddyfilePath = flag.String("caddyfile", filepath.Join("..", "..", "Caddyfile"), "the default Caddyfile")

var (
	loadOnce sync.Once
	server   *caddyhttp.Server
	port     int // the server's port, which the requests' Host carries as a client's would
	// logged are the servers of the sites with an access log (the default
	// Caddyfile's, host default…), one each, on their own ports: Caddy's
	// logging setup would otherwise cost every site of a server, logged or
	// not, and every request would pass each site's logger
	logged   = map[string]*caddyhttp.Server{}
	logPorts = map[string]int{}
	dir      string // the config's temporary directory (keys, storage)
	loadErr  error
	// shippedSites are the sites read from the default Caddyfile
	shippedSites []site
)

// TestMain stops the config a test or benchmark loaded and removes its
// directory.
func TestMain(m *testing.M) {
	code := m.Run()
	if server != nil {
		caddy.Stop()
	}
	if dir != "" {
		os.RemoveAll(dir)
	}
	os.Exit(code)
}

// load starts one Caddy config with every site (and a `respond` site, the
// ceiling of a Caddy handler chain) and returns its HTTP server. The config
// stays loaded for the package's benchmarks.
func load(tb testing.TB) *caddyhttp.Server {
	loadOnce.Do(func() { server, loadErr = start() })
	if loadErr != nil {
		tb.Fatal(loadErr)
	}
	return server
}

func start() (*caddyhttp.Server, error) {
	var err error
	if dir, err = os.MkdirTemp("", "restgate-chainbench-"); err != nil {
		return nil, err
	}
	var keys strings.Builder
	keys.WriteString("keys:\n")
	for i := range keyCount {
		sum := sha256.Sum256([]byte("rg_bench_key_" + strconv.Itoa(i)))
		fmt.Fprintf(&keys, "  - user: user%d\n    sha256: %s\n    scopes: [read, write]\n", i, hex.EncodeToString(sum[:]))
	}
	keysFile := filepath.Join(dir, "api-keys.yaml")
	if err := os.WriteFile(keysFile, []byte(keys.String()), 0o600); err != nil {
		return nil, err
	}
	if port, err = testnet.FreePort(); err != nil {
		return nil, err
	}
	for _, h := range []string{"default", "defaultcaddy", "defaultrespond"} {
		if logPorts[h], err = testnet.FreePort(); err != nil {
			return nil, err
		}
	}
	var cf strings.Builder
	fmt.Fprintf(&cf, "{\n\tadmin off\n\tpersist_config off\n\tskip_install_trust\n\tstorage file_system %s\n\tauto_https off\n\tdefault_bind 127.0.0.1\n\tlog {\n\t\toutput discard\n\t}\n}\n", filepath.Join(dir, "caddy"))
	shipped, err := ReadShipped(*caddyfilePath, shippedEnv(dir), filepath.Join(dir, "access.log"))
	if err != nil {
		return nil, err
	}
	shippedSites = defaultSites(shipped)
	for _, s := range append(sites, shippedSites...) {
		terminal := "reverse_proxy 127.0.0.1:1 {\n transport bench_memory\n}\n"
		if strings.HasPrefix(s.host, "h-") {
			terminal = fmt.Sprintf(handlerTerminal, doc)
		}
		fmt.Fprintf(&cf, "http://%s.test:%d {\n%s%s}\n", s.host, portFor(s.host), strings.ReplaceAll(s.handlers, "{keys}", keysFile), terminal)
	}
	fmt.Fprintf(&cf, "http://defaultrespond.test:%d {\n%sheader Content-Type application/json\nrespond `%s` 200\n}\n", portFor("defaultrespond"), shipped.Caddy, doc)
	fmt.Fprintf(&cf, "http://respond.test:%d {\nheader Content-Type application/json\nrespond `%s` 200\n}\n", port, doc)

	cfg, warnings, err := caddyconfig.GetAdapter("caddyfile").Adapt(caddyfile.Format([]byte(cf.String())), map[string]any{"filename": "Caddyfile"})
	if err != nil {
		return nil, fmt.Errorf("adapting: %v", err)
	}
	if len(warnings) > 0 {
		return nil, fmt.Errorf("adapting: %v", warnings)
	}
	if err := caddy.Load(cfg, true); err != nil {
		return nil, fmt.Errorf("loading: %v", err)
	}
	app, err := caddy.ActiveContext().App("http")
	if err != nil {
		return nil, err
	}
	var plain *caddyhttp.Server
	for _, srv := range app.(*caddyhttp.App).Servers {
		host := ""
		for h, p := range logPorts {
			if slices.ContainsFunc(srv.Listen, func(a string) bool { return strings.HasSuffix(a, ":"+strconv.Itoa(p)) }) {
				host = h
			}
		}
		if host != "" {
			logged[host] = srv
		} else {
			plain = srv
		}
	}
	if plain == nil || len(logged) != len(logPorts) {
		return nil, fmt.Errorf("the config lacks a server: %v", app.(*caddyhttp.App).Servers)
	}
	return plain, nil
}

// portFor is the port of host's server.
func portFor(host string) int {
	if p, ok := logPorts[host]; ok {
		return p
	}
	return port
}

// discard is the client's end: headers and a status, the body counted. It
// takes write deadlines, as a server's connection does.
type discard struct {
	header http.Header
	status int
	n      int
}

func (w *discard) Header() http.Header              { return w.header }
func (w *discard) SetWriteDeadline(time.Time) error { return nil }
func (w *discard) Flush()                           {}

// WriteHeader serializes the header fields as net/http would (every
// field line a handler adds costs its share).
func (w *discard) WriteHeader(status int) {
	if w.status == 0 {
		w.status = status
		w.header.Write(io.Discard)
	}
}
func (w *discard) Write(p []byte) (int, error) {
	if w.status == 0 {
		w.WriteHeader(http.StatusOK)
	}
	w.n += len(p)
	return len(p), nil
}

// serve sends one request for path to host through srv and checks that the
// whole document came back.
func serve(tb testing.TB, srv *caddyhttp.Server, host, path string) *discard {
	if l, ok := logged[host]; ok {
		srv = l
	}
	r, err := http.NewRequest(http.MethodGet, "http://"+host+".test:"+strconv.Itoa(portFor(host))+path, nil)
	if err != nil {
		tb.Fatal(err)
	}
	r.RemoteAddr = "127.0.0.1:40000"
	r.RequestURI = path
	r.Header["X-Api-Key"] = []string{"rg_bench_key_0"}
	r.Header["User-Agent"] = []string{"wrk"}
	w := &discard{header: make(http.Header)}
	srv.ServeHTTP(w, r)
	if w.status != http.StatusOK || w.n != len(doc) {
		tb.Fatalf("%s%s: status %d, %d bytes; want 200 and %d", host, path, w.status, w.n, len(doc))
	}
	return w
}

// TestSites proves each site answers as the benchmarks expect: the whole
// document, with the headers of the handlers it adds.
func TestSites(t *testing.T) {
	srv := load(t)
	logged, _ := os.ReadFile(filepath.Join(dir, "access.log"))
	for _, tc := range []struct {
		host, path string
		want       []string // headers the site's handlers add
		absent     []string
	}{
		{"bare", "/doc", nil, []string{"Etag", "X-Request-Id", "Ratelimit"}},
		{"errors", "/doc", []string{"X-Request-Id"}, []string{"Ratelimit"}},
		{"ip", "/doc", []string{"X-Request-Id", "Ratelimit"}, []string{"Etag"}},
		{"full", "/doc", []string{"X-Request-Id", "Ratelimit", "Etag"}, []string{"Cache-Status"}},
		{"cache", "/cached", []string{"X-Request-Id", "Ratelimit", "Etag", "Cache-Status"}, nil},
		{"default", "/doc", []string{"X-Request-Id", "Ratelimit", "Etag", "Strict-Transport-Security", "Vary"}, nil},
		{"default", "/cached", []string{"X-Request-Id", "Ratelimit", "Etag", "Strict-Transport-Security", "Cache-Status"}, nil},
		{"respond", "/doc", nil, []string{"X-Request-Id"}},
	} {
		w := serve(t, srv, tc.host, tc.path)
		for _, h := range tc.want {
			if w.header.Get(h) == "" {
				t.Errorf("%s: no %s header in %v", tc.host, h, w.header)
			}
		}
		for _, h := range tc.absent {
			if w.header.Get(h) != "" {
				t.Errorf("%s: unexpected %s header in %v", tc.host, h, w.header)
			}
		}
	}
	// the cache sites answer a repeat from the cache
	for _, host := range []string{"cache", "default"} {
		if got := serve(t, srv, host, "/cached").header.Get("Cache-Status"); got != "restgate; hit" {
			t.Errorf("%s: Cache-Status %q on a repeat, want a hit", host, got)
		}
	}
	// the default site's access log has a line per request, the key redacted
	log, err := os.ReadFile(filepath.Join(dir, "access.log"))
	if err != nil {
		t.Fatal(err)
	}
	log = log[len(logged):]
	if n := bytes.Count(log, []byte("\n")); n != 3 {
		t.Errorf("access log: %d lines, want 3 (one per request to the default site):\n%s", n, log)
	}
	if bytes.Contains(log, []byte("rg_bench_key_0")) || !bytes.Contains(log, []byte(`"request_id":`)) {
		t.Errorf("access log: the key is not redacted or the request id is missing:\n%s", log)
	}
}

// BenchmarkChain is one request through each site; sub-benchmarks are
// named by the last handler the site adds (bare: reverse_proxy alone;
// full: the default chain on a cache miss; cache_hit: the same chain with
// the cache answering; default_miss and default_hit: the default
// Caddyfile's chain as shipped, access log and HSTS included, on a miss and
// on a cache hit; default_caddy_miss and default_caddy_hit: bare Caddy with
// the same access log and HSTS, reverse_proxy and respond; respond:
// Caddy's own static response).
func BenchmarkChain(b *testing.B) {
	srv := load(b)
	for _, tc := range []struct{ name, host, path string }{
		{"bare", "bare", "/doc"},
		{"errors", "errors", "/doc"},
		{"ip_limit", "ip", "/doc"},
		{"auth", "auth", "/doc"},
		{"user_limit", "user", "/doc"},
		{"full", "full", "/doc"},
		{"cache_hit", "cache", "/cached"},
		{"default_miss", "default", "/doc"},
		{"default_hit", "default", "/cached"},
		{"default_caddy_miss", "defaultcaddy", "/doc"},
		{"default_caddy_hit", "defaultrespond", "/doc"},
		{"respond", "respond", "/doc"},
	} {
		b.Run(tc.name, func(b *testing.B) {
			serve(b, srv, tc.host, tc.path) // warm: keys loaded, cache filled
			b.ReportAllocs()
			for b.Loop() {
				serve(b, srv, tc.host, tc.path)
			}
		})
	}
}

// BenchmarkHandler is one request through each restgate handler of the
// default Caddyfile alone, configured as shipped, in front of `respond`
// (api_etag twice: a miss that computes the ETag, and a hit from its
// cache); respond is the same response without a handler, the baseline.
func BenchmarkHandler(b *testing.B) {
	srv := load(b)
	cases := []struct{ name, host, path string }{{"respond", "respond", "/doc"}}
	for _, s := range shippedSites {
		d, ok := strings.CutPrefix(s.host, "h-")
		if !ok {
			continue
		}
		name := strings.ReplaceAll(d, "-", "_")
		if name == "api_etag" {
			cases = append(cases, struct{ name, host, path string }{name + "_miss", s.host, "/doc"}, struct{ name, host, path string }{name + "_hit", s.host, "/cached"})
			continue
		}
		cases = append(cases, struct{ name, host, path string }{name, s.host, "/doc"})
	}
	for _, tc := range cases {
		b.Run(tc.name, func(b *testing.B) {
			serve(b, srv, tc.host, tc.path) // warm: keys loaded, cache filled
			b.ReportAllocs()
			for b.Loop() {
				serve(b, srv, tc.host, tc.path)
			}
		})
	}
}
