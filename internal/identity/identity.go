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

// The default header names; api_auth can be configured to use others for
// the user and the scopes.
const (
	UserHeader   = "X-Auth-User"   // the authenticated user
	ScopesHeader = "X-Auth-Scopes" // the user's scopes, space-separated
	KeyHeader    = "X-API-Key"     // where a client may send its API key, besides Authorization

	// IssuerHeader names the issuer of a token whose subject is the user:
	// set only when the user is a token's subject (see Qualified), absent
	// for an API key's user. A backend tells principals apart by the pair
	// (issuer, user), never by the user alone.
	IssuerHeader = "X-Auth-Issuer"
)

// Placeholders api_auth sets on success.
const (
	UserPlaceholder      = "http.auth.user.id"
	ScopesPlaceholder    = "http.auth.user.scopes"
	KeyIDPlaceholder     = "http.auth.user.key_id"
	IssuerPlaceholder    = "http.auth.user.issuer"    // a token's issuer
	PrincipalPlaceholder = "http.auth.user.principal" // the qualified principal: see Qualified
)

// TokenPrincipalPrefix starts every token principal that Qualified
// builds; no API key's user may start with it (see ReservedUser).
const TokenPrincipalPrefix = "jwt:"

// Qualified is the principal of a user, the one name every internal key
// (cache entries, Idempotency-Key records, rate-limit buckets, owned
// documents) uses: an API key's user as it is (issuer empty), a token's
// subject qualified by its kind and issuer, `jwt:<issuer> <subject>`. An
// issuer never contains a space (api_auth refuses one at load), so the
// first space ends it, and no key user can start with `jwt:`: two
// principals are equal only if kind, issuer and subject are.
func Qualified(user, issuer string) string {
	if issuer == "" || user == "" {
		return user
	}
	return TokenPrincipalPrefix + issuer + " " + user
}

// ReservedUser reports whether name may not be an API key's user: it
// could be mistaken for a token principal.
func ReservedUser(name string) bool {
	return len(name) >= len(TokenPrincipalPrefix) && strings.EqualFold(name[:len(TokenPrincipalPrefix)], TokenPrincipalPrefix)
}

// ValidIssuer reports whether an issuer can qualify a principal and be
// sent in a header: not empty, no whitespace or control characters.
func ValidIssuer(iss string) bool {
	if iss == "" {
		return false
	}
	for i := 0; i < len(iss); i++ {
		if iss[i] <= ' ' || iss[i] == 0x7f {
			return false
		}
	}
	return true
}

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

// Principal is who made a request, for internal keys: the qualified
// principal (see Qualified) and the scopes its credential carried (a
// response may depend on either), both empty when anonymous.
func Principal(r *http.Request) (principal, scopes string) {
	repl, ok := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	if !ok {
		return "", ""
	}
	principal = PrincipalOf(repl)
	if principal != "" {
		scopes, _ = repl.GetString(ScopesPlaceholder)
	}
	return principal, scopes
}

// PrincipalOf is the qualified principal a request's replacer holds:
// api_auth's, else the user another authentication handler set (Caddy's
// basic_auth sets only the user), empty when anonymous.
func PrincipalOf(repl *caddy.Replacer) string {
	if p, _ := repl.GetString(PrincipalPlaceholder); p != "" {
		return p
	}
	user, _ := repl.GetString(UserPlaceholder)
	return user
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
	Protect(UserHeader, ScopesHeader, IssuerHeader, "X-Request-Id", "X-Forwarded-For", "X-Forwarded-Proto",
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
	return slices.Contains(*protected.Load(), http.CanonicalHeaderKey(fold(textproto.TrimString(name))))
}

// fold is a header name as CGI and WSGI read it: `X_Auth_User` is
// HTTP_X_AUTH_USER, the same variable as `X-Auth-User`. Caddy drops such
// names before any handler runs; folding them here keeps them out if a
// Caddy option or version ever lets them through.
func fold(name string) string {
	if strings.IndexByte(name, '_') < 0 {
		return name
	}
	return strings.ReplaceAll(name, "_", "-")
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
// client-sent identity headers (and any protected name spelled with
// underscores, which CGI and WSGI read as the same), removes protected
// names from Connection
// (which would make the proxy strip the gateway's own identity headers as
// hop-by-hop), and returns a body wrapper that removes protected trailers
// before the proxy forwards them.
func Scrub(r *http.Request) {
	for _, name := range *protected.Load() {
		if isIdentity(name) {
			delete(r.Header, name)
		}
	}
	for name := range r.Header {
		if strings.IndexByte(name, '_') >= 0 && isProtected(name) {
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
