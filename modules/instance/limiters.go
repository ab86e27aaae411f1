package instance

import (
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
)

// pairLimiters lets a per-IP api_rate_limit that is followed by api_auth
// and a per-principal api_rate_limit on the same Redis decide both in one
// round trip.
func pairLimiters(app *caddyhttp.App, logger *zap.Logger) {
}
