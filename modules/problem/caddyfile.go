package problem

import (
	"strconv"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/dustin/go-humanize"
)

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens. Syntax:
//
//	api_errors [<matcher>] {
//		type_base      <uri>
//		max_error_body <size>
//		title  <status> <text>
//		detail <status> <text>
//		require_auth
//	}
func (h *Handler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // consume directive name
	if d.NextArg() {
		return d.ArgErr()
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		opt := d.Val()
		switch opt {
		case "type_base":
			if h.TypeBase != "" {
				return d.Errf("%s already specified", opt)
			}
			if !d.AllArgs(&h.TypeBase) {
				return d.ArgErr()
			}
		case "max_error_body":
			if h.MaxErrorBody != 0 {
				return d.Errf("%s already specified", opt)
			}
			var v string
			if !d.AllArgs(&v) {
				return d.ArgErr()
			}
			size, err := humanize.ParseBytes(v)
			if err != nil || size == 0 || size > 16<<20 {
				return d.Errf("%s: invalid size '%s' (1 B to 16 MiB, such as 64KiB)", opt, v)
			}
			h.MaxErrorBody = int(size)
		case "require_auth":
			if h.RequireAuth || d.CountRemainingArgs() != 0 {
				return d.ArgErr()
			}
			h.RequireAuth = true
		case "title", "detail":
			args := d.RemainingArgs()
			if len(args) != 2 {
				return d.Errf("%s takes a status and a text", opt)
			}
			code, err := strconv.Atoi(args[0])
			if err != nil || code < 400 || code > 599 {
				return d.Errf("%s: '%s' is not an error status", opt, args[0])
			}
			if h.Statuses == nil {
				h.Statuses = make(map[string]StatusOverride)
			}
			o := h.Statuses[args[0]]
			if opt == "title" {
				o.Title = args[1]
			} else {
				o.Detail = args[1]
			}
			h.Statuses[args[0]] = o
		default:
			return d.Errf("unrecognized subdirective '%s'", opt)
		}
	}
	return nil
}

// Interface guard
var _ caddyfile.Unmarshaler = (*Handler)(nil)
