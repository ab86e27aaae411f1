package identity

import (
	"net/http/httptest"
	"testing"
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
