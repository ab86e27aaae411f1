package apiauth

import (
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/restgate/restgate/internal/dispense"
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
//		jwt <issuer> {
//			jwks_url    <https url>
//			audience    <audiences...>
//			algorithms  <algs...>
//			user_claim  <claim>
//			token_types <types...>|any
//			subjects_are_key_users
//			scope_claim <claim>
//			scope_map   <token scope> <scope>
//			leeway      <duration>
//			ca_file     <pem file>
//			refresh     <duration>
//			min_refetch <duration>
//		}
//	}
func (h *Handler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // consume directive name
	err := dispense.Options(d, []string{"key", "scope", "public", "jwt"}, func(opt string) error {
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
		case "jwt":
			j, err := unmarshalJWT(d)
			if err != nil {
				return err
			}
			h.JWT = append(h.JWT, j)
			ok = true
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
		return nil
	})
	return err
}

// unmarshalJWT reads one `jwt <issuer> { ... }` block.
func unmarshalJWT(d *caddyfile.Dispenser) (*JWTIssuer, error) {
	j := new(JWTIssuer)
	if !d.NextArg() {
		return nil, d.Errf("jwt takes the issuer, as its tokens' iss claim names it")
	}
	j.Issuer = d.Val()
	if d.NextArg() {
		return nil, d.ArgErr()
	}
	seen := map[string]bool{}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		opt := d.Val()
		if seen[opt] && opt != "scope_map" {
			return nil, d.Errf("jwt %s: %s already specified", j.Issuer, opt)
		}
		seen[opt] = true
		ok := true
		switch opt {
		case "jwks_url":
			ok = d.AllArgs(&j.JWKSURL)
		case "audience":
			j.Audience = d.RemainingArgs()
			ok = len(j.Audience) > 0
		case "algorithms":
			j.Algorithms = d.RemainingArgs()
			ok = len(j.Algorithms) > 0
		case "user_claim":
			ok = d.AllArgs(&j.UserClaim)
		case "token_types":
			j.TokenTypes = d.RemainingArgs()
			ok = len(j.TokenTypes) > 0
		case "subjects_are_key_users":
			ok, j.SubjectsAreKeyUsers = d.CountRemainingArgs() == 0, true
		case "scope_claim":
			ok = d.AllArgs(&j.ScopeClaim)
		case "ca_file":
			ok = d.AllArgs(&j.CAFile)
		case "scope_map":
			var from, to string
			if ok = d.AllArgs(&from, &to); ok {
				if j.ScopeMap == nil {
					j.ScopeMap = map[string]string{}
				}
				j.ScopeMap[from] = to
			}
		case "leeway", "refresh", "min_refetch":
			var v string
			if ok = d.AllArgs(&v); ok {
				dur, err := caddy.ParseDuration(v)
				if err != nil || dur < 0 {
					return nil, d.Errf("jwt %s: %s: invalid duration '%s' (use a duration such as 30s or 5m)", j.Issuer, opt, v)
				}
				switch opt {
				case "leeway":
					j.Leeway = caddy.Duration(dur)
				case "refresh":
					j.Refresh = caddy.Duration(dur)
				default:
					j.MinRefetch = caddy.Duration(dur)
				}
			}
		default:
			return nil, d.Errf("jwt %s: unrecognized option '%s'", j.Issuer, opt)
		}
		if !ok {
			return nil, d.ArgErr()
		}
	}
	return j, nil
}

// Interface guard
var _ caddyfile.Unmarshaler = (*Handler)(nil)
