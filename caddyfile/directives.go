// Package caddyfile registers every restgate Caddyfile directive and its
// default position in the handler chain, in one place, so that the order is
// read here and pinned by the golden adapt tests in testdata/.
//
// Caddy places a plugin directive only relative to a standard one, and
// several "before X" registrations keep the order in which they are made. All
// restgate handlers go before `push`, that is right after `encode`, in the
// order of the request path:
//
//	encode ▶ api_errors ▶ api_rate_limit_ip ▶ api_auth ▶ api_rate_limit ▶ api_etag ▶ … ▶ reverse_proxy / resources
//
// so that an `encode` compresses what restgate produces (and never the body
// api_errors has to read), api_errors wraps everything that can fail, and
// nothing that can serve content runs before the access checks.
package caddyfile

import (
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"

	"github.com/restgate/restgate/backends/resources"
	"github.com/restgate/restgate/modules/apiauth"
	_ "github.com/restgate/restgate/modules/apihost"
	"github.com/restgate/restgate/modules/etag"
	"github.com/restgate/restgate/modules/problem"
	"github.com/restgate/restgate/modules/ratelimit"
)

func init() {
	httpcaddyfile.RegisterHandlerDirective("api_errors", problem.ParseCaddyfile)
	httpcaddyfile.RegisterDirectiveOrder("api_errors", httpcaddyfile.Before, "push")

	// The per-IP zone runs before auth (it throttles credential stuffing and
	// counts failed authentications); the per-principal zone after it, so
	// it can key on the authenticated user.
	httpcaddyfile.RegisterHandlerDirective("api_rate_limit_ip", ratelimit.ParseCaddyfileIP)
	httpcaddyfile.RegisterDirectiveOrder("api_rate_limit_ip", httpcaddyfile.Before, "push")
	httpcaddyfile.RegisterHandlerDirective("api_auth", apiauth.ParseCaddyfile)
	httpcaddyfile.RegisterDirectiveOrder("api_auth", httpcaddyfile.Before, "push")
	httpcaddyfile.RegisterHandlerDirective("api_rate_limit", ratelimit.ParseCaddyfile)
	httpcaddyfile.RegisterDirectiveOrder("api_rate_limit", httpcaddyfile.Before, "push")

	// api_etag hashes what the backend sent, so it sits inside encode (which
	// then suffixes the ETag per encoding) and after every access check, so
	// that its cache never answers a request auth or a limit would refuse.
	httpcaddyfile.RegisterHandlerDirective("api_etag", etag.ParseCaddyfile)
	httpcaddyfile.RegisterDirectiveOrder("api_etag", httpcaddyfile.Before, "push")

	// resources is a terminal handler: it answers where reverse_proxy would.
	httpcaddyfile.RegisterHandlerDirective("resources", resources.ParseCaddyfile)
	httpcaddyfile.RegisterDirectiveOrder("resources", httpcaddyfile.Before, "reverse_proxy")
}
