package problem

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

func newHandler(t testing.TB, h *Handler) *Handler {
	t.Helper()
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	t.Cleanup(cancel)
	if err := h.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	h.logger = zap.NewNop()
	if err := h.Validate(); err != nil {
		t.Fatal(err)
	}
	return h
}

func newRequest(method, target string) *http.Request {
	r := httptest.NewRequest(method, target, nil)
	repl := caddy.NewReplacer()
	return r.WithContext(context.WithValue(r.Context(), caddy.ReplacerCtxKey, repl))
}

// backend returns a next handler that writes a response as a backend would.
func backend(status int, contentType, body string, headers ...string) caddyhttp.Handler {
	return caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		if contentType != "" {
			w.Header().Set("Content-Type", contentType)
		}
		for i := 0; i+1 < len(headers); i += 2 {
			w.Header().Set(headers[i], headers[i+1])
		}
		w.WriteHeader(status)
		_, _ = io.WriteString(w, body)
		return nil
	})
}

func failing(err error, headers ...string) caddyhttp.Handler {
	return caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		for i := 0; i+1 < len(headers); i += 2 {
			w.Header().Set(headers[i], headers[i+1])
		}
		return err
	})
}

func TestErrorSources(t *testing.T) {
	const stack = "Traceback (most recent call last): File \"/srv/app.py\" at db.internal:5432"
	tests := []struct {
		name       string
		next       caddyhttp.Handler
		wantStatus int
		wantDetail string // exact, if set
		wantCode   string
		wantErrors []FieldError
		wantHeader [2]string // a header that must survive
		wantType   string
		noDetail   bool // the body is dropped: title only
	}{
		// errors raised inside Caddy
		{name: "restgate problem", next: failing(Error(409, "already_exists", "event 'GW1' exists")), wantStatus: 409, wantDetail: "event 'GW1' exists", wantCode: "already_exists"},
		{name: "error directive", next: failing(errorDirective(404, "no route serves this path")), wantStatus: 404, wantDetail: "no route serves this path", wantCode: "not_found"},
		// a plain-text message from anything but the error directive is not
		// shown: its type says nothing about what it contains
		{name: "plain 4xx message from elsewhere", next: failing(caddyhttp.Error(400, errors.New("parsing /srv/app/config.json: bad"))), wantStatus: 400, noDetail: true},
		{name: "request_body 413", next: failing(caddyhttp.Error(413, &http.MaxBytesError{Limit: 1024})), wantStatus: 413, wantDetail: "request body exceeds 1024 bytes", wantCode: "content_too_large"},
		{name: "proxy dial 502", next: failing(caddyhttp.Error(502, errors.New("dial tcp 10.0.0.7:9001: connect: connection refused"))), wantStatus: 502, wantDetail: genericDetail(502), wantCode: "bad_gateway"},
		{name: "no upstream 503", next: failing(caddyhttp.Error(503, errors.New("no upstreams available"))), wantStatus: 503, wantCode: "service_unavailable"},
		{name: "upstream timeout 504", next: failing(caddyhttp.Error(504, errors.New("net/http: timeout awaiting response headers"))), wantStatus: 504, wantCode: "gateway_timeout"},
		{name: "plain error is 500", next: failing(errors.New("boom at /var/lib/secret")), wantStatus: 500, wantDetail: genericDetail(500)},
		{name: "4xx with a path error hides it", next: failing(caddyhttp.Error(404, fmt.Errorf("open /etc/srv/x: %w", errors.New("no such file")))), wantStatus: 404, noDetail: true},
		{name: "401 keeps WWW-Authenticate", next: failing(Error(401, "", "a valid API key is required"), "WWW-Authenticate", `Bearer realm="api"`), wantStatus: 401, wantHeader: [2]string{"WWW-Authenticate", `Bearer realm="api"`}},
		{name: "405 keeps Allow", next: failing(Error(405, "", ""), "Allow", "GET, HEAD"), wantStatus: 405, wantHeader: [2]string{"Allow", "GET, HEAD"}},
		{name: "429 keeps Retry-After, IANA type", next: failing(Error(429, "", "slow down"), "Retry-After", "7"), wantStatus: 429, wantHeader: [2]string{"Retry-After", "7"}, wantType: TypeQuotaExceeded},

		// error responses from backends
		{name: "flask error", next: backend(404, "application/json", `{"error": "Event not found"}`), wantStatus: 404, wantDetail: "Event not found"},
		{name: "flask details", next: backend(400, "application/json", `{"error": "Invalid event", "details": [{"loc": ["name"], "msg": "field required", "type": "value_error.missing"}]}`), wantStatus: 400, wantDetail: "Invalid event", wantErrors: []FieldError{{Pointer: "/name", Detail: "field required"}}},
		{name: "drf detail", next: backend(404, "application/json", `{"detail": "Not found."}`), wantStatus: 404, wantDetail: "Not found."},
		{name: "drf field errors", next: backend(400, "application/json", `{"name": ["This field is required."], "address": {"city": ["Too long."]}}`), wantStatus: 400, wantErrors: []FieldError{{Pointer: "/address/city", Detail: "Too long."}, {Pointer: "/name", Detail: "This field is required."}}},
		{name: "drf non_field_errors", next: backend(400, "application/json", `{"non_field_errors": ["Dates overlap."]}`), wantStatus: 400, wantDetail: "Dates overlap."},
		{name: "fastapi validation", next: backend(422, "application/json", `{"detail": [{"loc": ["body", "name"], "msg": "field required", "type": "value_error.missing"}, {"loc": ["body", "tags", 0], "msg": "not a string", "type": "type_error"}]}`), wantStatus: 422, wantErrors: []FieldError{{Pointer: "/name", Detail: "field required"}, {Pointer: "/tags/0", Detail: "not a string"}}, wantCode: "validation_failed"},
		{name: "polar type", next: backend(403, "application/json", `{"type": "NotPermitted", "detail": "You can't do that"}`), wantStatus: 403, wantDetail: "You can't do that", wantCode: "not_permitted"},
		{name: "kong message", next: backend(403, "application/json; charset=utf-8", `{"message": "You cannot consume this service"}`), wantStatus: 403, wantDetail: "You cannot consume this service"},
		{name: "nested error message", next: backend(400, "application/json", `{"error": {"code": 3, "message": "bad cursor"}}`), wantStatus: 400, wantDetail: "bad cursor"},
		{name: "html page", next: backend(404, "text/html", "<html><body><h1>Not Found</h1><p>nginx/1.2 on db.internal</p></body></html>"), wantStatus: 404, noDetail: true},
		{name: "plain text", next: backend(400, "text/plain", "bad things at /srv/app"), wantStatus: 400, noDetail: true},
		{name: "malformed json", next: backend(400, "application/json", `{"error": "unterminated`), wantStatus: 400, noDetail: true},
		{name: "json type, html body", next: backend(404, "application/json", "<!doctype html><title>404</title>"), wantStatus: 404, noDetail: true},
		{name: "empty 500", next: backend(500, "", ""), wantStatus: 500, wantDetail: genericDetail(500)},
		{name: "500 stack trace hidden", next: backend(500, "text/plain", stack), wantStatus: 500, wantDetail: genericDetail(500)},
		{name: "500 json hidden", next: backend(500, "application/json", `{"error": "`+stack+`"}`), wantStatus: 500, wantDetail: genericDetail(500)},
		{name: "502 from backend", next: backend(502, "text/html", "<h1>Bad Gateway</h1> upstream 10.1.2.3"), wantStatus: 502, wantDetail: genericDetail(502)},
		{name: "backend 401 keeps challenge", next: backend(401, "application/json", `{"detail": "Invalid token."}`, "WWW-Authenticate", `Token`), wantStatus: 401, wantDetail: "Invalid token.", wantHeader: [2]string{"WWW-Authenticate", "Token"}},
		{name: "backend 405 keeps Allow", next: backend(405, "application/json", `{"detail": "Method \"PUT\" not allowed."}`, "Allow", "GET, POST"), wantStatus: 405, wantHeader: [2]string{"Allow", "GET, POST"}},
		{name: "backend 413", next: backend(413, "text/html", "<h1>413</h1>"), wantStatus: 413},
		{name: "gzip body not parsed", next: backend(400, "application/json", "\x1f\x8b\x08garbage", "Content-Encoding", "gzip"), wantStatus: 400, noDetail: true},
		{name: "body over the bound", next: backend(400, "application/json", `{"error": "`+strings.Repeat("x", defaultMaxErrorBody)+`"}`), wantStatus: 400, noDetail: true},
		{name: "long message truncated", next: backend(400, "application/json", `{"error": "`+strings.Repeat("é", 2000)+`"}`), wantStatus: 400},
		{name: "problem+json with wrong status", next: backend(404, mediaType, `{"type": "about:blank", "title": "Gone", "status": 410, "detail": "moved away"}`), wantStatus: 404, wantDetail: "moved away"},
		{name: "unknown status", next: backend(499, "", ""), wantStatus: 499, wantCode: "client_error"},
	}
	h := newHandler(t, &Handler{})
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := httptest.NewRecorder()
			r := newRequest(http.MethodGet, "/v1/events/GW1")
			if err := h.ServeHTTP(w, r, tt.next); err != nil {
				t.Fatalf("ServeHTTP returned %v, want the error rendered", err)
			}
			if w.Code != tt.wantStatus {
				t.Fatalf("status = %d, want %d", w.Code, tt.wantStatus)
			}
			if ct := w.Header().Get("Content-Type"); ct != mediaType {
				t.Fatalf("Content-Type = %q, want %q", ct, mediaType)
			}
			var p map[string]any
			if err := json.Unmarshal(w.Body.Bytes(), &p); err != nil {
				t.Fatalf("body is not JSON: %v: %s", err, w.Body)
			}
			if got := int(p["status"].(float64)); got != tt.wantStatus {
				t.Errorf("status member = %d, want %d", got, tt.wantStatus)
			}
			if id := w.Header().Get(requestIDHeader); id == "" || p["request_id"] != id {
				t.Errorf("request_id = %v, header %q: want equal, non-empty", p["request_id"], id)
			}
			got, hasDetail := p["detail"].(string)
			if tt.wantDetail != "" && got != tt.wantDetail {
				t.Errorf("detail = %q, want %q", got, tt.wantDetail)
			}
			if tt.noDetail && hasDetail {
				t.Errorf("detail = %q, want none (the body must be dropped)", got)
			}
			if d, _ := p["detail"].(string); len(d) > maxDetail+4 {
				t.Errorf("detail is %d bytes, want at most %d", len(d), maxDetail)
			}
			for _, leak := range []string{"Traceback", "10.0.0.7", "10.1.2.3", "db.internal", "/srv/", "/etc/", "/var/"} {
				if strings.Contains(w.Body.String(), leak) {
					t.Errorf("body leaks %q: %s", leak, w.Body)
				}
			}
			if tt.wantCode != "" && p["code"] != tt.wantCode {
				t.Errorf("code = %v, want %q", p["code"], tt.wantCode)
			}
			if tt.wantType != "" && p["type"] != tt.wantType {
				t.Errorf("type = %v, want %q", p["type"], tt.wantType)
			}
			if tt.wantErrors != nil {
				var got struct{ Errors []FieldError }
				_ = json.Unmarshal(w.Body.Bytes(), &got)
				if !reflect.DeepEqual(got.Errors, tt.wantErrors) {
					t.Errorf("errors = %+v, want %+v", got.Errors, tt.wantErrors)
				}
			}
			if k := tt.wantHeader[0]; k != "" && w.Header().Get(k) != tt.wantHeader[1] {
				t.Errorf("header %s = %q, want %q", k, w.Header().Get(k), tt.wantHeader[1])
			}
			if cl := w.Header().Get("Content-Length"); cl != fmt.Sprint(w.Body.Len()) {
				t.Errorf("Content-Length = %q, body is %d bytes", cl, w.Body.Len())
			}
		})
	}
}

func TestPassThroughIsByteIdentical(t *testing.T) {
	h := newHandler(t, &Handler{})
	tests := []struct {
		name   string
		status int
		body   string
	}{
		{"200", 200, `{"items": []}`},
		{"201", 201, `{"id": "x"}`},
		{"301", 301, ``},
		{"304", 304, ``},
		{"204", 204, ``},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			next := backend(tt.status, "application/json", tt.body, "ETag", `"v1"`, "X-Custom", "kept")
			bare := httptest.NewRecorder()
			_ = next.ServeHTTP(bare, newRequest("GET", "/v1/x"))
			wrapped := httptest.NewRecorder()
			r := newRequest("GET", "/v1/x")
			r.Header.Set(requestIDHeader, "client-id-1")
			if err := h.ServeHTTP(wrapped, r, next); err != nil {
				t.Fatal(err)
			}
			if wrapped.Code != bare.Code || wrapped.Body.String() != bare.Body.String() {
				t.Errorf("got %d %q, want %d %q", wrapped.Code, wrapped.Body, bare.Code, bare.Body)
			}
			wh := wrapped.Header().Clone()
			if wh.Get(requestIDHeader) != "client-id-1" {
				t.Errorf("X-Request-Id = %q, want the client's", wh.Get(requestIDHeader))
			}
			wh.Del(requestIDHeader)
			if !reflect.DeepEqual(wh, bare.Header()) {
				t.Errorf("headers = %v, want %v", wh, bare.Header())
			}
		})
	}
}

func TestEchoedRequestIDIsNotDuplicated(t *testing.T) {
	h := newHandler(t, &Handler{})
	for _, status := range []int{200, 404} {
		w := httptest.NewRecorder()
		r := newRequest("GET", "/")
		next := caddyhttp.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) error {
			rw.Header().Add(requestIDHeader, r.Header.Get(requestIDHeader)) // as reverse_proxy copies it
			rw.WriteHeader(status)
			return nil
		})
		_ = h.ServeHTTP(w, r, next)
		if ids := w.Header().Values(requestIDHeader); len(ids) != 1 {
			t.Errorf("status %d: X-Request-Id = %q, want one value", status, ids)
		}
	}
}

func TestStreamsAreFlushedThrough(t *testing.T) {
	h := newHandler(t, &Handler{})
	w := httptest.NewRecorder()
	var flushedBeforeEnd bool
	next := caddyhttp.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) error {
		rw.Header().Set("Content-Type", "text/event-stream")
		rw.WriteHeader(200)
		_, _ = io.WriteString(rw, "data: 1\n\n")
		if err := http.NewResponseController(rw).Flush(); err != nil {
			return err
		}
		flushedBeforeEnd = w.Flushed && strings.Contains(w.Body.String(), "data: 1")
		_, _ = io.WriteString(rw, "data: 2\n\n")
		return nil
	})
	if err := h.ServeHTTP(w, newRequest("GET", "/v1/stream"), next); err != nil {
		t.Fatal(err)
	}
	if !flushedBeforeEnd {
		t.Error("the first event did not reach the client before the handler ended")
	}
	if w.Body.String() != "data: 1\n\ndata: 2\n\n" {
		t.Errorf("body = %q", w.Body)
	}
}

func TestErrorIsNotFlushedEarly(t *testing.T) {
	h := newHandler(t, &Handler{})
	w := httptest.NewRecorder()
	next := caddyhttp.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) error {
		rw.WriteHeader(500)
		_, _ = io.WriteString(rw, "secret stack")
		_ = http.NewResponseController(rw).Flush()
		_, _ = io.Copy(rw, strings.NewReader(" more secret")) // ReadFrom path
		if w.Flushed || w.Body.Len() > 0 {
			t.Error("a held-back error response reached the client")
		}
		return nil
	})
	_ = h.ServeHTTP(w, newRequest("GET", "/"), next)
	if strings.Contains(w.Body.String(), "secret") || w.Code != 500 {
		t.Errorf("got %d %s", w.Code, w.Body)
	}
}

func TestHeadErrorHasNoBody(t *testing.T) {
	h := newHandler(t, &Handler{})
	for name, next := range map[string]caddyhttp.Handler{
		"raised":  failing(Error(404, "", "nope")),
		"backend": backend(404, "application/json", ""),
	} {
		t.Run(name, func(t *testing.T) {
			w := httptest.NewRecorder()
			_ = h.ServeHTTP(w, newRequest(http.MethodHead, "/v1/x"), next)
			if w.Code != 404 || w.Body.Len() != 0 || w.Header().Get("Content-Type") != mediaType {
				t.Errorf("HEAD: got %d %q %q", w.Code, w.Header().Get("Content-Type"), w.Body)
			}
		})
	}
}

func TestNothingAnsweredIsA404(t *testing.T) {
	h := newHandler(t, &Handler{})
	w := httptest.NewRecorder()
	nothing := caddyhttp.HandlerFunc(func(http.ResponseWriter, *http.Request) error { return nil })
	if err := h.ServeHTTP(w, newRequest("GET", "/v1/unrouted"), nothing); err != nil {
		t.Fatal(err)
	}
	if w.Code != 404 || !strings.Contains(w.Body.String(), `"code":"not_found"`) {
		t.Errorf("got %d %s", w.Code, w.Body)
	}
	// an explicit empty answer is still an answer
	w = httptest.NewRecorder()
	empty := caddyhttp.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) error { w.WriteHeader(204); return nil })
	_ = h.ServeHTTP(w, newRequest("DELETE", "/v1/x"), empty)
	if w.Code != 204 || w.Body.Len() != 0 {
		t.Errorf("204 became %d %s", w.Code, w.Body)
	}
}

// errorDirective returns the error Caddy's `error` directive raises.
func errorDirective(status int, msg string) error {
	r := newRequest("GET", "/")
	return caddyhttp.StaticError{Error: msg, StatusCode: caddyhttp.WeakString(strconv.Itoa(status))}.ServeHTTP(httptest.NewRecorder(), r, nil)
}

func TestInsideHandleErrors(t *testing.T) {
	h := newHandler(t, &Handler{})
	r := newRequest("GET", "/nowhere")
	r = r.WithContext(context.WithValue(r.Context(), caddyhttp.ErrorCtxKey, errorDirective(404, "no route")))
	w := httptest.NewRecorder()
	called := false
	next := caddyhttp.HandlerFunc(func(http.ResponseWriter, *http.Request) error { called = true; return nil })
	if err := h.ServeHTTP(w, r, next); err != nil {
		t.Fatal(err)
	}
	if called || w.Code != 404 || !strings.Contains(w.Body.String(), `"detail":"no route"`) {
		t.Errorf("got called=%v %d %s", called, w.Code, w.Body)
	}
}

func TestConfiguration(t *testing.T) {
	h := newHandler(t, &Handler{
		TypeBase: "https://errors.example.com/",
		Statuses: map[string]StatusOverride{"404": {Title: "Nothing here", Detail: "See the docs."}},
	})
	w := httptest.NewRecorder()
	_ = h.ServeHTTP(w, newRequest("GET", "/"), failing(Error(404, "", "x")))
	var p Problem
	_ = json.Unmarshal(w.Body.Bytes(), &p)
	if p.Type != "https://errors.example.com/not_found" || p.Title != "Nothing here" || p.Detail != "See the docs." {
		t.Errorf("got %+v", p)
	}
	w = httptest.NewRecorder()
	_ = h.ServeHTTP(w, newRequest("GET", "/"), failing(Error(429, "", "")))
	_ = json.Unmarshal(w.Body.Bytes(), &p)
	if p.Type != TypeQuotaExceeded {
		t.Errorf("429 type = %q, want %q", p.Type, TypeQuotaExceeded)
	}
}

func TestRequestID(t *testing.T) {
	tests := []struct {
		give string
		keep bool
	}{
		{"abc-123_X.y", true},
		{strings.Repeat("a", 64), true},
		{strings.Repeat("a", 65), false},
		{"", false},
		{"has space", false},
		{"quote\"", false},
		{"ünicode", false},
		{"new\nline", false},
	}
	for _, tt := range tests {
		t.Run(tt.give, func(t *testing.T) {
			r := newRequest("GET", "/")
			if tt.give != "" {
				r.Header[requestIDHeader] = []string{tt.give}
			}
			w := httptest.NewRecorder()
			id := EnsureRequestID(w, r)
			if (id == tt.give) != tt.keep {
				t.Errorf("EnsureRequestID(%q) = %q, keep = %v", tt.give, id, tt.keep)
			}
			if !saneRequestID(id) || w.Header().Get(requestIDHeader) != id || r.Header.Get(requestIDHeader) != id {
				t.Errorf("id %q not sane or not on both request and response", id)
			}
		})
	}
	a := EnsureRequestID(httptest.NewRecorder(), httptest.NewRequest("GET", "/", nil))
	b := EnsureRequestID(httptest.NewRecorder(), httptest.NewRequest("GET", "/", nil))
	if a == b || len(a) != 26 {
		t.Errorf("minted ids %q, %q: want distinct, 26 characters", a, b)
	}
}

func TestSnakeCase(t *testing.T) {
	for give, want := range map[string]string{
		"Not Found":            "not_found",
		"NotPermitted":         "not_permitted",
		"Request-URI Too Long": "request_uri_too_long",
		"HTTPVersion":          "httpversion",
		"already_exists":       "already_exists",
	} {
		if got := snakeCase(give); got != want {
			t.Errorf("snakeCase(%q) = %q, want %q", give, got, want)
		}
	}
}

func TestMarshalExtensions(t *testing.T) {
	p := New(429, "slow down")
	p.Extensions = map[string]any{"violated-policies": []string{"per-user"}, "status": 200}
	b, err := json.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("invalid JSON %s: %v", b, err)
	}
	if m["status"].(float64) != 429 || m["violated-policies"] == nil {
		t.Errorf("got %s", b)
	}
}

func TestUnmarshalCaddyfile(t *testing.T) {
	good := "api_errors {\n type_base https://e.example/\n max_error_body 8KiB\n title 404 \"Nothing here\"\n detail 404 \"See docs\"\n}"
	var h Handler
	if err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(good)); err != nil {
		t.Fatal(err)
	}
	if h.TypeBase != "https://e.example/" || h.MaxErrorBody != 8192 || h.Statuses["404"] != (StatusOverride{"Nothing here", "See docs"}) {
		t.Errorf("got %+v", h)
	}
	for name, input := range map[string]string{
		"argument":          "api_errors x",
		"unknown":           "api_errors {\n nope\n}",
		"duplicate base":    "api_errors {\n type_base a\n type_base b\n}",
		"bad size":          "api_errors {\n max_error_body lots\n}",
		"zero size":         "api_errors {\n max_error_body 0\n}",
		"success status":    "api_errors {\n title 200 OK\n}",
		"missing text":      "api_errors {\n detail 404\n}",
		"extra base arg":    "api_errors {\n type_base a b\n}",
		"non-numeric title": "api_errors {\n title abc x\n}",
	} {
		t.Run(name, func(t *testing.T) {
			var h Handler
			if err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(input)); err == nil {
				t.Fatalf("UnmarshalCaddyfile(%q) = nil, want an error", input)
			}
		})
	}
}

var okBody = []byte(`{"id":"GW150914","name":"GW150914"}`)

func okNext(w http.ResponseWriter, r *http.Request) error {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(200)
	_, _ = w.Write(okBody)
	return nil
}

// BenchmarkPassThrough measures a 2xx through api_errors; compare with
// BenchmarkBareHandler for the overhead.
func BenchmarkPassThrough(b *testing.B) {
	h := newHandler(b, &Handler{})
	next := caddyhttp.HandlerFunc(okNext)
	r := newRequest("GET", "/v1/events")
	r.Header.Set(requestIDHeader, "client-sent-id")
	w := &discardWriter{h: http.Header{}}
	b.ReportAllocs()
	for b.Loop() {
		clear(w.h)
		_ = h.ServeHTTP(w, r, next)
	}
}

// BenchmarkPassThroughNewID is BenchmarkPassThrough when the gateway makes
// the request id.
func BenchmarkPassThroughNewID(b *testing.B) {
	h := newHandler(b, &Handler{})
	next := caddyhttp.HandlerFunc(okNext)
	r := newRequest("GET", "/v1/events")
	w := &discardWriter{h: http.Header{}}
	b.ReportAllocs()
	for b.Loop() {
		clear(w.h)
		delete(r.Header, requestIDHeader)
		_ = h.ServeHTTP(w, r, next)
	}
}

func BenchmarkBareHandler(b *testing.B) {
	r := newRequest("GET", "/v1/events")
	w := &discardWriter{h: http.Header{}}
	b.ReportAllocs()
	for b.Loop() {
		clear(w.h)
		_ = okNext(w, r)
	}
}

func BenchmarkRewriteBackendError(b *testing.B) {
	h := newHandler(b, &Handler{})
	next := backend(422, "application/json", `{"detail": [{"loc": ["body", "name"], "msg": "field required", "type": "value_error.missing"}]}`)
	r := newRequest("POST", "/v1/events")
	w := &discardWriter{h: http.Header{}}
	b.ReportAllocs()
	for b.Loop() {
		clear(w.h)
		_ = h.ServeHTTP(w, r, next)
	}
}

func BenchmarkRenderRaisedError(b *testing.B) {
	h := newHandler(b, &Handler{})
	next := failing(Error(404, "", "event 'GW150914' does not exist"))
	r := newRequest("GET", "/v1/events/GW150914")
	w := &discardWriter{h: http.Header{}}
	b.ReportAllocs()
	for b.Loop() {
		clear(w.h)
		_ = h.ServeHTTP(w, r, next)
	}
}

type discardWriter struct {
	h      http.Header
	status int
}

func (d *discardWriter) Header() http.Header         { return d.h }
func (d *discardWriter) Write(p []byte) (int, error) { return len(p), nil }
func (d *discardWriter) WriteHeader(s int)           { d.status = s }

// TestOneRenderingPath: the operator's type_base and per-status overrides
// shape every problem that leaves, including a backend's (or an inner
// handler's) own problem+json document; its other members stay.
func TestOneRenderingPath(t *testing.T) {
	h := newHandler(t, &Handler{
		TypeBase: "https://errors.example.com/",
		Statuses: map[string]StatusOverride{"409": {Title: "Already there"}},
	})
	w := httptest.NewRecorder()
	body := `{"type":"about:blank","title":"Conflict","status":409,"detail":"event 'E1' already exists","code":"already_exists","instance":"/v1/events","hint":{"use":"PUT"}}`
	_ = h.ServeHTTP(w, newRequest("POST", "/v1/events"), backend(409, mediaType, body))
	var m map[string]any
	if err := json.Unmarshal(w.Body.Bytes(), &m); err != nil {
		t.Fatal(err)
	}
	if m["type"] != "https://errors.example.com/already_exists" || m["title"] != "Already there" || m["detail"] != "event 'E1' already exists" {
		t.Errorf("backend problem not shaped by the configuration: %s", w.Body)
	}
	if fmt.Sprint(m["hint"]) != "map[use:PUT]" || m["request_id"] == nil || m["status"] != float64(409) {
		t.Errorf("backend problem lost members: %s", w.Body)
	}
	// a backend's registered type is its own choice and stays
	w = httptest.NewRecorder()
	_ = h.ServeHTTP(w, newRequest("POST", "/v1/x"), backend(409, mediaType, `{"type":"https://example.net/probs/out-of-credit","title":"Out","status":409}`))
	if !strings.Contains(w.Body.String(), `"type":"https://example.net/probs/out-of-credit"`) {
		t.Errorf("a backend's own type was replaced: %s", w.Body)
	}
}

// TestBackendErrorBodyIsNotLogged: a backend's 500 body (here with a
// password in it) never reaches the log at error level; at debug level a
// short excerpt does, with the password removed.
func TestBackendErrorBodyIsNotLogged(t *testing.T) {
	core, logs := observer.New(zapcore.DebugLevel)
	h := newHandler(t, &Handler{})
	h.logger = zap.New(core)
	page := `{"error":"login to db failed","password":"hunter2-very-secret"}` + strings.Repeat(" filler", 500)
	_ = h.ServeHTTP(httptest.NewRecorder(), newRequest("GET", "/v1/x"), backend(500, "application/json", page))
	for _, e := range logs.All() {
		line := fmt.Sprint(e.Message, e.ContextMap())
		if strings.Contains(line, "hunter2") {
			t.Errorf("the backend's password reached the log: %s", line)
		}
		if e.Level >= zapcore.InfoLevel && strings.Contains(line, "login to db") {
			t.Errorf("the backend's body was logged at %s: %s", e.Level, line)
		}
		if ex, ok := e.ContextMap()["excerpt"].(string); ok && len(ex) > maxLoggedBody {
			t.Errorf("excerpt of %d bytes, want at most %d", len(ex), maxLoggedBody)
		}
	}
	if logs.FilterMessage("backend error response").Len() != 1 || logs.FilterMessage("backend error body").Len() != 1 {
		t.Errorf("want one error line and one debug excerpt, got %v", logs.All())
	}
}

// TestMalformedRequestsAreClientErrors: what the client got wrong is a
// 400 problem, never a 5xx from whatever failed further in.
func TestMalformedRequestsAreClientErrors(t *testing.T) {
	h := newHandler(t, &Handler{})
	called := false
	reached := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error { called = true; return nil })
	for _, tt := range []struct{ method, target string }{{"G ET", "/v1/x"}, {"GET", "/v1/a%2Fb"}} {
		called = false
		r := newRequest("GET", tt.target)
		r.Method = tt.method
		w := httptest.NewRecorder()
		_ = h.ServeHTTP(w, r, reached)
		if w.Code != 400 || called {
			t.Errorf("%q %s: %d (next called: %v), want 400 without calling next", tt.method, tt.target, w.Code, called)
		}
	}
	// a body that cannot be read makes the proxy fail with a 502; the
	// client's fault is a 400
	r := newRequest("POST", "/v1/x")
	r.Body = io.NopCloser(io.MultiReader(strings.NewReader("{"), iotest.ErrReader(errors.New("http: invalid byte in chunk length"))))
	proxy := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		_, err := io.ReadAll(r.Body)
		return caddyhttp.Error(http.StatusBadGateway, err)
	})
	w := httptest.NewRecorder()
	_ = h.ServeHTTP(w, r, proxy)
	if w.Code != 400 || !strings.Contains(w.Body.String(), "chunked") {
		t.Errorf("unreadable body: %d %s, want a 400 naming the chunked encoding", w.Code, w.Body)
	}
}

// TestProblemsReadWell: no HTML escaping in a problem's JSON.
func TestProblemsReadWell(t *testing.T) {
	h := newHandler(t, &Handler{})
	w := httptest.NewRecorder()
	_ = h.ServeHTTP(w, newRequest("GET", "/v1/x"), failing(Error(401, "", "an API key is required: send it as `Authorization: Bearer <key>` & retry")))
	if body := w.Body.String(); !strings.Contains(body, "Bearer <key>` & retry") || strings.Contains(body, `\u003c`) {
		t.Errorf("problem body: %s", body)
	}
}
