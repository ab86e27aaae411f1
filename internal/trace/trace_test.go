package trace

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp"
	"go.opentelemetry.io/otel/attribute"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	oteltrace "go.opentelemetry.io/otel/trace"
)

// recorded runs fn on a recording span and returns the span once ended.
func recorded(t testing.TB, fn func(ctx context.Context)) sdktrace.ReadOnlySpan {
	t.Helper()
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	ctx, span := tp.Tracer("test").Start(context.Background(), "request")
	fn(ctx)
	span.End()
	ended := rec.Ended()
	if len(ended) != 1 {
		t.Fatalf("got %d ended spans, want 1", len(ended))
	}
	return ended[0]
}

// attrs flattens key-values to strings for comparison.
func attrs(kvs []attribute.KeyValue) map[string]string {
	m := make(map[string]string, len(kvs))
	for _, kv := range kvs {
		m[string(kv.Key)] = kv.Value.String()
	}
	return m
}

func TestAttributes(t *testing.T) {
	tests := []struct {
		name string
		give func(ctx context.Context)
		want map[string]string
	}{
		{"auth missing", func(ctx context.Context) { Auth(ctx, AuthMissing) },
			map[string]string{"restgate.auth.decision": "missing"}},
		{"auth key", func(ctx context.Context) { AuthPrincipal(ctx, AuthOK, nil) },
			map[string]string{"restgate.auth.decision": "ok", "restgate.auth.principal.kind": "key"}},
		{"auth token", func(ctx context.Context) { AuthPrincipal(ctx, AuthInsufficientScope, any("https://issuer.example")) },
			map[string]string{
				"restgate.auth.decision": "insufficient_scope", "restgate.auth.principal.kind": "token",
				"restgate.auth.principal.issuer": "https://issuer.example",
			}},
		{"cache", func(ctx context.Context) { Cache(ctx, CacheStale) },
			map[string]string{"restgate.cache.status": "stale"}},
		{"lock acquired", func(ctx context.Context) { Lock(ctx, Start(ctx), nil) },
			map[string]string{"restgate.lock.outcome": "acquired", "restgate.lock.wait_seconds": "*"}},
		{"lock timeout", func(ctx context.Context) { Lock(ctx, Start(ctx), context.DeadlineExceeded) },
			map[string]string{"restgate.lock.outcome": "timeout", "restgate.lock.wait_seconds": "*"}},
		{"lock unavailable", func(ctx context.Context) { Lock(ctx, Start(ctx), errors.New("redis down")) },
			map[string]string{"restgate.lock.outcome": "unavailable", "restgate.lock.wait_seconds": "*"}},
		{"idempotency: the last outcome stays", func(ctx context.Context) {
			Idempotency(ctx, IdemClaimed)
			Idempotency(ctx, IdemStored)
		}, map[string]string{"restgate.idempotency.outcome": "stored"}},
		{"problem from a backend", func(ctx context.Context) { Problem(ctx, 404, "", "not_found", true) },
			map[string]string{
				"restgate.problem.status": "404", "restgate.problem.type": "about:blank",
				"restgate.problem.code": "not_found", "restgate.problem.source": "backend",
			}},
		{"problem from the gateway", func(ctx context.Context) {
			Problem(ctx, 429, "https://iana.org/assignments/http-problem-types#quota-exceeded", "rate_limited", false)
		}, map[string]string{
			"restgate.problem.status": "429", "restgate.problem.type": "https://iana.org/assignments/http-problem-types#quota-exceeded",
			"restgate.problem.code": "rate_limited", "restgate.problem.source": "gateway",
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := attrs(recorded(t, tt.give).Attributes())
			if len(got) != len(tt.want) {
				t.Errorf("got attributes %v, want %v", got, tt.want)
			}
			for k, v := range tt.want {
				if g, ok := got[k]; !ok || (v != "*" && g != v) {
					t.Errorf("attribute %s = %q (present: %v), want %q", k, g, ok, v)
				}
			}
		})
	}
}

func TestRateLimitEvents(t *testing.T) {
	span := recorded(t, func(ctx context.Context) {
		RateLimit(ctx, "per-ip", Admitted, 599.7)
		RateLimit(ctx, "per-user", Undecided, -1)
	})
	want := []map[string]string{
		{"restgate.rate_limit.zone": "per-ip", "restgate.rate_limit.decision": "admitted", "restgate.rate_limit.remaining": "599"},
		{"restgate.rate_limit.zone": "per-user", "restgate.rate_limit.decision": "undecided"},
	}
	events := span.Events()
	if len(events) != len(want) {
		t.Fatalf("got %d events, want %d", len(events), len(want))
	}
	for i, e := range events {
		if e.Name != RateLimitEvent {
			t.Errorf("event %d is %q, want %q", i, e.Name, RateLimitEvent)
		}
		got := attrs(e.Attributes)
		if len(got) != len(want[i]) {
			t.Errorf("event %d: got %v, want %v", i, got, want[i])
		}
		for k, v := range want[i] {
			if got[k] != v {
				t.Errorf("event %d: %s = %q, want %q", i, k, got[k], v)
			}
		}
	}
}

// TestLockWaitMeasured: the wait is the time between Start and Lock.
func TestLockWaitMeasured(t *testing.T) {
	span := recorded(t, func(ctx context.Context) {
		start := Start(ctx)
		time.Sleep(20 * time.Millisecond) // the measured interval itself, not synchronisation
		Lock(ctx, start, nil)
	})
	for _, kv := range span.Attributes() {
		if kv.Key == LockWait {
			if w := kv.Value.AsFloat64(); w < 0.02 || w > 10 {
				t.Errorf("lock wait = %vs, want at least 0.02s", w)
			}
			return
		}
	}
	t.Errorf("no %s attribute", LockWait)
}

// deepContext is a request context as deep as a Caddy request's by the
// time the innermost restgate handler runs (server, replacer, vars, route
// groups, identity, ...), with no span in it.
func deepContext() context.Context {
	type k int
	ctx := context.Background()
	for i := range 16 {
		ctx = context.WithValue(ctx, k(i), i)
	}
	return ctx
}

// everyCall is one request's calls, one per handler, as the default
// Caddyfile's chain makes them for a keyed write that got a problem.
func everyCall(ctx context.Context) {
	RateLimit(ctx, "per-ip", Admitted, 599)
	AuthPrincipal(ctx, AuthOK, nil)
	Auth(ctx, AuthMissing)
	RateLimit(ctx, "per-user", Admitted, 1199)
	Idempotency(ctx, IdemStored)
	Cache(ctx, CacheMiss)
	Lock(ctx, Start(ctx), nil)
	Problem(ctx, 412, "", "precondition_failed", false)
}

// TestNotRecordingAllocatesNothing: without a recording span (no
// `tracing`, or a request the sampler dropped) no call allocates.
func TestNotRecordingAllocatesNothing(t *testing.T) {
	tp := sdktrace.NewTracerProvider(sdktrace.WithSampler(sdktrace.NeverSample()))
	dropped, span := tp.Tracer("test").Start(deepContext(), "request")
	defer span.End()
	for name, ctx := range map[string]context.Context{
		"no span":      deepContext(),
		"dropped span": dropped,
		"noop span":    oteltrace.ContextWithSpan(deepContext(), oteltrace.SpanFromContext(context.Background())),
	} {
		if n := testing.AllocsPerRun(100, func() { everyCall(ctx) }); n != 0 {
			t.Errorf("%s: %v allocations per request, want 0", name, n)
		}
		if !Start(ctx).IsZero() {
			t.Errorf("%s: Start read the clock", name)
		}
	}
}

// BenchmarkNotRecording is what the calls cost an untraced request: the
// whole chain's calls (everyCall) per iteration.
func BenchmarkNotRecording(b *testing.B) {
	ctx := deepContext()
	b.ReportAllocs()
	for b.Loop() {
		everyCall(ctx)
	}
}

// BenchmarkRecording is what a traced request's span costs, alone and
// with the chain's calls on it (started, ended and exported in batches to
// an exporter that drops them): the difference is the calls' cost.
func BenchmarkRecording(b *testing.B) {
	tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(discard{}))
	defer func() { _ = tp.Shutdown(context.Background()) }()
	tracer := tp.Tracer("bench")
	parent := deepContext()
	for _, bb := range []struct {
		name  string
		calls func(context.Context)
	}{
		{"span", func(context.Context) {}},
		{"span+calls", everyCall},
	} {
		b.Run(bb.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				ctx, span := tracer.Start(parent, "request")
				bb.calls(ctx)
				span.End()
			}
		})
	}
}

// BenchmarkTracingHandler is what Caddy's `tracing` costs a request when
// it is on: the otelhttp server span around a handler that makes every
// call, exported in batches (to an exporter that drops them), against the
// same handler without it.
func BenchmarkTracingHandler(b *testing.B) {
	inner := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		everyCall(r.Context())
		w.WriteHeader(http.StatusNoContent)
	})
	tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(discard{}))
	defer func() { _ = tp.Shutdown(context.Background()) }()
	for _, bb := range []struct {
		name string
		h    http.Handler
	}{
		{"off", inner},
		{"on", otelhttp.NewHandler(inner, "handler", otelhttp.WithTracerProvider(tp))},
	} {
		b.Run(bb.name, func(b *testing.B) {
			req := httptest.NewRequest(http.MethodGet, "https://api.localhost/v1/events", nil)
			w := httptest.NewRecorder()
			b.ReportAllocs()
			for b.Loop() {
				bb.h.ServeHTTP(w, req)
			}
		})
	}
}

// discard is a span exporter that drops what it is given.
type discard struct{}

func (discard) ExportSpans(context.Context, []sdktrace.ReadOnlySpan) error { return nil }
func (discard) Shutdown(context.Context) error                             { return nil }
