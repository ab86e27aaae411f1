// Package idempotency implements http.handlers.api_idempotency: the
// Idempotency-Key request header (draft-ietf-httpapi-idempotency-key-header)
// for backends that know nothing of it, so that a retried POST or PATCH
// takes effect once.
package idempotency

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/dunglas/httpsfv"
	"go.uber.org/zap"

	"github.com/restgate/restgate/internal/canon"
	"github.com/restgate/restgate/internal/identity"
	"github.com/restgate/restgate/internal/trace"
	"github.com/restgate/restgate/modules/problem"
	"github.com/restgate/restgate/modules/redisapp"
)

func init() {
	caddy.RegisterModule(Handler{})
}

// Stores.
const (
	StoreLocal = "local"
	StoreRedis = "redis"
	StoreAuto  = "auto" // redis when the redis app is configured with an address, else local
)

// The header names.
const (
	KeyHeader      = "Idempotency-Key"
	ReplayedHeader = "Idempotent-Replayed" // on a replayed response, as Stripe sends it
)

// Handler makes requests that carry an Idempotency-Key take effect once.
//
// For the configured methods (POST and PATCH by default) and paths, a
// request with `Idempotency-Key: "<key>"` (a Structured Fields string) is
// remembered under its principal (the authenticated user, else the client
// IP), method, canonical path and key, with a fingerprint of the request
// (method, path, query, Content-Type and a digest of the body):
//
//   - the first request proceeds, to completion even if its client goes
//     away; its response (status, headers, body up to MaxResponse) is
//     stored for TTL;
//   - a retry with the same key and the same request gets the stored
//     response, byte for byte, with `Idempotent-Replayed: true`; the
//     backend is not called;
//   - a retry while the first is still in flight is a 409 problem;
//   - the same key with a different request is a 422 problem;
//   - a 5xx, 408, 425 or 429 response (and an error) is not stored: the
//     key is released, and a retry runs again;
//   - a response too large to keep (over MaxBody, over the principal's
//     quota, or alone over its fair share of a full store) is remembered
//     without its body: a retry is a 409 problem that gives its status,
//     never a second execution.
//
// Only the request that claimed a key can complete or release it: a claim
// that expired while its request ran, and was claimed again, is stale, and
// its request's end changes nothing. Claims in flight are never evicted;
// they are bounded by count, per principal (MaxInFlight, then a 429
// problem) and in all (MaxInFlightTotal, then a 503 problem), and the
// backend is not called. Stored responses are bounded by bytes, per
// principal (PrincipalQuota: its own least recently used go first) and in
// all (MaxSize: the least recently used of the principal holding the most
// go first, so that one principal's flood cannot push out another's
// records while that one holds no more than its fair share, MaxSize ÷ the
// principals with records).
//
// The records live in this process's memory, or (Store) in Redis, shared
// by every gateway that uses it; there claims have a lease (ClaimLease)
// that their gateway renews while the request runs, so that the keys of a
// gateway that died are free again soon, and the bounds on requests in
// flight count each gateway's own.
//
// Where `required` paths match, a request without the key is a 400
// problem linking to the documentation. A malformed key (not an
// sf-string, empty, or longer than 255 characters) is a 400 problem.
type Handler struct {
	// The methods the key applies to. Default: POST and PATCH.
	Methods []string `json:"methods,omitempty"`

	// The paths it applies to (Caddy path matcher syntax). Default: all.
	Paths caddyhttp.MatchPath `json:"paths,omitempty"`

	// Paths where the key is required. Default: none (it is optional, as
	// the draft allows).
	Required caddyhttp.MatchPath `json:"required,omitempty"`

	// How long a key is remembered. Default: 24h.
	TTL caddy.Duration `json:"ttl,omitempty"`

	// The largest request body fingerprinted (a larger one is a 413) and
	// the largest response body stored (a larger one is not stored).
	// Default: 1 MiB.
	MaxBody int `json:"max_body,omitempty"`

	// The most bytes of stored responses the in-memory store holds, all
	// principals together; when it is full, the least recently used record
	// of the principal holding the most bytes is forgotten first. Requests
	// in flight are not counted here and never forgotten (see
	// max_in_flight). Default: 64 MiB.
	MaxSize int64 `json:"max_size,omitempty"`

	// The most bytes of stored responses one principal (a user, else a
	// client IP) holds; past it, its own least recently used are forgotten
	// first. A single response larger than this is kept without its body
	// (a retry is a 409 problem, not a second execution). At most
	// max_size. Default: max_size ÷ 8 (8 MiB at the default max_size).
	PrincipalQuota int64 `json:"principal_quota,omitempty"`

	// The most requests with a key one principal may have in flight at
	// once; one more is a 429 problem and is not carried out. Default: 100.
	MaxInFlight int `json:"max_in_flight,omitempty"`

	// The most requests with a key in flight at once, all principals
	// together; one more is a 503 problem and is not carried out.
	// Default: 10000.
	MaxInFlightTotal int `json:"max_in_flight_total,omitempty"`

	// The documentation linked from the 400 for a missing key. Default: the
	// README's section.
	DocsURL string `json:"docs_url,omitempty"`

	// Where the records live: `local` (default: this process's memory),
	// `redis` (the redis app's server, shared by every gateway that uses
	// it, so that a retry sent to another gateway, or after a restart, is
	// answered the same way; the app must be configured with an address),
	// or `auto` (redis when the redis app is configured with an address,
	// else local). With Redis, a request with a key that cannot be claimed
	// because Redis cannot be reached is refused with a 503 problem and a
	// Retry-After (fail closed: never carried out unprotected).
	Store string `json:"store,omitempty"`

	// With Redis: how long a claim in flight lives unless its gateway
	// renews it (every claim_lease/3 while the request runs). A gateway
	// that dies mid-request holds its keys this long: until then a retry
	// is a 409 problem, after it the retry runs. Default: 10s.
	ClaimLease caddy.Duration `json:"claim_lease,omitempty"`

	store   Store
	redis   *redisapp.App // the redis store's app; nil for the local one
	poolKey string
	methods map[string]bool
	now     func() time.Time
	logger  *zap.Logger
}

// CaddyModule returns the Caddy module information.
func (Handler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.api_idempotency",
		New: func() caddy.Module { return new(Handler) },
	}
}

const (
	defaultTTL     = 24 * time.Hour
	defaultMaxBody = 1 << 20
	defaultMaxSize = 64 << 20
	// the default principal_quota is max_size ÷ quotaShare
	quotaShare              = 8
	defaultMaxInFlight      = 100
	defaultMaxInFlightTotal = 10000
	defaultDocsURL          = "https://github.com/restgate/restgate#api_idempotency"
	maxKeyLen               = 255
)

// stores keeps the in-memory store across config reloads, by its size.
var stores = caddy.NewUsagePool()

type pooledStore struct{ *memStore }

func (pooledStore) Destruct() error { return nil }

// Provision sets defaults and attaches the store, which survives reloads.
func (h *Handler) Provision(ctx caddy.Context) error {
	h.logger = ctx.Logger()
	if h.now == nil {
		h.now = time.Now
	}
	if len(h.Methods) == 0 {
		h.Methods = []string{http.MethodPost, http.MethodPatch}
	}
	h.methods = make(map[string]bool, len(h.Methods))
	for _, m := range h.Methods {
		h.methods[strings.ToUpper(m)] = true
	}
	if h.TTL == 0 {
		h.TTL = caddy.Duration(defaultTTL)
	}
	if h.MaxBody == 0 {
		h.MaxBody = defaultMaxBody
	}
	if h.MaxSize == 0 {
		h.MaxSize = defaultMaxSize
	}
	if h.PrincipalQuota == 0 {
		h.PrincipalQuota = h.MaxSize / quotaShare
	}
	if h.MaxInFlight == 0 {
		h.MaxInFlight = defaultMaxInFlight
	}
	if h.MaxInFlightTotal == 0 {
		h.MaxInFlightTotal = defaultMaxInFlightTotal
	}
	if h.DocsURL == "" {
		h.DocsURL = defaultDocsURL
	}
	for _, m := range []caddyhttp.MatchPath{h.Paths, h.Required} {
		if len(m) > 0 {
			if err := m.Provision(ctx); err != nil {
				return err
			}
		}
	}
	if h.ClaimLease == 0 {
		h.ClaimLease = caddy.Duration(defaultClaimLease)
	}
	switch h.Store {
	case "", StoreLocal:
	case StoreRedis, StoreAuto:
		get := redisapp.Get
		if h.Store == StoreAuto {
			get = redisapp.Enabled
		}
		app, err := get(ctx)
		if err != nil {
			return err
		}
		if app != nil {
			h.redis = app
			if h.store == nil {
				h.store = newRedisStore(app, h.limits(), time.Duration(h.ClaimLease), h.logger)
			}
		}
	default:
		return fmt.Errorf("store must be %s, %s or %s, not %q", StoreLocal, StoreRedis, StoreAuto, h.Store)
	}
	if h.store == nil {
		lim := h.limits()
		h.poolKey = fmt.Sprintf("idempotency:%+v", lim)
		val, _, err := stores.LoadOrNew(h.poolKey, func() (caddy.Destructor, error) {
			return pooledStore{newMemStore(lim)}, nil
		})
		if err != nil {
			h.poolKey = ""
			return err
		}
		h.store = val.(pooledStore)
	}
	return nil
}

// Validate checks the configuration.
func (h *Handler) Validate() error {
	if h.TTL < 0 || h.MaxBody < 0 || h.MaxSize < 0 || h.PrincipalQuota < 0 || h.MaxInFlight < 0 || h.MaxInFlightTotal < 0 || h.ClaimLease < 0 {
		return fmt.Errorf("ttl, max_body, max_size, principal_quota, max_in_flight, max_in_flight_total and claim_lease must not be negative")
	}
	if h.PrincipalQuota > h.MaxSize {
		return fmt.Errorf("principal_quota (%d bytes) must not exceed max_size (%d bytes)", h.PrincipalQuota, h.MaxSize)
	}
	if h.MaxInFlight > h.MaxInFlightTotal {
		return fmt.Errorf("max_in_flight (%d) must not exceed max_in_flight_total (%d)", h.MaxInFlight, h.MaxInFlightTotal)
	}
	return nil
}

// limits are the store's bounds, from the configuration.
func (h *Handler) limits() limits {
	return limits{maxBytes: h.MaxSize, quota: h.PrincipalQuota, inFlight: h.MaxInFlight, inFlightTotal: h.MaxInFlightTotal}
}

// Cleanup releases the store.
func (h *Handler) Cleanup() error {
	if h.poolKey == "" {
		return nil
	}
	_, err := stores.Delete(h.poolKey)
	return err
}

func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	if !h.methods[r.Method] || (len(h.Paths) > 0 && !h.Paths.Match(r)) {
		return next.ServeHTTP(w, r)
	}
	raw := r.Header.Values(KeyHeader)
	if len(raw) == 0 {
		if len(h.Required) > 0 && h.Required.Match(r) {
			w.Header().Set("Link", "<"+h.DocsURL+`>; rel="help"`)
			return problem.Error(http.StatusBadRequest, "idempotency_key_missing",
				"this operation requires an Idempotency-Key header (a quoted string unique to the operation, such as \"8e03978e-40d5-43e8-bc93-6894a57f9324\"); see "+h.DocsURL)
		}
		return next.ServeHTTP(w, r)
	}
	idemKey, err := parseKey(raw)
	if err != nil {
		return problem.Error(http.StatusBadRequest, "idempotency_key_invalid", err.Error())
	}
	body, err := h.readBody(r)
	if err != nil {
		return err
	}
	fp := fingerprint(r, body)
	who := principal(r)
	// a client that goes away is answered as one that waits: its request,
	// once claimed, is carried out, and its retry finds the result
	claim, rec, err := h.store.Begin(context.WithoutCancel(r.Context()), who, scope(who, r, idemKey), fp, h.now(), time.Duration(h.TTL))
	switch {
	case err != nil:
		trace.Idempotency(r.Context(), trace.IdemRefused)
		return h.refuse(w, err)
	case claim != nil:
		trace.Idempotency(r.Context(), trace.IdemClaimed)
		return h.run(w, r, next, claim, fp)
	case rec.Fingerprint != fp:
		trace.Idempotency(r.Context(), trace.IdemMismatch)
		return problem.Error(http.StatusUnprocessableEntity, "idempotency_key_reused",
			"this Idempotency-Key was already used for a different request; use a new key for a new request")
	case rec.InFlight:
		trace.Idempotency(r.Context(), trace.IdemInFlight)
		w.Header().Set("Retry-After", "1")
		return problem.Error(http.StatusConflict, "idempotency_key_in_use",
			"a request with this Idempotency-Key is still being processed; retry shortly to get its response")
	case rec.Discarded:
		trace.Idempotency(r.Context(), trace.IdemDiscarded)
		return discarded(rec)
	}
	trace.Idempotency(r.Context(), trace.IdemReplayed)
	return replay(w, r, rec)
}

// run carries out the request that holds claim: to completion even if the
// client goes away, so that its retry finds the result.
func (h *Handler) run(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler, claim *Claim, fp Fingerprint) error {
	settled := false
	defer func() {
		if !settled { // a panic: the claim must not stay in flight until it expires
			h.store.Release(claim)
		}
	}()
	r = r.WithContext(context.WithoutCancel(r.Context()))
	rw := &recorder{ResponseWriter: w, max: h.MaxBody}
	err := next.ServeHTTP(rw, r)
	settled = true
	// an error after a complete response only says the client went away
	// while it was being sent: the retry must still find it
	if (err != nil && !rw.clientGone) || !rw.wroteHeader || !storable(rw.status) {
		h.store.Release(claim)
		return err
	}
	rec := &Record{
		Fingerprint: fp, Status: rw.status, Header: rw.header, Body: rw.body.Bytes(),
		Expires: h.now().Add(time.Duration(h.TTL)),
	}
	if rw.overflow {
		rec = rec.discard()
	}
	if !h.store.Complete(claim, rec) {
		h.logger.Warn("an Idempotency-Key request outlived its claim (ttl): its response was not stored",
			zap.Duration("ttl", time.Duration(h.TTL)), zap.Int("status", rw.status))
	}
	trace.Idempotency(r.Context(), trace.IdemStored)
	return err
}

// refuse answers a request that Begin could not claim a key for: it is
// not carried out.
func (h *Handler) refuse(w http.ResponseWriter, err error) error {
	w.Header().Set("Retry-After", "1")
	if errors.Is(err, ErrStoreUnavailable) {
		if h.redis != nil {
			if retry := h.redis.RetryInFor(claimPurpose); retry > time.Second {
				w.Header().Set("Retry-After", strconv.FormatInt(int64((retry+time.Second-1)/time.Second), 10))
			}
		}
		return problem.Error(http.StatusServiceUnavailable, "idempotency_unavailable",
			"the gateway cannot reach the shared store of Idempotency-Keys right now, so it cannot tell whether this request was already carried out; it was not carried out: retry after the Retry-After delay")
	}
	if errors.Is(err, ErrPrincipalBusy) {
		p := problem.New(http.StatusTooManyRequests, fmt.Sprintf(
			"you have %d requests with an Idempotency-Key in flight, the most this gateway takes at once; this one was not carried out: retry after the Retry-After delay", h.MaxInFlight))
		p.Type = problem.TypeQuotaExceeded
		p.Code = "idempotency_in_flight_limit"
		return caddyhttp.Error(http.StatusTooManyRequests, p)
	}
	return problem.Error(http.StatusServiceUnavailable, "idempotency_store_busy", fmt.Sprintf(
		"the gateway has %d requests with an Idempotency-Key in flight, the most it takes at once; this one was not carried out: retry after the Retry-After delay", h.MaxInFlightTotal))
}

// discarded answers the retry of a request that was carried out but whose
// response was too large to keep: it is not run again.
func discarded(rec *Record) error {
	p := problem.New(http.StatusConflict, fmt.Sprintf(
		"the request with this Idempotency-Key was carried out (it answered %d), but its response was too large to keep for a replay; it is not carried out again: look up its result, or use a new key for a new request", rec.Status))
	p.Code = "idempotency_response_not_stored"
	p.Extensions = map[string]any{"original_status": rec.Status}
	if loc := rec.Header.Get("Location"); loc != "" {
		p.Extensions["original_location"] = loc
	}
	return caddyhttp.Error(http.StatusConflict, p)
}

// parseKey reads the Idempotency-Key field: one sf-string of 1 to 255
// characters (draft §2.1).
func parseKey(values []string) (string, error) {
	item, err := httpsfv.UnmarshalItem(values)
	if err != nil {
		return "", errors.New(`the Idempotency-Key header must be one quoted string, such as "8e03978e-40d5-43e8-bc93-6894a57f9324"`)
	}
	s, ok := item.Value.(string)
	if !ok {
		return "", errors.New(`the Idempotency-Key header must be a quoted string, such as "8e03978e-40d5-43e8-bc93-6894a57f9324"`)
	}
	if s == "" || len(s) > maxKeyLen {
		return "", fmt.Errorf("the Idempotency-Key must be 1 to %d characters long", maxKeyLen)
	}
	return s, nil
}

// readBody reads the request body (at most MaxBody) for its fingerprint
// and puts it back for the handlers after this one.
func (h *Handler) readBody(r *http.Request) ([]byte, error) {
	if r.Body == nil || r.Body == http.NoBody {
		return nil, nil
	}
	tooLarge := problem.Error(http.StatusRequestEntityTooLarge, "",
		fmt.Sprintf("a request with an Idempotency-Key may have a body of at most %d bytes", h.MaxBody))
	if r.ContentLength > int64(h.MaxBody) {
		return nil, tooLarge
	}
	b, err := io.ReadAll(io.LimitReader(r.Body, int64(h.MaxBody)+1))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return nil, caddyhttp.Error(http.StatusRequestEntityTooLarge, err)
		}
		return nil, caddyhttp.Error(http.StatusBadRequest, err)
	}
	if len(b) > h.MaxBody {
		return nil, tooLarge
	}
	_ = r.Body.Close()
	r.Body = io.NopCloser(bytes.NewReader(b))
	r.ContentLength = int64(len(b))
	r.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil }
	return b, nil
}

// fingerprint digests what makes two requests the same request.
func fingerprint(r *http.Request, body []byte) Fingerprint {
	d := sha256.New()
	bodySum := sha256.Sum256(body)
	for _, part := range []string{r.Method, canon.Path(r.URL.Path), r.URL.RawQuery, r.Header.Get("Content-Type"), string(bodySum[:])} {
		d.Write([]byte(part))
		d.Write([]byte{0})
	}
	var fp Fingerprint
	d.Sum(fp[:0])
	return fp
}

// principal is whom a key belongs to: the authenticated principal, else
// the client IP.
func principal(r *http.Request) string {
	if who, _ := identity.Principal(r); who != "" {
		return "user:" + who
	}
	ip, _ := caddyhttp.GetVar(r.Context(), caddyhttp.ClientIPVarKey).(string)
	return "ip:" + ip
}

// scope is the store key: a digest of the principal, the method, the
// resource key and the client's key (two users may use the same key),
// each part length-prefixed so that none can run into the next. A digest
// keeps every claim the same small size, whatever the path.
func scope(who string, r *http.Request, key string) string {
	d := sha256.New()
	for _, part := range []string{who, r.Method, canon.ResourceKey(r), key} {
		d.Write(binary.BigEndian.AppendUint64(nil, uint64(len(part))))
		d.Write([]byte(part))
	}
	return string(d.Sum(nil))
}

// storable reports whether a response is the request's final answer: not
// a server error, and not one that says "try again" (408, 425, 429).
func storable(status int) bool {
	switch {
	case status < 200 || status >= 500:
		return false
	case status == http.StatusRequestTimeout, status == http.StatusTooEarly, status == http.StatusTooManyRequests:
		return false
	}
	return true
}

// replay writes a stored response as it was, marked as a replay.
func replay(w http.ResponseWriter, r *http.Request, rec *Record) error {
	hdr := w.Header()
	for k, v := range rec.Header {
		hdr[k] = v // shared, clipped slices: nobody appends to them in place
	}
	hdr.Set(ReplayedHeader, "true")
	w.WriteHeader(rec.Status)
	if r.Method == http.MethodHead {
		return nil
	}
	_, err := w.Write(rec.Body)
	return err
}

// recorder passes a response through and keeps a copy of its status, its
// headers (but those that belong to one request) and up to max bytes of
// its body.
type recorder struct {
	http.ResponseWriter
	max         int
	status      int
	header      http.Header
	body        bytes.Buffer
	overflow    bool
	wroteHeader bool
	clientGone  bool // a write to the client failed
}

// perRequest are the response fields that describe this request, not the
// result a retry should see again.
var perRequest = []string{
	"X-Request-Id", "Ratelimit", "Ratelimit-Policy", "Retry-After", "X-Ratelimit-Limit",
	"X-Ratelimit-Remaining", "X-Ratelimit-Reset", "Date", "Connection", "Keep-Alive",
	"Transfer-Encoding", "Strict-Transport-Security", "Alt-Svc", "Server",
}

func (rw *recorder) WriteHeader(status int) {
	if rw.wroteHeader {
		return
	}
	if status >= 100 && status < 200 && status != http.StatusSwitchingProtocols {
		rw.ResponseWriter.WriteHeader(status)
		return
	}
	rw.wroteHeader, rw.status = true, status
	rw.header = make(http.Header, len(rw.Header()))
	for k, v := range rw.Header() {
		if !slices.Contains(perRequest, k) && !strings.HasPrefix(k, "Access-Control-") {
			rw.header[k] = slices.Clip(slices.Clone(v))
		}
	}
	rw.ResponseWriter.WriteHeader(status)
}

func (rw *recorder) Write(p []byte) (int, error) {
	if !rw.wroteHeader {
		rw.WriteHeader(http.StatusOK)
	}
	if !rw.overflow {
		if rw.body.Len()+len(p) > rw.max {
			rw.overflow = true
			rw.body.Reset()
		} else {
			rw.body.Write(p)
		}
	}
	// the client may be gone; the request still completes and is stored
	n, err := rw.ResponseWriter.Write(p)
	if err != nil {
		rw.clientGone = true
		return len(p), nil
	}
	return n, nil
}

// Flush implements http.Flusher.
func (rw *recorder) Flush() { _ = http.NewResponseController(rw.ResponseWriter).Flush() }

// Unwrap lets http.ResponseController reach the underlying writer.
func (rw *recorder) Unwrap() http.ResponseWriter { return rw.ResponseWriter }

// Interface guards
var (
	_ caddy.Provisioner           = (*Handler)(nil)
	_ caddy.Validator             = (*Handler)(nil)
	_ caddy.CleanerUpper          = (*Handler)(nil)
	_ caddyhttp.MiddlewareHandler = (*Handler)(nil)
	_ http.Flusher                = (*recorder)(nil)
)
