// Package idempotency implements http.handlers.api_idempotency: the
// Idempotency-Key request header (draft-ietf-httpapi-idempotency-key-header)
// for backends that know nothing of it, so that a retried POST or PATCH
// takes effect once.
package idempotency

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/dunglas/httpsfv"
	"go.uber.org/zap"

	"github.com/restgate/restgate/internal/canon"
	"github.com/restgate/restgate/internal/identity"
	"github.com/restgate/restgate/modules/problem"
)

func init() {
	caddy.RegisterModule(Handler{})
}

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
//   - a 5xx, 408, 425 or 429 response (and an error, or a response too
//     large to store) is not stored: the key is released, and a retry runs
//     again.
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

	// The most bytes the in-memory store holds; the least recently used
	// records are forgotten first. Default: 64 MiB.
	MaxSize int64 `json:"max_size,omitempty"`

	// The documentation linked from the 400 for a missing key. Default: the
	// README's section.
	DocsURL string `json:"docs_url,omitempty"`

	store   Store
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
	defaultDocsURL = "https://github.com/restgate/restgate#api_idempotency"
	maxKeyLen      = 255
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
	if h.store == nil {
		h.poolKey = fmt.Sprint("idempotency:", h.MaxSize)
		val, _, err := stores.LoadOrNew(h.poolKey, func() (caddy.Destructor, error) {
			return pooledStore{newMemStore(h.MaxSize)}, nil
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
	if h.TTL < 0 || h.MaxBody < 0 || h.MaxSize < 0 {
		return fmt.Errorf("ttl, max_body and max_size must not be negative")
	}
	return nil
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
	key := h.scope(r, idemKey)
	rec, claimed := h.store.Begin(key, fp, h.now(), time.Duration(h.TTL))
	switch {
	case !claimed && rec.Fingerprint != fp:
		return problem.Error(http.StatusUnprocessableEntity, "idempotency_key_reused",
			"this Idempotency-Key was already used for a different request; use a new key for a new request")
	case !claimed && rec.InFlight:
		w.Header().Set("Retry-After", "1")
		return problem.Error(http.StatusConflict, "idempotency_key_in_use",
			"a request with this Idempotency-Key is still being processed; retry shortly to get its response")
	case !claimed:
		return replay(w, r, rec)
	}

	// the first request: run it to completion even if the client goes
	// away, so that its retry finds the result
	r = r.WithContext(context.WithoutCancel(r.Context()))
	rw := &recorder{ResponseWriter: w, max: h.MaxBody}
	err = next.ServeHTTP(rw, r)
	// an error after a complete response only says the client went away
	// while it was being sent: the retry must still find it
	if (err != nil && !rw.clientGone) || !rw.wroteHeader || !storable(rw.status) || rw.overflow {
		h.store.Release(key)
		return err
	}
	h.store.Complete(key, &Record{
		Fingerprint: fp, Status: rw.status, Header: rw.header, Body: rw.body.Bytes(),
		Expires: h.now().Add(time.Duration(h.TTL)),
	})
	return err
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

// scope is the store key: the principal, the method, the canonical
// resource and the client's key. Two users may use the same key.
func (h *Handler) scope(r *http.Request, key string) string {
	who, _ := identity.Principal(r)
	if who == "" {
		ip, _ := caddyhttp.GetVar(r.Context(), caddyhttp.ClientIPVarKey).(string)
		who = "ip:" + ip
	} else {
		who = "user:" + who
	}
	return who + "\x00" + r.Method + "\x00" + canon.ResourceKey(r) + "\x00" + key
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
