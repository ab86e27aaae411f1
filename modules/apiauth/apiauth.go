// Package apiauth implements http.handlers.api_auth: API keys with scopes,
// held only as SHA-256 hashes, from hot-reloaded key files, the environment
// and the Caddyfile; per-method policy; identity for the backend.
package apiauth

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	lru "github.com/hashicorp/golang-lru/v2"
	"go.uber.org/zap"

	"github.com/restgate/restgate/internal/identity"
	"github.com/restgate/restgate/internal/metrics"
	"github.com/restgate/restgate/internal/trace"
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
// headers (the user, the scopes, and for a token's subject the issuer in
// `X-Auth-Issuer`), after deleting any client-sent copy of those headers:
//
// Placeholder | Description
// ------------|-------------
// `{http.auth.user.id}` | the key's user, or the token's subject (also the access log's `user_id`)
// `{http.auth.user.principal}` | who the gateway's keys know: the key's user, or `jwt:<issuer> <subject>` for a token
// `{http.auth.user.scopes}` | the key's scopes, space-separated
// `{http.auth.user.key_id}` | the key's id (a token's `jti`)
// `{http.auth.user.issuer}` | a token's issuer
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

	// Paths (Caddy path matcher syntax) that any method may reach without
	// a key, such as the API description. A key that is sent is still
	// checked; identity headers are never forwarded without one.
	// Default: none.
	Public caddyhttp.MatchPath `json:"public,omitempty"`

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

	// Issuers of signed bearer tokens (JWTs, SciTokens) accepted besides
	// API keys. A bearer token shaped like a JWT is verified against its
	// issuer; anything else is tried as an API key.
	JWT []*JWTIssuer `json:"jwt,omitempty"`

	keys         *atomic.Pointer[keySet] // swapped whole on reload
	verified     verifiedTokens
	files        []string
	fileStates   map[string]fileState // what each key file held when last read (the watcher's only)
	anonymous    map[string]bool
	challenge    string
	challengeBad string
	keyHeader    string
	userHeader   string
	scopesHeader string
	now          func() time.Time
	logger       *zap.Logger
	audit        *zap.Logger
}

// fileState is what a key file held when it was last read: the hash of
// exactly the bytes that were parsed, or that it was missing; and the
// file's metadata then, which lets the watcher skip reading a file that
// has not changed since (see unchanged).
type fileState struct {
	sum     [sha256.Size]byte
	missing bool

	info   os.FileInfo // nil if the file could not be stat'ed
	readAt time.Time   // when info was taken, just before the bytes were read
}

// The watcher reads and hashes a key file only when its metadata changed,
// and at the latest every fullCheckEvery. A file modified less than
// racyWindow before it was read is read at every poll until it is older:
// a second write within the file system's timestamp granularity would not
// move its modification time.
const (
	racyWindow     = 2 * time.Second
	fullCheckEvery = time.Minute
)

// readKeyFile reads a key file (tests count the reads).
var readKeyFile = os.ReadFile

func (s fileState) sameContent(o fileState) bool { return s.sum == o.sum && s.missing == o.missing }

// unchanged reports whether info shows the file as it was when last read:
// the same file (inode), size and modification time, a modification time
// that was already racyWindow old when it was read, and a full read less
// than fullCheckEvery ago (tools can set a modification time back).
func (s fileState) unchanged(info os.FileInfo, now time.Time) bool {
	return s.info != nil && info != nil && os.SameFile(s.info, info) &&
		s.info.Size() == info.Size() && s.info.ModTime().Equal(info.ModTime()) &&
		s.readAt.Sub(info.ModTime()) >= racyWindow && now.Sub(s.readAt) < fullCheckEvery
}

// statKeyFile is a fileState's metadata for f, taken before reading it (a
// change after it shows at the next poll).
func statKeyFile(f string) fileState {
	info, _ := os.Stat(f) // nil on an error
	return fileState{info: info, readAt: time.Now()}
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
	if err := metrics.Register(ctx.GetMetricsRegistry()); err != nil {
		return err
	}
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
	identity.Protect(h.userHeader, h.scopesHeader)
	h.challenge = fmt.Sprintf(`Bearer realm=%q`, h.Realm)
	h.challengeBad = h.challenge + `, error="invalid_token"`
	if len(h.Public) > 0 {
		if err := h.Public.Provision(ctx); err != nil {
			return err
		}
	}
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
	h.keys = new(atomic.Pointer[keySet])
	ks, states, err := h.load(nil)
	if err != nil {
		return err
	}
	h.fileStates = states
	for f, st := range states {
		if st.missing {
			h.logger.Warn("key file does not exist yet; watching for it", zap.String("file", f))
		}
	}
	h.keys.Store(ks)
	metrics.KeysLoaded.Set(float64(len(ks.byHash)))
	if len(h.JWT) > 0 {
		h.verified.cache, _ = lru.New[[sha256.Size]byte, *verifiedToken](verifiedCacheSize)
		for _, j := range h.JWT {
			if err := j.provision(ctx, h.logger, h.now); err != nil {
				return err
			}
		}
	}
	switch {
	case len(ks.byHash) == 0 && len(h.JWT) > 0:
	case len(ks.byHash) == 0 && !h.Development:
		// Caddy reports a provisioning error after the whole module chain
		// (hundreds of characters); the sentence that says what to do is
		// logged first, on its own line.
		const todo = "no API keys configured: refusing to start an API that anyone can use. " +
			"Create a key with `restgate api-key --user <name> --out <file>` and set `keys_file <file>` " +
			"(`make run` does this for you), or set RESTGATE_API_KEY=<token>:<user>; for a local experiment only, add `development`"
		h.logger.Error(todo)
		return errors.New(todo)
	case len(ks.byHash) == 0:
		h.logger.Warn("DEVELOPMENT: api_auth has no keys; every request that needs a key is refused until one is added")
	}
	if len(h.files) > 0 && h.ReloadInterval > 0 {
		go h.watch(ctx)
	}
	live.Store(h, struct{}{})
	return nil
}

// load reads every source; later sources win: inline keys, the key file,
// the env key file, the env key. Each file is read once: the state it
// returns hashes exactly the bytes that were parsed. A file that is missing
// (or empty) while it had keys before (in prev) is an error, so that an
// editor's delete-and-rename or truncate-then-write never drops the keys
// for a moment; at startup a missing file is allowed (it may come later).
func (h *Handler) load(prev map[string]fileState) (*keySet, map[string]fileState, error) {
	states := make(map[string]fileState, len(h.files))
	entries := slices.Clone(h.Keys)
	for _, f := range h.files {
		st := statKeyFile(f)
		b, err := readKeyFile(f)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			st.missing = true
			states[f] = st
			if p, seen := prev[f]; seen && !p.missing {
				return nil, states, fmt.Errorf("key file %s disappeared", f)
			}
			continue
		case err != nil:
			return nil, states, fmt.Errorf("key file: %v", err)
		}
		st.sum = sha256.Sum256(b)
		states[f] = st
		fe, plain, err := parseKeyFile(f, b)
		if err != nil {
			return nil, states, err
		}
		if plain > 0 {
			h.logger.Warn("key file holds plaintext keys (api_keys); they were hashed on load, but store only hashes: see `restgate api-key`",
				zap.String("file", f), zap.Int("plaintext_keys", plain))
		}
		entries = append(entries, fe...)
	}
	if v := os.Getenv(EnvAPIKey); v != "" && !h.NoEnv {
		ee, err := parseEnvKeys(v)
		if err != nil {
			return nil, states, err
		}
		entries = append(entries, ee...)
	}
	ks, err := build(entries)
	return ks, states, err
}

// watch reloads the keys when a key file's content changes. A file that
// fails to load (unparsable, empty, gone) keeps the previous keys; each
// change of state is logged once, not on every poll.
func (h *Handler) watch(ctx context.Context) {
	t := time.NewTicker(time.Duration(h.ReloadInterval))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		h.reloadIfChanged()
	}
}

// reloadIfChanged reloads the keys if a key file changed since it was last
// read, and says whether it tried and what failed. Only the watcher (or a
// test in its place) calls it.
func (h *Handler) reloadIfChanged() (tried bool, err error) {
	if !h.changed() {
		return false, nil
	}
	ks, states, err := h.load(h.fileStates)
	// the next poll compares with what was read now, good or bad: a bad
	// file is not retried (nor logged) until it changes again
	h.fileStates = states
	if err != nil {
		h.logger.Error("reloading API keys failed; keeping the previous keys", zap.Error(err))
		metrics.KeyReloadFailed.Inc()
		return true, err
	}
	h.keys.Store(ks)
	metrics.KeyReloadOK.Inc()
	metrics.KeysLoaded.Set(float64(len(ks.byHash)))
	h.logger.Info("API keys reloaded", zap.Int("keys", len(ks.byHash)))
	return true, nil
}

// changed reports whether any key file differs from what was last read.
// A file whose metadata shows no change is not read (see unchanged); one
// read again with the same bytes keeps its newer metadata.
func (h *Handler) changed() bool {
	for _, f := range h.files {
		prev := h.fileStates[f]
		cur := statKeyFile(f)
		if prev.unchanged(cur.info, cur.readAt) {
			continue
		}
		if b, err := readKeyFile(f); err != nil {
			cur.missing = errors.Is(err, fs.ErrNotExist)
		} else {
			cur.sum = sha256.Sum256(b)
		}
		if !cur.sameContent(prev) {
			return true
		}
		h.fileStates[f] = cur
	}
	return false
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
	// a client never speaks for the gateway (api_errors scrubs every
	// request on the API host; this covers a route without it)
	identity.Scrub(r)

	// CORS preflights carry no credentials by design
	if r.Method == http.MethodOptions && r.Header.Get("Access-Control-Request-Method") != "" {
		metrics.AuthPreflight.Inc()
		return next.ServeHTTP(w, identity.Unlock(r))
	}

	token, presence, from := credential(r.Header, h.keyHeader)
	switch presence {
	case credConflict:
		metrics.AuthInvalid.Inc()
		trace.Auth(r.Context(), trace.AuthInvalid)
		return problem.Error(http.StatusBadRequest, "conflicting_credentials", "the request carries two different API keys")
	case credNone:
		if h.anonymous[r.Method] || (len(h.Public) > 0 && h.Public.Match(r)) {
			metrics.AuthAnonymous.Inc()
			trace.Auth(r.Context(), trace.AuthAnonymous)
			return next.ServeHTTP(w, identity.Unlock(r)) // anonymous or public, by declaration
		}
		metrics.AuthMissing.Inc()
		trace.Auth(r.Context(), trace.AuthMissing)
		w.Header().Set("WWW-Authenticate", h.challenge)
		return problem.Error(http.StatusUnauthorized, "", "an API key is required: send it as `Authorization: Bearer <key>`")
	}

	k, err := h.authenticate(r.Context(), token, from)
	if err != nil {
		metrics.AuthInvalid.Inc()
		trace.Auth(r.Context(), trace.AuthInvalid)
		w.Header().Set("WWW-Authenticate", h.challengeBad)
		return err
	}
	scope := h.scopeFor(r.Method)
	if !k.has(scope) {
		metrics.AuthInsufficientScope.Inc()
		trace.AuthPrincipal(r.Context(), trace.AuthInsufficientScope, k.issuerAny)
		w.Header().Set("WWW-Authenticate", h.challenge+`, error="insufficient_scope", scope="`+scope+`"`)
		what := "this key"
		if k.issuerAny != nil {
			what = "this token"
		}
		return problem.Error(http.StatusForbidden, "insufficient_scope", what+" lacks the "+scope+" scope that "+r.Method+" needs")
	}

	metrics.AuthOK.Inc()
	trace.AuthPrincipal(r.Context(), trace.AuthOK, k.issuerAny)
	if repl, ok := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer); ok {
		repl.Set(identity.UserPlaceholder, k.userAny)
		repl.Set(identity.PrincipalPlaceholder, k.principalAny)
		repl.Set(identity.ScopesPlaceholder, k.scopesAny)
		repl.Set(identity.KeyIDPlaceholder, k.idAny)
		if k.issuerAny != nil {
			repl.Set(identity.IssuerPlaceholder, k.issuerAny)
		}
	}
	r.Header[h.userHeader] = k.userHeader
	r.Header[h.scopesHeader] = k.scopesHeader
	if k.issuerHeader != nil {
		r.Header[identity.IssuerHeader] = k.issuerHeader
	}
	if from&fromAuthorization != 0 {
		identity.MarkAuthorizationConsumed(r)
	}
	if !h.KeepCredential {
		if from&fromAuthorization != 0 {
			delete(r.Header, "Authorization")
		}
		if from&fromHeader != 0 {
			delete(r.Header, h.keyHeader)
		}
	}

	r = identity.Unlock(r)
	if safeMethods[r.Method] {
		return next.ServeHTTP(w, r)
	}
	rec := caddyhttp.NewResponseRecorder(w, nil, nil)
	err = next.ServeHTTP(rec, r)
	status := rec.Status()
	var he caddyhttp.HandlerError
	if errors.As(err, &he) {
		status = he.StatusCode
	}
	h.audit.Info("write",
		zap.String("user", k.user),
		issuerField(k),
		zap.String("key_id", k.id),
		zap.String("method", r.Method),
		zap.String("path", r.URL.Path),
		zap.Int("status", status),
		zap.String("request_id", problem.RequestIDFromRequest(r)),
	)
	return err
}

// issuerField names a token's issuer in the audit line (nothing for a key).
func issuerField(k *key) zap.Field {
	if iss, ok := k.issuerAny.(string); ok {
		return zap.String("issuer", iss)
	}
	return zap.Skip()
}

// authenticate finds the principal of a credential: a bearer token shaped
// like a JWT is verified against its issuer (once: a verified token is
// cached until it expires or its issuer's keys change); anything else is
// looked up as an API key. The error is the 401 problem.
func (h *Handler) authenticate(ctx context.Context, token string, from source) (*key, error) {
	jwtPossible := len(h.JWT) > 0 && from == fromAuthorization
	if jwtPossible && strings.Count(token, ".") == 2 {
		if k := h.cachedToken(sha256.Sum256([]byte(token)), h.now()); k != nil {
			return k, nil
		}
	}
	if jwtPossible && looksLikeJWT(token) {
		k, err := h.verifyJWT(ctx, token)
		if err != nil {
			return nil, problem.Error(http.StatusUnauthorized, "invalid_token", "the bearer token is not valid")
		}
		return k, nil
	}
	if k := h.lookup(token); k != nil {
		return k, nil
	}
	return nil, problem.Error(http.StatusUnauthorized, "invalid_key", "the API key is not valid")
}

// lookup returns the live key for token, or nil. Every token, well formed
// or not, is hashed and looked up the same way, so that an unknown key and a
// malformed one take the same path and get the same answer. What keeps the
// lookup from leaking a key through timing is the hash: the map is indexed
// by SHA-256 of the token, so how far a comparison gets says nothing about
// the token itself.
func (h *Handler) lookup(token string) *key {
	sum := sha256.Sum256([]byte(token))
	k := h.keys.Load().byHash[sum]
	if k == nil || !wellFormed(token) {
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

// live are the provisioned handlers, so that the access-log filter can
// tell a key a client put in the wrong place from any other value.
var live sync.Map // *Handler → struct{}

// Cleanup forgets the handler's keys.
func (h *Handler) Cleanup() error {
	live.Delete(h)
	return nil
}

// IsKnownKey reports whether v is an API key that a running api_auth
// accepts (by its hash), so that it can be kept out of logs wherever it
// was sent. Values that cannot be keys are not hashed.
func IsKnownKey(v string) bool {
	if len(v) < 8 || len(v) > 4096 || strings.ContainsAny(v, " \t") {
		return false
	}
	sum := sha256.Sum256([]byte(v))
	known := false
	live.Range(func(k, _ any) bool {
		if ks := k.(*Handler).keys.Load(); ks != nil && ks.byHash[sum] != nil {
			known = true
		}
		return !known
	})
	return known
}

// Interface guards
var (
	_ caddy.Provisioner           = (*Handler)(nil)
	_ caddy.Validator             = (*Handler)(nil)
	_ caddy.CleanerUpper          = (*Handler)(nil)
	_ caddyhttp.MiddlewareHandler = (*Handler)(nil)
)
