package identity

import (
	"context"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// TestLive: a handler before api_auth gets a live context for its own I/O
// from a locked request, without the request's values; the request's own
// context stays done, and the client going away ends the live one.
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
		{"unlocked", Unlock(derived).Context(), true},
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
