// Package caddyfile registers every restgate Caddyfile directive and its
// default position in the handler chain, in one place, so that the order is
// read here and pinned by the golden adapt tests in testdata/.
//
// Caddy places a plugin directive only relative to a standard one, and
// several "before X" registrations keep the order in which they are made. All
// restgate handlers go before `push`, that is right after `encode`, in the
// order of the request path:
//
//	encode ▶ api_errors ▶ api_cors ▶ api_rate_limit_ip ▶ api_auth ▶ api_rate_limit ▶ api_idempotency ▶ api_etag ▶ api_docs ▶ … ▶ reverse_proxy / resources
//
// so that an `encode` compresses what restgate produces (and never the body
// api_errors has to read), api_errors wraps everything that can fail, and
// nothing that can serve content runs before the access checks.
package caddyfile

import (
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/restgate/restgate/backends/resources"
	"github.com/restgate/restgate/modules/apiauth"
	_ "github.com/restgate/restgate/modules/apihost"
	"github.com/restgate/restgate/modules/cors"
	"github.com/restgate/restgate/modules/docs"
	"github.com/restgate/restgate/modules/etag"
	"github.com/restgate/restgate/modules/idempotency"
	_ "github.com/restgate/restgate/modules/instance"
	"github.com/restgate/restgate/modules/problem"
	"github.com/restgate/restgate/modules/ratelimit"
	_ "github.com/restgate/restgate/modules/redactlog"
	_ "github.com/restgate/restgate/modules/redisapp"
)

func init() {
	httpcaddyfile.RegisterHandlerDirective("api_errors", parse[problem.Handler])
	httpcaddyfile.RegisterDirectiveOrder("api_errors", httpcaddyfile.Before, "push")

	// api_cors right inside api_errors (so problems carry its headers) and
	// before everything else: preflights are answered here, never counted
	// by a limit, never asked for a key.
	httpcaddyfile.RegisterHandlerDirective("api_cors", parse[cors.Handler])
	httpcaddyfile.RegisterDirectiveOrder("api_cors", httpcaddyfile.Before, "push")

	// The per-IP zone runs before auth (it throttles credential stuffing and
	// counts failed authentications); the per-principal zone after it, so
	// it can key on the authenticated user. One handler type serves both:
	// it reads which directive it was given.
	httpcaddyfile.RegisterHandlerDirective(ratelimit.DirectiveIP, parse[ratelimit.Handler])
	httpcaddyfile.RegisterDirectiveOrder(ratelimit.DirectiveIP, httpcaddyfile.Before, "push")
	httpcaddyfile.RegisterHandlerDirective("api_auth", parse[apiauth.Handler])
	httpcaddyfile.RegisterDirectiveOrder("api_auth", httpcaddyfile.Before, "push")
	httpcaddyfile.RegisterHandlerDirective("api_rate_limit", parse[ratelimit.Handler])
	httpcaddyfile.RegisterDirectiveOrder("api_rate_limit", httpcaddyfile.Before, "push")

	// api_idempotency scopes keys to the authenticated principal, and a
	// request a limit refuses never claims a key; it answers a retry
	// before api_etag's cache or lock could act twice.
	httpcaddyfile.RegisterHandlerDirective("api_idempotency", parse[idempotency.Handler])
	httpcaddyfile.RegisterDirectiveOrder("api_idempotency", httpcaddyfile.Before, "push")

	// api_etag hashes what the backend sent, so it sits inside encode (which
	// then suffixes the ETag per encoding) and after every access check, so
	// that its cache never answers a request auth or a limit would refuse.
	httpcaddyfile.RegisterHandlerDirective("api_etag", parse[etag.Handler])
	httpcaddyfile.RegisterDirectiveOrder("api_etag", httpcaddyfile.Before, "push")

	// api_docs serves the reference page and the merged OpenAPI document
	// and passes every other request on: at the site's level it runs after
	// every access check and before the routes, whose document at its spec
	// path (resources') it merges the services' documents into.
	httpcaddyfile.RegisterHandlerDirective("api_docs", parse[docs.Handler])
	httpcaddyfile.RegisterDirectiveOrder("api_docs", httpcaddyfile.Before, "push")

	// resources is a terminal handler: it answers where reverse_proxy would.
	httpcaddyfile.RegisterHandlerDirective("resources", parse[resources.Handler])
	httpcaddyfile.RegisterDirectiveOrder("resources", httpcaddyfile.Before, "reverse_proxy")
}

// handler is a restgate handler that reads its own Caddyfile tokens.
type handler[T any] interface {
	*T
	caddyfile.Unmarshaler
	caddyhttp.MiddlewareHandler
}

// parse is the one adapter from a directive's tokens to a handler, for
// every restgate directive.
func parse[T any, PT handler[T]](h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	m := PT(new(T))
	err := m.UnmarshalCaddyfile(h.Dispenser)
	return m, err
}
