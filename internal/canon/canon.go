// Package canon defines the one canonical form of a request's target that
// every restgate module uses: for what it forwards, for the per-resource
// If-Match lock, for cache keys and for invalidation. Several spellings of
// one resource (`/v1/x`, `//v1/x`, `/v1/./x`, `API.localhost:443`) are one
// resource to a backend, so they must be one resource to the gateway too.
//
// The choices, documented in the README's security section:
//   - the path is cleaned as path.Clean does (`//` → `/`, `.` and `..`
//     segments resolved), keeping a trailing slash;
//   - the host is lower-cased, without a trailing dot and without the
//     scheme's default port;
//   - an encoded slash (`%2F`) in the path is refused: backends disagree on
//     whether `a%2Fb` is one segment or two, so the gateway cannot know
//     which resource it names (Apache refuses it by default too).
package canon

import (
	"errors"
	"net"
	"net/http"
	"path"
	"strings"
)

// ErrEncodedSlash is returned by Normalize for a path with `%2F`.
var ErrEncodedSlash = errors.New("the path contains an encoded slash (%2F), which restgate refuses: backends disagree on whether it separates path segments")

// Normalize rewrites r's target (URL path and Host) to the canonical form,
// in place; it is idempotent and costs no allocation when the target is
// already canonical. A target that has no canonical form is an error, and
// r is left as it was.
func Normalize(r *http.Request) error {
	if r.URL.RawPath != "" && hasEncodedSlash(r.URL.RawPath) {
		return ErrEncodedSlash
	}
	if p := Path(r.URL.Path); p != r.URL.Path {
		r.URL.Path, r.URL.RawPath = p, ""
	}
	r.Host = Host(r)
	return nil
}

func hasEncodedSlash(raw string) bool {
	for i := 0; i+2 < len(raw); i++ {
		if raw[i] == '%' && raw[i+1] == '2' && (raw[i+2] == 'f' || raw[i+2] == 'F') {
			return true
		}
	}
	return false
}

// Path is the canonical form of a decoded path: cleaned, with a trailing
// slash kept. A path that does not start with a slash (`*`) is kept as is.
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

// Key names the resource r targets, for locks, cache keys and
// invalidation: the canonical host and path.
func Key(r *http.Request) string {
	return Host(r) + "\x00" + Path(r.URL.Path)
}

// KeyFor names the resource at path p on r's host (a collection, or a
// Location the response named).
func KeyFor(r *http.Request, p string) string {
	return Host(r) + "\x00" + Path(p)
}
