// Package trace puts restgate's decisions on the request's OpenTelemetry
// span: the one Caddy's `tracing` handler starts (http.handlers.tracing,
// ahead of every restgate handler in the directive order). Each handler
// makes one call at the point where it decides, and the call reads the
// span from the request's context.
//
// Without `tracing`, or for a request the sampler dropped, the span does
// not record: every function here then returns after one context lookup,
// allocating nothing (BenchmarkNotRecording), so an untraced request pays
// nothing measurable for them.
//
// What is recorded is a decision and what it was made about, never a
// credential: an API key, its hash, a token and its claims other than the
// issuer never reach a span. The attribute names are the constants below,
// all under `restgate.`.
package trace

import (
	"context"
	"errors"
	"time"

	"go.opentelemetry.io/otel/attribute"
	oteltrace "go.opentelemetry.io/otel/trace"
)

// Attribute names (on the request's span unless marked as an event's).
const (
	// AuthDecision is api_auth's decision: ok, anonymous, missing, invalid
	// or insufficient_scope.
	AuthDecision = attribute.Key("restgate.auth.decision")
	// AuthPrincipalKind is what authenticated the request: key (an API
	// key) or token (a signed token); set with ok and insufficient_scope.
	AuthPrincipalKind = attribute.Key("restgate.auth.principal.kind")
	// AuthIssuer is a token's issuer (the `iss` it was verified against).
	AuthIssuer = attribute.Key("restgate.auth.principal.issuer")

	// RateLimitEvent is the event api_rate_limit and api_rate_limit_ip add
	// per zone that applied to the request, with the three attributes
	// below.
	RateLimitEvent = "restgate.rate_limit"
	// RateLimitZone is the zone's name (event attribute).
	RateLimitZone = attribute.Key("restgate.rate_limit.zone")
	// RateLimitDecision is admitted, refused or undecided (the store could
	// not answer; on_error then admitted or refused it) (event attribute).
	RateLimitDecision = attribute.Key("restgate.rate_limit.decision")
	// RateLimitRemaining is how many whole requests the zone has left for
	// this key; absent when undecided (event attribute).
	RateLimitRemaining = attribute.Key("restgate.rate_limit.remaining")

	// CacheStatus is api_etag's cache for a GET or HEAD: hit (answered
	// from the cache), miss (nothing stored), stale (stored, revalidated
	// upstream) or bypass (the client's Cache-Control sent it upstream).
	// Absent without `cache`.
	CacheStatus = attribute.Key("restgate.cache.status")

	// LockWait is how long a conditional write (If-Match, If-None-Match,
	// If-Unmodified-Since) waited for its resource's lock, in seconds.
	LockWait = attribute.Key("restgate.lock.wait_seconds")
	// LockOutcome is how the wait ended: acquired, timeout (another write
	// held it past lock_timeout: 503 resource_busy), unavailable (the
	// shared lock in Redis could not be reached: 503 lock_unavailable) or
	// canceled.
	LockOutcome = attribute.Key("restgate.lock.outcome")

	// IdempotencyOutcome is api_idempotency's answer to a request with an
	// Idempotency-Key: stored (carried out, its response kept for
	// retries), claimed (carried out, its response not kept: an error or a
	// status that is not stored), replayed, in_flight (409), mismatch (the
	// key was used for another request: 422), discarded (carried out
	// before, its response too large to keep: 409) or refused (the store
	// could not take the claim: 429 or 503).
	IdempotencyOutcome = attribute.Key("restgate.idempotency.outcome")

	// ProblemStatus, ProblemType and ProblemCode describe the
	// problem+json api_errors rendered; ProblemSource says whether it
	// rewrote a backend's error response (backend) or an error raised in
	// the gateway (gateway).
	ProblemStatus = attribute.Key("restgate.problem.status")
	ProblemType   = attribute.Key("restgate.problem.type")
	ProblemCode   = attribute.Key("restgate.problem.code")
	ProblemSource = attribute.Key("restgate.problem.source")
)

// Values of AuthDecision.
const (
	AuthOK                = "ok"
	AuthAnonymous         = "anonymous"
	AuthMissing           = "missing"
	AuthInvalid           = "invalid"
	AuthInsufficientScope = "insufficient_scope"
)

// Values of RateLimitDecision.
const (
	Admitted  = "admitted"
	Refused   = "refused"
	Undecided = "undecided"
)

// Values of CacheStatus.
const (
	CacheHit    = "hit"
	CacheMiss   = "miss"
	CacheStale  = "stale"
	CacheBypass = "bypass"
)

// Values of IdempotencyOutcome.
const (
	IdemStored    = "stored"
	IdemClaimed   = "claimed"
	IdemReplayed  = "replayed"
	IdemInFlight  = "in_flight"
	IdemMismatch  = "mismatch"
	IdemDiscarded = "discarded"
	IdemRefused   = "refused"
)

// recording returns the context's span if it records, else nil.
func recording(ctx context.Context) oteltrace.Span {
	if s := oteltrace.SpanFromContext(ctx); s.IsRecording() {
		return s
	}
	return nil
}

// Auth records an api_auth decision that has no principal (anonymous,
// missing, invalid).
func Auth(ctx context.Context, decision string) {
	if s := recording(ctx); s != nil {
		s.SetAttributes(AuthDecision.String(decision))
	}
}

// AuthPrincipal records an api_auth decision about a principal (ok,
// insufficient_scope) and its kind: issuer is a token's issuer (a string),
// nil for an API key. Nothing else about the principal is recorded.
func AuthPrincipal(ctx context.Context, decision string, issuer any) {
	s := recording(ctx)
	if s == nil {
		return
	}
	if iss, ok := issuer.(string); ok {
		s.SetAttributes(AuthDecision.String(decision), AuthPrincipalKind.String("token"), AuthIssuer.String(iss))
		return
	}
	s.SetAttributes(AuthDecision.String(decision), AuthPrincipalKind.String("key"))
}

// RateLimit adds a RateLimitEvent for one zone's decision; remaining < 0
// leaves RateLimitRemaining out.
func RateLimit(ctx context.Context, zone, decision string, remaining float64) {
	s := recording(ctx)
	if s == nil {
		return
	}
	if remaining < 0 {
		s.AddEvent(RateLimitEvent, oteltrace.WithAttributes(RateLimitZone.String(zone), RateLimitDecision.String(decision)))
		return
	}
	s.AddEvent(RateLimitEvent, oteltrace.WithAttributes(RateLimitZone.String(zone), RateLimitDecision.String(decision),
		RateLimitRemaining.Int64(int64(remaining))))
}

// Cache records api_etag's cache status for a read.
func Cache(ctx context.Context, status string) {
	if s := recording(ctx); s != nil {
		s.SetAttributes(CacheStatus.String(status))
	}
}

// Start returns the time a wait starts, for Lock; the zero time when the
// span does not record (the clock is not read).
func Start(ctx context.Context) time.Time {
	if recording(ctx) == nil {
		return time.Time{}
	}
	return time.Now()
}

// Lock records how long a conditional write waited for its lock since
// start (from Start) and how the wait ended: err is the lock's error.
func Lock(ctx context.Context, start time.Time, err error) {
	s := recording(ctx)
	if s == nil || start.IsZero() {
		return
	}
	s.SetAttributes(LockWait.Float64(time.Since(start).Seconds()), LockOutcome.String(lockOutcome(err)))
}

func lockOutcome(err error) string {
	switch {
	case err == nil:
		return "acquired"
	case errors.Is(err, context.DeadlineExceeded):
		return "timeout"
	case errors.Is(err, context.Canceled):
		return "canceled"
	}
	return "unavailable"
}

// Idempotency records api_idempotency's outcome; a later call replaces an
// earlier one's (claimed, then stored).
func Idempotency(ctx context.Context, outcome string) {
	if s := recording(ctx); s != nil {
		s.SetAttributes(IdempotencyOutcome.String(outcome))
	}
}

// Problem records the problem+json api_errors renders: its status, type,
// code and whether it rewrote a backend's response.
func Problem(ctx context.Context, status int, typ, code string, backend bool) {
	s := recording(ctx)
	if s == nil {
		return
	}
	if typ == "" {
		typ = "about:blank" // what problem.Write sends for it
	}
	src := "gateway"
	if backend {
		src = "backend"
	}
	s.SetAttributes(ProblemStatus.Int(status), ProblemType.String(typ), ProblemCode.String(code), ProblemSource.String(src))
}
