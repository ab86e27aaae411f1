package problem

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/restgate/restgate/internal/canon"
	"github.com/restgate/restgate/internal/hold"
	"github.com/restgate/restgate/internal/identity"
	"github.com/restgate/restgate/internal/metrics"
	"github.com/restgate/restgate/internal/redact"
	"github.com/restgate/restgate/internal/trace"
)

func init() {
	caddy.RegisterModule(Handler{})
}

// defaultMaxErrorBody bounds how much of a backend's error body is read.
const defaultMaxErrorBody = 64 << 10

// Handler gives every error one RFC 9457 application/problem+json shape:
// errors returned by the handlers it wraps (restgate's, Caddy's own such as
// `request_body`'s 413 or `reverse_proxy`'s 502/503/504, the `error`
// directive), and error responses (status ≥ 400) written by backends in any
// shape. Only error responses (and, with RequireAuth, a success that no
// api_auth let through, which is then refused) are buffered, up to
// MaxErrorBody; every other 1xx, 2xx and 3xx response streams through
// untouched.
//
// Inside `handle_errors` it renders the error that Caddy is handling. A
// request that nothing inside it answered (Caddy's empty 200 when no route
// matches) gets a 404 problem.
//
// Every response carries an `X-Request-Id` header (a sane client-sent one is
// kept), which also goes upstream and into every problem as `request_id`.
//
// In the request chain it is the API site's front door, and the other
// modules rely on it running before them on every route of the site: it
// puts the request target in its canonical form (canon.Normalize: the one
// spelling api_etag's and api_idempotency's keys start from), removes
// client-sent identity headers (identity.Scrub: only api_auth may set
// them), installs the require_auth guard (identity.Lock) and renders every
// error they return. The restgate app refuses, at load time, a
// configuration in which a route runs any of them before api_errors, or
// without it where the site has one (modules/instance/order.go).
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

	// Fail closed: every request must pass an api_auth (authenticated, or
	// anonymous or public by its declaration) before anything serves it. A
	// request that reaches a handler without that is refused with a 500
	// problem and an error log line naming the route: reverse_proxy never
	// sends it (its context is done until api_auth lets it through), and a
	// success from a handler that ignores its context is not sent. restgate's
	// handlers before api_auth that need I/O of their own (api_rate_limit's
	// Redis calls) make it on identity.Live, the client's liveness without
	// the request's values. Routes outside this site that answer for the
	// same host are refused at load time by the restgate app.
	RequireAuth bool `json:"require_auth,omitempty"`

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
	if err := metrics.Register(ctx.GetMetricsRegistry()); err != nil {
		return err
	}
	if h.MaxErrorBody == 0 {
		h.MaxErrorBody = defaultMaxErrorBody
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
		h.write(w, r, fromError(herr), metrics.Gateway)
		return nil
	}
	// a client's malformed request is a 400 here, before it can reach a
	// backend (reverse_proxy would label it 502)
	if !validMethod(r.Method) {
		h.write(w, r, New(http.StatusBadRequest, "the request method is not a valid HTTP token"), metrics.Gateway)
		return nil
	}
	// one resource, one spelling, for every module after this one
	if err := canon.Normalize(r); err != nil {
		h.write(w, r, New(http.StatusBadRequest, err.Error()), metrics.Gateway)
		return nil
	}
	// nothing a client sends speaks for the gateway, on any route
	identity.Scrub(r)
	var body *bodyReader
	if r.Body != nil && r.Body != http.NoBody {
		body = &bodyReader{ReadCloser: r.Body, req: r}
		r.Body = body
	}

	shouldHold := holdErrors
	if h.RequireAuth {
		outer := r
		r = identity.Lock(r)
		shouldHold = func(status int, hdr http.Header) bool {
			// a success nothing let through is held back, to be refused
			return holdErrors(status, hdr) || !identity.Passed(outer)
		}
	}
	hw := hold.Get(w, h.MaxErrorBody, hold.Truncate, shouldHold)
	defer hold.Put(hw)
	err := next.ServeHTTP(hw, r)
	if h.RequireAuth && !identity.Passed(r) && (errors.Is(err, identity.ErrUnprotected) || (err == nil && hw.Held() && hw.Status() < 400)) {
		h.refuseUnprotected(w, r)
		return nil
	}
	switch {
	case err != nil && hw.WroteHeader() && !hw.Held():
		// the response has started: nothing can be rewritten; let the server log it
		return err
	case err != nil && body != nil && body.err != nil && !isClientStatus(err):
		// the proxy failed because the client's body could not be read
		// (malformed chunking, a connection cut mid-body): the client's fault
		p := New(http.StatusBadRequest, "the request body could not be read: "+bodyErrorText(body.err))
		if errors.As(body.err, new(*http.MaxBytesError)) {
			p = fromError(body.err)
		}
		h.logError(r, p.Status, err)
		h.write(w, r, p, metrics.Gateway)
	case err != nil:
		p := fromError(err)
		h.logError(r, p.Status, err)
		h.write(w, r, p, metrics.Gateway)
	case !hw.WroteHeader():
		// nothing answered: Caddy's "no route matched" is an empty 200,
		// which an API must never send
		h.write(w, r, New(http.StatusNotFound, "no route serves this path"), metrics.Gateway)
	case hw.Held() && hw.OwnProblem():
		// a problem an in-process handler (resources) wrote with Write:
		// its code and detail are the gateway's own, kept even on a 5xx
		p, ok := parseProblem(hw.Body(), hw.Status())
		if !ok || hw.Overflowed() {
			p = fromBackend(r, hw.Status(), w.Header(), hw.Body(), hw.Overflowed())
		}
		h.write(w, r, p, metrics.Gateway)
	case hw.Held():
		p := fromBackend(r, hw.Status(), w.Header(), hw.Body(), hw.Overflowed())
		if p.Status >= 500 {
			h.logBackend(r, hw.Status(), hw.Body())
		}
		h.write(w, r, p, metrics.Backend)
	default:
		// a response that streamed through: a 304 is counted here
		metrics.Conditional(hw.Status())
	}
	return nil
}

// refuseUnprotected answers a request that reached a handler on a route
// without api_auth: a configuration error, logged for the operator.
func (h *Handler) refuseUnprotected(w http.ResponseWriter, r *http.Request) {
	h.logger.Error("refused a request on a route that is not behind api_auth: add api_auth to the route, or declare its paths public (api_auth { public ... })",
		zap.String("request_id", RequestIDFromRequest(r)),
		zap.String("method", r.Method),
		zap.String("host", r.Host),
		zap.String("uri", r.URL.Path))
	p := New(http.StatusInternalServerError, "this route is not protected by the gateway's authentication, so it is not served; the operator has been told")
	p.Code = "unprotected_route"
	h.write(w, r, p, metrics.Gateway)
}

// holdErrors holds every error response for rewriting. A backend that
// echoes the request id makes reverse_proxy add a second copy: one stays.
func holdErrors(status int, hdr http.Header) bool {
	if ids := hdr[requestIDHeader]; len(ids) > 1 {
		hdr[requestIDHeader] = ids[:1]
	}
	return status >= 400
}

// isClientStatus reports whether err already carries a 4xx status.
func isClientStatus(err error) bool {
	var he caddyhttp.HandlerError
	return errors.As(err, &he) && he.StatusCode >= 400 && he.StatusCode < 500
}

// bodyReader remembers why reading the client's request body failed, and
// at its end removes protected trailers before anything forwards them.
type bodyReader struct {
	io.ReadCloser
	req *http.Request
	err error
}

func (b *bodyReader) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	switch {
	case err == io.EOF:
		identity.ScrubTrailers(b.req)
	case err != nil && b.err == nil:
		b.err = err
	}
	return n, err
}

func bodyErrorText(err error) string {
	switch {
	case errors.Is(err, io.ErrUnexpectedEOF):
		return "it ended early"
	case strings.Contains(err.Error(), "chunk"):
		return "its chunked encoding is malformed"
	}
	return "it is malformed or was cut off"
}

// validMethod reports whether m is an RFC 9110 token (§9.1, §5.6.2).
func validMethod(m string) bool {
	if m == "" {
		return false
	}
	for i := 0; i < len(m); i++ {
		c := m[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0) {
			return false
		}
	}
	return true
}

// write applies the operator's settings to p and sends it: every problem
// that leaves the gateway, whoever made it, passes here (and is counted).
func (h *Handler) write(w http.ResponseWriter, r *http.Request, p *Problem, src metrics.Source) {
	metrics.ErrorRendered(p.Status, src)
	metrics.Conditional(p.Status)
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
	case (p.Type == "" || p.Type == "about:blank") && h.TypeBase != "":
		if p.Code == "" {
			p.Code = defaultCode(p.Status)
		}
		p.Type = h.TypeBase + p.Code
	}
	trace.Problem(r.Context(), p.Status, p.Type, p.Code, src == metrics.Backend)
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

// logBackend notes a backend's 5xx for the operator: the status at error
// level, and a short excerpt of the body (which the client never sees) at
// debug level only, with anything that looks like a credential removed.
func (h *Handler) logBackend(r *http.Request, status int, body []byte) {
	if c := h.logger.Check(zapcore.ErrorLevel, "backend error response"); c != nil {
		c.Write(
			zap.String("request_id", RequestIDFromRequest(r)),
			zap.String("method", r.Method),
			zap.String("uri", r.URL.Path),
			zap.Int("status", status),
		)
	}
	if c := h.logger.Check(zapcore.DebugLevel, "backend error body"); c != nil {
		c.Write(
			zap.String("request_id", RequestIDFromRequest(r)),
			zap.String("excerpt", redact.Text(body, maxLoggedBody)),
		)
	}
}

// maxLoggedBody bounds the excerpt of a backend's error body in the log.
const maxLoggedBody = 512

// Interface guards
var (
	_ caddy.Provisioner           = (*Handler)(nil)
	_ caddy.Validator             = (*Handler)(nil)
	_ caddyhttp.MiddlewareHandler = (*Handler)(nil)
)
