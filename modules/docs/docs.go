// Package docs implements http.handlers.api_docs: a browsable API reference
// (Swagger UI, embedded in the binary: no CDN, works offline) rendered from
// the API's served OpenAPI document, and that document made whole: the
// OpenAPI documents of the services behind the gateway, fetched from them,
// merged into it under their routes' prefixes, with what the gateway adds
// to every operation.
package docs

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/dustin/go-humanize"
	"github.com/swaggest/swgui"
	"github.com/swaggest/swgui/v5emb"
	"go.uber.org/zap"

	"github.com/restgate/restgate/internal/dispense"
	"github.com/restgate/restgate/internal/httpcond"
	"github.com/restgate/restgate/internal/identity"
)

func init() {
	caddy.RegisterModule(Handler{})
}

// Handler serves the API reference page and its assets under BasePath and,
// when it names services, the API's OpenAPI document at Spec; every other
// request goes on to the next handler. Put it at the site's level, after
// api_auth (its default place in the chain), and declare its paths public
// in api_auth (`public /v1/openapi.json /docs /docs/*`); in a `handle
// /docs*` block it serves the page only.
//
// The document at Spec is what the next handler serves there (the
// resources handler's, or an empty API if nothing does), with each
// service's paths mounted under its prefix, its components merged
// (renamed with the service's name where they collide), and on each of its
// operations what the gateway does: the security requirement with the
// method's scope, the problem responses the gateway can give (401, 403,
// 412, 428, 429, 503, one shared Problem schema), the response headers
// (ETag, RateLimit, RateLimit-Policy, X-Request-Id) and request headers
// (Idempotency-Key, If-Match, If-None-Match). A service's document is
// fetched when the configuration loads and every Refresh; one that cannot
// be fetched or is not a valid OpenAPI 3.x document is logged at warn and
// left out (its last good copy, if any, stays), never a broken page.
//
// "Try it out" is off until the reader asks for it (the button on each
// operation), with a key typed into the page's Authorize dialog; the page
// and the API share an origin by default, so no CORS is needed.
type Handler struct {
	// The OpenAPI document the page renders, and the path where the merged
	// document is served when Services are named. Default: `/v1/openapi.json`.
	Spec string `json:"spec,omitempty"`

	// Where the page is served. Default: `/docs`.
	BasePath string `json:"base_path,omitempty"`

	// The page's title, and the document's when nothing serves a base
	// document. Default: `API reference`.
	Title string `json:"title,omitempty"`

	// The services whose OpenAPI documents are merged into the document at
	// Spec, in this order. Default: none (the document is served as the
	// next handler serves it).
	Services []*Service `json:"services,omitempty"`

	// How often each service's document is fetched again. A failed fetch is
	// retried sooner: after 2s, doubling up to Refresh. Default: 5m.
	Refresh caddy.Duration `json:"refresh,omitempty"`

	// How long one fetch of a service's document may take, connection to
	// last byte. Default: 10s.
	Timeout caddy.Duration `json:"timeout,omitempty"`

	// The largest service document accepted, in bytes; a larger one is
	// left out. Default: 4 MiB.
	MaxSize int64 `json:"max_size,omitempty"`

	// The scope each method needs, as configured in api_auth (the
	// services' operations list it in their security requirement).
	// Default: `read` for GET, HEAD and OPTIONS, `write` for every other
	// method.
	Scopes map[string]string `json:"scopes,omitempty"`

	// The API-key header the document's apiKey scheme names, if the base
	// document has no such scheme. Default: `X-API-Key`.
	APIKeyHeader string `json:"api_key_header,omitempty"`

	ui       http.Handler
	logger   *zap.Logger
	cancel   context.CancelFunc
	scopeFor func(string) string
	merged   *atomic.Pointer[mergedDoc]
	retryMin time.Duration
}

// mergedDoc is the merged document for one base and one set of service
// copies; it is replaced whole when either changes.
type mergedDoc struct {
	baseSum [sha256.Size]byte
	copies  []*fetched
	body    []byte
	etag    string
}

// CaddyModule returns the Caddy module information.
func (Handler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.api_docs",
		New: func() caddy.Module { return new(Handler) },
	}
}

// Provision sets defaults, builds the page and starts fetching the
// services' documents.
func (h *Handler) Provision(ctx caddy.Context) error {
	h.logger = ctx.Logger()
	h.merged = new(atomic.Pointer[mergedDoc])
	if h.Spec == "" {
		h.Spec = "/v1/openapi.json"
	}
	if h.BasePath == "" {
		h.BasePath = "/docs"
	}
	h.BasePath = "/" + strings.Trim(h.BasePath, "/")
	if h.Title == "" {
		h.Title = "API reference"
	}
	if h.Refresh == 0 {
		h.Refresh = caddy.Duration(5 * time.Minute)
	}
	if h.Timeout == 0 {
		h.Timeout = caddy.Duration(10 * time.Second)
	}
	if h.MaxSize == 0 {
		h.MaxSize = 4 << 20
	}
	if h.APIKeyHeader == "" {
		h.APIKeyHeader = identity.KeyHeader
	}
	if h.retryMin == 0 {
		h.retryMin = 2 * time.Second
	}
	scopes := make(map[string]string, len(h.Scopes))
	for m, s := range h.Scopes {
		scopes[strings.ToUpper(m)] = s
	}
	h.scopeFor = methodScopes(scopes)
	h.ui = v5emb.NewHandlerWithConfig(swgui.Config{
		Title:       h.Title,
		SwaggerJSON: h.Spec,
		BasePath:    h.BasePath + "/",
		SettingsUI: map[string]string{
			// "Try it out" waits for the reader to press it
			"tryItOutEnabled":        "false",
			"persistAuthorization":   "false",
			"displayRequestDuration": "true",
		},
	})
	for _, s := range h.Services {
		if s == nil {
			return fmt.Errorf("services: an empty entry")
		}
		if err := s.provision(); err != nil {
			return err
		}
	}
	if len(h.Services) == 0 {
		return nil
	}
	f := &refresher{
		services: h.Services,
		client: &http.Client{
			Timeout:   time.Duration(h.Timeout),
			Transport: &http.Transport{Proxy: nil, MaxIdleConnsPerHost: 1, IdleConnTimeout: 30 * time.Second},
		},
		maxSize:  h.MaxSize,
		refresh:  time.Duration(h.Refresh),
		retryMin: h.retryMin,
		logger:   h.logger,
	}
	var fctx context.Context
	fctx, h.cancel = context.WithCancel(ctx)
	for _, s := range h.Services {
		go f.run(fctx, s)
	}
	return nil
}

// Validate checks the configuration.
func (h *Handler) Validate() error {
	seen := map[string]bool{}
	for _, s := range h.Services {
		if seen[s.Prefix] {
			return fmt.Errorf("services: %s is named twice", s.Prefix)
		}
		seen[s.Prefix] = true
	}
	if len(h.Services) > 0 && !strings.HasPrefix(h.Spec, "/") {
		return fmt.Errorf("spec: with services, the merged document is served at spec, which must be a path, not %q", h.Spec)
	}
	if h.MaxSize < 0 || h.Refresh < 0 || h.Timeout < 0 {
		return fmt.Errorf("max_size, refresh and timeout must not be negative")
	}
	for m, s := range h.Scopes {
		if s == "" || strings.ContainsAny(s, " \t\"") {
			return fmt.Errorf("scopes: invalid scope %q for %s", s, m)
		}
	}
	return nil
}

// Cleanup stops fetching.
func (h *Handler) Cleanup() error {
	if h.cancel != nil {
		h.cancel()
	}
	return nil
}

func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	path := r.URL.Path
	switch {
	case path == h.BasePath || strings.HasPrefix(path, h.BasePath+"/"):
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			return caddyhttp.Error(http.StatusMethodNotAllowed, fmt.Errorf("the API reference is read-only"))
		}
		if path == h.BasePath {
			http.Redirect(w, r, h.BasePath+"/", http.StatusMovedPermanently)
			return nil
		}
		h.ui.ServeHTTP(w, r)
		return nil
	case len(h.Services) > 0 && path == h.Spec && (r.Method == http.MethodGet || r.Method == http.MethodHead):
		return h.serveDocument(w, r, next)
	}
	return next.ServeHTTP(w, r)
}

// serveDocument answers with the merged document.
func (h *Handler) serveDocument(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	m := h.document(h.base(r, next))
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("ETag", m.etag)
	// the document changes with the services': a cache revalidates it
	w.Header().Set("Cache-Control", "no-cache")
	if httpcond.Evaluate(r, true, m.etag, time.Time{}) == httpcond.NotModified {
		w.WriteHeader(http.StatusNotModified)
		return nil
	}
	w.Header().Set("Content-Length", fmt.Sprint(len(m.body)))
	w.WriteHeader(http.StatusOK)
	if r.Method != http.MethodHead {
		_, _ = w.Write(m.body)
	}
	return nil
}

// maxBase bounds the base document read from the next handler.
const maxBase = 16 << 20

// base returns the document the next handler serves at the spec path (as
// a GET without preconditions), or nil if it serves none.
func (h *Handler) base(r *http.Request, next caddyhttp.Handler) []byte {
	inner := r.Clone(r.Context())
	inner.Method = http.MethodGet
	for _, k := range []string{"If-None-Match", "If-Modified-Since", "If-Match", "If-Unmodified-Since", "Range", "If-Range"} {
		inner.Header.Del(k)
	}
	c := &capture{hdr: http.Header{}}
	if err := next.ServeHTTP(c, inner); err != nil || c.status != http.StatusOK || c.over {
		return nil
	}
	if mt := c.hdr.Get("Content-Type"); !strings.Contains(mt, "json") {
		return nil
	}
	return c.buf.Bytes()
}

// document returns the merged document for base, merging again only when
// the base or a service's copy has changed.
func (h *Handler) document(base []byte) *mergedDoc {
	sum := sha256.Sum256(base)
	copies := make([]*fetched, len(h.Services))
	for i, s := range h.Services {
		copies[i] = s.state.Load()
	}
	if m := h.merged.Load(); m != nil && m.baseSum == sum && slices.Equal(m.copies, copies) {
		return m
	}
	var b obj
	if base != nil {
		dec := json.NewDecoder(bytes.NewReader(base))
		dec.UseNumber()
		if err := dec.Decode(&b); err != nil || b["openapi"] == nil || b["paths"] == nil {
			h.logger.Warn("the document at the spec path is not an OpenAPI document; merging the services into an empty one",
				zap.String("spec", h.Spec))
			b = nil
		}
	}
	if b == nil {
		b = skeleton(h.Title)
	}
	docs := make([]obj, len(copies))
	for i, c := range copies {
		if c != nil {
			docs[i] = c.doc
		}
	}
	merged := merge(b, h.Services, docs, h.scopeFor, h.APIKeyHeader, func(s *Service, msg string) {
		h.logger.Warn("leaving part of a service's OpenAPI document out", zap.String("service", s.Prefix), zap.String("reason", msg))
	})
	body, err := json.Marshal(merged)
	if err != nil { // decoded JSON always encodes; keep the base if not
		h.logger.Error("encoding the merged OpenAPI document", zap.Error(err))
		body, _ = json.Marshal(b)
	}
	d := sha256.Sum256(body)
	m := &mergedDoc{baseSum: sum, copies: copies, body: body, etag: `"` + hex.EncodeToString(d[:16]) + `"`}
	h.merged.Store(m)
	return m
}

// capture is the response writer the base document is read with.
type capture struct {
	hdr    http.Header
	status int
	buf    bytes.Buffer
	over   bool
}

func (c *capture) Header() http.Header { return c.hdr }

func (c *capture) WriteHeader(status int) {
	if c.status == 0 {
		c.status = status
	}
}

func (c *capture) Write(p []byte) (int, error) {
	c.WriteHeader(http.StatusOK)
	if c.buf.Len()+len(p) > maxBase {
		c.over = true
		return len(p), nil
	}
	return c.buf.Write(p)
}

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens. Syntax:
//
//	api_docs [<matcher>] {
//		spec      <path or URL of the OpenAPI document>
//		base_path <path>
//		title     <title>
//		service   <prefix> <document URL> {
//			paths auto|prefixed|stripped
//			name  <name>
//		}
//		refresh   <duration>
//		timeout   <duration>
//		max_size  <size>
//		scope     <scope> <methods...>
//		api_key_header <header>
//	}
func (h *Handler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // consume directive name
	return dispense.Options(d, []string{"service", "scope"}, func(opt string) error {
		switch opt {
		case "spec", "base_path", "title", "api_key_header":
			dst := map[string]*string{"spec": &h.Spec, "base_path": &h.BasePath, "title": &h.Title, "api_key_header": &h.APIKeyHeader}[opt]
			if !d.AllArgs(dst) {
				return d.ArgErr()
			}
		case "service":
			s, err := unmarshalService(d)
			if err != nil {
				return err
			}
			h.Services = append(h.Services, s)
		case "refresh", "timeout":
			var v string
			if !d.AllArgs(&v) {
				return d.ArgErr()
			}
			dur, err := caddy.ParseDuration(v)
			if err != nil || dur <= 0 {
				return d.Errf("%s: invalid duration '%s' (use a duration such as 10s or 5m)", opt, v)
			}
			if opt == "refresh" {
				h.Refresh = caddy.Duration(dur)
			} else {
				h.Timeout = caddy.Duration(dur)
			}
		case "max_size":
			var v string
			if !d.AllArgs(&v) {
				return d.ArgErr()
			}
			n, err := humanize.ParseBytes(v)
			if err != nil || n == 0 || n > 1<<30 {
				return d.Errf("max_size: invalid size '%s' (use a size such as 512KiB or 4MiB)", v)
			}
			h.MaxSize = int64(n)
		case "scope":
			args := d.RemainingArgs()
			if len(args) < 2 {
				return d.Errf("scope takes a scope and the methods that need it")
			}
			if h.Scopes == nil {
				h.Scopes = map[string]string{}
			}
			for _, m := range args[1:] {
				m = strings.ToUpper(m)
				if _, dup := h.Scopes[m]; dup {
					return d.Errf("scope for %s already specified", m)
				}
				h.Scopes[m] = args[0]
			}
		default:
			return d.Errf("unrecognized subdirective '%s'", opt)
		}
		return nil
	})
}

// unmarshalService reads `service <prefix> <url> [{ paths …; name … }]`.
func unmarshalService(d *caddyfile.Dispenser) (*Service, error) {
	s := new(Service)
	if !d.Args(&s.Prefix, &s.URL) || d.NextArg() {
		return nil, d.Errf("service takes the route's path prefix and the URL of its OpenAPI document")
	}
	seen := map[string]bool{}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		opt := d.Val()
		if seen[opt] {
			return nil, d.Errf("service %s: %s already specified", s.Prefix, opt)
		}
		seen[opt] = true
		var dst *string
		switch opt {
		case "paths":
			dst = &s.Paths
		case "name":
			dst = &s.Name
		default:
			return nil, d.Errf("service %s: unrecognized option '%s'", s.Prefix, opt)
		}
		if !d.AllArgs(dst) {
			return nil, d.ArgErr()
		}
	}
	return s, nil
}

// Interface guards
var (
	_ caddy.Provisioner           = (*Handler)(nil)
	_ caddy.Validator             = (*Handler)(nil)
	_ caddy.CleanerUpper          = (*Handler)(nil)
	_ caddyhttp.MiddlewareHandler = (*Handler)(nil)
	_ caddyfile.Unmarshaler       = (*Handler)(nil)
)
