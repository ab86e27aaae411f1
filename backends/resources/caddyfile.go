package resources

import (
	"encoding/json"
	"strings"

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
//	resources [<matcher>] {
//		database      <path>
//		durability    full|normal
//		prefix        <path>
//		max_body      <size>
//		user_header   <header>
//		scopes_header <header>
//		admin_scope   <scope>
//		collection <name> {
//			key     <field>
//			parent  <collection>
//			cascade
//			upsert
//			owned
//			field <name> [<type>] [required] [write_only] [enum <values...>] [default <value>]
//		}
//	}
//
// `enum` takes the rest of the line, so put it last (or after `default`).
// Enum and default values are read as JSON when they parse as JSON and the
// field is not a string, else as strings.
func (h *Handler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // consume directive name
	if d.NextArg() {
		return d.ArgErr()
	}
	seen := map[string]bool{}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		opt := d.Val()
		if opt != "collection" {
			if seen[opt] {
				return d.Errf("%s already specified", opt)
			}
			seen[opt] = true
		}
		var err error
		switch opt {
		case "database":
			err = oneArg(d, &h.Database)
		case "durability":
			err = oneArg(d, &h.Durability)
		case "prefix":
			err = oneArg(d, &h.Prefix)
		case "user_header":
			err = oneArg(d, &h.UserHeader)
		case "scopes_header":
			err = oneArg(d, &h.ScopesHeader)
		case "admin_scope":
			err = oneArg(d, &h.AdminScope)
		case "max_body":
			var s string
			if err = oneArg(d, &s); err == nil {
				size, perr := humanize.ParseBytes(s)
				if perr != nil || size == 0 || size > 1<<30 {
					return d.Errf("max_body: invalid size '%s'", s)
				}
				h.MaxBody = int64(size)
			}
		case "collection":
			c, cerr := parseCollection(d)
			if cerr != nil {
				return cerr
			}
			h.Collections = append(h.Collections, c)
		default:
			return d.Errf("unrecognized subdirective '%s'", opt)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

func oneArg(d *caddyfile.Dispenser, dst *string) error {
	if !d.NextArg() {
		return d.ArgErr()
	}
	*dst = d.Val()
	if d.NextArg() {
		return d.ArgErr()
	}
	return nil
}

func parseCollection(d *caddyfile.Dispenser) (*Collection, error) {
	c := new(Collection)
	if err := oneArg(d, &c.Name); err != nil {
		return nil, err
	}
	seen := map[string]bool{}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		opt := d.Val()
		if opt != "field" {
			if seen[opt] {
				return nil, d.Errf("collection %s: %s already specified", c.Name, opt)
			}
			seen[opt] = true
		}
		switch opt {
		case "key":
			if err := oneArg(d, &c.Key); err != nil {
				return nil, err
			}
		case "parent":
			if err := oneArg(d, &c.Parent); err != nil {
				return nil, err
			}
		case "cascade", "upsert", "owned":
			if d.NextArg() {
				return nil, d.ArgErr()
			}
			switch opt {
			case "cascade":
				c.Cascade = true
			case "upsert":
				c.Upsert = true
			case "owned":
				c.Owned = true
			}
		case "field":
			f, err := parseField(d)
			if err != nil {
				return nil, err
			}
			c.Fields = append(c.Fields, f)
		default:
			return nil, d.Errf("collection %s: unrecognized option '%s'", c.Name, opt)
		}
	}
	return c, nil
}

func parseField(d *caddyfile.Dispenser) (Field, error) {
	var f Field
	if !d.NextArg() {
		return f, d.ArgErr()
	}
	f.Name = d.Val()
	for d.NextArg() {
		switch v := d.Val(); v {
		case "string", "number", "integer", "boolean", "object", "array":
			if f.Type != "" {
				return f, d.Errf("field %s: type already specified", f.Name)
			}
			f.Type = v
		case "required":
			f.Required = true
		case "write_only":
			f.WriteOnly = true
		case "default":
			if !d.NextArg() {
				return f, d.ArgErr()
			}
			f.Default = literal(f.Type, d.Val())
		case "enum":
			for d.NextArg() {
				f.Enum = append(f.Enum, literal(f.Type, d.Val()))
			}
			if len(f.Enum) == 0 {
				return f, d.Errf("field %s: enum needs values", f.Name)
			}
		default:
			return f, d.Errf("field %s: unrecognized option '%s'", f.Name, v)
		}
	}
	return f, nil
}

// literal reads a Caddyfile token as a value for a field of type typ.
func literal(typ, tok string) any {
	if tok == "" || typ == "string" || typ == "" && !strings.ContainsAny(tok[:1], "-0123456789tfn[{\"") {
		return tok
	}
	var v any
	if err := json.Unmarshal([]byte(tok), &v); err != nil {
		return tok
	}
	return v
}

// Interface guard
var _ caddyfile.Unmarshaler = (*Handler)(nil)
