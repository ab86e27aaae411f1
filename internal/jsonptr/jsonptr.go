// Package jsonptr escapes JSON Pointer reference tokens (RFC 6901 §3), the
// one definition the problem `errors` members of every module use.
package jsonptr

import "strings"

// Escape escapes one reference token: `~` as `~0`, `/` as `~1`.
func Escape(token string) string { return escaper.Replace(token) }

var escaper = strings.NewReplacer("~", "~0", "/", "~1")
