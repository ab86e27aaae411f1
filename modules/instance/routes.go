package instance

import (
	"fmt"
	"slices"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/fileserver"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"

	"github.com/restgate/restgate/backends/resources"
	"github.com/restgate/restgate/modules/apiauth"
	"github.com/restgate/restgate/modules/docs"
	"github.com/restgate/restgate/modules/problem"
)

// finding is a handler that serves content on an API site without an
// api_auth before it.
type finding struct {
	server  string // the http app's server name (srv0, ...)
	where   string // the matchers that lead to it, outermost first
	handler string
}

// unprotectedRoutes walks every API site (a top-level route whose tree
// holds api_auth or api_errors with require_auth) and returns each serving
// handler that a request can reach without passing an api_auth first.
//
// Caddy chains a route list into one middleware chain: an api_auth in a
// route without matchers wraps everything after it; one in a route with
// matchers only what follows it in that route. Handlers that only pass
// requests on (headers, encode, restgate's other modules) and handlers
// that answer with an error are not serving.
func unprotectedRoutes(app *caddyhttp.App) []finding {
	if app == nil {
		return nil
	}
	var out []finding
	for _, name := range sortedKeys(app.Servers) {
		for _, site := range app.Servers[name].Routes {
			if !usesAuth(site) {
				continue
			}
			w := walker{server: name}
			w.route(site, false, nil)
			out = append(out, w.found...)
		}
	}
	return out
}

type walker struct {
	server string
	found  []finding
	// strict counts every handler not known to only pass requests on (or
	// only answer with an error or a redirect) as serving: used for routes
	// outside the API sites, which no api_errors guard backs up
	strict bool
}

// list walks routes in order and reports whether an api_auth without
// matchers covered everything after the list.
func (w *walker) list(routes caddyhttp.RouteList, covered bool, where []string) bool {
	for _, r := range routes {
		after := w.route(r, covered, where)
		if len(r.MatcherSets) == 0 {
			covered = after
		}
	}
	return covered
}

// route walks one route's handlers and reports whether an api_auth ran
// by its end.
func (w *walker) route(r caddyhttp.Route, covered bool, where []string) bool {
	if m := describe(r.MatcherSets); m != "" {
		where = append(where[:len(where):len(where)], m)
	}
	for _, h := range r.Handlers {
		switch h := h.(type) {
		case *apiauth.Handler:
			covered = true
		case *caddyhttp.Subroute:
			covered = w.list(h.Routes, covered, where)
		default:
			name := serving(h)
			if w.strict {
				name = notPassive(h)
			}
			if name != "" && !covered {
				w.found = append(w.found, finding{server: w.server, where: strings.Join(where, " → "), handler: name})
			}
		}
	}
	return covered
}

// serving names a handler that answers requests with content, or "".
func serving(h caddyhttp.MiddlewareHandler) string {
	switch h := h.(type) {
	case *reverseproxy.Handler:
		return "reverse_proxy"
	case *fileserver.FileServer:
		return "file_server"
	case *resources.Handler:
		return "resources"
	case *docs.Handler:
		return "api_docs"
	case *caddyhttp.StaticResponse:
		if s := string(h.StatusCode); s == "" || s[0] < '4' {
			return "respond"
		}
	}
	return ""
}

// usesAuth reports whether a route's tree holds api_auth, or api_errors
// with require_auth: it belongs to an API site.
func usesAuth(r caddyhttp.Route) bool { return holdsAPI(r, true) }

// holdsAPI reports whether a route's tree holds api_auth or api_errors
// (with require_auth, if guarded).
func holdsAPI(r caddyhttp.Route, guarded bool) bool {
	for _, h := range r.Handlers {
		switch h := h.(type) {
		case *apiauth.Handler:
			return true
		case *problem.Handler:
			if h.RequireAuth || !guarded {
				return true
			}
		case *caddyhttp.Subroute:
			for _, sub := range h.Routes {
				if holdsAPI(sub, guarded) {
					return true
				}
			}
		}
	}
	return false
}

// describe renders the host and path matchers of a route, the ones that
// name a route for an operator (`host api.localhost`, `path /v1/widgets*`).
func describe(sets caddyhttp.MatcherSets) string {
	var alts []string
	for _, set := range sets {
		var parts []string
		for _, m := range set {
			switch m := m.(type) {
			case caddyhttp.MatchHost:
				parts = append(parts, "host "+strings.Join(m, " "))
			case caddyhttp.MatchPath:
				parts = append(parts, "path "+strings.Join(m, " "))
			case *caddyhttp.MatchHost:
				parts = append(parts, "host "+strings.Join(*m, " "))
			case *caddyhttp.MatchPath:
				parts = append(parts, "path "+strings.Join(*m, " "))
			case caddy.Module:
				parts = append(parts, strings.TrimPrefix(string(m.CaddyModule().ID), "http.matchers."))
			default:
				parts = append(parts, fmt.Sprintf("%T", m))
			}
		}
		slices.Sort(parts) // a set's matchers come from a JSON object: no order of their own
		alts = append(alts, strings.Join(parts, " "))
	}
	return strings.Join(alts, " or ")
}
