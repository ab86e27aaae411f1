// Package etag implements http.handlers.api_etag: strong ETags for
// backends that send none, conditional requests (RFC 9110 §13), If-Match
// optimistic locking decided by the gateway when the backend cannot, and a
// bounded shared cache (RFC 9111) that never serves one principal's
// response to another.
package etag

import (
	"fmt"
	"net/http"
	"net/textproto"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/cespare/xxhash/v2"
	"go.uber.org/zap"

	"github.com/restgate/restgate/internal/httpcond"
	"github.com/restgate/restgate/modules/problem"
)

func init() {
	caddy.RegisterModule(Handler{})
}

// Handler adds strong ETags, answers conditional requests, decides If-Match
// for backends that have no ETags, and optionally caches.
//
// Reads (GET, HEAD): a 200 response without an ETag, whose body fits in
// MaxBody, gets a strong ETag hashed from the body (xxHash64: the same in
// every process, so several gateways agree). If-None-Match and
// If-Modified-Since are then answered with 304. Larger and streaming
// responses (text/event-stream) pass through untouched. A backend's own
// ETag and Last-Modified are kept. HEAD is sent upstream as GET, so that
// its ETag is the GET's.
//
// Writes (PUT, PATCH, DELETE) with If-Match or If-Unmodified-Since: the
// gateway GETs the resource under the same identity. If the backend sends
// ETags, the precondition is forwarded and the backend decides. If not, the
// gateway decides (412 on a mismatch) and forwards the write without the
// precondition; conditional writes to one resource through one gateway are
// serialised while this happens, so two writers holding the same ETag
// cannot both succeed. A successful PUT or PATCH then carries the new ETag.
type Handler struct {
	// The largest body hashed (and cached). Larger responses pass through
	// without an ETag. Default: 1 MiB.
	MaxBody int `json:"max_body,omitempty"`

	// Paths (Caddy path matcher syntax) where PUT, PATCH and DELETE must be
	// conditional: an unconditional one is a 428.
	RequireIfMatch caddyhttp.MatchPath `json:"require_if_match,omitempty"`

	// The shared cache; off unless set.
	Cache *CacheConfig `json:"cache,omitempty"`

	store *store
	locks *keyedLocks
	// eligible[revalidating][authenticated], built once so that no read
	// allocates a closure
	eligible [2][2]func(int, http.Header) bool
	now      func() time.Time
	logger   *zap.Logger
}

// CacheConfig configures the in-memory shared cache.
type CacheConfig struct {
	// The most bytes of bodies and headers kept. Default: 64 MiB.
	MaxSize int64 `json:"max_size,omitempty"`

	// Freshness for 200 responses that state none (no max-age, s-maxage or
	// Expires). Default: 0, such responses are not stored.
	DefaultTTL caddy.Duration `json:"default_ttl,omitempty"`
}

// CaddyModule returns the Caddy module information.
func (Handler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.api_etag",
		New: func() caddy.Module { return new(Handler) },
	}
}

const (
	defaultMaxBody   = 1 << 20
	defaultCacheSize = 64 << 20
)

// Provision sets defaults.
func (h *Handler) Provision(ctx caddy.Context) error {
	h.logger = ctx.Logger()
	if h.now == nil {
		h.now = time.Now
	}
	if h.MaxBody == 0 {
		h.MaxBody = defaultMaxBody
	}
	if len(h.RequireIfMatch) > 0 {
		if err := h.RequireIfMatch.Provision(ctx); err != nil {
			return err
		}
	}
	if h.Cache != nil {
		if h.Cache.MaxSize == 0 {
			h.Cache.MaxSize = defaultCacheSize
		}
		h.store = newStore(h.Cache.MaxSize)
	}
	h.locks = &keyedLocks{m: map[string]*lockEntry{}}
	for _, reval := range []bool{false, true} {
		for _, authed := range []bool{false, true} {
			h.eligible[b2i(reval)][b2i(authed)] = h.eligibleRead(reval, authed)
		}
	}
	return nil
}

// Validate checks the configuration.
func (h *Handler) Validate() error {
	if h.MaxBody < 0 {
		return fmt.Errorf("max_body must not be negative")
	}
	if h.Cache != nil && (h.Cache.MaxSize < 0 || h.Cache.DefaultTTL < 0) {
		return fmt.Errorf("cache: sizes and durations must not be negative")
	}
	return nil
}

func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	switch r.Method {
	case http.MethodGet, http.MethodHead:
		return h.serveRead(w, r, next)
	case http.MethodOptions, http.MethodTrace:
		return next.ServeHTTP(w, r)
	}
	return h.serveWrite(w, r, next)
}

// --- reads -----------------------------------------------------------------

var (
	cacheStatusHit         = []string{"restgate; hit"}
	cacheStatusStored      = []string{"restgate; fwd=uri-miss; stored"}
	cacheStatusMiss        = []string{"restgate; fwd=uri-miss"}
	cacheStatusBypass      = []string{"restgate; fwd=request"}
	cacheStatusRevalidated = []string{"restgate; fwd=stale; fwd-status=304"}
	cacheStatusRefreshed   = []string{"restgate; fwd=stale; fwd-status=200; stored"}
)

func (h *Handler) serveRead(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	var (
		reqCC directives
		stale *entry
	)
	who := principalOf(r)
	if h.store != nil {
		reqCC = parseCacheControl(r.Header)
		if !reqCC.has("no-store") {
			if e := h.lookup(r, who); e != nil {
				if h.usable(e, reqCC) {
					return h.serveEntry(w, r, e, who, cacheStatusHit)
				}
				stale = e
			}
		}
	}

	// ask upstream; HEAD goes as GET so that its ETag is the GET's, and the
	// client's validators stay here when the cache needs a full response
	upstream := r
	if r.Method == http.MethodHead || h.store != nil {
		upstream = r.Clone(r.Context())
		upstream.Method = http.MethodGet
		if h.store != nil {
			delete(upstream.Header, "If-None-Match")
			delete(upstream.Header, "If-Modified-Since")
			if stale != nil {
				if !stale.generated {
					upstream.Header.Set("If-None-Match", stale.etag)
				}
				if !stale.lastModified.IsZero() {
					upstream.Header.Set("If-Modified-Since", stale.lastModified.UTC().Format(http.TimeFormat))
				}
			}
		}
	}
	hw := getHoldWriter(w, h.MaxBody, h.eligible[b2i(stale != nil)][b2i(who.authenticated())])
	defer putHoldWriter(hw)
	if err := next.ServeHTTP(hw, upstream); err != nil || !hw.held() {
		return err
	}
	hdr := w.Header()
	if hw.status == http.StatusNotModified && stale != nil {
		h.refresh(stale, hdr)
		return h.serveEntry(w, r, stale, who, cacheStatusRevalidated)
	}

	body := hw.buf.Bytes()
	etag := hdr.Get("Etag")
	generated := etag == ""
	if generated {
		etag = strongETag(body)
		hdr["Etag"] = []string{etag}
	}
	lastMod := parseHTTPTime(hdr["Last-Modified"])
	if h.store != nil {
		status := cacheStatusMiss
		if reqCC.has("no-store") {
			status = cacheStatusBypass
		} else if h.maybeStore(r, who, hw.status, hdr, body, etag, generated, lastMod) {
			status = cacheStatusStored
			if stale != nil {
				status = cacheStatusRefreshed
			}
		}
		hdr["Cache-Status"] = status
	}
	if who.authenticated() {
		markPrivate(hdr)
	}
	if httpcond.Evaluate(r, true, etag, lastMod) == httpcond.NotModified {
		writeNotModified(w)
		return nil
	}
	hdr["Content-Length"] = []string{strconv.Itoa(len(body))}
	w.WriteHeader(hw.status)
	if r.Method != http.MethodHead {
		_, err := w.Write(body)
		return err
	}
	return nil
}

// eligibleRead holds a 200 (and, when revalidating, a 304) that is not an
// event stream and whose declared length fits. A response that streams
// through instead is marked private first if the request was authenticated.
func (h *Handler) eligibleRead(revalidating, authed bool) func(int, http.Header) bool {
	return func(status int, hdr http.Header) bool {
		hold := h.holdable(status, hdr, revalidating)
		if !hold && authed {
			markPrivate(hdr)
		}
		return hold
	}
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

func (h *Handler) holdable(status int, hdr http.Header, revalidating bool) bool {
	if status != http.StatusOK && !(revalidating && status == http.StatusNotModified) {
		return false
	}
	if ct := hdr.Get("Content-Type"); strings.HasPrefix(ct, "text/event-stream") {
		return false
	}
	if cl := hdr.Get("Content-Length"); cl != "" {
		n, err := strconv.Atoi(cl)
		return err == nil && n <= h.MaxBody
	}
	return true
}

// strongETag is a strong validator of body: 16 hex digits of xxHash64.
func strongETag(body []byte) string {
	var b [18]byte
	b[0], b[17] = '"', '"'
	sum := xxhash.Sum64(body)
	const hex = "0123456789abcdef"
	for i := 16; i >= 1; i-- {
		b[i] = hex[sum&15]
		sum >>= 4
	}
	return string(b[:])
}

// principal is who a response may be served to: a user (kind classUser),
// anyone anonymous (classAnon), or everyone (classShared).
type principal struct {
	kind, user string
}

func principalOf(r *http.Request) principal {
	if repl, ok := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer); ok {
		if user, _ := repl.GetString("http.auth.user.id"); user != "" {
			return principal{classUser, user}
		}
	}
	return principal{kind: classAnon}
}

func (p principal) authenticated() bool { return p.kind == classUser }

// pathKey names a resource for invalidation: host and path.
func pathKey(r *http.Request) string { return r.Host + "\x00" + r.URL.Path }

// cacheKey names one stored response: host, path, query and principal,
// built in one allocation.
func cacheKey(r *http.Request, p principal) string {
	return r.Host + "\x00" + r.URL.Path + "\x00" + r.URL.RawQuery + "\x00" + p.kind + p.user
}

// lookup finds an entry for r: one stored for this principal, else a
// deliberately shared one.
func (h *Handler) lookup(r *http.Request, p principal) *entry {
	for _, c := range [...]principal{p, {kind: classShared}} {
		if e := h.store.get(cacheKey(r, c)); e != nil && e.varyMatches(r) {
			return e
		}
	}
	return nil
}

// usable reports whether e may answer without contacting the backend.
func (h *Handler) usable(e *entry, reqCC directives) bool {
	if reqCC.has("no-cache") {
		return false
	}
	age := e.age(h.now())
	if maxAge, ok := reqCC.seconds("max-age"); ok && age > maxAge {
		return false
	}
	return age < e.freshFor
}

func (h *Handler) serveEntry(w http.ResponseWriter, r *http.Request, e *entry, who principal, status []string) error {
	hdr := w.Header()
	for k, v := range e.header {
		hdr[k] = v // shared, clipped slices: nobody appends to them in place
	}
	hdr["Age"] = []string{strconv.FormatInt(int64(e.age(h.now())/time.Second), 10)}
	hdr["Cache-Status"] = status
	if who.authenticated() {
		markPrivate(hdr)
	}
	if httpcond.Evaluate(r, true, e.etag, e.lastModified) == httpcond.NotModified {
		writeNotModified(w)
		return nil
	}
	w.WriteHeader(e.status)
	if r.Method != http.MethodHead {
		_, err := w.Write(e.body)
		return err
	}
	return nil
}

// maybeStore stores a response if RFC 9111 §3 allows it, and says whether it did.
func (h *Handler) maybeStore(r *http.Request, who principal, status int, hdr http.Header, body []byte, etag string, generated bool, lastMod time.Time) bool {
	if status != http.StatusOK || len(hdr["Set-Cookie"]) > 0 {
		return false
	}
	respCC := parseCacheControl(hdr)
	if respCC.has("no-store") || respCC.has("private") {
		return false
	}
	var vary []string
	for _, line := range hdr["Vary"] {
		for _, name := range strings.Split(line, ",") {
			name = textproto.TrimString(name)
			if name == "*" {
				return false
			}
			if name != "" {
				vary = append(vary, http.CanonicalHeaderKey(name))
			}
		}
	}
	now := h.now()
	freshFor, ok := h.freshness(respCC, hdr, now)
	if !ok {
		return false
	}
	// §3.5: a response to an authenticated request is shared only when the
	// backend says so; otherwise it serves only the principal that asked
	if respCC.has("public") || respCC.has("s-maxage") {
		who = principal{kind: classShared}
	}
	e := &entry{
		key: cacheKey(r, who), pathKey: pathKey(r),
		status: status, header: storedHeader(hdr), body: append([]byte(nil), body...),
		etag: etag, generated: generated, lastModified: lastMod,
		stored: now, freshFor: freshFor, vary: vary,
	}
	if age, err := strconv.Atoi(hdr.Get("Age")); err == nil && age > 0 {
		e.initialAge = time.Duration(age) * time.Second
	}
	e.header["Content-Length"] = []string{strconv.Itoa(len(body))}
	for _, name := range vary {
		e.varyValues = append(e.varyValues, strings.Join(r.Header.Values(name), ","))
	}
	e.size = int64(len(e.body) + len(e.key) + 256)
	for k, v := range e.header {
		e.size += int64(len(k))
		for _, s := range v {
			e.size += int64(len(s))
		}
	}
	h.store.put(e)
	return true
}

// freshness is how long a response stays fresh (RFC 9111 §4.2.1), and
// whether it may be stored at all.
func (h *Handler) freshness(respCC directives, hdr http.Header, now time.Time) (time.Duration, bool) {
	if respCC.has("no-cache") {
		return 0, true // stored, but every use revalidates
	}
	if d, ok := respCC.seconds("s-maxage"); ok {
		return d, true
	}
	if d, ok := respCC.seconds("max-age"); ok {
		return d, true
	}
	if exp := hdr.Get("Expires"); exp != "" {
		t, err := http.ParseTime(exp)
		if err != nil {
			return 0, true // an invalid Expires means already expired
		}
		date, err := http.ParseTime(hdr.Get("Date"))
		if err != nil {
			date = now
		}
		return max(t.Sub(date), 0), true
	}
	if h.Cache.DefaultTTL > 0 {
		return time.Duration(h.Cache.DefaultTTL), true
	}
	return 0, false
}

// refresh updates a stored response from a 304 (RFC 9111 §4.3.4).
func (h *Handler) refresh(e *entry, hdr http.Header) {
	fresh := e.header.Clone()
	for _, k := range []string{"Cache-Control", "Expires", "Etag", "Last-Modified", "Vary"} {
		if v := hdr[k]; len(v) > 0 {
			fresh[k] = v
		}
	}
	respCC := parseCacheControl(fresh)
	freshFor, ok := h.freshness(respCC, fresh, h.now())
	cp := *e
	cp.header, cp.stored, cp.initialAge = fresh, h.now(), 0
	if ok {
		cp.freshFor = freshFor
	}
	h.store.put(&cp)
	*e = cp
}

// parseHTTPTime reads a date header's first value; zero if absent or invalid.
func parseHTTPTime(v []string) time.Time {
	if len(v) == 0 || v[0] == "" {
		return time.Time{}
	}
	t, _ := http.ParseTime(v[0])
	return t
}

// markPrivate keeps browsers and CDNs downstream from sharing a response
// to an authenticated request, unless the backend declared it public.
func markPrivate(hdr http.Header) {
	if len(hdr["Cache-Control"]) == 0 {
		hdr["Cache-Control"] = privateCC
		return
	}
	cc := strings.Join(hdr["Cache-Control"], ", ")
	lc := strings.ToLower(cc)
	if strings.Contains(lc, "public") || strings.Contains(lc, "private") || strings.Contains(lc, "no-store") {
		return
	}
	if cc == "" {
		hdr["Cache-Control"] = privateCC
		return
	}
	hdr["Cache-Control"] = []string{"private, " + cc}
}

var privateCC = []string{"private"}

// writeNotModified sends a 304 with the headers RFC 9110 §15.4.5 asks for
// (ETag, Last-Modified, Cache-Control, Vary, Expires, Date, …) and none that
// describe a body.
func writeNotModified(w http.ResponseWriter) {
	hdr := w.Header()
	for _, k := range []string{"Content-Type", "Content-Length", "Content-Encoding", "Content-Language", "Content-Range", "Transfer-Encoding"} {
		delete(hdr, k)
	}
	w.WriteHeader(http.StatusNotModified)
}

// --- writes ----------------------------------------------------------------

func (h *Handler) serveWrite(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	conditional := len(r.Header["If-Match"]) > 0 || len(r.Header["If-Unmodified-Since"]) > 0
	lockable := r.Method == http.MethodPut || r.Method == http.MethodPatch || r.Method == http.MethodDelete
	if lockable && !conditional && len(h.RequireIfMatch) > 0 && h.RequireIfMatch.Match(r) {
		return problem.Error(http.StatusPreconditionRequired, "if_match_required",
			"this resource changes only with optimistic locking: GET it first, then send If-Match with its ETag")
	}
	if lockable && conditional {
		return h.conditionalWrite(w, r, next)
	}
	hw := getHoldWriter(w, 0, never)
	defer putHoldWriter(hw)
	err := next.ServeHTTP(hw, r)
	h.invalidateAfter(r, w.Header(), hw.status)
	return err
}

func never(int, http.Header) bool { return false }

// conditionalWrite evaluates If-Match / If-Unmodified-Since for a backend
// that cannot, serialised per resource.
func (h *Handler) conditionalWrite(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	unlock := h.locks.lock(r.Host + "\x00" + r.URL.Path)
	defer unlock()

	cur := h.probe(r, next)
	known := cur.err == nil && (cur.status == http.StatusOK || cur.status == http.StatusNotFound || cur.status == http.StatusGone)
	if !known || cur.backendETag {
		// the backend decides (or we cannot know): forward as it is
		hw := getHoldWriter(w, 0, never)
		defer putHoldWriter(hw)
		err := next.ServeHTTP(hw, r)
		h.invalidateAfter(r, w.Header(), hw.status)
		return err
	}
	exists := cur.status == http.StatusOK
	if httpcond.Evaluate(r, exists, cur.etag, cur.lastModified) == httpcond.Failed {
		if exists {
			w.Header().Set("ETag", cur.etag)
		}
		return problem.Error(http.StatusPreconditionFailed, "",
			"the resource has changed since you read it (or no longer exists); GET it again and retry with its current ETag")
	}
	delete(r.Header, "If-Match")
	delete(r.Header, "If-Unmodified-Since")
	hold := func(status int, _ http.Header) bool {
		return status >= 200 && status < 300 && r.Method != http.MethodDelete && status != http.StatusNoContent
	}
	hw := getHoldWriter(w, h.MaxBody, hold)
	defer putHoldWriter(hw)
	err := next.ServeHTTP(hw, r)
	h.invalidateAfter(r, w.Header(), hw.status)
	if err != nil || !hw.held() {
		return err
	}
	// the write succeeded: learn the new representation's ETag, still under the lock
	if after := h.probe(r, next); after.err == nil && after.status == http.StatusOK && w.Header().Get("Etag") == "" {
		w.Header().Set("ETag", after.etag)
	}
	w.Header().Set("Content-Length", strconv.Itoa(hw.buf.Len()))
	w.WriteHeader(hw.status)
	_, err = w.Write(hw.buf.Bytes())
	return err
}

// probeResult is what the gateway learned from its own GET of a resource.
type probeResult struct {
	status       int
	etag         string
	backendETag  bool
	lastModified time.Time
	err          error
}

// probe GETs the resource that r targets, under r's identity.
func (h *Handler) probe(r *http.Request, next caddyhttp.Handler) probeResult {
	pr := r.Clone(r.Context())
	pr.Method = http.MethodGet
	pr.Body, pr.GetBody, pr.ContentLength = http.NoBody, nil, 0
	for _, k := range []string{"If-Match", "If-None-Match", "If-Modified-Since", "If-Unmodified-Since", "If-Range",
		"Content-Type", "Content-Length", "Content-Encoding", "Expect", "Transfer-Encoding"} {
		delete(pr.Header, k)
	}
	pw := &probeWriter{header: http.Header{}, max: h.MaxBody}
	res := probeResult{err: next.ServeHTTP(pw, pr)}
	res.status = pw.status
	if et := pw.header.Get("Etag"); et != "" {
		res.etag, res.backendETag = et, true
	} else if pw.status == http.StatusOK && !pw.overflow {
		res.etag = strongETag(pw.body.Bytes())
	} else if pw.overflow {
		res.err = fmt.Errorf("representation larger than max_body")
	}
	res.lastModified = parseHTTPTime(pw.header["Last-Modified"])
	return res
}

// invalidateAfter drops cached responses for the target, its collection
// and the Location / Content-Location on the same host after a successful
// unsafe request (RFC 9111 §4.4), whoever sent it.
func (h *Handler) invalidateAfter(r *http.Request, hdr http.Header, status int) {
	if h.store == nil || status < 200 || status >= 400 {
		return
	}
	h.store.invalidate(pathKey(r))
	if p := parentPath(r.URL.Path); p != "" {
		h.store.invalidate(r.Host + "\x00" + p)
	}
	for _, k := range []string{"Location", "Content-Location"} {
		v := hdr.Get(k)
		if v == "" {
			continue
		}
		u, err := r.URL.Parse(v)
		if err != nil || (u.Host != "" && !strings.EqualFold(u.Host, r.Host)) {
			continue
		}
		h.store.invalidate(r.Host + "\x00" + u.Path)
	}
}

// keyedLocks serialises conditional writes per resource; an entry lives
// only while someone holds or waits for it.
type keyedLocks struct {
	mu sync.Mutex
	m  map[string]*lockEntry
}

type lockEntry struct {
	mu   sync.Mutex
	refs int
}

func (k *keyedLocks) lock(key string) (unlock func()) {
	k.mu.Lock()
	e := k.m[key]
	if e == nil {
		e = new(lockEntry)
		k.m[key] = e
	}
	e.refs++
	k.mu.Unlock()
	e.mu.Lock()
	return func() {
		e.mu.Unlock()
		k.mu.Lock()
		if e.refs--; e.refs == 0 {
			delete(k.m, key)
		}
		k.mu.Unlock()
	}
}

// Interface guards
var (
	_ caddy.Provisioner           = (*Handler)(nil)
	_ caddy.Validator             = (*Handler)(nil)
	_ caddyhttp.MiddlewareHandler = (*Handler)(nil)
)
