package docs

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

const yamlDoc = `openapi: 3.0.3
info:
  title: Widgets (drf-spectacular)
  version: 1.0.0
paths:
  /api/widgets/:
    get:
      operationId: widgets_list
      responses:
        '200':
          description: ''
          content:
            application/json:
              schema:
                type: array
                items:
                  $ref: '#/components/schemas/Widget'
components:
  schemas:
    Widget:
      type: object
      properties:
        name:
          type: string
          nullable: true
`

// backend serves a service document whose shape the test switches.
type backend struct {
	mode atomic.Value // string
	srv  *httptest.Server
}

func newBackend(t *testing.T) *backend {
	t.Helper()
	fixture, err := os.ReadFile("testdata/fastapi_orders.json")
	if err != nil {
		t.Fatal(err)
	}
	b := new(backend)
	b.mode.Store("good")
	b.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch b.mode.Load().(string) {
		case "good":
			w.Header().Set("Content-Type", "application/json")
			w.Write(fixture)
		case "yaml":
			w.Header().Set("Content-Type", "application/vnd.oai.openapi")
			fmt.Fprint(w, yamlDoc)
		case "500":
			http.Error(w, "Internal Server Error", 500)
		case "invalid":
			w.Header().Set("Content-Type", "application/json")
			fmt.Fprint(w, `{"openapi": "3.1.0", "paths": {`)
		case "large":
			w.Header().Set("Content-Type", "application/json")
			fmt.Fprintf(w, `{"openapi": "3.1.0", "info": {"title": "%s", "version": "1"}, "paths": {}}`, strings.Repeat("x", 70<<10))
		case "swagger":
			fmt.Fprint(w, `{"swagger": "2.0", "paths": {}}`)
		case "slow":
			select {
			case <-r.Context().Done():
			case <-time.After(10 * time.Second):
			}
		}
	}))
	t.Cleanup(b.srv.Close)
	return b
}

// TestFetch: a document that cannot be fetched or is not valid is logged at
// warn and skipped, and the last good copy stays.
func TestFetch(t *testing.T) {
	b := newBackend(t)
	core, logs := observer.New(zapcore.DebugLevel)
	s := &Service{Prefix: "/v1/orders", URL: b.srv.URL + "/openapi.json"}
	if err := s.provision(); err != nil {
		t.Fatal(err)
	}
	f := &refresher{client: &http.Client{Timeout: 300 * time.Millisecond}, maxSize: 64 << 10, logger: zap.New(core)}
	ctx := context.Background()
	if !f.fetchOne(ctx, s) {
		t.Fatalf("the FastAPI document was not taken: %v", logs.All())
	}
	good := s.state.Load()
	tests := []struct{ mode, want string }{
		{"500", "status 500"},
		{"invalid", "invalid JSON"},
		{"large", "larger than max_size"},
		{"swagger", "swagger 2.0 documents are not supported"},
		{"slow", "Client.Timeout"},
	}
	for _, tt := range tests {
		t.Run(tt.mode, func(t *testing.T) {
			b.mode.Store(tt.mode)
			logs.TakeAll()
			if f.fetchOne(ctx, s) {
				t.Fatal("a bad document was taken")
			}
			entries := logs.FilterLevelExact(zapcore.WarnLevel).All()
			if len(entries) != 1 || !strings.Contains(fmt.Sprint(entries[0].ContextMap()["error"]), tt.want) {
				t.Fatalf("warn log %v, want one with %q", entries, tt.want)
			}
			if _, ok := entries[0].ContextMap()["keeping_copy_from"]; !ok {
				t.Error("the log does not say the last good copy is kept")
			}
			if s.state.Load() != good {
				t.Error("the last good copy was dropped")
			}
		})
	}
	// a YAML OpenAPI 3.0 document (drf-spectacular's default) is taken and upgraded
	b.mode.Store("yaml")
	if !f.fetchOne(ctx, s) {
		t.Fatalf("the YAML document was not taken: %v", logs.All())
	}
	doc := s.state.Load().doc
	if doc["openapi"] != "3.1.0" || fmt.Sprint(get(doc, "components", "schemas", "Widget", "properties", "name", "type")) != "[string null]" {
		t.Errorf("YAML document: %v", doc)
	}
}

// TestServeDocument: through the handler, the document at the spec path is
// the next handler's with the service merged in, with an ETag and 304s;
// other requests go to the next handler; a service that never answered
// leaves the next handler's document as it is, plus the gateway's parts.
func TestServeDocument(t *testing.T) {
	b := newBackend(t)
	down := httptest.NewServer(http.NotFoundHandler())
	down.Close()
	h := &Handler{Services: []*Service{
		{Prefix: "/v1/orders*", URL: b.srv.URL + "/openapi.json"},
		{Prefix: "/v1/down", URL: down.URL + "/openapi.json"},
	}, Refresh: caddy.Duration(time.Hour), retryMin: 10 * time.Millisecond}
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	defer cancel()
	if err := h.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	if err := h.Validate(); err != nil {
		t.Fatal(err)
	}
	defer h.Cleanup()
	deadline := time.Now().Add(10 * time.Second)
	for h.Services[0].state.Load() == nil {
		if time.Now().After(deadline) {
			t.Fatal("the service's document was never fetched")
		}
		time.Sleep(5 * time.Millisecond)
	}
	var baseServed atomic.Bool
	next := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		if r.URL.Path == "/v1/openapi.json" && r.Method == "GET" && baseServed.Load() {
			if r.Header.Get("If-None-Match") != "" {
				t.Error("the base was asked for conditionally")
			}
			w.Header().Set("Content-Type", "application/json")
			w.Header().Set("ETag", `"base"`)
			fmt.Fprint(w, resourcesBase)
			return nil
		}
		if r.URL.Path == "/v1/openapi.json" && r.Method == "GET" {
			return caddyhttp.Error(http.StatusNotFound, nil)
		}
		fmt.Fprint(w, "next")
		return nil
	})
	serve := func(method, path string, hdr ...string) *httptest.ResponseRecorder {
		t.Helper()
		r := httptest.NewRequest(method, path, nil)
		for i := 0; i+1 < len(hdr); i += 2 {
			r.Header.Set(hdr[i], hdr[i+1])
		}
		w := httptest.NewRecorder()
		if err := h.ServeHTTP(w, r, next); err != nil {
			t.Fatalf("%s %s: %v", method, path, err)
		}
		return w
	}
	// nothing serves a base: the services alone
	w := serve("GET", "/v1/openapi.json")
	doc := decode(t, w.Body.Bytes())
	if w.Code != 200 || get(doc, "paths", "/v1/orders") == nil || get(doc, "info", "title") != "API reference" {
		t.Fatalf("without a base: %d %s", w.Code, w.Body)
	}
	validate(t, doc)

	baseServed.Store(true)
	w = serve("GET", "/v1/openapi.json")
	doc = decode(t, w.Body.Bytes())
	etag := w.Header().Get("ETag")
	if w.Code != 200 || get(doc, "paths", "/v1/events") == nil || get(doc, "paths", "/v1/orders/{order_id}", "patch") == nil ||
		etag == "" || etag == `"base"` || w.Header().Get("Cache-Control") != "no-cache" || w.Header().Get("Content-Type") != "application/json" {
		t.Fatalf("GET: %d %v\n%s", w.Code, w.Header(), w.Body)
	}
	if get(doc, "paths", "/v1/down") != nil {
		t.Error("a service that never answered has paths")
	}
	validate(t, doc)
	if w := serve("GET", "/v1/openapi.json", "If-None-Match", etag); w.Code != 304 || w.Body.Len() != 0 {
		t.Errorf("If-None-Match: %d %q", w.Code, w.Body)
	}
	if w := serve("HEAD", "/v1/openapi.json"); w.Code != 200 || w.Body.Len() != 0 || w.Header().Get("ETag") != etag {
		t.Errorf("HEAD: %d %d bytes %q", w.Code, w.Body.Len(), w.Header().Get("ETag"))
	}
	for _, tt := range []struct{ method, path string }{{"GET", "/v1/orders"}, {"POST", "/v1/openapi.json"}, {"GET", "/v1/openapi.jsonx"}} {
		if w := serve(tt.method, tt.path); w.Body.String() != "next" {
			t.Errorf("%s %s: %q, want the next handler's", tt.method, tt.path, w.Body)
		}
	}
	// the merge is done again only when an input changes
	first := h.merged.Load()
	serve("GET", "/v1/openapi.json")
	if h.merged.Load() != first {
		t.Error("merged again with nothing changed")
	}
}
