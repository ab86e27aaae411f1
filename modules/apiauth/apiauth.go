// Package apiauth implements http.handlers.api_auth: API keys with scopes,
// held only as SHA-256 hashes, from hot-reloaded key files, the environment
// and the Caddyfile; per-method policy; identity for the backend.
package apiauth

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/restgate/restgate/internal/identity"
	"github.com/restgate/restgate/modules/problem"
)

func init() {
	caddy.RegisterModule(Handler{})
}

// Environment variables read at provision time (unless no_env is set).
const (
	EnvAPIKey     = "RESTGATE_API_KEY"       // token:username[,token:username…], scopes read and write
	EnvAPIKeyFile = "RESTGATE_API_KEYS_FILE" // a second key file
)

// Handler authenticates API keys and authorises requests by scope.
//
// Keys come from `Authorization: Bearer <key>`, `Authorization: Api-Key <key>`
// or the key header (default `X-API-Key`), never the query string. Keys are
// held only as SHA-256 hashes. A missing or bad key is a 401 with an RFC 6750
// `WWW-Authenticate: Bearer` challenge; a key without the scope the method
// needs is a 403 (`error="insufficient_scope"`); two different keys in one
// request are a 400. Errors are returned to `api_errors`.
//
// On success it sets these placeholders and forwards the identity in
// headers, after deleting any client-sent copy of those headers:
//
// Placeholder | Description
// ------------|-------------
// `{http.auth.user.id}` | the key's user (also the access log's `user_id`)
// `{http.auth.user.scopes}` | the key's scopes, space-separated
// `{http.auth.user.key_id}` | the key's id
type Handler struct {
	// A YAML key file; reloaded when it changes. Placeholders are replaced.
	KeysFile string `json:"keys_file,omitempty"`

	// Keys given inline, by hash.
	Keys []KeyEntry `json:"keys,omitempty"`

	// Ignore the RESTGATE_API_KEY and RESTGATE_API_KEYS_FILE environment
	// variables. Default: they are read, and win over other sources.
	NoEnv bool `json:"no_env,omitempty"`

	// The header a key may be sent in besides Authorization. Default: `X-API-Key`.
	Header string `json:"header,omitempty"`

	// The realm of the WWW-Authenticate challenge. Default: `restgate`.
	Realm string `json:"realm,omitempty"`

	// Methods that may be sent without a key (e.g. GET HEAD for public
	// reads). A key that is sent is still checked. Default: none.
	Anonymous []string `json:"anonymous,omitempty"`

	// The scope each method needs. Default: `read` for GET, HEAD and
	// OPTIONS, `write` for every other method.
	Scopes map[string]string `json:"scopes,omitempty"`

	// The request headers that carry the identity to the backend. Default:
	// `X-Auth-User` and `X-Auth-Scopes`.
	UserHeader   string `json:"user_header,omitempty"`
	ScopesHeader string `json:"scopes_header,omitempty"`

	// Forward the credential to the backend. Default: it is removed.
	KeepCredential bool `json:"keep_credential,omitempty"`

	// Allow starting with no keys at all. Without it, a configuration with
	// no key fails to load.
	Development bool `json:"development,omitempty"`

	// How often key files are checked for changes. Default: 1s.
	ReloadInterval caddy.Duration `json:"reload_interval,omitempty"`

	keys         *atomic.Pointer[keySet] // swapped whole on reload
	files        []string
	fileSums     map[string][sha256.Size]byte
	anonymous    map[string]bool
	challenge    string
	challengeBad string
	keyHeader    string
	userHeader   string
	scopesHeader string
	now          func() time.Time
	logger       *zap.Logger
	audit        *zap.Logger
	onReload     func(error) // tests: called after each reload attempt
}

// CaddyModule returns the Caddy module information.
func (Handler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.api_auth",
		New: func() caddy.Module { return new(Handler) },
	}
}

// Provision loads the keys and starts watching the key files.
func (h *Handler) Provision(ctx caddy.Context) error {
	h.logger = ctx.Logger()
	h.audit = h.logger.Named("audit")
	if h.now == nil {
		h.now = time.Now
	}
	if h.Header == "" {
		h.Header = identity.KeyHeader
	}
	if h.Realm == "" {
		h.Realm = "restgate"
	}
	if h.UserHeader == "" {
		h.UserHeader = identity.UserHeader
	}
	if h.ScopesHeader == "" {
		h.ScopesHeader = identity.ScopesHeader
	}
	if h.ReloadInterval == 0 {
		h.ReloadInterval = caddy.Duration(time.Second)
	}
	h.keyHeader = http.CanonicalHeaderKey(h.Header)
	h.userHeader = http.CanonicalHeaderKey(h.UserHeader)
	h.scopesHeader = http.CanonicalHeaderKey(h.ScopesHeader)
	h.challenge = fmt.Sprintf(`Bearer realm=%q`, h.Realm)
	h.challengeBad = h.challenge + `, error="invalid_token"`
	h.anonymous = make(map[string]bool, len(h.Anonymous))
	for _, m := range h.Anonymous {
		h.anonymous[strings.ToUpper(m)] = true
	}
	scopes := make(map[string]string, len(h.Scopes))
	for m, s := range h.Scopes {
		scopes[strings.ToUpper(m)] = s
	}
	h.Scopes = scopes

	repl := caddy.NewReplacer()
	if h.KeysFile != "" {
		h.files = append(h.files, repl.ReplaceAll(h.KeysFile, ""))
	}
	if f := os.Getenv(EnvAPIKeyFile); f != "" && !h.NoEnv {
		h.files = append(h.files, f)
	}
	h.fileSums = make(map[string][sha256.Size]byte)
	h.keys = new(atomic.Pointer[keySet])
	ks, err := h.load()
	if err != nil {
		return err
	}
	h.keys.Store(ks)
	switch {
	case len(ks.byHash) == 0 && !h.Development:
		return fmt.Errorf("no API keys configured: refusing to start an API that anyone can use. " +
			"Create a key with `restgate api-key --user <name> --out <file>` and set `keys_file <file>`, " +
			"or set RESTGATE_API_KEY=<token>:<user>; for a local experiment only, add `development`")
	case len(ks.byHash) == 0:
		h.logger.Warn("DEVELOPMENT: api_auth has no keys; every request that needs a key is refused until one is added")
	}
	if len(h.files) > 0 {
		go h.watch(ctx)
	}
	return nil
}

// load reads every source; later sources win: inline keys, the key file,
// the env key file, the env key.
func (h *Handler) load() (*keySet, error) {
	entries := slices.Clone(h.Keys)
	for _, f := range h.files {
		fe, plain, err := loadKeyFile(f)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			h.logger.Warn("key file does not exist yet; watching for it", zap.String("file", f))
			continue
		case err != nil:
			return nil, fmt.Errorf("key file: %v", err)
		}
		if plain > 0 {
			h.logger.Warn("key file holds plaintext keys (api_keys); they were hashed on load, but store only hashes: see `restgate api-key`",
				zap.String("file", f), zap.Int("plaintext_keys", plain))
		}
		entries = append(entries, fe...)
		h.fileSums[f] = fileSum(f)
	}
	if v := os.Getenv(EnvAPIKey); v != "" && !h.NoEnv {
		ee, err := parseEnvKeys(v)
		if err != nil {
			return nil, err
		}
		entries = append(entries, ee...)
	}
	return build(entries)
}

// watch reloads the keys when a key file's content changes. A file that
// fails to load keeps the previous keys.
func (h *Handler) watch(ctx context.Context) {
	t := time.NewTicker(time.Duration(h.ReloadInterval))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		changed := false
		for _, f := range h.files {
			if fileSum(f) != h.fileSums[f] {
				changed = true
			}
		}
		if !changed {
			continue
		}
		ks, err := h.load()
		if err != nil {
			h.logger.Error("reloading API keys failed; keeping the previous keys", zap.Error(err))
			for _, f := range h.files { // do not retry until the file changes again
				h.fileSums[f] = fileSum(f)
			}
		} else {
			h.keys.Store(ks)
			h.logger.Info("API keys reloaded", zap.Int("keys", len(ks.byHash)))
		}
		if h.onReload != nil {
			h.onReload(err)
		}
	}
}

func fileSum(path string) [sha256.Size]byte {
	b, err := os.ReadFile(path)
	if err != nil {
		return [sha256.Size]byte{}
	}
	return sha256.Sum256(b)
}

var safeMethods = map[string]bool{http.MethodGet: true, http.MethodHead: true, http.MethodOptions: true}

// scopeFor returns the scope a method needs.
func (h *Handler) scopeFor(method string) string {
	if s, ok := h.Scopes[method]; ok {
		return s
	}
	if safeMethods[method] {
		return "read"
	}
	return "write"
}

func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	// a client never speaks for the gateway
	delete(r.Header, h.userHeader)
	delete(r.Header, h.scopesHeader)

	// CORS preflights carry no credentials by design
	if r.Method == http.MethodOptions && r.Header.Get("Access-Control-Request-Method") != "" {
		return next.ServeHTTP(w, r)
	}

	token, presence, from := credential(r.Header, h.keyHeader)
	switch presence {
	case credConflict:
		return problem.Error(http.StatusBadRequest, "conflicting_credentials", "the request carries two different API keys")
	case credNone:
		if h.anonymous[r.Method] {
			return next.ServeHTTP(w, r)
		}
		w.Header().Set("WWW-Authenticate", h.challenge)
		return problem.Error(http.StatusUnauthorized, "", "an API key is required: send it as `Authorization: Bearer <key>`")
	}

	k := h.lookup(token)
	if k == nil {
		w.Header().Set("WWW-Authenticate", h.challengeBad)
		return problem.Error(http.StatusUnauthorized, "invalid_key", "the API key is not valid")
	}
	scope := h.scopeFor(r.Method)
	if !k.has(scope) {
		w.Header().Set("WWW-Authenticate", h.challenge+`, error="insufficient_scope", scope="`+scope+`"`)
		return problem.Error(http.StatusForbidden, "insufficient_scope", "this key lacks the "+scope+" scope that "+r.Method+" needs")
	}

	if repl, ok := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer); ok {
		repl.Set("http.auth.user.id", k.userAny)
		repl.Set("http.auth.user.scopes", k.scopesAny)
		repl.Set("http.auth.user.key_id", k.idAny)
	}
	r.Header[h.userHeader] = k.userHeader
	r.Header[h.scopesHeader] = k.scopesHeader
	if !h.KeepCredential {
		if from&fromAuthorization != 0 {
			delete(r.Header, "Authorization")
		}
		if from&fromHeader != 0 {
			delete(r.Header, h.keyHeader)
		}
	}

	if safeMethods[r.Method] {
		return next.ServeHTTP(w, r)
	}
	rec := caddyhttp.NewResponseRecorder(w, nil, nil)
	err := next.ServeHTTP(rec, r)
	status := rec.Status()
	var he caddyhttp.HandlerError
	if errors.As(err, &he) {
		status = he.StatusCode
	}
	h.audit.Info("write",
		zap.String("user", k.user),
		zap.String("key_id", k.id),
		zap.String("method", r.Method),
		zap.String("path", r.URL.Path),
		zap.Int("status", status),
		zap.String("request_id", problem.RequestIDFromRequest(r)),
	)
	return err
}

// lookup returns the live key for token, or nil. Every token, well formed
// or not, is hashed and looked up the same way, so that an unknown key and a
// malformed one take the same path and get the same answer.
func (h *Handler) lookup(token string) *key {
	sum := sha256.Sum256([]byte(token))
	k := h.keys.Load().byHash[sum]
	if k == nil || subtle.ConstantTimeCompare(k.hash[:], sum[:]) != 1 || !wellFormed(token) {
		return nil
	}
	if !k.expires.IsZero() && !h.now().Before(k.expires) {
		return nil
	}
	return k
}

// Validate checks the configuration.
func (h *Handler) Validate() error {
	for m, s := range h.Scopes {
		if s == "" || strings.ContainsAny(s, " \",") {
			return fmt.Errorf("scopes: invalid scope %q for %s", s, m)
		}
	}
	if strings.ContainsAny(h.Realm, "\"\\\r\n") {
		return fmt.Errorf("realm must not contain quotes, backslashes or line breaks")
	}
	if time.Duration(h.ReloadInterval) < 100*time.Millisecond {
		return fmt.Errorf("reload_interval must be at least 100ms")
	}
	return nil
}

// Interface guards
var (
	_ caddy.Provisioner           = (*Handler)(nil)
	_ caddy.Validator             = (*Handler)(nil)
	_ caddyhttp.MiddlewareHandler = (*Handler)(nil)
)
