package idempotency

import (
	"strconv"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/dustin/go-humanize"

	"github.com/restgate/restgate/internal/dispense"
)

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens. Syntax:
//
//	api_idempotency [<matcher>] {
//		methods  <methods...>
//		paths    <paths...>
//		required <paths...>
//		ttl      <duration>
//		max_body <size>
//		max_size <size>
//		principal_quota <size>
//		max_in_flight <count>
//		max_in_flight_total <count>
//		docs_url <url>
//		store local|redis|auto
//		claim_lease <duration>
//	}
func (h *Handler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // consume directive name
	err := dispense.Options(d, []string{}, func(opt string) error {
		var ok bool
		switch opt {
		case "methods":
			for _, m := range d.RemainingArgs() {
				h.Methods = append(h.Methods, strings.ToUpper(m))
			}
			ok = len(h.Methods) > 0
		case "paths":
			h.Paths = d.RemainingArgs()
			ok = len(h.Paths) > 0
		case "required":
			h.Required = d.RemainingArgs()
			ok = len(h.Required) > 0
		case "docs_url":
			ok = d.AllArgs(&h.DocsURL)
		case "store":
			if ok = d.AllArgs(&h.Store); ok && h.Store != StoreLocal && h.Store != StoreRedis && h.Store != StoreAuto {
				return d.Errf("store must be %s, %s or %s (redis when the redis global option has an address, else local)", StoreLocal, StoreRedis, StoreAuto)
			}
		case "ttl", "claim_lease":
			var v string
			if ok = d.AllArgs(&v); ok {
				dur, err := caddy.ParseDuration(v)
				if err != nil || dur <= 0 {
					return d.Errf("%s: invalid duration '%s' (use a duration such as 24h or 30m)", opt, v)
				}
				if opt == "ttl" {
					h.TTL = caddy.Duration(dur)
				} else {
					h.ClaimLease = caddy.Duration(dur)
				}
			}
		case "max_body", "max_size", "principal_quota":
			var v string
			if ok = d.AllArgs(&v); ok {
				n, err := humanize.ParseBytes(v)
				if err != nil || n == 0 || n > 1<<34 {
					return d.Errf("%s: invalid size '%s' (use a size such as 1MiB or 64MiB)", opt, v)
				}
				switch opt {
				case "max_body":
					h.MaxBody = int(n)
				case "max_size":
					h.MaxSize = int64(n)
				default:
					h.PrincipalQuota = int64(n)
				}
			}
		case "max_in_flight", "max_in_flight_total":
			var v string
			if ok = d.AllArgs(&v); ok {
				n, err := strconv.Atoi(v)
				if err != nil || n <= 0 {
					return d.Errf("%s: invalid count '%s' (use a positive whole number such as 100)", opt, v)
				}
				if opt == "max_in_flight" {
					h.MaxInFlight = n
				} else {
					h.MaxInFlightTotal = n
				}
			}
		default:
			return d.Errf("unrecognized subdirective '%s'", opt)
		}
		if !ok {
			return d.ArgErr()
		}
		return nil
	})
	return err
}

// Interface guard
var _ caddyfile.Unmarshaler = (*Handler)(nil)
