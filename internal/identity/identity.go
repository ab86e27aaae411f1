// Package identity is the one definition of how the gateway tells a
// backend who is calling: the request headers api_auth sets (and every
// module removes when a client sends them), the default API-key header,
// and the placeholders the other modules read.
package identity

import (
	"net/http"
	"net/textproto"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// The default header names; api_auth can be configured to use others.
const (
	UserHeader   = "X-Auth-User"   // the authenticated user
	ScopesHeader = "X-Auth-Scopes" // the user's scopes, space-separated
	KeyHeader    = "X-API-Key"     // where a client may send its API key, besides Authorization
)

// Placeholders api_auth sets on success.
const (
	UserPlaceholder   = "http.auth.user.id"
	ScopesPlaceholder = "http.auth.user.scopes"
	KeyIDPlaceholder  = "http.auth.user.key_id"
	IssuerPlaceholder = "http.auth.user.issuer" // a token's issuer
)

// authorizationConsumedVar is set when api_auth authenticated the request
// with its Authorization header: that credential is the gateway's own, not
// one a backend must see (RFC 9111 §3.5 is about credentials the cache
// cannot judge).
const authorizationConsumedVar = "restgate.auth.authorization_consumed"

// MarkAuthorizationConsumed records that r's Authorization header carried
// the API key api_auth checked.
func MarkAuthorizationConsumed(r *http.Request) {
	caddyhttp.SetVar(r.Context(), authorizationConsumedVar, true)
}

// ForeignAuthorization reports whether r carries an Authorization header
// that the gateway did not check itself (Basic, Digest, any other scheme):
// a shared cache must not answer such a request from, or store its
// response for, anyone else unless the response allows it (RFC 9111 §3.5).
func ForeignAuthorization(r *http.Request) bool {
	if len(r.Header["Authorization"]) == 0 {
		return false
	}
	consumed, _ := caddyhttp.GetVar(r.Context(), authorizationConsumedVar).(bool)
	return !consumed
}

// Principal is who made a request, for cache keys: the user and the scopes
// the key carried (a response may depend on either), both empty when
// anonymous.
func Principal(r *http.Request) (user, scopes string) {
	repl, ok := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	if !ok {
		return "", ""
	}
	user, _ = repl.GetString(UserPlaceholder)
	if user != "" {
		scopes, _ = repl.GetString(ScopesPlaceholder)
	}
	return user, scopes
}

// protected are the header names a client may never set, nominate as
// hop-by-hop, or send as a trailer: the identity headers (the defaults and
// every name an api_auth was configured with) and the headers the gateway
// and its proxy set themselves.
var (
	protectMu sync.Mutex
	protected atomic.Pointer[[]string] // canonical names; replaced whole, read without a lock
)

func init() {
	Protect(UserHeader, ScopesHeader, "X-Request-Id", "X-Forwarded-For", "X-Forwarded-Proto",
		"X-Forwarded-Host", "Forwarded", "Via")
}

// Protect adds header names to the protected set. api_auth calls it for
// the identity headers it is configured with; names are never removed
// (protecting a name no longer used costs nothing).
func Protect(names ...string) {
	protectMu.Lock()
	defer protectMu.Unlock()
	var next []string
	if cur := protected.Load(); cur != nil {
		next = slices.Clone(*cur)
	}
	for _, n := range names {
		if n = http.CanonicalHeaderKey(n); !slices.Contains(next, n) {
			next = append(next, n)
		}
	}
	protected.Store(&next)
}

func isProtected(name string) bool {
	return slices.Contains(*protected.Load(), http.CanonicalHeaderKey(textproto.TrimString(name)))
}

// isIdentity reports whether a protected name is one a client might use to
// claim an identity (every protected name but those the proxy sets from
// the connection itself).
func isIdentity(name string) bool {
	switch name {
	case "X-Request-Id", "X-Forwarded-For", "X-Forwarded-Proto", "X-Forwarded-Host", "Forwarded", "Via":
		return false
	}
	return true
}

// Scrub makes sure nothing a client sends can speak for the gateway,
// whatever route the request takes (with api_auth or public): it removes
// client-sent identity headers, removes protected names from Connection
// (which would make the proxy strip the gateway's own identity headers as
// hop-by-hop), and returns a body wrapper that removes protected trailers
// before the proxy forwards them.
func Scrub(r *http.Request) {
	for _, name := range *protected.Load() {
		if isIdentity(name) {
			delete(r.Header, name)
		}
	}
	if conn := r.Header["Connection"]; len(conn) > 0 {
		var kept []string
		for _, line := range conn {
			for _, tok := range strings.Split(line, ",") {
				if tok = textproto.TrimString(tok); tok != "" && !isProtected(tok) {
					kept = append(kept, tok)
				}
			}
		}
		if len(kept) == 0 {
			delete(r.Header, "Connection")
		} else {
			r.Header["Connection"] = []string{strings.Join(kept, ", ")}
		}
	}
	for name := range r.Trailer { // declared trailers: never a protected one
		if isProtected(name) {
			delete(r.Trailer, name)
		}
	}
}

// ScrubTrailers removes protected names from trailers that arrived with
// the body; call it when the body reaches EOF, before the proxy copies them.
func ScrubTrailers(r *http.Request) {
	for name := range r.Trailer {
		if isProtected(name) {
			delete(r.Trailer, name)
		}
	}
}
