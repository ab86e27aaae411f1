package docs

import (
	"context"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

func TestPage(t *testing.T) {
	h := new(Handler)
	if err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser("api_docs {\n spec /api/openapi.json\n title \"Our API\"\n}")); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	defer cancel()
	if err := h.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	w := httptest.NewRecorder()
	if err := h.ServeHTTP(w, httptest.NewRequest("GET", "/docs/", nil), nil); err != nil {
		t.Fatal(err)
	}
	body := w.Body.String()
	if w.Code != 200 || !strings.Contains(body, "/api/openapi.json") || !strings.Contains(body, "Our API") {
		t.Errorf("GET /docs/: %d\n%s", w.Code, body)
	}
	for _, cdn := range []string{"unpkg.com", "cdn.jsdelivr", "cdnjs"} {
		if strings.Contains(body, cdn) {
			t.Errorf("the page loads from %s", cdn)
		}
	}
	w = httptest.NewRecorder()
	_ = h.ServeHTTP(w, httptest.NewRequest("GET", "/docs", nil), nil)
	if w.Code != 301 || w.Header().Get("Location") != "/docs/" {
		t.Errorf("GET /docs: %d %q, want a redirect to /docs/", w.Code, w.Header().Get("Location"))
	}
	if err := h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest("POST", "/docs/", nil), nil); err == nil {
		t.Error("POST /docs/ was accepted")
	}
	for _, in := range []string{"api_docs {\n nope x\n}", "api_docs {\n spec a\n spec b\n}", "api_docs {\n title\n}", "api_docs now"} {
		if err := new(Handler).UnmarshalCaddyfile(caddyfile.NewTestDispenser(in)); err == nil {
			t.Errorf("%q accepted", in)
		}
	}
}
