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
		{"api_auth and the second limit in two routes of one group (Caddy runs the first only)", func(c chain) caddyhttp.RouteList {
			return caddyhttp.RouteList{{Group: "g", Handlers: []caddyhttp.MiddlewareHandler{c.ip, c.auth}}, {Group: "g", Handlers: []caddyhttp.MiddlewareHandler{c.user}}}
		}, false},
		{"all three in one route of a group", func(c chain) caddyhttp.RouteList {
			return caddyhttp.RouteList{{Group: "g", Handlers: []caddyhttp.MiddlewareHandler{c.ip, c.auth, c.user}}, {Group: "g", Handlers: []caddyhttp.MiddlewareHandler{other}}}
		}, true},
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
	// a chain whose limits refuse to pair (not on Redis) does not stop the
	// walk: the next chain is still offered; a nil app is no app
	first, second := newChain(), newChain()
	var offered []*ratelimit.Handler
	pairIn(caddyhttp.RouteList{route(first.ip, first.auth, first.user, other, second.ip, second.auth, second.user)},
		func(ip, user *ratelimit.Handler) error {
			offered = append(offered, ip)
			if ip == first.ip {
				return errors.New("not on Redis")
			}
			return nil
		}, zap.NewNop())
	if len(offered) != 2 || offered[0] != first.ip || offered[1] != second.ip {
		t.Errorf("after a refusal: %d chains offered, want both, in order", len(offered))
	}
	pairLimiters(nil, zap.NewNop())
}
