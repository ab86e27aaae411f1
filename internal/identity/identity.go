// Package identity is the one definition of how the gateway tells a
// backend who is calling: the request headers api_auth sets (and every
// module removes when a client sends them), the default API-key header,
// and the placeholders the other modules read.
package identity

import (
	"net/http"

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
