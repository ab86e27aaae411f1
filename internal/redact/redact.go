// Package redact decides what must never reach a log: names that look like
// credentials (headers, query parameters, JSON members) and values that
// follow them in free text. It is the one definition the access-log filter
// and api_errors' backend excerpts share.
package redact

import (
	"regexp"
	"strings"
)

// Replacement stands in for a removed value.
const Replacement = "REDACTED"

// CredentialName reports whether a header, parameter or member name looks
// like it carries a credential, case-insensitively and whatever the
// separators: `API_KEY`, `apiKey`, `access-token`, `X-Auth-Token`,
// `password`, `client_secret`, `Authorization`, `Cookie`, `sig`.
func CredentialName(name string) bool {
	n := normalize(name)
	if n == "" {
		return false
	}
	for _, exact := range exactNames {
		if n == exact {
			return true
		}
	}
	for _, part := range nameParts {
		if strings.Contains(n, part) {
			return true
		}
	}
	return strings.HasSuffix(n, "key")
}

var (
	exactNames = []string{"key", "pass", "pwd", "sig", "jwt"}
	nameParts  = []string{"token", "secret", "password", "passwd", "passphrase", "auth", "credential", "session", "cookie", "signature", "apikey", "privatekey"}
)

// normalize lower-cases name and drops separators and an `x` prefix.
func normalize(name string) string {
	var b strings.Builder
	b.Grow(len(name))
	for i := 0; i < len(name); i++ {
		c := name[i]
		switch {
		case c >= 'A' && c <= 'Z':
			b.WriteByte(c + 'a' - 'A')
		case c >= 'a' && c <= 'z' || c >= '0' && c <= '9':
			b.WriteByte(c)
		}
	}
	return b.String()
}

// assignment finds `name: value`, `name=value` and `"name": "value"` in
// free text, for names that may be credentials; the value runs to the next
// quote, space, comma, ampersand, semicolon or bracket.
var assignment = regexp.MustCompile(`(?i)("?)([A-Za-z0-9_.-]*)("?\s*[:=]\s*"?)([^"\s,&;<>{}\[\]]+)`)

// bearer finds credentials after an HTTP authentication scheme.
var bearer = regexp.MustCompile(`(?i)\b(bearer|basic|digest|api-key|token)\s+[A-Za-z0-9._~+/=-]{8,}`)

// Text returns at most max bytes of b with every value that follows a
// credential-like name, and every `Bearer <token>`, replaced: what may be
// logged of a body nobody vetted (a backend's 500 page).
func Text(b []byte, max int) string {
	s := string(b[:min(len(b), max)])
	s = bearer.ReplaceAllString(s, "$1 "+Replacement)
	return assignment.ReplaceAllStringFunc(s, func(m string) string {
		sub := assignment.FindStringSubmatch(m)
		if !CredentialName(sub[2]) {
			return m
		}
		return sub[1] + sub[2] + sub[3] + Replacement
	})
}
