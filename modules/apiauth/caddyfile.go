package apiauth

import (
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// ParseCaddyfile sets up the handler from Caddyfile tokens.
func ParseCaddyfile(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	m := new(Handler)
	err := m.UnmarshalCaddyfile(h.Dispenser)
	return m, err
}

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens. Syntax:
//
//	api_auth [<matcher>] {
//		keys_file       <path>
//		key             <sha256> <user> [<scopes...>]
//		no_env
//		header          <header>
//		realm           <realm>
//		anonymous       <methods...>
//		scope           <scope> <methods...>
//		user_header     <header>
//		scopes_header   <header>
//		keep_credential
//		reload_interval <duration>
//		development
//	}
func (h *Handler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // consume directive name
	if d.NextArg() {
		return d.ArgErr()
	}
	seen := map[string]bool{}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		opt := d.Val()
		if opt != "key" && opt != "scope" {
			if seen[opt] {
				return d.Errf("%s already specified", opt)
			}
			seen[opt] = true
		}
		args := d.RemainingArgs()
		one := func(dst *string) error {
			if len(args) != 1 {
				return d.ArgErr()
			}
			*dst = args[0]
			return nil
		}
		flag := func(dst *bool) error {
			if len(args) != 0 {
				return d.ArgErr()
			}
			*dst = true
			return nil
		}
		var err error
		switch opt {
		case "keys_file":
			err = one(&h.KeysFile)
		case "header":
			err = one(&h.Header)
		case "realm":
			err = one(&h.Realm)
		case "user_header":
			err = one(&h.UserHeader)
		case "scopes_header":
			err = one(&h.ScopesHeader)
		case "no_env":
			err = flag(&h.NoEnv)
		case "keep_credential":
			err = flag(&h.KeepCredential)
		case "development":
			err = flag(&h.Development)
		case "key":
			if len(args) < 2 {
				return d.Errf("key takes a sha256, a user and optional scopes")
			}
			h.Keys = append(h.Keys, KeyEntry{SHA256: args[0], User: args[1], Scopes: args[2:]})
		case "anonymous":
			if len(args) == 0 {
				return d.ArgErr()
			}
			for _, m := range args {
				h.Anonymous = append(h.Anonymous, strings.ToUpper(m))
			}
		case "scope":
			if len(args) < 2 {
				return d.Errf("scope takes a scope and the methods that need it")
			}
			if h.Scopes == nil {
				h.Scopes = map[string]string{}
			}
			for _, m := range args[1:] {
				m = strings.ToUpper(m)
				if _, dup := h.Scopes[m]; dup {
					return d.Errf("scope for %s already specified", m)
				}
				h.Scopes[m] = args[0]
			}
		case "reload_interval":
			var s string
			if err = one(&s); err == nil {
				dur, perr := caddy.ParseDuration(s)
				if perr != nil || dur <= 0 {
					return d.Errf("reload_interval: invalid duration '%s'", s)
				}
				h.ReloadInterval = caddy.Duration(dur)
			}
		default:
			return d.Errf("unrecognized subdirective '%s'", opt)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// Interface guard
var _ caddyfile.Unmarshaler = (*Handler)(nil)
