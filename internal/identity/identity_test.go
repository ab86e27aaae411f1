package identity

import (
	"context"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

func TestScrub(t *testing.T) {
	Protect("X-Tenant-User")
	r := httptest.NewRequest("GET", "/", nil)
	r.Header.Set("X-Auth-User", "root")
	r.Header.Set("X-Auth-Scopes", "admin")
	r.Header.Set("X-Tenant-User", "root")
	r.Header.Set("X-Keep", "yes")
	r.Header["Connection"] = []string{"keep-alive, X-Auth-User", "x-auth-scopes,X-Request-Id, X-Hop"}
	r.Trailer = map[string][]string{"X-Auth-User": nil, "X-Checksum": nil}
	Scrub(r)
	for _, h := range []string{"X-Auth-User", "X-Auth-Scopes", "X-Tenant-User"} {
		if r.Header.Get(h) != "" {
			t.Errorf("%s survived: %q", h, r.Header.Get(h))
		}
	}
	if got := r.Header.Get("Connection"); got != "keep-alive, X-Hop" {
		t.Errorf("Connection = %q, want the protected nominations removed", got)
	}
	if _, ok := r.Trailer["X-Auth-User"]; ok || len(r.Trailer) != 1 {
		t.Errorf("trailers = %v, want only X-Checksum", r.Trailer)
	}
	if r.Header.Get("X-Keep") != "yes" {
		t.Error("an unrelated header was removed")
	}
	r.Trailer["X-Auth-Scopes"] = []string{"admin"} // arrived with the body
	ScrubTrailers(r)
	if _, ok := r.Trailer["X-Auth-Scopes"]; ok {
		t.Error("a protected trailer that arrived with the body survived")
	}
}

// TestScrubUnderscores: a protected name spelled with underscores (what
// CGI and WSGI read as the same variable) is removed, nominated or not,
// as a header or a trailer; other underscore names are kept.
func TestScrubUnderscores(t *testing.T) {
	r := httptest.NewRequest("GET", "/", nil)
	for _, name := range []string{"X_Auth_User", "x_auth_scopes", "X_AUTH_ISSUER", "X-Auth_User", "X_Forwarded_For"} {
		r.Header[name] = []string{"forged"}
	}
	r.Header["X_Keep_Me"] = []string{"yes"}
	r.Header["Connection"] = []string{"X_Auth_User, X_Hop"}
	r.Trailer = map[string][]string{"X_Auth_User": nil}
	Scrub(r)
	for name, v := range r.Header {
		if v[0] == "forged" {
			t.Errorf("%s survived", name)
		}
	}
	keep := "X_Keep_Me" // a name Go does not canonicalise, as a client sends it
	if r.Header.Get("Connection") != "X_Hop" || r.Header[keep] == nil {
		t.Errorf("headers after Scrub: %v", r.Header)
	}
	r.Trailer["X_Auth_Scopes"] = []string{"admin"}
	ScrubTrailers(r)
	if len(r.Trailer) != 0 {
		t.Errorf("trailers after Scrub: %v", r.Trailer)
	}
}

func TestQualified(t *testing.T) {
	for _, tt := range []struct{ user, issuer, want string }{
		{"alice", "", "alice"},
		{"alice", "https://a.example", "jwt:https://a.example alice"},
		{"", "https://a.example", ""},
		{"b c", "https://a.example", "jwt:https://a.example b c"},
	} {
		if got := Qualified(tt.user, tt.issuer); got != tt.want {
			t.Errorf("Qualified(%q, %q) = %q, want %q", tt.user, tt.issuer, got, tt.want)
		}
	}
	// no two (issuer, user) pairs share a principal, and no key user can take one
	seen := map[string]string{}
	for _, iss := range []string{"", "https://a.example", "https://a.example:8443", "https://a.example/x", "a"} {
		for _, user := range []string{"alice", "8443 alice", "x alice", "jwt:https://a.example alice"} {
			if iss == "" && ReservedUser(user) {
				continue // refused as a key user
			}
			p := Qualified(user, iss)
			if prev, dup := seen[p]; dup {
				t.Errorf("%q and %q/%q share the principal %q", prev, iss, user, p)
			}
			seen[p] = iss + "/" + user
			if iss != "" && !ReservedUser(p) {
				t.Errorf("token principal %q is a name a key user may have", p)
			}
		}
	}
	for iss, ok := range map[string]bool{"https://a.example": true, "": false, "https://a b": false, "https://a\tb": false, "a\x7f": false} {
		if ValidIssuer(iss) != ok {
			t.Errorf("ValidIssuer(%q) = %v", iss, !ok)
		}
	}
}

func TestGuard(t *testing.T) {
	type key struct{}
	r := httptest.NewRequest("GET", "/", nil)
	r = r.WithContext(context.WithValue(r.Context(), caddyhttp.VarsCtxKey, map[string]any{}))
	locked := Lock(r)
	if locked.Context().Err() != ErrUnprotected {
		t.Fatalf("locked context: Err() = %v", locked.Context().Err())
	}
	select {
	case <-locked.Context().Done():
	default:
		t.Fatal("a locked context is not done")
	}
	// values added after locking survive the unlock; derived contexts follow
	later := locked.WithContext(context.WithValue(locked.Context(), key{}, "kept"))
	if Passed(later) {
		t.Fatal("passed before the unlock")
	}
	unlocked := Unlock(later)
	if err := unlocked.Context().Err(); err != nil || unlocked.Context().Value(key{}) != "kept" || !Passed(r) {
		t.Fatalf("unlocked: Err() = %v, value %v, passed %v", err, unlocked.Context().Value(key{}), Passed(r))
	}
	derived, cancel := context.WithCancel(unlocked.Context())
	defer cancel()
	if derived.Err() != nil {
		t.Error("a context derived from an unlocked one is done")
	}
	// the client going away still cancels what was unlocked
	live, stop := context.WithCancel(context.Background())
	r2 := httptest.NewRequest("GET", "/", nil).WithContext(context.WithValue(live, caddyhttp.VarsCtxKey, map[string]any{}))
	u2 := Unlock(Lock(r2))
	d2, cancel2 := context.WithCancel(u2.Context())
	defer cancel2()
	stop()
	select {
	case <-d2.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("the client's cancellation did not reach a context derived after the unlock")
	}
}
