package ratelimit

import (
	"strconv"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/restgate/restgate/internal/dispense"
)

// DirectiveIP is the Caddyfile directive for zones before api_auth.
const DirectiveIP = "api_rate_limit_ip"

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens. Two
// directives share the syntax: `api_rate_limit`, after api_auth, keyed by
// default on the authenticated user (else the client IP); and
// `api_rate_limit_ip`, before api_auth, keyed by default on the client IP,
// whose admitted requests a later api_rate_limit refunds if it refuses them.
//
//	api_rate_limit|api_rate_limit_ip [<matcher>] {
//		zone <name> [<events>/<window>] {
//			key         <placeholder template>
//			rate        <events>/<window>
//			burst       <n>
//			methods     <methods...>
//			paths       <paths...>
//			ipv6_prefix <bits>
//			max_keys    <n>
//		}
//		mode report_only|enforce
//		store local|redis|auto
//		on_error allow|deny
//		legacy_headers
//		log_key
//	}
func (h *Handler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // consume directive name
	perIP := d.Val() == DirectiveIP
	h.ShareRefunds = h.ShareRefunds || perIP
	err := dispense.Options(d, []string{"zone"}, func(opt string) error {
		switch opt {
		case "zone":
			z, err := parseZone(d)
			if err != nil {
				return err
			}
			if perIP && z.Key == "" {
				z.Key = "{client_ip}"
			}
			h.Zones = append(h.Zones, z)
		case "mode":
			if !d.AllArgs(&h.Mode) {
				return d.ArgErr()
			}
			if h.Mode != ModeEnforce && h.Mode != ModeReportOnly {
				return d.Errf("mode must be %s or %s", ModeEnforce, ModeReportOnly)
			}
		case "store":
			if !d.AllArgs(&h.Store) {
				return d.ArgErr()
			}
			if h.Store != StoreLocal && h.Store != StoreRedis && h.Store != StoreAuto {
				return d.Errf("store must be %s, %s or %s (redis when the redis global option has an address, else local)", StoreLocal, StoreRedis, StoreAuto)
			}
		case "on_error":
			if !d.AllArgs(&h.OnError) {
				return d.ArgErr()
			}
			if h.OnError != OnErrorAllow && h.OnError != OnErrorDeny {
				return d.Errf("on_error must be %s (fail open) or %s (fail closed)", OnErrorAllow, OnErrorDeny)
			}
		case "legacy_headers", "log_key":
			if d.CountRemainingArgs() != 0 {
				return d.ArgErr()
			}
			if opt == "log_key" {
				h.LogKey = true
			} else {
				h.LegacyHeaders = true
			}
		default:
			return d.Errf("unrecognized subdirective '%s'", opt)
		}
		return nil
	})
	if err != nil {
		return err
	}
	if len(h.Zones) == 0 {
		return d.Err("at least one zone is required")
	}
	return nil
}

func parseZone(d *caddyfile.Dispenser) (*Zone, error) {
	z := new(Zone)
	if !d.NextArg() {
		return nil, d.ArgErr()
	}
	z.Name = d.Val()
	if d.NextArg() {
		if err := parseRateValue(d, z, d.Val()); err != nil {
			return nil, err
		}
	}
	if d.NextArg() {
		return nil, d.ArgErr()
	}
	seen := map[string]bool{}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		opt := d.Val()
		if seen[opt] {
			return nil, d.Errf("zone %s: %s already specified", z.Name, opt)
		}
		seen[opt] = true
		args := d.RemainingArgs()
		if len(args) == 0 {
			return nil, d.ArgErr()
		}
		intArg := func(dst *int) error {
			n, err := strconv.Atoi(args[0])
			if err != nil || len(args) != 1 {
				return d.Errf("zone %s: %s takes one whole number", z.Name, opt)
			}
			*dst = n
			return nil
		}
		var err error
		switch opt {
		case "key":
			if len(args) != 1 {
				return nil, d.ArgErr()
			}
			z.Key = args[0]
		case "rate":
			if len(args) != 1 {
				return nil, d.ArgErr()
			}
			err = parseRateValue(d, z, args[0])
		case "burst":
			err = intArg(&z.Burst)
		case "ipv6_prefix":
			err = intArg(&z.IPv6Prefix)
		case "max_keys":
			err = intArg(&z.MaxKeys)
		case "methods":
			for _, m := range args {
				z.Methods = append(z.Methods, strings.ToUpper(m))
			}
		case "paths":
			z.Paths = append(z.Paths, args...)
		default:
			return nil, d.Errf("zone %s: unrecognized option '%s'", z.Name, opt)
		}
		if err != nil {
			return nil, err
		}
	}
	if z.Events == 0 {
		return nil, d.Errf("zone %s: no rate; write `zone %s 100/1m` or `rate 100/1m`", z.Name, z.Name)
	}
	return z, nil
}

// parseRateValue reads <events>/<window>, e.g. 100/1m, 10/s.
func parseRateValue(d *caddyfile.Dispenser, z *Zone, v string) error {
	ev, win, ok := strings.Cut(v, "/")
	n, err := strconv.Atoi(ev)
	if !ok || err != nil || n < 1 {
		return d.Errf("zone %s: rate '%s': use <n>/<duration> such as 600/1m or 10/s", z.Name, v)
	}
	if win == "" || win[0] < '0' || win[0] > '9' {
		win = "1" + win // 10/s means 10/1s
	}
	dur, err := caddy.ParseDuration(win)
	if err != nil || dur <= 0 {
		return d.Errf("zone %s: rate '%s': invalid window; use <n>/<duration> such as 600/1m or 10/s", z.Name, v)
	}
	z.Events, z.Window = n, caddy.Duration(dur)
	return nil
}

// Interface guard
var _ caddyfile.Unmarshaler = (*Handler)(nil)
