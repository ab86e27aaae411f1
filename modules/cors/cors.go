// Package cors implements http.handlers.api_cors: CORS for an API gateway.
// It answers preflights itself and puts the CORS headers on every response
// to an allowed origin, errors included, so that a browser app on another
// origin can read problem bodies, ETags and RateLimit fields.
package cors

import (
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/restgate/restgate/internal/identity"
)

func init() {
	caddy.RegisterModule(Handler{})
}

// Handler is CORS (the Fetch standard's CORS protocol) for the API.
//
// A preflight (`OPTIONS` with `Origin` and `Access-Control-Request-Method`)
// is answered here with a 204 and never forwarded; it needs no key and is
// not counted by the rate limits (it runs before them: a preflight carries
// no credential and browsers cache its answer for MaxAge). An allowed
// origin gets `Access-Control-Allow-Origin` (its own origin, never a blind
// reflection), the allowed methods and request headers, and MaxAge; a
// disallowed one gets a 204 without CORS headers, which the browser treats
// as a refusal.
//
// Every other response to an allowed origin carries
// `Access-Control-Allow-Origin` and `Access-Control-Expose-Headers` (and
// `Access-Control-Allow-Credentials` when set), problems included. Unless
// every origin is allowed, every response carries `Vary: Origin`, so that
// caches (api_etag's among them) keep answers apart per origin. A request
// from a disallowed origin is otherwise served as it would be without CORS:
// the browser withholds the response from the page.
type Handler struct {
	// The allowed origins: exact origins (`https://app.example.com`,
	// `http://localhost:3000`), patterns with one leading wildcard label
	// (`https://*.example.com`, which does not match `https://example.com`),
	// or `*` (any origin; only without Credentials). `null` is allowed only
	// when listed. A wildcard port (`http://localhost:*`) is refused: it
	// would let any local program's page in.
	Origins []string `json:"origins,omitempty"`

	// The methods allowed in cross-origin requests. Default: GET, HEAD,
	// POST, PUT, PATCH, DELETE.
	Methods []string `json:"methods,omitempty"`

	// The request headers allowed. Default: Authorization, Content-Type,
	// If-Match, If-None-Match, X-API-Key, Idempotency-Key, X-Request-Id.
	Headers []string `json:"headers,omitempty"`

	// The response headers a page may read. Default: ETag, Last-Modified,
	// Location, RateLimit, RateLimit-Policy, Retry-After, X-Request-Id,
	// Cache-Status, Idempotent-Replayed, WWW-Authenticate.
	Expose []string `json:"expose,omitempty"`

	// Allow credentials (cookies, TLS client certificates, HTTP auth) in
	// cross-origin requests. Default: off; API keys in headers do not need
	// it.
	Credentials bool `json:"credentials,omitempty"`

	// How long a browser may cache a preflight's answer. Default: 10m.
	MaxAge caddy.Duration `json:"max_age,omitempty"`

	any      bool
	exact    map[string]bool
	suffixes []suffixPattern
	methods  string
	headers  map[string]bool
	allowHdr string
	expose   string
	maxAge   string
}

// suffixPattern is `scheme://*.domain[:port]`: any one or more labels
// before domain.
type suffixPattern struct {
	scheme, suffix, port string // suffix begins with a dot
}

// CaddyModule returns the Caddy module information.
func (Handler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.api_cors",
		New: func() caddy.Module { return new(Handler) },
	}
}

var (
	defaultMethods = []string{"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"}
	defaultHeaders = []string{"Authorization", "Content-Type", "If-Match", "If-None-Match", identity.KeyHeader, "Idempotency-Key", "X-Request-Id"}
	defaultExpose  = []string{"ETag", "Last-Modified", "Location", "RateLimit", "RateLimit-Policy", "Retry-After", "X-Request-Id",
		"Cache-Status", "Idempotent-Replayed", "WWW-Authenticate"}
)

const defaultMaxAge = 10 * time.Minute

// Provision sets defaults and compiles the origin list.
func (h *Handler) Provision(caddy.Context) error {
	if len(h.Methods) == 0 {
		h.Methods = defaultMethods
	}
	if len(h.Headers) == 0 {
		h.Headers = defaultHeaders
	}
	if len(h.Expose) == 0 {
		h.Expose = defaultExpose
	}
	if h.MaxAge == 0 {
		h.MaxAge = caddy.Duration(defaultMaxAge)
	}
	h.exact = map[string]bool{}
	for _, o := range h.Origins {
		if err := h.addOrigin(o); err != nil {
			return err
		}
	}
	for i, m := range h.Methods {
		h.Methods[i] = strings.ToUpper(m)
	}
	h.methods = strings.Join(h.Methods, ", ")
	h.headers = map[string]bool{}
	for _, name := range h.Headers {
		h.headers[strings.ToLower(name)] = true
	}
	h.allowHdr = strings.Join(h.Headers, ", ")
	h.expose = strings.Join(h.Expose, ", ")
	h.maxAge = strconv.Itoa(int(time.Duration(h.MaxAge) / time.Second))
	return nil
}

func (h *Handler) addOrigin(o string) error {
	switch {
	case o == "*":
		h.any = true
		return nil
	case o == "null":
		h.exact[o] = true
		return nil
	}
	u, err := url.Parse(o)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.User != nil {
		return fmt.Errorf("origin %q: want scheme://host[:port], such as https://app.example.com or https://*.example.com", o)
	}
	host, port := u.Hostname(), u.Port()
	if port == "*" || strings.HasSuffix(u.Host, ":*") {
		return fmt.Errorf("origin %q: a wildcard port would allow any local program's page; list the ports", o)
	}
	if strings.Contains(host, "*") {
		if !strings.HasPrefix(host, "*.") || strings.Contains(host[2:], "*") || !strings.Contains(host[2:], ".") && host[2:] != "localhost" {
			return fmt.Errorf("origin %q: a wildcard may only stand for the leftmost labels of a domain, as in https://*.example.com", o)
		}
		h.suffixes = append(h.suffixes, suffixPattern{scheme: u.Scheme, suffix: strings.ToLower(host[1:]), port: port})
		return nil
	}
	h.exact[strings.ToLower(u.Scheme+"://"+u.Host)] = true
	return nil
}

// Validate checks the configuration.
func (h *Handler) Validate() error {
	if h.any && h.Credentials {
		return fmt.Errorf("origins *: a wildcard origin is not allowed with credentials; list the origins")
	}
	if len(h.Origins) == 0 {
		return fmt.Errorf("no origins: list the origins allowed to call the API (such as https://app.example.com)")
	}
	if h.MaxAge < 0 {
		return fmt.Errorf("max_age must not be negative")
	}
	return nil
}

// allowed reports whether an Origin header value is allowed.
func (h *Handler) allowed(origin string) bool {
	if origin == "null" {
		return h.exact["null"]
	}
	if h.any {
		return true
	}
	lower := strings.ToLower(origin)
	if h.exact[lower] {
		return true
	}
	if len(h.suffixes) == 0 {
		return false
	}
	u, err := url.Parse(lower)
	if err != nil || u.Path != "" || u.Host == "" {
		return false
	}
	host := u.Hostname()
	for _, p := range h.suffixes {
		if u.Scheme == p.scheme && u.Port() == p.port && strings.HasSuffix(host, p.suffix) && len(host) > len(p.suffix) {
			return true
		}
	}
	return false
}

// varyOrigin is the Vary value of a response no earlier handler varied:
// shared, clipped (an Add after this one copies it), never changed in place.
var varyOrigin = []string{"Origin"}

func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	hdr := w.Header()
	if !h.any {
		if old := hdr["Vary"]; len(old) == 0 {
			hdr["Vary"] = varyOrigin
		} else {
			hdr["Vary"] = append(old[:len(old):len(old)], "Origin")
		}
	}
	origins := r.Header["Origin"]
	if len(origins) != 1 {
		return next.ServeHTTP(w, r) // not a cross-origin request (or a malformed one)
	}
	origin := origins[0]
	ok := h.allowed(origin)
	if r.Method == http.MethodOptions && r.Header.Get("Access-Control-Request-Method") != "" {
		if ok {
			h.preflight(hdr, r, origin)
		}
		identity.Answered(r) // the gateway's own answer: nothing was served
		w.WriteHeader(http.StatusNoContent)
		return nil
	}
	if ok {
		h.allowOrigin(hdr, origin)
		hdr.Set("Access-Control-Expose-Headers", h.expose)
	}
	return next.ServeHTTP(w, r)
}

func (h *Handler) allowOrigin(hdr http.Header, origin string) {
	if h.any && !h.Credentials {
		hdr.Set("Access-Control-Allow-Origin", "*")
	} else {
		hdr.Set("Access-Control-Allow-Origin", origin)
	}
	if h.Credentials {
		hdr.Set("Access-Control-Allow-Credentials", "true")
	}
}

// preflight answers an allowed origin's preflight: the method and every
// requested header must be allowed, or the answer says nothing more than
// the origin (and the browser refuses the request).
func (h *Handler) preflight(hdr http.Header, r *http.Request, origin string) {
	method := r.Header.Get("Access-Control-Request-Method")
	if !slices.Contains(h.Methods, method) {
		return
	}
	for _, line := range r.Header.Values("Access-Control-Request-Headers") {
		for _, name := range strings.Split(line, ",") {
			if name = strings.TrimSpace(name); name != "" && !h.headers[strings.ToLower(name)] {
				return
			}
		}
	}
	h.allowOrigin(hdr, origin)
	hdr.Set("Access-Control-Allow-Methods", h.methods)
	hdr.Set("Access-Control-Allow-Headers", h.allowHdr)
	hdr.Set("Access-Control-Max-Age", h.maxAge)
	hdr.Add("Vary", "Access-Control-Request-Method")
	hdr.Add("Vary", "Access-Control-Request-Headers")
}

// Interface guards
var (
	_ caddy.Provisioner           = (*Handler)(nil)
	_ caddy.Validator             = (*Handler)(nil)
	_ caddyhttp.MiddlewareHandler = (*Handler)(nil)
)
