package instance

import (
	"errors"
	"testing"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/restgate/restgate/modules/apiauth"
	"github.com/restgate/restgate/modules/ratelimit"
)

// TestPairLimiters: the route walk offers a per-IP limit, api_auth and a
// limit for pairing only where every request that reaches the first runs
// the other two right after it.
func TestPairLimiters(t *testing.T) {
	type chain struct {
		ip   *ratelimit.Handler
		auth *apiauth.Handler
		user *ratelimit.Handler
	}
	newChain := func() chain {
		return chain{&ratelimit.Handler{ShareRefunds: true}, new(apiauth.Handler), new(ratelimit.Handler)}
	}
	matcher := caddyhttp.MatcherSets{{caddyhttp.MatchPath{"/v1/*"}}}
	route := func(hs ...caddyhttp.MiddlewareHandler) caddyhttp.Route { return caddyhttp.Route{Handlers: hs} }
	sub := func(routes ...caddyhttp.Route) *caddyhttp.Subroute { return &caddyhttp.Subroute{Routes: routes} }
	other := &caddyhttp.StaticResponse{}
	tests := []struct {
		name   string
		routes func(c chain) caddyhttp.RouteList
		paired bool
	}{
		{"one route, as the default Caddyfile adapts", func(c chain) caddyhttp.RouteList {
			return caddyhttp.RouteList{{Handlers: []caddyhttp.MiddlewareHandler{sub(route(other, c.ip, c.auth, c.user, other))}}}
		}, true},
		{"consecutive routes without matchers", func(c chain) caddyhttp.RouteList {
			return caddyhttp.RouteList{route(c.ip), route(c.auth), route(c.user, other)}
		}, true},
		{"in a route with matchers", func(c chain) caddyhttp.RouteList {
			return caddyhttp.RouteList{{MatcherSets: matcher, Handlers: []caddyhttp.MiddlewareHandler{c.ip, c.auth, c.user}}}
		}, true},
		{"a handler between the limit and api_auth", func(c chain) caddyhttp.RouteList {
			return caddyhttp.RouteList{route(c.ip, other, c.auth, c.user)}
		}, false},
		{"a handler between api_auth and the limit", func(c chain) caddyhttp.RouteList {
			return caddyhttp.RouteList{route(c.ip, c.auth, other, c.user)}
		}, false},
		{"api_auth in a route with matchers", func(c chain) caddyhttp.RouteList {
			return caddyhttp.RouteList{route(c.ip), {MatcherSets: matcher, Handlers: []caddyhttp.MiddlewareHandler{c.auth, c.user}}}
		}, false},
		{"the second limit in a route with matchers", func(c chain) caddyhttp.RouteList {
			return caddyhttp.RouteList{route(c.ip, c.auth), {MatcherSets: matcher, Handlers: []caddyhttp.MiddlewareHandler{c.user}}}
		}, false},
		{"after a terminal route", func(c chain) caddyhttp.RouteList {
			return caddyhttp.RouteList{route(c.ip, c.auth), {Terminal: true}, route(c.user)}
		}, false},
		{"the limit in a subroute of its own (a subroute counts as a handler between)", func(c chain) caddyhttp.RouteList {
			return caddyhttp.RouteList{route(sub(route(c.ip)), c.auth, c.user)}
		}, false},
		{"a limit before api_auth that is not per-IP", func(c chain) caddyhttp.RouteList {
			c.ip.ShareRefunds = false
			return caddyhttp.RouteList{route(c.ip, c.auth, c.user)}
		}, false},
		{"api_auth verifies JWTs", func(c chain) caddyhttp.RouteList {
			c.auth.JWT = []*apiauth.JWTIssuer{{Issuer: "https://issuer.example"}}
			return caddyhttp.RouteList{route(c.ip, c.auth, c.user)}
		}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newChain()
			routes := tt.routes(c)
			var got [][2]*ratelimit.Handler
			pairIn(routes, func(ip, user *ratelimit.Handler) error {
				got = append(got, [2]*ratelimit.Handler{ip, user})
				return nil
			}, zap.NewNop())
			switch {
			case tt.paired && (len(got) != 1 || got[0] != [2]*ratelimit.Handler{c.ip, c.user}):
				t.Errorf("pairIn offered %d pairs, want the chain's limits once", len(got))
			case !tt.paired && len(got) != 0:
				t.Errorf("pairIn offered %d pairs, want none", len(got))
			}
		})
	}
	// a refusal leaves the handlers alone; a nil app is no app
	pairIn(caddyhttp.RouteList{route(newChain().ip, new(apiauth.Handler), new(ratelimit.Handler))},
		func(ip, user *ratelimit.Handler) error { return errors.New("not on Redis") }, zap.NewNop())
	pairLimiters(nil, zap.NewNop())
}
