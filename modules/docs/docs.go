// Package docs implements http.handlers.api_docs: a browsable API reference
// (Swagger UI, embedded in the binary: no CDN, works offline) rendered from
// the API's served OpenAPI document.
package docs

import (
	"fmt"
	"net/http"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/swaggest/swgui"
	"github.com/swaggest/swgui/v5emb"
)

func init() {
	caddy.RegisterModule(Handler{})
}

// Handler serves the API reference page and its assets under BasePath. It
// is a terminal handler: put it in a `handle /docs*` block, and declare the
// path public in api_auth (`public /docs*`). "Try it out" works from the
// page with a key typed into its Authorize dialog; the page and the API
// share an origin by default, so no CORS is needed.
type Handler struct {
	// The OpenAPI document the page renders. Default: `/v1/openapi.json`.
	Spec string `json:"spec,omitempty"`

	// Where the page is served. Default: `/docs`.
	BasePath string `json:"base_path,omitempty"`

	// The page's title. Default: `API reference`.
	Title string `json:"title,omitempty"`

	ui http.Handler
}

// CaddyModule returns the Caddy module information.
func (Handler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.api_docs",
		New: func() caddy.Module { return new(Handler) },
	}
}

// Provision sets defaults and builds the page.
func (h *Handler) Provision(caddy.Context) error {
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
	h.ui = v5emb.NewHandlerWithConfig(swgui.Config{
		Title:       h.Title,
		SwaggerJSON: h.Spec,
		BasePath:    h.BasePath + "/",
		SettingsUI: map[string]string{
			"tryItOutEnabled":        "true",
			"persistAuthorization":   "false",
			"displayRequestDuration": "true",
		},
	})
	return nil
}

func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, _ caddyhttp.Handler) error {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		return caddyhttp.Error(http.StatusMethodNotAllowed, fmt.Errorf("the API reference is read-only"))
	}
	if r.URL.Path == h.BasePath {
		http.Redirect(w, r, h.BasePath+"/", http.StatusMovedPermanently)
		return nil
	}
	h.ui.ServeHTTP(w, r)
	return nil
}

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens. Syntax:
//
//	api_docs [<matcher>] {
//		spec      <path or URL of the OpenAPI document>
//		base_path <path>
//		title     <title>
//	}
func (h *Handler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // consume directive name
	if d.NextArg() {
		return d.ArgErr()
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		opt := d.Val()
		var dst *string
		switch opt {
		case "spec":
			dst = &h.Spec
		case "base_path":
			dst = &h.BasePath
		case "title":
			dst = &h.Title
		default:
			return d.Errf("unrecognized subdirective '%s'", opt)
		}
		if *dst != "" {
			return d.Errf("%s already specified", opt)
		}
		if !d.AllArgs(dst) {
			return d.ArgErr()
		}
	}
	return nil
}

// Interface guards
var (
	_ caddy.Provisioner           = (*Handler)(nil)
	_ caddyhttp.MiddlewareHandler = (*Handler)(nil)
	_ caddyfile.Unmarshaler       = (*Handler)(nil)
)
