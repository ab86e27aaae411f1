package resources

import (
	"encoding/json"
	"strconv"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/dustin/go-humanize"

	"github.com/restgate/restgate/internal/dispense"
)

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens. Syntax:
//
//	resources [<matcher>] {
//		database      <path>
//		durability    full|normal
//		store_timeout <duration>
//		prefix        <path>
//		max_body      <size>
//		user_header   <header>
//		scopes_header <header>
//		admin_scope   <scope>
//		api_key_header <header>
//		feed_retention     <duration>
//		feed_max_changes   <n>
//		feed_heartbeat     <duration>
//		feed_max_streams   <n>
//		feed_write_timeout <duration>
//		collection <name> {
//			key     <field>
//			parent  <collection>
//			cascade
//			upsert
//			owned
//			cache_control <directives...>
//			field <name> [<type>] [required] [write_only] [enum <values...>] [default <value>]
//		}
//	}
//
// `cache_control` takes the rest of the line (`cache_control private,
// max-age=60`); default `no-cache`, `private, no-cache` when owned.
// `enum` takes the rest of the line, so put it last (or after `default`).
// Enum and default values are read as JSON when they parse as JSON and the
// field is not a string, else as strings.
func (h *Handler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // consume directive name
	err := dispense.Options(d, []string{"collection"}, func(opt string) error {
		ok := true
		switch opt {
		case "database":
			ok = d.AllArgs(&h.Database)
		case "durability":
			ok = d.AllArgs(&h.Durability)
		case "store_timeout":
			var s string
			if ok = d.AllArgs(&s); ok {
				dur, err := caddy.ParseDuration(s)
				if err != nil || dur <= 0 {
					return d.Errf("store_timeout: invalid duration '%s' (use a Go duration such as 5s or 500ms)", s)
				}
				h.StoreTimeout = caddy.Duration(dur)
			}
		case "feed_retention", "feed_heartbeat", "feed_write_timeout":
			var s string
			if ok = d.AllArgs(&s); ok {
				dur, err := caddy.ParseDuration(s)
				if err != nil || dur <= 0 {
					return d.Errf("%s: invalid duration '%s' (use a Go duration such as 15s or 24h)", opt, s)
				}
				*map[string]*caddy.Duration{"feed_retention": &h.FeedRetention, "feed_heartbeat": &h.FeedHeartbeat, "feed_write_timeout": &h.FeedWriteTimeout}[opt] = caddy.Duration(dur)
			}
		case "feed_max_changes", "feed_max_streams":
			var s string
			if ok = d.AllArgs(&s); ok {
				n, err := strconv.Atoi(s)
				if err != nil || n <= 0 {
					return d.Errf("%s: want a whole number from 1, not '%s'", opt, s)
				}
				*map[string]*int{"feed_max_changes": &h.FeedMaxChanges, "feed_max_streams": &h.FeedMaxStreams}[opt] = n
			}
		case "prefix":
			ok = d.AllArgs(&h.Prefix)
		case "user_header":
			ok = d.AllArgs(&h.UserHeader)
		case "scopes_header":
			ok = d.AllArgs(&h.ScopesHeader)
		case "admin_scope":
			ok = d.AllArgs(&h.AdminScope)
		case "api_key_header":
			ok = d.AllArgs(&h.APIKeyHeader)
		case "max_body":
			var s string
			if ok = d.AllArgs(&s); ok {
				size, err := humanize.ParseBytes(s)
				if err != nil || size == 0 || size > 1<<30 {
					return d.Errf("max_body: invalid size '%s' (use a size such as 1MiB)", s)
				}
				h.MaxBody = int64(size)
			}
		case "collection":
			c, err := parseCollection(d)
			if err != nil {
				return err
			}
			h.Collections = append(h.Collections, c)
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

func parseCollection(d *caddyfile.Dispenser) (*Collection, error) {
	c := new(Collection)
	if !d.AllArgs(&c.Name) {
		return nil, d.ArgErr()
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
			if !d.AllArgs(&c.Key) {
				return nil, d.ArgErr()
			}
		case "parent":
			if !d.AllArgs(&c.Parent) {
				return nil, d.ArgErr()
			}
		case "cache_control":
			args := d.RemainingArgs()
			if len(args) == 0 {
				return nil, d.ArgErr()
			}
			c.CacheControl = strings.Join(args, " ")
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
