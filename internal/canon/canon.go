// Package canon defines the forms of a request's target that every
// restgate module uses, in one place. There are three, each for one job:
//
//   - The canonical target (Normalize): what the gateway forwards. The
//     escaped path is normalised as RFC 3986 §6.2.2 says (only unreserved
//     `%XX` decoded, hex digits upper-cased, `.`/`..` and empty segments
//     resolved, a trailing slash kept) and the host lower-cased without the
//     scheme's default port. It never changes what the target means to a
//     backend: `a;b` and `a%3Bb` stay different.
//   - The cache key (CacheTarget): exact, from the canonical target. A cache
//     lookup must never answer one resource with another's response, so two
//     targets a backend could tell apart never share an entry.
//   - The resource key (ResourceKey): coarse, for everything where merging
//     two resources is safe and splitting one is not — the If-Match locks
//     (local and shared), the invalidation index and the invalidations sent
//     to other gateways, the Location comparison, and the Idempotency-Key
//     scope. No host, no port, no trailing slash, case folded, `;params`
//     stripped, every `%XX` decoded. Backends that ignore Host, strip or
//     redirect a trailing slash, or match paths without case (Express, DRF,
//     Flask, most routers) treat all of those as one resource; a lock or an
//     invalidation that merges two resources only serialises or drops more,
//     while one that splits a resource loses updates.
//
// Refused outright (a 400 problem from api_errors): an encoded slash (`%2F`),
// on which backends disagree whether it separates segments, and control
// characters (`%00`–`%1F`, `%7F`), which no resource name needs and which
// would let a key split a log line or a message between gateways.
package canon

import (
	"errors"
	"net"
	"net/http"
	"net/url"
	"path"
	"strings"
)

// ErrEncodedSlash is returned by Normalize for a path with `%2F`.
var ErrEncodedSlash = errors.New("the path contains an encoded slash (%2F), which restgate refuses: backends disagree on whether it separates path segments")

// ErrControlCharacter is returned by Normalize for a path with a control
// character (`%00`–`%1F`, `%7F`).
var ErrControlCharacter = errors.New("the path contains a control character (%00-%1F or %7F), which no resource name may contain")

// Normalize rewrites r's target (URL path and Host) to the canonical form,
// in place; it is idempotent and costs no allocation when the target is
// already canonical. A target that has no canonical form is an error, and
// r is left as it was.
func Normalize(r *http.Request) error {
	if hasControl(r.URL.Path) {
		return ErrControlCharacter
	}
	esc := r.URL.EscapedPath()
	if hasEncodedSlash(esc) {
		return ErrEncodedSlash
	}
	if c := EscapedPath(esc); c != esc {
		p, err := url.PathUnescape(c)
		if err != nil { // cannot happen: c is esc with valid escapes only
			return err
		}
		r.URL.Path, r.URL.RawPath = p, c
		if r.URL.EscapedPath() != c {
			r.URL.RawPath = ""
		}
	}
	r.Host = Host(r)
	return nil
}

func hasControl(p string) bool {
	for i := 0; i < len(p); i++ {
		if c := p[i]; c < 0x20 || c == 0x7f {
			return true
		}
	}
	return false
}

func hasEncodedSlash(raw string) bool {
	for i := 0; i+2 < len(raw); i++ {
		if raw[i] == '%' && raw[i+1] == '2' && (raw[i+2] == 'f' || raw[i+2] == 'F') {
			return true
		}
	}
	return false
}

// EscapedPath is the canonical form of an escaped path (RFC 3986 §6.2.2):
// `%XX` of an unreserved character decoded, every other `%XX` with upper-
// case hex digits, then cleaned as Path does.
func EscapedPath(esc string) string {
	return Path(normalizeEscapes(esc))
}

// normalizeEscapes decodes the `%XX` of unreserved characters (RFC 3986
// §2.3) and upper-cases the hex digits of the others (§6.2.2.1). An invalid
// escape is kept as it is.
func normalizeEscapes(s string) string {
	i := strings.IndexByte(s, '%')
	if i < 0 {
		return s
	}
	var b strings.Builder
	b.Grow(len(s))
	b.WriteString(s[:i])
	for ; i < len(s); i++ {
		c := s[i]
		if c != '%' || i+2 >= len(s) || !isHex(s[i+1]) || !isHex(s[i+2]) {
			b.WriteByte(c)
			continue
		}
		v := unhex(s[i+1])<<4 | unhex(s[i+2])
		if unreserved(v) {
			b.WriteByte(v)
		} else {
			b.WriteByte('%')
			b.WriteByte(upperHex(s[i+1]))
			b.WriteByte(upperHex(s[i+2]))
		}
		i += 2
	}
	return b.String()
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

func unhex(c byte) byte {
	switch {
	case c <= '9':
		return c - '0'
	case c <= 'F':
		return c - 'A' + 10
	}
	return c - 'a' + 10
}

func upperHex(c byte) byte {
	if 'a' <= c && c <= 'f' {
		return c - 'a' + 'A'
	}
	return c
}

func unreserved(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' ||
		c == '-' || c == '.' || c == '_' || c == '~'
}

// Path is the canonical form of a path: cleaned as path.Clean does (`//` →
// `/`, `.` and `..` segments resolved), with a trailing slash kept. A path
// that does not start with a slash (`*`) is kept as is.
func Path(p string) string {
	if p == "" {
		return "/"
	}
	if p[0] != '/' || clean(p) {
		return p
	}
	c := path.Clean(p)
	if p[len(p)-1] == '/' && c != "/" {
		c += "/"
	}
	return c
}

// clean reports whether p has no empty, `.` or `..` segment (but a final
// empty one: the trailing slash).
func clean(p string) bool {
	for i := 0; i < len(p); {
		j := strings.IndexByte(p[i+1:], '/')
		seg := p[i+1:]
		if j >= 0 {
			seg = p[i+1 : i+1+j]
		}
		last := j < 0
		if (seg == "" && !last) || seg == "." || seg == ".." {
			return false
		}
		if last {
			return true
		}
		i += 1 + j
	}
	return true
}

// Host is the canonical form of r's Host: lower case, no trailing dot, no
// default port for the scheme r arrived on.
func Host(r *http.Request) string { return HostOf(r.Host, r.TLS != nil) }

// HostOf is the canonical form of a host[:port] reached over TLS or not.
func HostOf(h string, tls bool) string {
	host, port, err := net.SplitHostPort(h)
	if err != nil {
		host, port = h, ""
	}
	lower := strings.ToLower(strings.TrimSuffix(host, "."))
	if (port == "443" && tls) || (port == "80" && !tls) {
		port = ""
	}
	switch {
	case port != "":
		if lower == host && err == nil && len(h) == len(host)+len(port)+1 {
			return h // already canonical
		}
		return net.JoinHostPort(lower, port)
	case strings.IndexByte(lower, ':') >= 0:
		return "[" + lower + "]" // IPv6 literal without a port
	}
	return lower
}

// CacheTarget names exactly what r targets, for cache keys: the canonical
// host and escaped path (the caller adds the query).
func CacheTarget(r *http.Request) string {
	return string(AppendCacheTarget(nil, r))
}

// AppendCacheTarget appends CacheTarget(r) to b, for a key built in one
// buffer.
func AppendCacheTarget(b []byte, r *http.Request) []byte {
	return append(append(append(b, Host(r)...), 0), EscapedPath(r.URL.EscapedPath())...)
}

// ResourceKey names the resource r targets, coarsely (see the package
// comment): for locks, invalidation and the Idempotency-Key scope.
func ResourceKey(r *http.Request) string { return ResourcePath(r.URL.Path) }

// ResourcePath is the resource key of a decoded path (a collection, or a
// Location a response named): lower case, each segment's `;params`
// stripped, empty and `.` segments dropped, `..` resolved, no trailing
// slash. The root is "/".
func ResourcePath(p string) string {
	if coarse(p) {
		return p
	}
	segs := make([]string, 0, 8)
	for seg := range strings.SplitSeq(strings.ToLower(p), "/") {
		if i := strings.IndexByte(seg, ';'); i >= 0 {
			seg = seg[:i]
		}
		switch seg {
		case "", ".":
		case "..":
			if len(segs) > 0 {
				segs = segs[:len(segs)-1]
			}
		default:
			segs = append(segs, seg)
		}
	}
	return "/" + strings.Join(segs, "/")
}

// coarse reports whether p is already a resource key: it starts with a
// slash, has no upper-case ASCII, no `;`, no non-ASCII byte, no empty,
// `.` or `..` segment and no trailing slash (but the root).
func coarse(p string) bool {
	if p == "/" {
		return true
	}
	if len(p) < 2 || p[0] != '/' || p[len(p)-1] == '/' {
		return false
	}
	for i := 0; i < len(p); i++ {
		if c := p[i]; c == ';' || 'A' <= c && c <= 'Z' || c >= 0x80 {
			return false
		}
	}
	return clean(p)
}
