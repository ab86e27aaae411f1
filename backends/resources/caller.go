package resources

import (
	"net/http"
	"strings"

	"github.com/restgate/restgate/internal/identity"
)

// caller is who sends the request, as the gateway says: user is the
// qualified principal (identity.Qualified), what owned documents are
// owned by. An API key's user is its bare name; a token's subject is
// qualified by the issuer the gateway sends in X-Auth-Issuer, so that
// `sub: alice` of any issuer never owns the key user alice's documents.
type caller struct {
	user  string
	admin bool
}

func (h *Handler) caller(r *http.Request) caller {
	user := strings.TrimSpace(r.Header.Get(h.UserHeader))
	c := caller{user: identity.Qualified(user, strings.TrimSpace(r.Header.Get(identity.IssuerHeader)))}
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
