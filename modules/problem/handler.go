package problem

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"sync"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

func init() {
	caddy.RegisterModule(Handler{})
}

// DefaultMaxErrorBody bounds how much of a backend's error body is read.
const DefaultMaxErrorBody = 64 << 10

// Handler gives every error one RFC 9457 application/problem+json shape:
// errors returned by the handlers it wraps (restgate's, Caddy's own such as
// `request_body`'s 413 or `reverse_proxy`'s 502/503/504, the `error`
// directive), and error responses (status ≥ 400) written by backends in any
// shape. Only error responses are buffered, up to MaxErrorBody; 1xx, 2xx and
// 3xx responses stream through untouched.
//
// Inside `handle_errors` it renders the error that Caddy is handling. A
// request that nothing inside it answered (Caddy's empty 200 when no route
// matches) gets a 404 problem.
//
// Every response carries an `X-Request-Id` header (a sane client-sent one is
// kept), which also goes upstream and into every problem as `request_id`.
type Handler struct {
	// A base URI for the `type` member: the type becomes the base followed by
	// the problem's code (e.g. `https://errors.example.com/` gives
	// `https://errors.example.com/not_found`). Default: `about:blank`. A 429
	// always has the IANA `quota-exceeded` type.
	TypeBase string `json:"type_base,omitempty"`

	// How many bytes of a backend's error body are read to build the problem.
	// Beyond it the body is dropped and the status's title is used.
	// Default: 65536.
	MaxErrorBody int `json:"max_error_body,omitempty"`

	// Per-status replacements of the `title` and `detail` members, keyed by
	// status code (e.g. `"404"`).
	Statuses map[string]StatusOverride `json:"statuses,omitempty"`

	overrides map[int]StatusOverride
	logger    *zap.Logger
}

// StatusOverride replaces the title and/or detail of problems with one status.
type StatusOverride struct {
	Title  string `json:"title,omitempty"`
	Detail string `json:"detail,omitempty"`
}

// CaddyModule returns the Caddy module information.
func (Handler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.api_errors",
		New: func() caddy.Module { return new(Handler) },
	}
}

// Provision sets defaults.
func (h *Handler) Provision(ctx caddy.Context) error {
	h.logger = ctx.Logger()
	if h.MaxErrorBody == 0 {
		h.MaxErrorBody = DefaultMaxErrorBody
	}
	h.overrides = make(map[int]StatusOverride, len(h.Statuses))
	for k, v := range h.Statuses {
		code, err := strconv.Atoi(k)
		if err != nil {
			return fmt.Errorf("statuses: invalid status %q", k)
		}
		h.overrides[code] = v
	}
	return nil
}

// Validate checks the configuration.
func (h *Handler) Validate() error {
	if h.MaxErrorBody < 0 {
		return fmt.Errorf("max_error_body must not be negative")
	}
	for code := range h.overrides {
		if code < 400 || code > 599 {
			return fmt.Errorf("statuses: %d is not an error status", code)
		}
	}
	return nil
}

func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	EnsureRequestID(w, r)

	// inside handle_errors: render the error being handled
	if herr, ok := r.Context().Value(caddyhttp.ErrorCtxKey).(error); ok {
		h.write(w, r, FromError(herr))
		return nil
	}

	ew := h.getWriter(w)
	defer h.putWriter(ew)
	err := next.ServeHTTP(ew, r)
	switch {
	case err != nil && ew.wroteHeader && !ew.buffering:
		// the response has started: nothing can be rewritten; let the server log it
		return err
	case err != nil:
		p := FromError(err)
		h.logError(r, p.Status, err)
		h.write(w, r, p)
	case !ew.wroteHeader:
		// nothing answered: Caddy's "no route matched" is an empty 200,
		// which an API must never send
		h.write(w, r, New(http.StatusNotFound, "no route serves this path"))
	case ew.buffering:
		p := h.fromBackend(r, ew.status, w.Header(), ew.buf.Bytes(), ew.overflow)
		if p.Status >= 500 {
			h.logBackend(r, ew.status, ew.buf.Bytes())
		}
		if p.raw != nil {
			writeBody(w, r, p.Status, p.raw)
			return nil
		}
		h.write(w, r, p.Problem)
	}
	return nil
}

// write applies the configuration to p and sends it.
func (h *Handler) write(w http.ResponseWriter, r *http.Request, p *Problem) {
	if o, ok := h.overrides[p.Status]; ok {
		if o.Title != "" {
			p.Title = o.Title
		}
		if o.Detail != "" {
			p.Detail = o.Detail
		}
	}
	switch {
	case p.Status == http.StatusTooManyRequests && (p.Type == "" || p.Type == "about:blank"):
		p.Type = TypeQuotaExceeded
	case p.Type == "" && h.TypeBase != "":
		if p.Code == "" {
			p.Code = Code(p.Status)
		}
		p.Type = h.TypeBase + p.Code
	}
	Write(w, r, p)
}

func (h *Handler) logError(r *http.Request, status int, err error) {
	lvl := zapcore.DebugLevel
	if status >= 500 {
		lvl = zapcore.ErrorLevel
	}
	if c := h.logger.Check(lvl, "request error"); c != nil {
		c.Write(
			zap.String("request_id", RequestIDFromRequest(r)),
			zap.String("method", r.Method),
			zap.String("uri", r.URL.Path),
			zap.Int("status", status),
			zap.Error(err),
		)
	}
}

// logBackend keeps a backend's 5xx body for the operator, since the client
// never sees it.
func (h *Handler) logBackend(r *http.Request, status int, body []byte) {
	if c := h.logger.Check(zapcore.ErrorLevel, "backend error response"); c != nil {
		c.Write(
			zap.String("request_id", RequestIDFromRequest(r)),
			zap.String("method", r.Method),
			zap.String("uri", r.URL.Path),
			zap.Int("status", status),
			zap.ByteString("body", body[:min(len(body), 4096)]),
		)
	}
}

func (h *Handler) getWriter(w http.ResponseWriter) *errWriter {
	ew, _ := writerPool.Get().(*errWriter)
	if ew == nil {
		ew = new(errWriter)
	}
	ew.ResponseWriter = w
	ew.max = h.MaxErrorBody
	return ew
}

func (h *Handler) putWriter(ew *errWriter) {
	if ew.buf.Cap() > 2*h.MaxErrorBody {
		ew.buf = bytes.Buffer{}
	}
	ew.buf.Reset()
	*ew = errWriter{buf: ew.buf}
	writerPool.Put(ew)
}

// writerPool recycles errWriters (and their buffers) across requests.
var writerPool sync.Pool

// errWriter passes every response through untouched, except one whose
// status is an error: that is held back, with at most max bytes of its body,
// for api_errors to rewrite.
type errWriter struct {
	http.ResponseWriter
	max         int
	status      int
	wroteHeader bool
	buffering   bool
	overflow    bool
	buf         bytes.Buffer
}

func (ew *errWriter) WriteHeader(status int) {
	if ew.wroteHeader {
		return
	}
	if status >= 100 && status < 200 && status != http.StatusSwitchingProtocols {
		ew.ResponseWriter.WriteHeader(status) // informational: pass, not final
		return
	}
	ew.wroteHeader = true
	// a backend that echoes the request id makes reverse_proxy add a second copy
	if ids := ew.Header()[RequestIDHeader]; len(ids) > 1 {
		ew.Header()[RequestIDHeader] = ids[:1]
	}
	if status >= 400 {
		ew.buffering, ew.status = true, status
		return
	}
	ew.ResponseWriter.WriteHeader(status)
}

func (ew *errWriter) Write(p []byte) (int, error) {
	if !ew.wroteHeader {
		ew.WriteHeader(http.StatusOK)
	}
	if !ew.buffering {
		return ew.ResponseWriter.Write(p)
	}
	if room := ew.max - ew.buf.Len(); room > 0 {
		ew.buf.Write(p[:min(room, len(p))])
	}
	if ew.buf.Len() >= ew.max && len(p) > 0 {
		ew.overflow = true
	}
	return len(p), nil
}

// ReadFrom keeps io.Copy from bypassing Write through the embedded writer's
// ReaderFrom while an error body is held back.
func (ew *errWriter) ReadFrom(r io.Reader) (int64, error) {
	if !ew.wroteHeader {
		ew.WriteHeader(http.StatusOK)
	}
	if !ew.buffering {
		if rf, ok := ew.ResponseWriter.(io.ReaderFrom); ok {
			return rf.ReadFrom(r)
		}
	}
	return io.Copy(writerOnly{ew}, r)
}

// FlushError flushes a response that is passing through; a held-back one
// is not sent until it is rewritten.
func (ew *errWriter) FlushError() error {
	if ew.buffering || !ew.wroteHeader {
		return nil
	}
	return http.NewResponseController(ew.ResponseWriter).Flush()
}

// Flush implements http.Flusher.
func (ew *errWriter) Flush() { _ = ew.FlushError() }

// Unwrap lets http.ResponseController reach the underlying writer.
func (ew *errWriter) Unwrap() http.ResponseWriter { return ew.ResponseWriter }

type writerOnly struct{ io.Writer }

// Interface guards
var (
	_ caddy.Provisioner           = (*Handler)(nil)
	_ caddy.Validator             = (*Handler)(nil)
	_ caddyhttp.MiddlewareHandler = (*Handler)(nil)
	_ io.ReaderFrom               = (*errWriter)(nil)
	_ http.Flusher                = (*errWriter)(nil)
)
