package cors

import (
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/restgate/restgate/internal/dispense"
)

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens. Lists may
// be separated by spaces or commas (so one environment variable can hold
// them). Syntax:
//
//	api_cors [<matcher>] {
//		origins     <origins...>
//		methods     <methods...>
//		headers     <request headers...>
//		expose      <response headers...>
//		credentials
//		max_age     <duration>
//	}
func (h *Handler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // consume directive name
	err := dispense.Options(d, []string{}, func(opt string) error {
		ok := true
		switch opt {
		case "origins", "methods", "headers", "expose":
			list := splitList(d.RemainingArgs())
			switch opt {
			case "origins":
				h.Origins = list
			case "methods":
				h.Methods = list
			case "headers":
				h.Headers = list
			default:
				h.Expose = list
			}
			ok = len(list) > 0
		case "credentials":
			ok, h.Credentials = d.CountRemainingArgs() == 0, true
		case "max_age":
			var v string
			if ok = d.AllArgs(&v); ok {
				dur, err := caddy.ParseDuration(v)
				if err != nil || dur < 0 {
					return d.Errf("max_age: invalid duration '%s' (use a duration such as 10m)", v)
				}
				h.MaxAge = caddy.Duration(dur)
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

// splitList splits arguments on commas too: `a,b c` is a, b and c.
func splitList(args []string) []string {
	var out []string
	for _, a := range args {
		for _, part := range strings.Split(a, ",") {
			if part = strings.TrimSpace(part); part != "" {
				out = append(out, part)
			}
		}
	}
	return out
}

// Interface guard
var _ caddyfile.Unmarshaler = (*Handler)(nil)
