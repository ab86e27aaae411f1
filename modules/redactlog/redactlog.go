// Package redactlog implements caddy.logging.encoders.filter.api_redact: an
// access-log field filter that removes credentials by pattern rather than
// by a list of exact names. On `request>headers` it replaces the value of
// every header whose name looks like a credential (`Authorization`,
// `X-Api-Key`, `Api-Key`, `Token`, `X-Auth-Token`, `X-Access-Token`, `Cookie`,
// …); on `request>uri` it replaces the value of every such query parameter
// (`api_key`, `API_KEY`, `apiKey`, `access-token`, `password`, `auth`, …).
// In both, any value that is a key api_auth knows (by its SHA-256) is
// replaced too, wherever the client put it.
package redactlog

import (
	"net/url"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/logging"
	"go.uber.org/zap/zapcore"

	"github.com/restgate/restgate/internal/redact"
	"github.com/restgate/restgate/modules/apiauth"
)

func init() {
	caddy.RegisterModule(Filter{})
}

// Filter redacts credentials in request headers and request URIs.
type Filter struct{}

// CaddyModule returns the Caddy module information.
func (Filter) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "caddy.logging.encoders.filter.api_redact",
		New: func() caddy.Module { return new(Filter) },
	}
}

// UnmarshalCaddyfile reads `api_redact`, which takes no options.
func (*Filter) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // consume filter name
	if d.NextArg() {
		return d.ArgErr()
	}
	return nil
}

// Filter redacts the field: a header map, a URI, or a list of URIs.
func (Filter) Filter(in zapcore.Field) zapcore.Field {
	switch v := in.Interface.(type) {
	case caddyhttp.LoggableHTTPHeader:
		in.Interface = headers{v}
	case caddyhttp.LoggableStringArray:
		out := make(caddyhttp.LoggableStringArray, len(v))
		for i, s := range v {
			out[i] = redactURI(s)
		}
		in.Interface = out
	default:
		if in.Type == zapcore.StringType {
			in.String = redactURI(in.String)
		}
	}
	return in
}

// headers marshals a header map with credentials replaced.
type headers struct{ caddyhttp.LoggableHTTPHeader }

func (h headers) MarshalLogObject(enc zapcore.ObjectEncoder) error {
	for name, values := range h.Header {
		out := values
		if redact.CredentialName(name) {
			out = []string{redact.Replacement}
		} else {
			for i, v := range values {
				if apiauth.IsKnownKey(v) {
					if &out[0] == &values[0] {
						out = append([]string(nil), values...)
					}
					out[i] = redact.Replacement
				}
			}
		}
		if err := enc.AddArray(name, caddyhttp.LoggableStringArray(out)); err != nil {
			return err
		}
	}
	return nil
}

// redactURI returns a request target with the value of every credential-like
// query parameter, and of every parameter holding a known key, replaced.
// The rest of the target is left as it was sent.
func redactURI(s string) string {
	path, query, ok := strings.Cut(s, "?")
	if !ok || query == "" {
		return s
	}
	parts := strings.Split(query, "&")
	changed := false
	for i, p := range parts {
		k, v, _ := strings.Cut(p, "=")
		name, err := url.QueryUnescape(k)
		if err != nil {
			name = k
		}
		val, err := url.QueryUnescape(v)
		if err != nil {
			val = v
		}
		if v != "" && (redact.CredentialName(name) || apiauth.IsKnownKey(val)) {
			parts[i] = k + "=" + redact.Replacement
			changed = true
		}
	}
	if !changed {
		return s
	}
	return path + "?" + strings.Join(parts, "&")
}

// Interface guards
var (
	_ logging.LogFieldFilter = Filter{}
	_ caddyfile.Unmarshaler  = (*Filter)(nil)
)
