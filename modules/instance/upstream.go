package instance

import (
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
	"go.uber.org/zap"
)

// defaultUpstreamTimeout is how long a backend of an API site may take to
// send its response headers when its reverse_proxy sets no limit.
const defaultUpstreamTimeout = 30 * time.Second

// proxyWithoutTimeout is a reverse_proxy of an API site whose transport
// waits for a backend's response headers forever.
type proxyWithoutTimeout struct {
	server, where string
	handler       *reverseproxy.Handler
}

// proxiesWithoutTimeout returns every reverse_proxy of an API site (a
// top-level route whose tree holds api_errors or api_auth), in its routes
// and its error routes, that has no response-header timeout.
func proxiesWithoutTimeout(app *caddyhttp.App) []proxyWithoutTimeout {
	if app == nil {
		return nil
	}
	var out []proxyWithoutTimeout
	for _, name := range sortedKeys(app.Servers) {
		srv := app.Servers[name]
		routes := srv.Routes
		if srv.Errors != nil {
			routes = append(routes[:len(routes):len(routes)], srv.Errors.Routes...)
		}
		for _, site := range routes {
			if !holdsAPI(site, false) {
				continue
			}
			eachProxy(site, nil, func(where []string, h *reverseproxy.Handler) {
				if t, ok := h.Transport.(*reverseproxy.HTTPTransport); ok && t.ResponseHeaderTimeout > 0 {
					return
				}
				out = append(out, proxyWithoutTimeout{server: name, where: strings.Join(where, " → "), handler: h})
			})
		}
	}
	return out
}

// eachProxy calls fn for every reverse_proxy in a route's tree.
func eachProxy(r caddyhttp.Route, where []string, fn func(where []string, h *reverseproxy.Handler)) {
	if m := describe(r.MatcherSets); m != "" {
		where = append(where[:len(where):len(where)], m)
	}
	for _, h := range r.Handlers {
		switch h := h.(type) {
		case *reverseproxy.Handler:
			fn(where, h)
		case *caddyhttp.Subroute:
			for _, sub := range h.Routes {
				eachProxy(sub, where, fn)
			}
		}
	}
}

// setUpstreamTimeouts gives every reverse_proxy of an API site that has no
// response-header timeout the default d, before any request is served (the
// http app is provisioned, not started). A transport other than Caddy's
// HTTP transport (fastcgi, a plugin's) is only warned about.
func setUpstreamTimeouts(app *caddyhttp.App, d time.Duration, logger *zap.Logger) {
	set := 0
	for _, p := range proxiesWithoutTimeout(app) {
		t, ok := p.handler.Transport.(*reverseproxy.HTTPTransport)
		if !ok || t.Transport == nil {
			logger.Warn("this reverse_proxy of an API site has no response-header timeout, and restgate cannot give its transport one: a backend that never answers holds its clients until they give up; set a read timeout on its transport",
				zap.String("server", p.server), zap.String("route", p.where))
			continue
		}
		t.ResponseHeaderTimeout = caddy.Duration(d)
		t.Transport.ResponseHeaderTimeout = d
		set++
		logger.Debug("this reverse_proxy of an API site sets no response_header_timeout: restgate's default applies",
			zap.String("server", p.server), zap.String("route", p.where), zap.Duration("response_header_timeout", d))
	}
	if set > 0 {
		logger.Info("reverse_proxy handlers of API sites without a response_header_timeout: restgate's default applies (restgate { upstream_timeout }), so a backend that never answers is a 504 problem",
			zap.Int("reverse_proxies", set), zap.Duration("response_header_timeout", d))
	}
}
