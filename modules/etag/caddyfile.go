package etag

import (
	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/dustin/go-humanize"
)

// ParseCaddyfile sets up the handler from Caddyfile tokens.
func ParseCaddyfile(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	m := new(Handler)
	err := m.UnmarshalCaddyfile(h.Dispenser)
	return m, err
}

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens. Syntax:
//
//	api_etag [<matcher>] {
//		max_body         <size>
//		require_if_match <paths...>
//		cache {
//			max_size    <size>
//			default_ttl <duration>
//		}
//	}
func (h *Handler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // consume directive name
	if d.NextArg() {
		return d.ArgErr()
	}
	seen := map[string]bool{}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		opt := d.Val()
		if seen[opt] {
			return d.Errf("%s already specified", opt)
		}
		seen[opt] = true
		switch opt {
		case "max_body":
			n, err := sizeArg(d)
			if err != nil {
				return err
			}
			h.MaxBody = int(n)
		case "require_if_match":
			paths := d.RemainingArgs()
			if len(paths) == 0 {
				return d.ArgErr()
			}
			h.RequireIfMatch = caddyhttp.MatchPath(paths)
		case "cache":
			h.Cache = new(CacheConfig)
			if d.NextArg() {
				return d.ArgErr()
			}
			cseen := map[string]bool{}
			for nesting := d.Nesting(); d.NextBlock(nesting); {
				copt := d.Val()
				if cseen[copt] {
					return d.Errf("cache: %s already specified", copt)
				}
				cseen[copt] = true
				switch copt {
				case "max_size":
					n, err := sizeArg(d)
					if err != nil {
						return err
					}
					h.Cache.MaxSize = n
				case "default_ttl":
					if !d.NextArg() {
						return d.ArgErr()
					}
					dur, err := caddy.ParseDuration(d.Val())
					if err != nil || dur < 0 {
						return d.Errf("cache: invalid default_ttl '%s'", d.Val())
					}
					h.Cache.DefaultTTL = caddy.Duration(dur)
					if d.NextArg() {
						return d.ArgErr()
					}
				default:
					return d.Errf("cache: unrecognized option '%s'", copt)
				}
			}
		default:
			return d.Errf("unrecognized subdirective '%s'", opt)
		}
	}
	return nil
}

func sizeArg(d *caddyfile.Dispenser) (int64, error) {
	if !d.NextArg() {
		return 0, d.ArgErr()
	}
	n, err := humanize.ParseBytes(d.Val())
	if err != nil || n == 0 || n > 1<<34 {
		return 0, d.Errf("invalid size '%s'", d.Val())
	}
	if d.NextArg() {
		return 0, d.ArgErr()
	}
	return int64(n), nil
}

// Interface guard
var _ caddyfile.Unmarshaler = (*Handler)(nil)
