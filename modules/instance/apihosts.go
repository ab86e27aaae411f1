package instance

import (
	"fmt"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// bypass is a route outside every API site that can answer for an API host
// and serves there without api_auth: a second site block for the API host
// with a path (`https://api.example.com/forgotten/* { reverse_proxy … }`),
// the API host on another port (`http://api.example.com { … }`), or a
// catch-all site on the API site's port that answers what the API site
// leaves to it. No api_errors guards such a route (it is not in the API
// site's chain), so nothing refuses it at run time and nothing removes a
// client's identity headers: the configuration is refused instead.
type bypass struct {
	finding
	apiHost string // the API host it answers for ("" for any)
	listen  string // the server's listen addresses
}

// bypassRoutes returns the serving handlers of every route outside the API
// sites that can answer for an API host (see bypass).
func bypassRoutes(app *caddyhttp.App) []bypass {
	if app == nil {
		return nil
	}
	sites := apiSitesOf(app)
	var out []bypass
	for _, name := range sortedKeys(app.Servers) {
		srv := app.Servers[name]
		for i, r := range srv.Routes {
			if usesAuth(r) {
				continue
			}
			h, ok := answersFor(sites, name, i, r)
			if !ok {
				continue
			}
			w := walker{server: name, strict: true}
			w.route(r, false, nil)
			for _, f := range w.found {
				out = append(out, bypass{finding: f, apiHost: h, listen: strings.Join(srv.Listen, " ")})
			}
		}
	}
	return out
}

// apiSite is one top-level route of an API site.
type apiSite struct {
	server string
	index  int
	hosts  hosts
	// takesAll lists the hosts whose every request the route takes (a
	// terminal route with a matcher set of hosts alone): a later route of
	// the same server never answers for them. anyHost: a route with no
	// matchers takes every request.
	takesAll []string
	anyHost  bool
}

// hosts is what a route's matcher sets admit by host: names (patterns as
// MatchHost has them, lower case), or any host when a set has no host
// matcher.
type hosts struct {
	names []string
	any   bool
}

func apiSitesOf(app *caddyhttp.App) []apiSite {
	var sites []apiSite
	for _, name := range sortedKeys(app.Servers) {
		for i, r := range app.Servers[name].Routes {
			if !usesAuth(r) {
				continue
			}
			s := apiSite{server: name, index: i, hosts: hostsOf(r.MatcherSets)}
			if r.Terminal {
				s.anyHost = len(r.MatcherSets) == 0
				for _, set := range r.MatcherSets {
					if names, ok := hostOnly(set); ok {
						s.takesAll = append(s.takesAll, names...)
					}
				}
			}
			sites = append(sites, s)
		}
	}
	return sites
}

// answersFor reports whether the route at index i of server can answer for
// an API host, and which ("" for a catch-all API site). A route names the
// API host itself (on any server), or, on an API site's server, admits any
// host; either way only where no earlier API route of its server takes
// every request for that host.
func answersFor(sites []apiSite, server string, i int, r caddyhttp.Route) (string, bool) {
	hs := hostsOf(r.MatcherSets)
	for _, s := range sites {
		var candidates []string
		sameServer := s.server == server
		for _, n := range s.hosts.names {
			if (hs.any && sameServer) || hs.overlaps(n) {
				candidates = append(candidates, n)
			}
		}
		if s.hosts.any && hs.any && sameServer {
			candidates = append(candidates, "")
		}
		for _, h := range candidates {
			if !shadowed(sites, server, i, h) {
				return h, true
			}
		}
	}
	return "", false
}

// shadowed reports whether an API route before index i of server takes
// every request for host h ("": any host).
func shadowed(sites []apiSite, server string, i int, h string) bool {
	for _, s := range sites {
		if s.server != server || s.index >= i {
			continue
		}
		if s.anyHost {
			return true
		}
		for _, n := range s.takesAll {
			if h != "" && strings.EqualFold(n, h) {
				return true
			}
		}
	}
	return false
}

func hostsOf(sets caddyhttp.MatcherSets) hosts {
	if len(sets) == 0 {
		return hosts{any: true}
	}
	var hs hosts
	for _, set := range sets {
		names, found := hostNames(set)
		if !found {
			hs.any = true
		}
		hs.names = append(hs.names, names...)
	}
	return hs
}

// hostNames returns the names of a matcher set's host matcher, lower case.
func hostNames(set caddyhttp.MatcherSet) (names []string, found bool) {
	for _, m := range set {
		var mh caddyhttp.MatchHost
		switch m := m.(type) {
		case caddyhttp.MatchHost:
			mh = m
		case *caddyhttp.MatchHost:
			mh = *m
		default:
			continue
		}
		for _, n := range mh {
			names = append(names, strings.ToLower(n))
		}
		found = true
	}
	return names, found
}

// hostOnly returns a set's host names if the set matches by host alone.
func hostOnly(set caddyhttp.MatcherSet) ([]string, bool) {
	names, found := hostNames(set)
	return names, found && len(set) == 1
}

// overlaps reports whether some name of hs can match a request that host
// pattern p matches too (a placeholder may match anything).
func (hs hosts) overlaps(p string) bool {
	for _, n := range hs.names {
		if patternsOverlap(n, p) {
			return true
		}
	}
	return false
}

// patternsOverlap compares two MatchHost patterns label by label: `*`
// matches any one label.
func patternsOverlap(a, b string) bool {
	if strings.Contains(a, "{") || strings.Contains(b, "{") {
		return true
	}
	la, lb := strings.Split(a, "."), strings.Split(b, ".")
	if len(la) != len(lb) {
		return false
	}
	for i := range la {
		if la[i] != lb[i] && la[i] != "*" && lb[i] != "*" {
			return false
		}
	}
	return true
}

// notPassive names a handler unless it is known to only pass requests on,
// or to answer only with an error or a redirect: outside the API sites an
// unknown handler (a third-party plugin, invoke, intercept, templates)
// counts as serving.
func notPassive(h caddyhttp.MiddlewareHandler) string {
	var sr *caddyhttp.StaticResponse
	switch h := h.(type) {
	case *caddyhttp.StaticResponse:
		sr = h
	case caddyhttp.StaticResponse: // Caddy's automatic HTTPS redirects
		sr = &h
	}
	if sr != nil {
		if s := string(sr.StatusCode); sr.Abort || (len(s) == 3 && s[0] >= '3' && s[0] <= '5') {
			return ""
		}
		return "respond"
	}
	m, ok := h.(caddy.Module)
	if !ok {
		return fmt.Sprintf("%T", h)
	}
	id := string(m.CaddyModule().ID)
	switch id {
	case "http.handlers.error", "http.handlers.headers", "http.handlers.rewrite", "http.handlers.encode",
		"http.handlers.request_body", "http.handlers.vars", "http.handlers.map", "http.handlers.log_append",
		"http.handlers.push", "http.handlers.tracing", "http.handlers.timeouts",
		"http.handlers.api_errors", "http.handlers.api_cors", "http.handlers.api_rate_limit",
		"http.handlers.api_etag", "http.handlers.api_idempotency":
		return ""
	}
	return strings.TrimPrefix(id, "http.handlers.")
}

// bypassError is the load-time refusal of every bypass found.
func bypassError(found []bypass) error {
	var b strings.Builder
	b.WriteString("refusing this configuration: ")
	if len(found) == 1 {
		b.WriteString("a route answers for the API host without api_auth")
	} else {
		fmt.Fprintf(&b, "%d routes answer for the API host without api_auth", len(found))
	}
	b.WriteString(" (a request there would skip the key check, and a client's X-Auth-User would reach the backend):")
	for _, f := range found {
		host := f.apiHost
		if host == "" {
			host = "any host"
		}
		route := f.where
		if route == "" {
			route = "every request"
		}
		fmt.Fprintf(&b, "\n\t%s on server %s (listening on %s) serves with %s, for API host %s", route, f.server, f.listen, f.handler, host)
	}
	b.WriteString("\nmove each such site block into the API host's own site block as a `handle <path> { … }` block (it then passes api_errors and api_auth), or give it its own `api_errors { require_auth }` and `api_auth`")
	return fmt.Errorf("%s", b.String())
}
