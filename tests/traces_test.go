package tests

import (
	"bytes"
	"compress/gzip"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/protobuf/proto"
)

// TestTraces: the default Caddyfile with a service added and started with
// RESTGATE_TRACING=on and the OTEL_* variables the README names sends one
// span a request to an OTLP/HTTP collector (a receiver this test runs),
// with restgate's decisions on it: auth decision and principal kind, each
// zone's rate-limit decision, the cache status, the If-Match lock wait,
// the Idempotency-Key outcome, the problem api_errors rendered. The
// service behind reverse_proxy sees a traceparent in the gateway's span's
// trace; the in-process resources run inside the span. No key, hash or
// token appears anywhere in the exported bytes. Without RESTGATE_TRACING,
// nothing is traced (no traceparent reaches the service).
func TestTraces(t *testing.T) {
	otlp := startOTLPReceiver(t)
	var seenMu sync.Mutex
	var seen []string // the traceparent of each request the service got
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seenMu.Lock()
		seen = append(seen, r.Header.Get("Traceparent"))
		seenMu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "max-age=300")
		fmt.Fprint(w, `{"items": []}`)
	}))
	t.Cleanup(backend.Close)
	lastSeen := func() string {
		seenMu.Lock()
		defer seenMu.Unlock()
		if len(seen) == 0 {
			return ""
		}
		return seen[len(seen)-1]
	}
	cfg := withService(t, "/v1/widgets*", strings.TrimPrefix(backend.URL, "http://"))

	t.Run("off by default", func(t *testing.T) {
		g := StartGateway(t, cfg, Options{Env: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": otlp.url}})
		if r := Do(t, g.Client(), "GET", g.URL("/v1/widgets"), "", bearer("alice")...); r.StatusCode != 200 {
			t.Fatalf("GET /v1/widgets: %d %s", r.StatusCode, r.Body)
		}
		if tp := lastSeen(); tp != "" {
			t.Errorf("without RESTGATE_TRACING the service got traceparent %q, want none", tp)
		}
	})

	g := StartGateway(t, cfg, Options{Env: map[string]string{
		"RESTGATE_TRACING":            "on",
		"OTEL_EXPORTER_OTLP_ENDPOINT": otlp.url,
		"OTEL_SERVICE_NAME":           "restgate",
		"OTEL_BSP_SCHEDULE_DELAY":     "100", // ms: export at once, not every 5 s
	}})
	c := g.Client()
	const jwtLike = "eyJhbGciOiJSUzI1NiIsImtpZCI6InRyYWNlcyJ9.eyJzdWIiOiJhbGljZSIsImlzcyI6Imh0dHBzOi8vaWRwLmV4YW1wbGUifQ.c2lnbmF0dXJlLW5vdC12YWxpZA"
	const wrongKey = "rg_test_wrong_000000000000000000000000000099"
	const idemKey = `"idem-7f3a9c0e"`

	// each request but the service's carries the client's own trace, so
	// that its span can be told apart
	traced := func(method, path, body string, headers ...string) (*Response, string) {
		t.Helper()
		id := newTraceID(t)
		headers = append(headers, "Traceparent", "00-"+id+"-00f067aa0ba902b7-01")
		return Do(t, c, method, g.URL(path), body, headers...), id
	}
	jsonBody := []string{"Content-Type", "application/json"}

	// the service: a keyed GET, then the same from the cache
	if r := Do(t, c, "GET", g.URL("/v1/widgets"), "", bearer("alice")...); r.StatusCode != 200 {
		t.Fatalf("GET /v1/widgets: %d %s", r.StatusCode, r.Body)
	}
	fromService := lastSeen()
	hit, hitTrace := traced("GET", "/v1/widgets", "", bearer("alice")...)
	if hit.Header.Get("Cache-Status") != "restgate; hit" {
		t.Fatalf("second GET: Cache-Status %q, want a hit", hit.Header.Get("Cache-Status"))
	}
	// the in-process resources: a create with an Idempotency-Key, its retry
	created, createTrace := traced("POST", "/v1/events", `{"name": "GW150914"}`, append(append(bearer("alice"), jsonBody...), "Idempotency-Key", idemKey)...)
	if created.StatusCode != 201 {
		t.Fatalf("POST /v1/events: %d %s", created.StatusCode, created.Body)
	}
	replayed, replayTrace := traced("POST", "/v1/events", `{"name": "GW150914"}`, append(append(bearer("alice"), jsonBody...), "Idempotency-Key", idemKey)...)
	if replayed.StatusCode != 201 {
		t.Fatalf("the retry: %d %s", replayed.StatusCode, replayed.Body)
	}
	// a conditional write under the lock, with a stale ETag
	stale, staleTrace := traced("PATCH", "/v1/events/GW150914", `{"repository": "x"}`,
		append(append(bearer("alice"), "Content-Type", "application/merge-patch+json"), "If-Match", `"stale"`)...)
	AssertProblem(t, stale, 412)
	// refusals: no key, a wrong key, a token no issuer is configured for, too few scopes
	missing, missingTrace := traced("GET", "/v1/events", "")
	AssertProblem(t, missing, 401)
	wrong, wrongTrace := traced("GET", "/v1/events", "", "Authorization", "Bearer "+wrongKey)
	AssertProblem(t, wrong, 401)
	token, tokenTrace := traced("GET", "/v1/events", "", "Authorization", "Bearer "+jwtLike)
	AssertProblem(t, token, 401)
	scope, scopeTrace := traced("POST", "/v1/events", `{"name": "GW170817"}`, append(bearer("reader"), jsonBody...)...)
	AssertProblem(t, scope, 403)
	public, publicTrace := traced("GET", "/v1/health", "")
	if public.StatusCode != 200 {
		t.Fatalf("GET /v1/health: %d", public.StatusCode)
	}

	t.Run("the service is in the gateway's trace", func(t *testing.T) {
		parts := strings.Split(fromService, "-")
		if len(parts) != 4 || len(parts[1]) != 32 || len(parts[2]) != 16 {
			t.Fatalf("the service got traceparent %q, want the gateway's span", fromService)
		}
		span := otlp.wait(t, parts[1])
		if got := hex.EncodeToString(span.SpanId); got != parts[2] {
			t.Errorf("the service's parent span is %s, want the gateway's span %s", parts[2], got)
		}
		checkSpan(t, span, map[string]string{
			"restgate.auth.decision": "ok", "restgate.auth.principal.kind": "key",
			"restgate.cache.status": "miss", "http.response.status_code": "200",
		}, "restgate.auth.principal.issuer", "restgate.problem.status")
		checkRateLimits(t, span, "per-ip", "per-user")
	})

	tests := []struct {
		name    string
		trace   string
		want    map[string]string
		absent  []string
		limited []string // the zones whose decisions it carries
	}{
		{"a cache hit", hitTrace, map[string]string{
			"restgate.auth.decision": "ok", "restgate.cache.status": "hit", "http.response.status_code": "200",
		}, []string{"restgate.idempotency.outcome"}, []string{"per-ip", "per-user"}},
		{"a create in resources, with an Idempotency-Key", createTrace, map[string]string{
			"restgate.auth.decision": "ok", "restgate.auth.principal.kind": "key",
			"restgate.idempotency.outcome": "stored", "http.response.status_code": "201",
		}, []string{"restgate.cache.status", "restgate.problem.status"}, []string{"per-ip", "per-user"}},
		{"its retry", replayTrace, map[string]string{
			"restgate.idempotency.outcome": "replayed", "http.response.status_code": "201",
		}, nil, []string{"per-ip", "per-user"}},
		{"a stale If-Match", staleTrace, map[string]string{
			"restgate.lock.outcome": "acquired", "restgate.lock.wait_seconds": "*",
			"restgate.problem.status": "412", "restgate.problem.code": "*", "restgate.problem.source": "gateway",
		}, nil, []string{"per-ip", "per-user"}},
		{"no key", missingTrace, map[string]string{
			"restgate.auth.decision": "missing", "restgate.problem.status": "401", "restgate.problem.type": "*",
		}, []string{"restgate.auth.principal.kind"}, []string{"per-ip"}},
		{"a wrong key", wrongTrace, map[string]string{
			"restgate.auth.decision": "invalid", "restgate.problem.status": "401", "restgate.problem.code": "invalid_key",
		}, []string{"restgate.auth.principal.kind"}, []string{"per-ip"}},
		{"a token", tokenTrace, map[string]string{
			"restgate.auth.decision": "invalid", "restgate.problem.status": "401",
		}, []string{"restgate.auth.principal.kind", "restgate.auth.principal.issuer"}, []string{"per-ip"}},
		{"too few scopes", scopeTrace, map[string]string{
			"restgate.auth.decision": "insufficient_scope", "restgate.auth.principal.kind": "key",
			"restgate.problem.status": "403", "restgate.problem.code": "insufficient_scope",
		}, nil, []string{"per-ip"}},
		{"a public path", publicTrace, map[string]string{
			"restgate.auth.decision": "anonymous", "http.response.status_code": "200",
		}, []string{"restgate.problem.status"}, []string{"per-ip", "per-user"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			span := otlp.wait(t, tt.trace)
			if got := hex.EncodeToString(span.ParentSpanId); got != "00f067aa0ba902b7" {
				t.Errorf("parent span %s, want the client's 00f067aa0ba902b7", got)
			}
			checkSpan(t, span, tt.want, tt.absent...)
			checkRateLimits(t, span, tt.limited...)
		})
	}

	t.Run("resource", func(t *testing.T) {
		for _, name := range otlp.serviceNames() {
			if name != "restgate" {
				t.Errorf("service.name %q, want restgate (OTEL_SERVICE_NAME)", name)
			}
		}
	})

	t.Run("no secret is exported", func(t *testing.T) {
		raw := otlp.bytes()
		var secrets []string
		for _, user := range []string{"alice", "reader"} {
			tok := testKeys[user].token
			sum := sha256.Sum256([]byte(tok))
			secrets = append(secrets, tok, "Bearer "+tok, hex.EncodeToString(sum[:]), strings.ToUpper(hex.EncodeToString(sum[:])),
				string(sum[:]), base64.StdEncoding.EncodeToString(sum[:]), base64.RawURLEncoding.EncodeToString(sum[:]),
				hex.EncodeToString(sum[:8])) // a key id made of the hash's first bytes
		}
		secrets = append(secrets, wrongKey, jwtLike, strings.Split(jwtLike, ".")[1], "rg_test_", "idem-7f3a9c0e")
		for _, s := range secrets {
			if bytes.Contains(raw, []byte(s)) {
				t.Errorf("the exported spans contain %q", s)
			}
		}
		if !bytes.Contains(raw, []byte("restgate.auth.decision")) {
			t.Error("the search would find nothing: the raw export does not even hold the attribute names")
		}
	})
}

// checkSpan checks a span's attributes: want ("*": present, any value),
// and absent names that must not be there.
func checkSpan(t *testing.T, span *tracepb.Span, want map[string]string, absent ...string) {
	t.Helper()
	got := kvMap(span.Attributes)
	for k, v := range want {
		if g, ok := got[k]; !ok || (v != "*" && g != v) {
			t.Errorf("%s = %q (present: %v), want %q; span attributes: %v", k, g, ok, v, got)
		}
	}
	for _, k := range absent {
		if g, ok := got[k]; ok {
			t.Errorf("%s = %q, want it absent", k, g)
		}
	}
}

// checkRateLimits checks that the span has one admitted rate-limit event
// per zone, with what remains.
func checkRateLimits(t *testing.T, span *tracepb.Span, zones ...string) {
	t.Helper()
	var got []string
	for _, e := range span.Events {
		if e.Name != "restgate.rate_limit" {
			continue
		}
		a := kvMap(e.Attributes)
		got = append(got, a["restgate.rate_limit.zone"])
		if a["restgate.rate_limit.decision"] != "admitted" {
			t.Errorf("zone %s: decision %q, want admitted", a["restgate.rate_limit.zone"], a["restgate.rate_limit.decision"])
		}
		if n, err := strconv.Atoi(a["restgate.rate_limit.remaining"]); err != nil || n <= 0 {
			t.Errorf("zone %s: remaining %q, want a positive count", a["restgate.rate_limit.zone"], a["restgate.rate_limit.remaining"])
		}
	}
	if strings.Join(got, " ") != strings.Join(zones, " ") {
		t.Errorf("rate-limit events for zones %q, want %q", got, zones)
	}
}

func kvMap(kvs []*commonpb.KeyValue) map[string]string {
	m := make(map[string]string, len(kvs))
	for _, kv := range kvs {
		switch v := kv.Value.GetValue().(type) {
		case *commonpb.AnyValue_StringValue:
			m[kv.Key] = v.StringValue
		case *commonpb.AnyValue_IntValue:
			m[kv.Key] = strconv.FormatInt(v.IntValue, 10)
		case *commonpb.AnyValue_DoubleValue:
			m[kv.Key] = strconv.FormatFloat(v.DoubleValue, 'g', -1, 64)
		case *commonpb.AnyValue_BoolValue:
			m[kv.Key] = strconv.FormatBool(v.BoolValue)
		default:
			m[kv.Key] = kv.Value.String()
		}
	}
	return m
}

func newTraceID(t *testing.T) string {
	t.Helper()
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b[:])
}

// otlpReceiver is an OTLP/HTTP (protobuf) trace collector: what the
// gateway's default exporter speaks (OTEL_EXPORTER_OTLP_PROTOCOL
// http/protobuf). It keeps every export's bytes and spans.
type otlpReceiver struct {
	url string

	mu        sync.Mutex
	raw       bytes.Buffer
	resources []*tracepb.ResourceSpans
}

func startOTLPReceiver(t *testing.T) *otlpReceiver {
	t.Helper()
	o := new(otlpReceiver)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost || r.URL.Path != "/v1/traces" {
			http.Error(w, "not a trace export", http.StatusNotFound)
			return
		}
		var body io.Reader = r.Body
		if r.Header.Get("Content-Encoding") == "gzip" {
			zr, err := gzip.NewReader(r.Body)
			if err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			body = zr
		}
		b, err := io.ReadAll(body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		var req coltracepb.ExportTraceServiceRequest
		if err := proto.Unmarshal(b, &req); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		o.mu.Lock()
		o.raw.Write(b)
		o.resources = append(o.resources, req.ResourceSpans...)
		o.mu.Unlock()
		resp, _ := proto.Marshal(&coltracepb.ExportTraceServiceResponse{})
		w.Header().Set("Content-Type", "application/x-protobuf")
		_, _ = w.Write(resp)
	}))
	t.Cleanup(srv.Close)
	o.url = srv.URL
	return o
}

// span returns the span of trace id (hex) the gateway exported, or nil.
func (o *otlpReceiver) span(id string) *tracepb.Span {
	o.mu.Lock()
	defer o.mu.Unlock()
	for _, rs := range o.resources {
		for _, ss := range rs.ScopeSpans {
			for _, s := range ss.Spans {
				if hex.EncodeToString(s.TraceId) == id {
					return s
				}
			}
		}
	}
	return nil
}

// wait returns the span of trace id once it has arrived.
func (o *otlpReceiver) wait(t *testing.T, id string) *tracepb.Span {
	t.Helper()
	waitFor(t, 30*time.Second, "the span of trace "+id+" at the collector", func() bool { return o.span(id) != nil })
	return o.span(id)
}

func (o *otlpReceiver) serviceNames() []string {
	o.mu.Lock()
	defer o.mu.Unlock()
	var names []string
	for _, rs := range o.resources {
		names = append(names, kvMap(rs.GetResource().GetAttributes())["service.name"])
	}
	return names
}

func (o *otlpReceiver) bytes() []byte {
	o.mu.Lock()
	defer o.mu.Unlock()
	return bytes.Clone(o.raw.Bytes())
}
