// Package apihost provides the http.matchers.api_host request matcher, which
// matches requests addressed to an API host such as api.example.com.
package apihost

import (
	"fmt"
	"net"
	"net/http"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"golang.org/x/net/idna"
)

func init() {
	caddy.RegisterModule(MatchAPIHost{})
}

// DefaultLabel is the first host label an API host carries when none is configured.
const DefaultLabel = "api"

// maxHostLen bounds the host names the matcher looks at (RFC 1035: 253
// octets plus an optional trailing dot); anything longer never matches.
const maxHostLen = 254

// MatchAPIHost matches a request whose host's first label is the API label
// (`api` by default): `api.localhost`, `API.Example.COM:8443` and
// `api.example.com.` all match; `www.example.com`, `apiary.example.com`,
// `example.com`, an IP literal and an empty Host do not. The comparison
// ignores case, the port and a trailing dot; internationalised names are
// compared in their ASCII (punycode) form. A Host with a port that is not a
// number from 1 to 65535 never matches.
//
// When it matches, the rest of the host is available to later handlers:
//
// Placeholder | Description
// ------------|-------------
// `{http.api_host.domain}` | the host without the API label, port and trailing dot, lower case (e.g. `example.com`)
// `{http.api_host.label}` | the label that matched (e.g. `api`)
type MatchAPIHost struct {
	// The first label an API host has. Default: `api`.
	Label string `json:"label,omitempty"`

	// If set, only these domains (the part after the label) match; for
	// example `example.com` admits `api.example.com` but not
	// `api.example.org`. Default: any domain.
	Domains []string `json:"domains,omitempty"`

	domains map[string]struct{}
}

// CaddyModule returns the Caddy module information.
func (MatchAPIHost) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.matchers.api_host",
		New: func() caddy.Module { return new(MatchAPIHost) },
	}
}

// Provision normalises the label and the domain allow-list.
func (m *MatchAPIHost) Provision(caddy.Context) error {
	if m.Label == "" {
		m.Label = DefaultLabel
	}
	label, err := normalize(m.Label)
	if err != nil || strings.Contains(label, ".") {
		return fmt.Errorf("api_host: invalid label %q", m.Label)
	}
	m.Label = label
	if len(m.Domains) > 0 {
		m.domains = make(map[string]struct{}, len(m.Domains))
		for _, d := range m.Domains {
			nd, err := normalize(d)
			if err != nil {
				return fmt.Errorf("api_host: invalid domain %q: %v", d, err)
			}
			m.domains[nd] = struct{}{}
		}
	}
	return nil
}

// Match returns true if r is addressed to an API host.
func (m MatchAPIHost) Match(r *http.Request) bool {
	match, _ := m.MatchWithError(r)
	return match
}

// MatchWithError returns true if r is addressed to an API host, and sets
// the {http.api_host.*} placeholders when it is.
func (m MatchAPIHost) MatchWithError(r *http.Request) (bool, error) {
	domain, ok := m.split(r.Host)
	if !ok {
		return false, nil
	}
	if repl, ok := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer); ok {
		repl.Set("http.api_host.domain", domain)
		repl.Set("http.api_host.label", m.label())
	}
	return true, nil
}

func (m MatchAPIHost) label() string {
	if m.Label == "" {
		return DefaultLabel
	}
	return m.Label
}

// split reports whether host (a Host header value, possibly with a port) is
// an API host, and returns its domain part.
func (m MatchAPIHost) split(host string) (string, bool) {
	if host == "" || len(host) > maxHostLen+6 { // room for ":65535"
		return "", false
	}
	if h, port, err := net.SplitHostPort(host); err == nil {
		if !validPort(port) {
			return "", false
		}
		host = h
	}
	if net.ParseIP(host) != nil || strings.HasPrefix(host, "[") {
		return "", false
	}
	label := m.label()
	// fast path: ASCII host with the label in front, no allocation
	if len(host) > len(label)+1 && host[len(label)] == '.' && strings.EqualFold(host[:len(label)], label) && isASCII(host) {
		domain := strings.TrimSuffix(host[len(label)+1:], ".")
		if domain == "" || !validDomain(domain) {
			return "", false
		}
		domain = lowerASCII(domain)
		return domain, m.allowed(domain)
	}
	if isASCII(host) {
		return "", false
	}
	// internationalised: compare the punycode form
	ascii, err := normalize(host)
	if err != nil {
		return "", false
	}
	return m.split(ascii)
}

func (m MatchAPIHost) allowed(domain string) bool {
	if m.domains == nil {
		return true
	}
	_, ok := m.domains[domain]
	return ok
}

// normalize returns the lower-case ASCII form of a host name without a
// trailing dot.
func normalize(name string) (string, error) {
	name = strings.TrimSuffix(strings.TrimSpace(name), ".")
	if name == "" {
		return "", fmt.Errorf("empty name")
	}
	ascii, err := idna.Lookup.ToASCII(name)
	if err != nil {
		return "", err
	}
	return strings.ToLower(ascii), nil
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}

// validDomain reports whether s is made of non-empty labels of letters,
// digits, hyphens and underscores.
func validDomain(s string) bool {
	labelLen := 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '.':
			if labelLen == 0 {
				return false
			}
			labelLen = 0
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '-', c == '_':
			labelLen++
			if labelLen > 63 {
				return false
			}
		default:
			return false
		}
	}
	return labelLen > 0
}

// validPort reports whether p is a decimal port number from 1 to 65535.
func validPort(p string) bool {
	if p == "" || len(p) > 5 {
		return false
	}
	n := 0
	for i := 0; i < len(p); i++ {
		if p[i] < '0' || p[i] > '9' {
			return false
		}
		n = n*10 + int(p[i]-'0')
	}
	return n >= 1 && n <= 65535
}

func lowerASCII(s string) string {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c >= 'A' && c <= 'Z' {
			return strings.ToLower(s)
		}
	}
	return s
}

// UnmarshalCaddyfile sets up the matcher from Caddyfile tokens. Syntax:
//
//	api_host [<domains...>] {
//		label <label>
//	}
func (m *MatchAPIHost) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // consume matcher name
	m.Domains = append(m.Domains, d.RemainingArgs()...)
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		switch d.Val() {
		case "label":
			if m.Label != "" {
				return d.Err("label already specified")
			}
			if !d.NextArg() {
				return d.ArgErr()
			}
			m.Label = d.Val()
			if d.NextArg() {
				return d.ArgErr()
			}
		case "domains":
			args := d.RemainingArgs()
			if len(args) == 0 {
				return d.ArgErr()
			}
			m.Domains = append(m.Domains, args...)
		default:
			return d.Errf("unrecognized api_host option '%s'", d.Val())
		}
	}
	if d.NextArg() {
		return d.ArgErr()
	}
	return nil
}

// Interface guards
var (
	_ caddy.Provisioner                 = (*MatchAPIHost)(nil)
	_ caddyhttp.RequestMatcherWithError = (*MatchAPIHost)(nil)
	_ caddyfile.Unmarshaler             = (*MatchAPIHost)(nil)
)
