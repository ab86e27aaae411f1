package identity

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// TestLive: a handler before api_auth gets a live context for its own I/O
// from a locked request, without the request's values; the request's own
// context stays done until api_auth unlocks it, which opens every context
// derived since the lock in place (no new request), and the client going
// away ends the live one.
func TestLive(t *testing.T) {
	type key struct{}
	client, stop := context.WithCancel(context.WithValue(context.Background(), key{}, "request value"))
	defer stop()
	r := httptest.NewRequest("GET", "/", nil).WithContext(context.WithValue(client, caddyhttp.VarsCtxKey, map[string]any{}))
	locked := Lock(r)
	// a handler between api_errors and api_auth derives its own context
	derived := locked.WithContext(context.WithValue(locked.Context(), key{}, "later value"))

	tests := []struct {
		name     string
		give     context.Context
		wantSame bool // Live returns the context itself
	}{
		{"never locked", r.Context(), true},
		{"locked", locked.Context(), false},
		{"derived from a locked one", derived.Context(), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := Live(tt.give)
			if got.Err() != nil {
				t.Fatalf("Live(%s).Err() = %v, want nil", tt.name, got.Err())
			}
			if same := got == tt.give; same != tt.wantSame {
				t.Fatalf("Live(%s) returned the context itself: %v, want %v", tt.name, same, tt.wantSame)
			}
			if !tt.wantSame && got.Value(key{}) != nil {
				t.Errorf("Live(%s) carries the request's values: %v", tt.name, got.Value(key{}))
			}
		})
	}
	if locked.Context().Err() != ErrUnprotected {
		t.Fatalf("the locked request's context: Err() = %v, want ErrUnprotected", locked.Context().Err())
	}
	select {
	case <-derived.Context().Done():
	default:
		t.Fatal("a context derived from the locked one is not done")
	}

	unlocked := Unlock(derived)
	if unlocked != derived {
		t.Error("Unlock made a new request; it opens the lock in place")
	}
	for name, ctx := range map[string]context.Context{"unlocked": unlocked.Context(), "locked before": locked.Context()} {
		if ctx.Err() != nil || Live(ctx) != ctx {
			t.Errorf("%s: Err() = %v, Live returns itself: %v; want a live context", name, ctx.Err(), Live(ctx) == ctx)
		}
		select {
		case <-ctx.Done():
			t.Errorf("%s: done after Unlock", name)
		default:
		}
	}
	if unlocked.Context().Value(key{}) != "later value" || !Passed(unlocked) {
		t.Error("the unlocked request lost its values or was not marked passed")
	}

	// a call's timeout derived from the live context follows the client
	call, cancel := context.WithTimeout(Live(derived.Context()), time.Minute)
	defer cancel()
	if call.Err() != nil {
		t.Fatalf("a timeout derived from Live: Err() = %v", call.Err())
	}
	stop()
	select {
	case <-call.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("the client going away did not end a context derived from Live")
	}
}

// TestLockOpensInPlace: the lock costs one context wrapper and one request
// copy (Lock); Unlock opens it in place and allocates nothing (the
// two-wrapper lock made four allocations per request).
func TestLockOpensInPlace(t *testing.T) {
	r := httptest.NewRequest("GET", "/", nil)
	r = r.WithContext(context.WithValue(r.Context(), caddyhttp.VarsCtxKey, map[string]any{}))
	var unlocked *http.Request
	allocs := testing.AllocsPerRun(100, func() {
		locked := Lock(r)
		unlocked = Unlock(locked)
		if unlocked != locked {
			t.Fatal("Unlock made a new request")
		}
	})
	if allocs > 2 {
		t.Errorf("Lock and Unlock: %.0f allocations per request, want at most 2", allocs)
	}
	if unlocked.Context().Err() != nil {
		t.Errorf("unlocked: Err() = %v", unlocked.Context().Err())
	}
}
