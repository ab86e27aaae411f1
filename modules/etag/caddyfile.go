package etag

import (
	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/dustin/go-humanize"

	"github.com/restgate/restgate/internal/dispense"
)

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens. Syntax:
//
//	api_etag [<matcher>] {
//		max_body         <size>
//		require_if_match <paths...>
//		lock_timeout     <duration>
//		redis [auto]
//		lock_ttl         <duration>
//		cache {
//			max_size    <size>
//			default_ttl <duration>
//		}
//	}
func (h *Handler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // consume directive name
	err := dispense.Options(d, []string{}, func(opt string) error {
		switch opt {
		case "max_body":
			n, err := sizeArg(d)
			if err != nil {
				return err
			}
			h.MaxBody = int(n)
		case "require_if_match":
			if d.CountRemainingArgs() == 0 {
				return d.ArgErr()
			}
			h.RequireIfMatch = caddyhttp.MatchPath(d.RemainingArgs())
		case "lock_timeout":
			dur, err := durationArg(d)
			if err != nil {
				return err
			}
			h.LockTimeout = dur
		case "cache":
			if err := h.unmarshalCache(d); err != nil {
				return err
			}
		case "redis":
			// `redis auto`: only when the redis global option has an address
			switch args := d.RemainingArgs(); {
			case len(args) == 0:
				h.Redis = true
			case len(args) == 1 && args[0] == "auto":
				h.RedisAuto = true
			default:
				return d.Errf("redis takes no argument, or auto (Redis only when the redis global option has an address)")
			}
		case "lock_ttl":
			dur, err := durationArg(d)
			if err != nil {
				return err
			}
			h.LockTTL = dur
		default:
			return d.Errf("unrecognized subdirective '%s'", opt)
		}
		return nil
	})
	return err
}

func (h *Handler) unmarshalCache(d *caddyfile.Dispenser) error {
	h.Cache = new(CacheConfig)
	if d.NextArg() {
		return d.ArgErr()
	}
	seen := map[string]bool{}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		opt := d.Val()
		if seen[opt] {
			return d.Errf("cache: %s already specified", opt)
		}
		seen[opt] = true
		switch opt {
		case "max_size":
			n, err := sizeArg(d)
			if err != nil {
				return err
			}
			h.Cache.MaxSize = n
		case "default_ttl":
			dur, err := durationArg(d)
			if err != nil {
				return err
			}
			h.Cache.DefaultTTL = dur
		default:
			return d.Errf("cache: unrecognized option '%s'", opt)
		}
	}
	return nil
}

func sizeArg(d *caddyfile.Dispenser) (int64, error) {
	var v string
	if !d.AllArgs(&v) {
		return 0, d.ArgErr()
	}
	n, err := humanize.ParseBytes(v)
	if err != nil || n == 0 || n > 1<<34 {
		return 0, d.Errf("%s: invalid size '%s' (use a size such as 512KiB or 64MiB)", d.Val(), v)
	}
	return int64(n), nil
}

func durationArg(d *caddyfile.Dispenser) (caddy.Duration, error) {
	opt := d.Val()
	var v string
	if !d.AllArgs(&v) {
		return 0, d.ArgErr()
	}
	dur, err := caddy.ParseDuration(v)
	if err != nil || dur < 0 {
		return 0, d.Errf("%s: invalid duration '%s' (use a duration such as 30s or 5m)", opt, v)
	}
	return caddy.Duration(dur), nil
}

// Interface guard
var _ caddyfile.Unmarshaler = (*Handler)(nil)
