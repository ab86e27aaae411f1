package apiauth

import (
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens. Syntax:
//
//	api_auth [<matcher>] {
//		keys_file       <path>
//		key             <sha256> <user> [<scopes...>]
//		no_env
//		header          <header>
//		realm           <realm>
//		anonymous       <methods...>
//		public          <paths...>
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
		if opt != "key" && opt != "scope" && opt != "public" {
			if seen[opt] {
				return d.Errf("%s already specified", opt)
			}
			seen[opt] = true
		}
		var ok bool
		switch opt {
		case "keys_file":
			ok = d.AllArgs(&h.KeysFile)
		case "header":
			ok = d.AllArgs(&h.Header)
		case "realm":
			ok = d.AllArgs(&h.Realm)
		case "user_header":
			ok = d.AllArgs(&h.UserHeader)
		case "scopes_header":
			ok = d.AllArgs(&h.ScopesHeader)
		case "no_env":
			ok, h.NoEnv = d.CountRemainingArgs() == 0, true
		case "keep_credential":
			ok, h.KeepCredential = d.CountRemainingArgs() == 0, true
		case "development":
			ok, h.Development = d.CountRemainingArgs() == 0, true
		case "reload_interval":
			var s string
			if ok = d.AllArgs(&s); ok {
				dur, err := caddy.ParseDuration(s)
				if err != nil || dur <= 0 {
					return d.Errf("reload_interval: invalid duration '%s' (use a Go duration such as 1s or 500ms)", s)
				}
				h.ReloadInterval = caddy.Duration(dur)
			}
		case "key":
			args := d.RemainingArgs()
			if len(args) < 2 {
				return d.Errf("key takes a sha256, a user and optional scopes")
			}
			h.Keys = append(h.Keys, KeyEntry{SHA256: args[0], User: args[1], Scopes: args[2:]})
			ok = true
		case "anonymous":
			args := d.RemainingArgs()
			for _, m := range args {
				h.Anonymous = append(h.Anonymous, strings.ToUpper(m))
			}
			ok = len(args) > 0
		case "public":
			args := d.RemainingArgs()
			h.Public = append(h.Public, args...)
			ok = len(args) > 0
		case "scope":
			args := d.RemainingArgs()
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
			ok = true
		default:
			return d.Errf("unrecognized subdirective '%s'", opt)
		}
		if !ok {
			return d.ArgErr()
		}
	}
	return nil
}

// Interface guard
var _ caddyfile.Unmarshaler = (*Handler)(nil)
