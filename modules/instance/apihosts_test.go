package instance

import (
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/fileserver"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/headers"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
	"go.uber.org/zap"

	"github.com/restgate/restgate/modules/apiauth"
	"github.com/restgate/restgate/modules/problem"
)

// site is a top-level route as the Caddyfile adapts a site block: its
// address's host and path as matchers, its directives in a subroute.
func site(host, path string, handlers ...caddyhttp.MiddlewareHandler) caddyhttp.Route {
	set := caddyhttp.MatcherSet{}
	if host != "" {
		set = append(set, caddyhttp.MatchHost{host})
	}
	if path != "" {
		set = append(set, caddyhttp.MatchPath{path})
	}
	r := caddyhttp.Route{Terminal: true, Handlers: []caddyhttp.MiddlewareHandler{
		&caddyhttp.Subroute{Routes: caddyhttp.RouteList{{Handlers: handlers}}},
	}}
	if len(set) > 0 {
		r.MatcherSets = caddyhttp.MatcherSets{set}
	}
	return r
}

// apiSite is the default Caddyfile's API site, chain first.
func apiSiteRoute(host, path string) caddyhttp.Route {
	return site(host, path, &problem.Handler{RequireAuth: true}, &apiauth.Handler{}, &reverseproxy.Handler{})
}

func servers(routes map[string]caddyhttp.RouteList) *caddyhttp.App {
	app := &caddyhttp.App{Servers: map[string]*caddyhttp.Server{}}
	for name, rs := range routes {
		app.Servers[name] = &caddyhttp.Server{Listen: []string{":" + name}, Routes: rs}
	}
	return app
}

func TestBypassRoutes(t *testing.T) {
	proxy := &reverseproxy.Handler{}
	redirect := caddyhttp.StaticResponse{StatusCode: "308"} // as automatic HTTPS makes it
	tests := []struct {
		name   string
		routes map[string]caddyhttp.RouteList // by listen port
		want   []string                       // "route|handler|API host"
	}{
		{"a second site block for the API host with a path", map[string]caddyhttp.RouteList{
			"8443": {site("api.localhost", "/forgotten/*", proxy), apiSiteRoute("api.localhost", "")},
		}, []string{"host api.localhost path /forgotten/*|reverse_proxy|api.localhost"}},
		{"the API host on another port", map[string]caddyhttp.RouteList{
			"8443": {apiSiteRoute("api.localhost", "")},
			"8080": {site("API.localhost", "", &fileserver.FileServer{})},
		}, []string{"host API.localhost|file_server|api.localhost"}},
		{"a wildcard site on another port", map[string]caddyhttp.RouteList{
			"8443": {apiSiteRoute("api.localhost", "")},
			"8080": {site("*.localhost", "", &caddyhttp.StaticResponse{Body: "hi"})},
		}, []string{"host *.localhost|respond|api.localhost"}},
		{"a catch-all site on the API site's port, which takes every request for its host", map[string]caddyhttp.RouteList{
			"8443": {apiSiteRoute("api.localhost", ""), site("", "", proxy)},
		}, nil},
		{"a catch-all site answering what an API site with a path leaves", map[string]caddyhttp.RouteList{
			"8443": {apiSiteRoute("api.localhost", "/v1/*"), site("", "", proxy)},
		}, []string{"|reverse_proxy|api.localhost"}},
		{"a catch-all site with a path before a catch-all API site", map[string]caddyhttp.RouteList{
			"8443": {site("", "/forgotten/*", proxy), apiSiteRoute("", "")},
		}, []string{"path /forgotten/*|reverse_proxy|"}},
		{"a catch-all site on another port (a test backend)", map[string]caddyhttp.RouteList{
			"8443": {apiSiteRoute("api.localhost", "")},
			"9100": {site("", "", &caddyhttp.StaticResponse{Body: "backend"})},
		}, nil},
		{"another host", map[string]caddyhttp.RouteList{
			"8443": {site("www.localhost", "/x/*", proxy), apiSiteRoute("api.localhost", "")},
		}, nil},
		{"redirects, errors, aborts and headers only", map[string]caddyhttp.RouteList{
			"8443": {apiSiteRoute("api.localhost", "")},
			"80": {
				site("api.localhost", "/a", redirect),
				site("api.localhost", "/b", &caddyhttp.StaticError{StatusCode: "403"}),
				site("api.localhost", "/c", &headers.Handler{}, &caddyhttp.StaticResponse{Abort: true}),
			},
		}, nil},
		{"a respond with a placeholder status", map[string]caddyhttp.RouteList{
			"8443": {apiSiteRoute("api.localhost", "")},
			"80":   {site("api.localhost", "", &caddyhttp.StaticResponse{StatusCode: "{http.vars.s}"})},
		}, []string{"host api.localhost|respond|api.localhost"}},
		{"a second site block with its own api_auth", map[string]caddyhttp.RouteList{
			"8443": {site("api.localhost", "/other/*", &apiauth.Handler{}, proxy), apiSiteRoute("api.localhost", "")},
		}, nil},
		{"a second site block with api_errors only", map[string]caddyhttp.RouteList{
			"8443": {site("api.localhost", "/other/*", &problem.Handler{}, proxy), apiSiteRoute("api.localhost", "")},
		}, []string{"host api.localhost path /other/*|reverse_proxy|api.localhost"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got []string
			for _, b := range bypassRoutes(servers(tt.routes)) {
				got = append(got, b.where+"|"+b.handler+"|"+b.apiHost)
			}
			if strings.Join(got, "\n") != strings.Join(tt.want, "\n") {
				t.Errorf("bypassRoutes() = %q, want %q", got, tt.want)
			}
		})
	}
	if err := bypassError(bypassRoutes(servers(tests[0].routes))); err == nil ||
		!strings.Contains(err.Error(), "host api.localhost path /forgotten/* on server 8443 (listening on :8443) serves with reverse_proxy") {
		t.Errorf("bypassError() = %v", err)
	}
}

func TestSetUpstreamTimeouts(t *testing.T) {
	bare := &reverseproxy.HTTPTransport{}
	if err := bare.Provision(caddy.Context{}); err != nil {
		t.Fatal(err)
	}
	own := &reverseproxy.HTTPTransport{ResponseHeaderTimeout: caddy.Duration(5 * time.Second)}
	if err := own.Provision(caddy.Context{}); err != nil {
		t.Fatal(err)
	}
	outside := &reverseproxy.HTTPTransport{}
	if err := outside.Provision(caddy.Context{}); err != nil {
		t.Fatal(err)
	}
	app := servers(map[string]caddyhttp.RouteList{
		"8443": {site("api.localhost", "", &problem.Handler{}, &reverseproxy.Handler{Transport: bare}, &reverseproxy.Handler{Transport: own})},
		"9100": {site("", "", &reverseproxy.Handler{Transport: outside})},
	})
	setUpstreamTimeouts(app, 1500*time.Millisecond, zap.NewNop())
	tests := []struct {
		name string
		give *reverseproxy.HTTPTransport
		want time.Duration
	}{
		{"an API site's proxy without a timeout", bare, 1500 * time.Millisecond},
		{"an API site's proxy with its own", own, 5 * time.Second},
		{"a proxy outside the API sites", outside, 0},
	}
	for _, tt := range tests {
		if got := tt.give.Transport.ResponseHeaderTimeout; got != tt.want || time.Duration(tt.give.ResponseHeaderTimeout) != tt.want {
			t.Errorf("%s: response-header timeout %v (config %v), want %v", tt.name, got, time.Duration(tt.give.ResponseHeaderTimeout), tt.want)
		}
	}
}
