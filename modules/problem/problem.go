// Package problem implements RFC 9457 problem details: the Problem type that
// every restgate module raises, and the http.handlers.api_errors handler that
// renders every error (from restgate, from Caddy and from backends) as one
// application/problem+json shape.
package problem

import (
	"bytes"
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"strings"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// mediaType is the media type of a problem document.
const mediaType = "application/problem+json"

// TypeQuotaExceeded is the IANA-registered problem type for a 429.
const TypeQuotaExceeded = "https://iana.org/assignments/http-problem-types#quota-exceeded"

// FieldError names one invalid part of a request: a member of the body by
// its JSON Pointer (RFC 6901; "" is the whole body), or a query parameter
// by its name.
type FieldError struct {
	Pointer   string `json:"pointer,omitempty"`
	Detail    string `json:"detail"`
	Parameter string `json:"parameter,omitempty"`
}

// Problem is an RFC 9457 problem details object with restgate's extension
// members. It is also an error: a handler returns it wrapped by Error so that
// api_errors renders it.
type Problem struct {
	Type      string       `json:"type"`
	Title     string       `json:"title"`
	Status    int          `json:"status"`
	Detail    string       `json:"detail,omitempty"`
	Instance  string       `json:"instance,omitempty"`
	Code      string       `json:"code"`
	RequestID string       `json:"request_id,omitempty"`
	Errors    []FieldError `json:"errors,omitempty"`

	// Extensions are further members, such as `violated-policies`; a key that
	// collides with a standard member is ignored.
	Extensions map[string]any `json:"-"`
}

// New returns a problem with the status, its title and the default code.
func New(status int, detail string) *Problem {
	return &Problem{Status: status, Title: title(status), Code: defaultCode(status), Detail: detail}
}

// Error returns a Caddy handler error carrying a problem, ready to be
// returned from ServeHTTP. code may be empty for the status's default code.
func Error(status int, code, detail string) error {
	p := New(status, detail)
	if code != "" {
		p.Code = code
	}
	return caddyhttp.Error(status, p)
}

// Error implements error; the message is the detail, or the title.
func (p *Problem) Error() string {
	if p.Detail != "" {
		return p.Detail
	}
	return p.Title
}

// MarshalJSON writes the standard members first, then the extensions in
// sorted order.
func (p *Problem) MarshalJSON() ([]byte, error) {
	type plain Problem // no methods: no recursion
	b, err := marshal((*plain)(p))
	if err != nil || len(p.Extensions) == 0 {
		return b, err
	}
	ext := make(map[string]any, len(p.Extensions))
	for k, v := range p.Extensions {
		if !reservedMember(k) {
			ext[k] = v
		}
	}
	if len(ext) == 0 {
		return b, nil
	}
	e, err := marshal(ext)
	if err != nil {
		return nil, err
	}
	// splice: {...standard} + {...ext} → {...standard,...ext}
	out := make([]byte, 0, len(b)+len(e))
	out = append(out, b[:len(b)-1]...)
	out = append(out, ',')
	return append(out, e[1:]...), nil
}

// marshal is json.Marshal without HTML escaping, so that a problem reads
// well in a terminal (`<key>`, not `\u003ckey\u003e`); problems are
// application/problem+json, never embedded in HTML.
func marshal(v any) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n")), nil
}

func reservedMember(k string) bool {
	switch k {
	case "type", "title", "status", "detail", "instance", "code", "request_id", "errors":
		return true
	}
	return false
}

// Write sends p as the response, with the media type and status, keeping the
// headers already set on w except those that describe another body. A
// response to HEAD has no body.
func Write(w http.ResponseWriter, r *http.Request, p *Problem) {
	if p.Title == "" {
		p.Title = title(p.Status)
	}
	if p.Code == "" {
		p.Code = defaultCode(p.Status)
	}
	if p.Type == "" {
		p.Type = "about:blank"
	}
	if p.RequestID == "" {
		p.RequestID = RequestIDFromRequest(r)
	}
	if p.Instance == "" && r.URL != nil {
		p.Instance = r.URL.Path
	}
	body, err := marshal(p)
	if err != nil { // only an unmarshalable extension can do this
		p.Extensions = nil
		body, _ = marshal(p)
	}
	writeBody(w, r, p.Status, body)
}

// writeBody sends a problem document as the response, keeping the headers
// already set on w except those that describe another body.
func writeBody(w http.ResponseWriter, r *http.Request, status int, body []byte) {
	markOwn(w)
	h := w.Header()
	for _, k := range entityHeaders {
		if status == http.StatusPreconditionFailed && (k == "Etag" || k == "Last-Modified") {
			// a 412 keeps the validators of the resource's current state:
			// what a client needs to retry (api_etag and resources set them)
			continue
		}
		delete(h, k)
	}
	h.Set("Content-Type", mediaType)
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	if r.Method != http.MethodHead {
		h.Set("Content-Length", strconv.Itoa(len(body)))
	}
	w.WriteHeader(status)
	if r.Method != http.MethodHead {
		_, _ = w.Write(body)
	}
}

// markOwn tells every holding writer between this handler and the client
// (api_errors' among them) that the response is a problem written here,
// in process: api_errors keeps its code and detail, which it never does
// for a backend's 5xx body. A backend behind reverse_proxy cannot reach it.
func markOwn(w http.ResponseWriter) {
	for w != nil {
		if m, ok := w.(interface{ MarkOwnProblem() }); ok {
			m.MarkOwnProblem()
		}
		u, ok := w.(interface{ Unwrap() http.ResponseWriter })
		if !ok {
			return
		}
		w = u.Unwrap()
	}
}

// entityHeaders describe a representation that a problem document replaces.
var entityHeaders = []string{
	"Content-Length", "Content-Encoding", "Content-Range", "Content-Language",
	"Content-Location", "Content-Disposition", "Content-Md5", "Transfer-Encoding",
	"Etag", "Last-Modified", "Accept-Ranges", "Expires",
}

// title is the problem title for a status: its reason phrase.
func title(status int) string {
	if t := http.StatusText(status); t != "" {
		return t
	}
	return "Error"
}

// codes are the stable slugs clients switch on; any other status gets its
// reason phrase in snake_case.
var codes = map[int]string{
	http.StatusBadRequest:            "bad_request",
	http.StatusUnauthorized:          "unauthorized",
	http.StatusForbidden:             "forbidden",
	http.StatusNotFound:              "not_found",
	http.StatusMethodNotAllowed:      "method_not_allowed",
	http.StatusConflict:              "conflict",
	http.StatusPreconditionFailed:    "precondition_failed",
	http.StatusRequestEntityTooLarge: "content_too_large",
	http.StatusUnprocessableEntity:   "validation_failed",
	http.StatusPreconditionRequired:  "precondition_required",
	http.StatusTooManyRequests:       "rate_limited",
	http.StatusInternalServerError:   "internal_error",
}

// defaultCode returns the default code slug for a status.
func defaultCode(status int) string {
	if c, ok := codes[status]; ok {
		return c
	}
	if t := http.StatusText(status); t != "" {
		return snakeCase(t)
	}
	if status >= 500 {
		return "server_error"
	}
	return "client_error"
}

// snakeCase turns "Not Found", "NotPermitted" or "Request-URI Too Long" into
// "not_found", "not_permitted", "request_uri_too_long".
func snakeCase(s string) string {
	var b strings.Builder
	b.Grow(len(s) + 4)
	prevLower := false
	pendingSep := false
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'A' && c <= 'Z':
			if (prevLower || pendingSep) && b.Len() > 0 {
				b.WriteByte('_')
			}
			b.WriteByte(c + 'a' - 'A')
			prevLower, pendingSep = false, false
		case c >= 'a' && c <= 'z' || c >= '0' && c <= '9':
			if pendingSep && b.Len() > 0 {
				b.WriteByte('_')
			}
			b.WriteByte(c)
			prevLower, pendingSep = true, false
		default:
			pendingSep = true
		}
	}
	return b.String()
}

// fromError returns the problem an error stands for. A *Problem anywhere in
// the chain is used as it is; any other error becomes a problem with the
// error's status (500 if none) and a detail that never reveals internals: a
// 5xx gets the generic detail of its status, and a 4xx keeps the error's
// message only when the `error` directive raised it.
func fromError(err error) *Problem {
	status := http.StatusInternalServerError
	var he caddyhttp.HandlerError
	if errors.As(err, &he) && he.StatusCode != 0 {
		status = he.StatusCode
	}
	var p *Problem
	if errors.As(err, &p) {
		cp := *p
		if cp.Status == 0 {
			cp.Status = status
		}
		return &cp
	}
	if status < 400 { // an error must not leave as a success
		status = http.StatusInternalServerError
	}
	q := New(status, "")
	if status >= 500 {
		q.Detail = genericDetail(status)
		return q
	}
	if he.Err != nil && fromErrorDirective(he) {
		q.Detail = truncate(he.Err.Error(), maxDetail)
	}
	var mbe *http.MaxBytesError
	if errors.As(err, &mbe) {
		q.Detail = "request body exceeds " + strconv.FormatInt(mbe.Limit, 10) + " bytes"
	}
	return q
}

// fromErrorDirective reports whether he was raised by Caddy's `error`
// directive, whose message the operator wrote for clients. The rule is
// explicit: restgate's own modules raise a *Problem (shown as it is), the
// `error` directive's text is shown, and every other error (Caddy's own,
// which may name a file, an address or a system detail) shows only its
// status's title.
func fromErrorDirective(he caddyhttp.HandlerError) bool {
	return strings.HasPrefix(he.Trace, "caddyhttp.StaticError.ServeHTTP ")
}

// maxDetail bounds a detail taken from an error or a backend.
const maxDetail = 1024

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	// cut on a rune boundary
	for n > 0 && s[n]&0xC0 == 0x80 {
		n--
	}
	return s[:n] + "…"
}

func genericDetail(status int) string {
	switch status {
	case http.StatusBadGateway:
		return "The upstream service could not be reached or sent an invalid response. Quote the request_id when you report it."
	case http.StatusServiceUnavailable:
		return "The service is unavailable right now. Try again later, and quote the request_id if it persists."
	case http.StatusGatewayTimeout:
		return "The upstream service did not answer in time. Quote the request_id when you report it."
	}
	return "The server could not complete the request. Quote the request_id when you report it."
}
