package instance

import "github.com/caddyserver/caddy/v2/modules/caddyhttp"

// checkOrder refuses an API site whose restgate handlers run in an order
// another module depends on not being (see orderRules).
func checkOrder(app *caddyhttp.App) error {
	return nil
}
