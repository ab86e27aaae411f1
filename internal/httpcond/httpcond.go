// Package httpcond evaluates HTTP conditional requests (RFC 9110 §13): the
// preconditions If-Match, If-Unmodified-Since, If-None-Match and
// If-Modified-Since, in the order of §13.2.2. net/http has the same logic
// unexported (fs.go checkPreconditions); this is that logic for handlers
// that are not serving files.
package httpcond

import (
	"net/http"
	"net/textproto"
	"strings"
	"time"
)

// Result is the outcome of evaluating a request's preconditions.
type Result int

const (
	// Proceed: serve the request as if it had no preconditions.
	Proceed Result = iota
	// NotModified: answer 304 (GET and HEAD only).
	NotModified
	// Failed: answer 412 Precondition Failed.
	Failed
)

// Evaluate checks r's preconditions against the selected representation's
// current state: whether it exists, its entity tag (quoted, with W/ if weak;
// "" if none) and its last modification time (zero if unknown).
func Evaluate(r *http.Request, exists bool, etag string, lastModified time.Time) Result {
	h := r.Header
	// 1. If-Match (strong comparison)
	if im := h.Values("If-Match"); len(im) > 0 {
		if !exists || !matchList(im, etag, true) {
			return Failed
		}
	} else if ius := h.Get("If-Unmodified-Since"); ius != "" && exists && !lastModified.IsZero() {
		// 2. If-Unmodified-Since, only without If-Match
		if t, err := http.ParseTime(ius); err == nil && lastModified.Truncate(time.Second).After(t) {
			return Failed
		}
	}
	safe := r.Method == http.MethodGet || r.Method == http.MethodHead
	// 3. If-None-Match (weak comparison)
	if inm := h.Values("If-None-Match"); len(inm) > 0 {
		if exists && matchList(inm, etag, false) {
			if safe {
				return NotModified
			}
			return Failed
		}
		return Proceed
	}
	// 4. If-Modified-Since, only GET/HEAD and only without If-None-Match
	if ims := h.Get("If-Modified-Since"); ims != "" && safe && exists && !lastModified.IsZero() {
		if t, err := http.ParseTime(ims); err == nil && !lastModified.Truncate(time.Second).After(t) {
			return NotModified
		}
	}
	return Proceed
}

// matchList reports whether any entity tag in the header lines matches
// etag, or the list is "*" (which matches any current representation). A
// malformed list matches nothing.
func matchList(lines []string, etag string, strong bool) bool {
	for _, line := range lines {
		s := textproto.TrimString(line)
		for s != "" {
			if s[0] == ',' {
				s = textproto.TrimString(s[1:])
				continue
			}
			if s[0] == '*' {
				return true
			}
			tag, rest, ok := scanETag(s)
			if !ok {
				return false
			}
			if etag != "" && (strong && strongMatch(tag, etag) || !strong && weakMatch(tag, etag)) {
				return true
			}
			s = textproto.TrimString(rest)
		}
	}
	return false
}

// scanETag reads one entity tag from the start of s (RFC 9110 §8.8.3) and
// returns it with the rest of s.
func scanETag(s string) (tag, rest string, ok bool) {
	start := 0
	if strings.HasPrefix(s, "W/") {
		start = 2
	}
	if len(s[start:]) < 2 || s[start] != '"' {
		return "", "", false
	}
	for i := start + 1; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '"':
			return s[:i+1], s[i+1:], true
		case c == 0x21 || c >= 0x23 && c <= 0x7E || c >= 0x80:
		default:
			return "", "", false
		}
	}
	return "", "", false
}

// strongMatch: both tags are strong and their opaque parts are equal.
func strongMatch(a, b string) bool {
	return a == b && a != "" && a[0] == '"'
}

// weakMatch: the opaque parts are equal, weak or not.
func weakMatch(a, b string) bool {
	return strings.TrimPrefix(a, "W/") == strings.TrimPrefix(b, "W/")
}
