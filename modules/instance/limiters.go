package instance

import (
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/restgate/restgate/modules/apiauth"
	"github.com/restgate/restgate/modules/ratelimit"
)

// pairLimiters lets a per-IP api_rate_limit that is followed by api_auth
// and a per-principal api_rate_limit on the same Redis decide both in one
// round trip (ratelimit.Pair). The three must run one after the other in
// every request that reaches the first: consecutive in one route's
// handlers, or across routes without matchers of one list (Caddy chains
// those), with nothing between them.
func pairLimiters(app *caddyhttp.App, logger *zap.Logger) {
	if app == nil {
		return
	}
	for _, name := range sortedKeys(app.Servers) {
		pairIn(app.Servers[name].Routes, ratelimit.Pair, logger)
	}
}

// pairFunc is ratelimit.Pair (tests record the calls instead).
type pairFunc func(ip, user *ratelimit.Handler) error

// pairIn pairs the limiters of one route list and of the subroutes in it.
// A route with matchers, or in a group (Caddy runs only the first of a
// group that matches), may not run: the handlers before it and after it
// are not consecutive, and neither are those after a terminal route.
func pairIn(routes caddyhttp.RouteList, pair pairFunc, logger *zap.Logger) {
	var seq []caddyhttp.MiddlewareHandler
	for _, r := range routes {
		mayNotRun := len(r.MatcherSets) > 0 || r.Group != ""
		if mayNotRun {
			pairSeq(seq, pair, logger)
			seq = seq[:0]
		}
		for _, h := range r.Handlers {
			if sub, ok := h.(*caddyhttp.Subroute); ok {
				pairIn(sub.Routes, pair, logger)
			}
			seq = append(seq, h) // a subroute is something in between
		}
		if mayNotRun || r.Terminal {
			pairSeq(seq, pair, logger)
			seq = seq[:0]
		}
	}
	pairSeq(seq, pair, logger)
}

// pairSeq pairs each per-IP limit, api_auth, limit run in a sequence of
// handlers that every request runs in order.
func pairSeq(seq []caddyhttp.MiddlewareHandler, pair pairFunc, logger *zap.Logger) {
	for i := 0; i+2 < len(seq); i++ {
		ip, ok := seq[i].(*ratelimit.Handler)
		if !ok || !ip.ShareRefunds {
			continue
		}
		auth, ok := seq[i+1].(*apiauth.Handler)
		if !ok {
			continue
		}
		user, ok := seq[i+2].(*ratelimit.Handler)
		if !ok {
			continue
		}
		if len(auth.JWT) > 0 {
			// paired, a flood over the per-IP limit would reach api_auth,
			// and each forged token would cost a signature check
			logger.Debug("rate limits around api_auth decided one after the other: api_auth verifies JWTs")
			continue
		}
		if err := pair(ip, user); err != nil {
			logger.Debug("rate limits around api_auth decided one after the other", zap.String("reason", err.Error()))
			continue
		}
		logger.Debug("rate limits around api_auth decided together, in one Redis round trip")
	}
}
