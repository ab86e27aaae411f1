package resources

import (
	"net/http"
	"strings"
)

// caller is who sends the request, as the gateway says.
type caller struct {
	user  string
	admin bool
}

func (h *Handler) caller(r *http.Request) caller {
	c := caller{user: strings.TrimSpace(r.Header.Get(h.UserHeader))}
	for _, s := range strings.FieldsFunc(r.Header.Get(h.ScopesHeader), func(r rune) bool { return r == ' ' || r == ',' }) {
		if s == h.AdminScope {
			c.admin = true
		}
	}
	return c
}

// sees reports whether the caller may see d.
func (c caller) sees(coll *Collection, d *Doc) bool {
	return !coll.Owned || c.admin || d.Owner == c.user
}
