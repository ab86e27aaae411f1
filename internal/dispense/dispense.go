// Package dispense holds the one shape every restgate directive's
// Caddyfile block has: no arguments after the directive (its matcher is
// Caddy's), then options, each given at most once unless it is one that
// repeats (a zone, a key, a collection).
package dispense

import (
	"slices"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

// Options reads the block that follows a directive whose name the caller
// has consumed, calling fn for each option with the dispenser on it. An
// option given twice is an error unless repeatable names it.
func Options(d *caddyfile.Dispenser, repeatable []string, fn func(opt string) error) error {
	if d.NextArg() {
		return d.ArgErr()
	}
	seen := map[string]bool{}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		opt := d.Val()
		if !slices.Contains(repeatable, opt) {
			if seen[opt] {
				return d.Errf("%s already specified", opt)
			}
			seen[opt] = true
		}
		if err := fn(opt); err != nil {
			return err
		}
	}
	return nil
}
