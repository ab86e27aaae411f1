package idempotency

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/restgate/restgate/internal/testclock"
)

func newHandler(t testing.TB, cfg string) (*Handler, *testclock.Clock) {
	t.Helper()
	h := new(Handler)
	if err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(cfg)); err != nil {
		t.Fatal(err)
	}
	c := testclock.New(time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC), time.Millisecond)
	h.now = c.Now
	h.store = newMemStore(limits{}) // not the pool's; replaced once the limits are known
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	t.Cleanup(cancel)
	if err := h.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	h.store = newMemStore(h.limits()) // each test its own
	h.logger = zap.NewNop()
	if err := h.Validate(); err != nil {
		t.Fatal(err)
	}
	return h, c
}

// backend creates one event per request it sees and counts them.
type backend struct {
	calls   atomic.Int64
	status  int           // default 201
	release chan struct{} // if set, each request waits for it
}

func (b *backend) ServeHTTP(w http.ResponseWriter, r *http.Request) error {
	n := b.calls.Add(1)
	if b.release != nil {
		<-b.release
	}
	if err := r.Context().Err(); err != nil {
		return err
	}
	body, _ := io.ReadAll(r.Body)
	status := b.status
	if status == 0 {
		status = http.StatusCreated
	}
	w.Header().Set("Location", fmt.Sprintf("/v1/events/e%d", n))
	w.Header().Set("ETag", fmt.Sprintf(`"v%d"`, n))
	w.Header().Set("X-Request-Id", fmt.Sprintf("req-%d", n))
	w.WriteHeader(status)
	fmt.Fprintf(w, `{"n": %d, "body": %q}`, n, body)
	return nil
}

type req struct {
	method, path, user, body string
	headers                  []string
	ctx                      context.Context
}

func send(h *Handler, next caddyhttp.Handler, rq req) (*httptest.ResponseRecorder, error) {
	if rq.method == "" {
		rq.method = "POST"
	}
	if rq.path == "" {
		rq.path = "/v1/events"
	}
	r := httptest.NewRequest(rq.method, rq.path, strings.NewReader(rq.body))
	r.Host = "api.example.com"
	for i := 0; i+1 < len(rq.headers); i += 2 {
		r.Header.Add(rq.headers[i], rq.headers[i+1])
	}
	repl := caddy.NewReplacer()
	if rq.user != "" {
		repl.Set("http.auth.user.id", rq.user)
	}
	ctx := context.WithValue(r.Context(), caddy.ReplacerCtxKey, repl)
	ctx = context.WithValue(ctx, caddyhttp.VarsCtxKey, map[string]any{caddyhttp.ClientIPVarKey: "192.0.2.1"})
	if rq.ctx != nil {
		ctx = rq.ctx
		ctx = context.WithValue(ctx, caddy.ReplacerCtxKey, repl)
		ctx = context.WithValue(ctx, caddyhttp.VarsCtxKey, map[string]any{caddyhttp.ClientIPVarKey: "192.0.2.1"})
	}
	r = r.WithContext(ctx)
	w := httptest.NewRecorder()
	return w, h.ServeHTTP(w, r, next)
}

func statusOf(w *httptest.ResponseRecorder, err error) int {
	var he caddyhttp.HandlerError
	if errors.As(err, &he) {
		return he.StatusCode
	}
	if err != nil {
		return 500
	}
	return w.Code
}

const key = `"8e03978e-40d5-43e8-bc93-6894a57f9324"`

func TestRetryIsReplayed(t *testing.T) {
	forEachStore(t, func(t *testing.T, newHandler handlerMaker) {
		h, _ := newHandler(t, "api_idempotency")
		b := &backend{}
		first, err := send(h, b, req{user: "alice", body: `{"name": "E1"}`, headers: []string{KeyHeader, key}})
		if err != nil || first.Code != 201 {
			t.Fatalf("first: %d %v", first.Code, err)
		}
		retry, err := send(h, b, req{user: "alice", body: `{"name": "E1"}`, headers: []string{KeyHeader, key}})
		if err != nil || b.calls.Load() != 1 {
			t.Fatalf("retry: %v, backend called %d times, want once", err, b.calls.Load())
		}
		if retry.Code != 201 || retry.Body.String() != first.Body.String() || retry.Header().Get("Location") != first.Header().Get("Location") ||
			retry.Header().Get("ETag") != first.Header().Get("ETag") || retry.Header().Get(ReplayedHeader) != "true" {
			t.Errorf("replay: %d %q %v, want the first response %d %q %v", retry.Code, retry.Body, retry.Header(), first.Code, first.Body, first.Header())
		}
		if retry.Header().Get("X-Request-Id") != "" {
			t.Errorf("the first request's id was replayed: %q", retry.Header().Get("X-Request-Id"))
		}
		if first.Header().Get(ReplayedHeader) != "" {
			t.Error("the first response was marked as a replay")
		}
	})
}

func TestKeyOutcomes(t *testing.T) {
	forEachStore(t, func(t *testing.T, newHandler handlerMaker) {
		tests := []struct {
			name      string
			second    req
			wantCode  int
			wantCalls int64
		}{
			{"same key, different body", req{user: "alice", body: `{"name": "E2"}`, headers: []string{KeyHeader, key}}, 422, 1},
			{"same key, other path", req{user: "alice", path: "/v1/other", body: `{"name": "E1"}`, headers: []string{KeyHeader, key}}, 201, 2},
			{"same key, other user", req{user: "bob", body: `{"name": "E1"}`, headers: []string{KeyHeader, key}}, 201, 2},
			{"same key, other method", req{user: "alice", method: "PATCH", body: `{"name": "E1"}`, headers: []string{KeyHeader, key}}, 201, 2},
			{"same key, other spelling", req{user: "alice", path: "//v1/./events", body: `{"name": "E1"}`, headers: []string{KeyHeader, key}}, 201, 1},
			{"no key", req{user: "alice", body: `{"name": "E1"}`}, 201, 2},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				h, _ := newHandler(t, "api_idempotency")
				b := &backend{}
				send(h, b, req{user: "alice", body: `{"name": "E1"}`, headers: []string{KeyHeader, key}})
				w, err := send(h, b, tt.second)
				if got := statusOf(w, err); got != tt.wantCode || b.calls.Load() != tt.wantCalls {
					t.Errorf("status %d, backend calls %d; want %d and %d", got, b.calls.Load(), tt.wantCode, tt.wantCalls)
				}
			})
		}
	})
}

func TestMalformedKeys(t *testing.T) {
	h, _ := newHandler(t, "api_idempotency {\n required /v1/payments\n}")
	b := &backend{}
	for _, k := range []string{`abc`, `"unterminated`, `"a", "b"`, `""`, `"` + strings.Repeat("k", 256) + `"`, `?1`, `"ünïcode"`} {
		w, err := send(h, b, req{body: "{}", headers: []string{KeyHeader, k}})
		if got := statusOf(w, err); got != 400 {
			t.Errorf("Idempotency-Key: %s: %d, want 400", k, got)
		}
	}
	w, err := send(h, b, req{path: "/v1/payments", body: "{}"})
	if got := statusOf(w, err); got != 400 || !strings.Contains(w.Header().Get("Link"), `rel="help"`) || !strings.Contains(err.Error(), "Idempotency-Key") {
		t.Errorf("missing required key: %d Link %q %v", got, w.Header().Get("Link"), err)
	}
	if b.calls.Load() != 0 {
		t.Errorf("the backend saw %d refused requests", b.calls.Load())
	}
	if w, err := send(h, b, req{body: strings.Repeat("x", 2<<20), headers: []string{KeyHeader, key}}); statusOf(w, err) != 413 {
		t.Errorf("a body over max_body: %d, want 413", statusOf(w, err))
	}
}

// TestNotReplayed: responses that say "try again" are not stored; the key
// is released and the retry runs.
func TestNotReplayed(t *testing.T) {
	forEachStore(t, func(t *testing.T, newHandler handlerMaker) {
		for _, status := range []int{500, 502, 503, 429, 408} {
			h, _ := newHandler(t, "api_idempotency")
			b := &backend{status: status}
			send(h, b, req{body: "{}", headers: []string{KeyHeader, key}})
			b.status = 201
			w, _ := send(h, b, req{body: "{}", headers: []string{KeyHeader, key}})
			if w.Code != 201 || b.calls.Load() != 2 || w.Header().Get(ReplayedHeader) != "" {
				t.Errorf("after a %d: retry %d, backend calls %d; want a fresh 201", status, w.Code, b.calls.Load())
			}
		}
	})
}

func TestKeysExpire(t *testing.T) {
	forEachStore(t, func(t *testing.T, newHandler handlerMaker) {
		h, clk := newHandler(t, "api_idempotency {\n ttl 1h\n}")
		b := &backend{}
		send(h, b, req{body: "{}", headers: []string{KeyHeader, key}})
		clk.Add(59 * time.Minute)
		send(h, b, req{body: "{}", headers: []string{KeyHeader, key}})
		if b.calls.Load() != 1 {
			t.Fatalf("a retry within the TTL ran again")
		}
		clk.Add(2 * time.Minute)
		if w, _ := send(h, b, req{body: `{"other": 1}`, headers: []string{KeyHeader, key}}); w.Code != 201 || b.calls.Load() != 2 {
			t.Errorf("an expired key: %d, backend calls %d; want a new request", w.Code, b.calls.Load())
		}
	})
}

// TestConcurrentRetries: 20 identical requests at once with one key: one
// reaches the backend, every other gets the replay or a 409.
func TestConcurrentRetries(t *testing.T) {
	forEachStore(t, func(t *testing.T, newHandler handlerMaker) {
		h, _ := newHandler(t, "api_idempotency")
		b := &backend{release: make(chan struct{})}
		var wg sync.WaitGroup
		codes := make(chan int, 20)
		for range 20 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				w, err := send(h, b, req{body: `{"name": "E1"}`, headers: []string{KeyHeader, key}})
				codes <- statusOf(w, err)
			}()
		}
		// the first holds the key until released; the others answer at once
		deadline := time.Now().Add(10 * time.Second)
		for len(codes) < 19 {
			if time.Now().After(deadline) {
				t.Fatalf("only %d of 19 concurrent retries answered while the first was in flight", len(codes))
			}
			time.Sleep(time.Millisecond)
		}
		close(b.release)
		wg.Wait()
		close(codes)
		count := map[int]int{}
		for c := range codes {
			count[c]++
		}
		if b.calls.Load() != 1 || count[201] != 1 || count[409] != 19 {
			t.Errorf("backend calls %d, statuses %v; want 1 call, one 201 and nineteen 409s", b.calls.Load(), count)
		}
		if w, _ := send(h, b, req{body: `{"name": "E1"}`, headers: []string{KeyHeader, key}}); w.Header().Get(ReplayedHeader) != "true" {
			t.Error("after the first finished, a retry was not replayed")
		}
	})
}

// TestClientGoneStillCompletes: the client goes away after sending; the
// request still runs to completion and its retry gets the result.
func TestClientGoneStillCompletes(t *testing.T) {
	forEachStore(t, func(t *testing.T, newHandler handlerMaker) {
		h, _ := newHandler(t, "api_idempotency")
		b := &backend{}
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		if _, err := send(h, b, req{body: "{}", headers: []string{KeyHeader, key}, ctx: ctx}); err != nil {
			t.Fatalf("the first request did not complete: %v", err)
		}
		w, _ := send(h, b, req{body: "{}", headers: []string{KeyHeader, key}})
		if w.Code != 201 || w.Header().Get(ReplayedHeader) != "true" || b.calls.Load() != 1 {
			t.Errorf("retry: %d replayed %q, backend calls %d", w.Code, w.Header().Get(ReplayedHeader), b.calls.Load())
		}
	})
}

// TestMemoryBound: 1,000,000 distinct keys in a 16 MiB store keep the heap
// within the bound.
func TestMemoryBound(t *testing.T) {
	const maxSize = 16 << 20
	s := newMemStore(limits{maxBytes: maxSize, quota: maxSize, inFlight: 1, inFlightTotal: 1})
	rec := &Record{Status: 201, Header: http.Header{"Location": {"/v1/events/e1"}, "Etag": {`"v1"`}}, Body: []byte(`{"n": 1}`)}
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	now := time.Now()
	for i := range 1_000_000 {
		k := fmt.Sprintf("user:alice\x00POST\x00api.example.com\x00/v1/events\x00key-%d", i)
		c, _, err := s.Begin(context.Background(), "user:alice", k, Fingerprint{}, now, time.Hour)
		if c == nil {
			t.Fatalf("key %d was not claimed: %v", i, err)
		}
		s.Complete(c, &Record{Status: rec.Status, Header: rec.Header, Body: rec.Body, Expires: now.Add(time.Hour)})
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	growth := int64(after.HeapAlloc) - int64(before.HeapAlloc)
	t.Logf("1,000,000 keys: %d kept, %.1f MiB counted, heap +%.1f MiB", s.len(), float64(s.bytes)/(1<<20), float64(growth)/(1<<20))
	if s.bytes > maxSize || growth > 2*maxSize {
		t.Errorf("store %d bytes, heap +%d; want at most %d and %d", s.bytes, growth, maxSize, 2*maxSize)
	}
}

func TestCaddyfileErrors(t *testing.T) {
	for name, in := range map[string]string{
		"unknown":  "api_idempotency {\n nope\n}",
		"bad ttl":  "api_idempotency {\n ttl soon\n}",
		"bad size": "api_idempotency {\n max_size lots\n}",
		"no paths": "api_idempotency {\n paths\n}",
		"dup":      "api_idempotency {\n ttl 1h\n ttl 2h\n}",
		"argument": "api_idempotency now",
		"store":    "api_idempotency {\n store memory\n}",
		"lease":    "api_idempotency {\n claim_lease 0s\n}",
	} {
		t.Run(name, func(t *testing.T) {
			var h Handler
			if err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(in)); err == nil {
				t.Errorf("%q accepted", in)
			}
		})
	}
}
