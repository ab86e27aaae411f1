// Package restgate links every restgate module into a Caddy build.
//
// Build a binary with xcaddy:
//
//	xcaddy build --with github.com/restgate/restgate
//
// or use cmd/restgate, which is the main that xcaddy would generate.
package restgate

import (
	// caddyfile registers every directive and its default order, and imports
	// each module package, so this one import links them all.
	_ "github.com/restgate/restgate/caddyfile"
)
