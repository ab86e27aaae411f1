package etag

import (
	"net/http"
	"strings"
)

// Targeted cache control (RFC 9213). A backend behind a CDN says, in
// `CDN-Cache-Control`, how CDNs — caches that a service operator runs in
// front of its origin — should cache a response, apart from what it tells
// browsers in Cache-Control. The gateway's cache is such a cache: when the
// field is present and valid, its directives replace Cache-Control's for
// what the gateway stores and for how long (§2.1); Cache-Control still goes
// to the client as the backend sent it. A field that is not a valid
// Structured Fields Dictionary (RFC 8941 §3.2) is ignored, as §2.1 asks.

// cacheDirectives are the directives the gateway's cache follows for a
// response: CDN-Cache-Control's when present and valid, else
// Cache-Control's.
func cacheDirectives(hdr http.Header) directives {
	if lines := hdr["Cdn-Cache-Control"]; len(lines) > 0 {
		if d, ok := parseTargeted(strings.Join(lines, ",")); ok {
			return d
		}
	}
	return parseCacheControl(hdr)
}

// parseTargeted reads a targeted field as a Structured Fields Dictionary:
// `max-age=60, private` → {"max-age": "60", "private": ""}. A member whose
// value is the boolean false is absent; parameters are ignored; the last
// occurrence of a key wins (RFC 8941 §4.2.2).
func parseTargeted(s string) (directives, bool) {
	d := directives{}
	p := sfParser{s: s}
	p.skipSP()
	if p.done() {
		return d, true // empty: a valid, empty dictionary
	}
	for {
		key, ok := p.key()
		if !ok {
			return nil, false
		}
		val, present := "", true
		if p.peek('=') {
			p.i++
			var ok bool
			if val, present, ok = p.bareItem(); !ok {
				return nil, false
			}
		}
		if !p.params() {
			return nil, false
		}
		if present {
			d[key] = val
		} else {
			delete(d, key)
		}
		p.skipOWS()
		if p.done() {
			return d, true
		}
		if !p.peek(',') {
			return nil, false
		}
		p.i++
		p.skipOWS()
		if p.done() {
			return nil, false // a trailing comma
		}
	}
}

type sfParser struct {
	s string
	i int
}

func (p *sfParser) done() bool       { return p.i >= len(p.s) }
func (p *sfParser) peek(c byte) bool { return p.i < len(p.s) && p.s[p.i] == c }
func (p *sfParser) skipSP() {
	for p.peek(' ') {
		p.i++
	}
}
func (p *sfParser) skipOWS() {
	for p.peek(' ') || p.peek('\t') {
		p.i++
	}
}
func isLCAlpha(c byte) bool { return 'a' <= c && c <= 'z' }
func isDigit(c byte) bool   { return '0' <= c && c <= '9' }
func isAlpha(c byte) bool   { return isLCAlpha(c) || 'A' <= c && c <= 'Z' }
func isKeyChar(c byte) bool { return isLCAlpha(c) || isDigit(c) || strings.IndexByte("_-.*", c) >= 0 }
func isTokenChar(c byte) bool {
	return isAlpha(c) || isDigit(c) || strings.IndexByte("!#$%&'*+-.^_`|~:/", c) >= 0
}
func isBase64Char(c byte) bool { return isAlpha(c) || isDigit(c) || c == '+' || c == '/' || c == '=' }

// key reads an sf-key (RFC 8941 §3.1.2).
func (p *sfParser) key() (string, bool) {
	if p.done() || !(isLCAlpha(p.s[p.i]) || p.s[p.i] == '*') {
		return "", false
	}
	start := p.i
	for p.i < len(p.s) && isKeyChar(p.s[p.i]) {
		p.i++
	}
	return p.s[start:p.i], true
}

// bareItem reads an item's value (§3.3) as the directive's value: an
// integer or decimal as written, a string unquoted, a token as is, a byte
// sequence as written; present is false for the boolean false.
func (p *sfParser) bareItem() (val string, present, ok bool) {
	if p.done() {
		return "", false, false
	}
	start := p.i
	switch c := p.s[p.i]; {
	case c == '-' || isDigit(c):
		if c == '-' {
			p.i++
		}
		digits, dot := 0, false
		for p.i < len(p.s) && (isDigit(p.s[p.i]) || p.s[p.i] == '.' && !dot) {
			if p.s[p.i] == '.' {
				dot = true
			} else {
				digits++
			}
			p.i++
		}
		if digits == 0 || digits > 15 || p.s[p.i-1] == '.' {
			return "", false, false
		}
		return p.s[start:p.i], true, true
	case c == '"':
		var b strings.Builder
		for p.i++; p.i < len(p.s); p.i++ {
			switch ch := p.s[p.i]; {
			case ch == '\\':
				if p.i+1 >= len(p.s) || (p.s[p.i+1] != '"' && p.s[p.i+1] != '\\') {
					return "", false, false
				}
				p.i++
				b.WriteByte(p.s[p.i])
			case ch == '"':
				p.i++
				return b.String(), true, true
			case ch < 0x20 || ch > 0x7e:
				return "", false, false
			default:
				b.WriteByte(ch)
			}
		}
		return "", false, false // unterminated
	case c == '?':
		if p.i+1 < len(p.s) && (p.s[p.i+1] == '0' || p.s[p.i+1] == '1') {
			p.i += 2
			return "", p.s[p.i-1] == '1', true
		}
		return "", false, false
	case c == ':':
		for p.i++; p.i < len(p.s) && isBase64Char(p.s[p.i]); p.i++ {
		}
		if !p.peek(':') {
			return "", false, false
		}
		p.i++
		return p.s[start:p.i], true, true
	case isAlpha(c) || c == '*':
		for p.i < len(p.s) && isTokenChar(p.s[p.i]) {
			p.i++
		}
		return p.s[start:p.i], true, true
	}
	return "", false, false
}

// params skips an item's parameters (§3.1.2), checking their syntax.
func (p *sfParser) params() bool {
	for p.peek(';') {
		p.i++
		p.skipSP()
		if _, ok := p.key(); !ok {
			return false
		}
		if p.peek('=') {
			p.i++
			if _, _, ok := p.bareItem(); !ok {
				return false
			}
		}
	}
	return true
}
