package problem

import (
	"bytes"
	"encoding/json"
	"mime"
	"net/http"
	"sort"
	"strings"

	"github.com/restgate/restgate/internal/jsonptr"
)

// maxFieldErrors bounds the field errors taken from a backend's body.
const maxFieldErrors = 100

// fromBackend turns a backend's error response into a problem. A 5xx body is
// never shown; a 4xx's own problem document keeps its members (status set
// to the HTTP status), and a 4xx's message and field errors are kept when
// the body is another JSON shape we know; any other body (HTML, text,
// malformed or compressed JSON, too large) leaves only the status's title.
func fromBackend(r *http.Request, status int, hdr http.Header, body []byte, overflow bool) *Problem {
	p := New(status, "")
	if status >= 500 {
		p.Detail = genericDetail(status)
		return p
	}
	if overflow || len(body) == 0 {
		return p
	}
	if ce := hdr.Get("Content-Encoding"); ce != "" && !strings.EqualFold(ce, "identity") {
		return p
	}
	mt, _, _ := mime.ParseMediaType(hdr.Get("Content-Type"))
	if mt == mediaType {
		if q, ok := parseProblem(body, status); ok {
			return q
		}
		return p
	}
	if !strings.HasSuffix(mt, "json") && !(mt == "" && looksJSON(body)) {
		return p
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return p
	}
	fillFromJSON(p, v)
	return p
}

func looksJSON(b []byte) bool {
	b = bytes.TrimSpace(b)
	return len(b) > 0 && (b[0] == '{' || b[0] == '[')
}

// parseProblem reads a backend's problem document: the standard members
// into the Problem, every other member kept as an extension, as it was. The
// status member always becomes the HTTP status.
func parseProblem(body []byte, status int) (*Problem, bool) {
	var members map[string]json.RawMessage
	if err := json.Unmarshal(body, &members); err != nil {
		return nil, false
	}
	type plain Problem // no methods: the standard members only
	var p plain
	if err := json.Unmarshal(body, &p); err != nil {
		return nil, false
	}
	q := (*Problem)(&p)
	q.Status = status
	for k, v := range members {
		if !reservedMember(k) {
			if q.Extensions == nil {
				q.Extensions = make(map[string]any)
			}
			q.Extensions[k] = v
		}
	}
	return q, true
}

// fillFromJSON takes the message, code and field errors from the shapes
// that common frameworks produce:
//
//	Flask/Asimov  {"error": "msg", "details": [{"loc": [...], "msg": "..."}]}
//	DRF           {"detail": "msg"} and {"field": ["msg", ...], ...}
//	FastAPI       {"detail": [{"loc": ["body", "field"], "msg": "...", "type": "..."}]}
//	Polar         {"type": "NotPermitted", "detail": "msg"}
//	Kong & others {"message": "msg"}, {"error": {"message": "msg"}}
func fillFromJSON(p *Problem, v any) {
	switch t := v.(type) {
	case []any: // DRF: ["msg", ...]
		p.Detail = joinStrings(t)
		return
	case map[string]any:
		obj := t
		known := false
		for _, k := range []string{"detail", "error", "message", "error_description", "title"} {
			if p.Detail != "" {
				break
			}
			switch val := obj[k].(type) {
			case string:
				p.Detail, known = truncate(val, maxDetail), true
			case map[string]any: // {"error": {"message": "..."}}
				if s, ok := val["message"].(string); ok {
					p.Detail, known = truncate(s, maxDetail), true
				}
			case []any:
				if errs := locErrors(val); len(errs) > 0 { // FastAPI/Pydantic
					p.Errors, known = errs, true
				} else if s := joinStrings(val); s != "" {
					p.Detail, known = s, true
				}
			}
		}
		for _, k := range []string{"details", "errors"} {
			if list, ok := obj[k].([]any); ok && len(p.Errors) == 0 {
				if errs := locErrors(list); len(errs) > 0 {
					p.Errors, known = errs, true
				}
			}
		}
		if typ, ok := obj["type"].(string); ok && isSlug(typ) { // Polar
			p.Code, known = snakeCase(typ), true
		}
		if !known { // DRF field errors: {"name": ["This field is required."]}
			p.Errors = fieldErrors(obj, "", nil, 0)
			if nfe, ok := obj["non_field_errors"].([]any); ok {
				p.Detail = joinStrings(nfe)
			}
		}
		if len(p.Errors) > 0 && p.Detail == "" {
			p.Detail = "The request has invalid fields; see errors."
		}
	}
}

// isSlug reports whether a backend's `type` is a short identifier (Polar's
// "NotPermitted"), rather than a URI or free text.
func isSlug(s string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// locErrors reads Pydantic-style errors, [{"loc": [...], "msg": "..."}].
func locErrors(list []any) []FieldError {
	var out []FieldError
	for _, item := range list {
		m, ok := item.(map[string]any)
		if !ok {
			return nil
		}
		loc, _ := m["loc"].([]any)
		msg, _ := m["msg"].(string)
		if msg == "" {
			msg, _ = m["message"].(string)
		}
		if loc == nil || msg == "" {
			return nil
		}
		if len(out) == maxFieldErrors {
			break
		}
		if len(loc) > 1 {
			if s, _ := loc[0].(string); s == "body" {
				loc = loc[1:]
			}
		}
		out = append(out, FieldError{Pointer: pointer(loc), Detail: truncate(msg, maxDetail)})
	}
	return out
}

// fieldErrors reads DRF-style field errors, {"field": ["msg"], "nested": {"f": ["msg"]}}.
func fieldErrors(obj map[string]any, prefix string, out []FieldError, depth int) []FieldError {
	if depth > 8 {
		return out
	}
	keys := make([]string, 0, len(obj))
	for k := range obj {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if k == "non_field_errors" {
			continue
		}
		ptr := prefix + "/" + jsonptr.Escape(k)
		switch val := obj[k].(type) {
		case []any:
			for _, item := range val {
				if s, ok := item.(string); ok && len(out) < maxFieldErrors {
					out = append(out, FieldError{Pointer: ptr, Detail: truncate(s, maxDetail)})
				}
			}
		case string:
			if len(out) < maxFieldErrors {
				out = append(out, FieldError{Pointer: ptr, Detail: truncate(val, maxDetail)})
			}
		case map[string]any:
			out = fieldErrors(val, ptr, out, depth+1)
		}
	}
	return out
}

func pointer(loc []any) string {
	var b strings.Builder
	for _, part := range loc {
		b.WriteByte('/')
		switch v := part.(type) {
		case string:
			b.WriteString(jsonptr.Escape(v))
		case json.Number:
			b.WriteString(v.String())
		}
	}
	return b.String()
}

func joinStrings(list []any) string {
	var parts []string
	for _, item := range list {
		if s, ok := item.(string); ok {
			parts = append(parts, s)
		}
	}
	return truncate(strings.Join(parts, " "), maxDetail)
}
