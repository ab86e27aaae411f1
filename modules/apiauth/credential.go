package apiauth

import (
	"net/http"
	"strings"
)

// presence says what credentials a request carries.
type presence int

const (
	credNone     presence = iota // no API key in any accepted place
	credOne                      // one key (possibly sent twice, identically)
	credConflict                 // two different keys: refused with 400
)

// source says where the key was found, so that it can be stripped.
type source uint8

const (
	fromAuthorization source = 1 << iota
	fromHeader
)

// credential finds the API key in `Authorization: Bearer <key>`,
// `Authorization: Api-Key <key>` (scheme names are case-insensitive) or the
// key header. It never reads the query string or a body. Other
// Authorization schemes are not ours and are ignored. An empty token counts
// as a credential (an invalid one), so "Bearer" alone is refused like a
// wrong key.
func credential(h http.Header, keyHeader string) (token string, p presence, from source) {
	for _, v := range h["Authorization"] {
		scheme, rest, _ := strings.Cut(strings.TrimLeft(v, " \t"), " ")
		if !strings.EqualFold(scheme, "Bearer") && !strings.EqualFold(scheme, "Api-Key") {
			continue
		}
		t := strings.Trim(rest, " \t")
		if p == credOne && t != token {
			return "", credConflict, from
		}
		token, p, from = t, credOne, from|fromAuthorization
	}
	for _, v := range h[keyHeader] {
		t := strings.Trim(v, " \t")
		if p == credOne && t != token {
			return "", credConflict, from
		}
		token, p, from = t, credOne, from|fromHeader
	}
	return token, p, from
}

// wellFormed reports whether a token could be a key: 1 to 4096 visible
// ASCII characters. It is checked after the lookup, so that a malformed
// token takes the same path and gets the same answer as an unknown one.
func wellFormed(t string) bool {
	if t == "" || len(t) > 4096 {
		return false
	}
	for i := 0; i < len(t); i++ {
		if t[i] <= ' ' || t[i] >= 0x7f {
			return false
		}
	}
	return true
}
