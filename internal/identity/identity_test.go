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
