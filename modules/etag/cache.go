package etag

import (
	"net/http"
	"net/textproto"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"

	"github.com/restgate/restgate/internal/canon"
	"github.com/restgate/restgate/internal/identity"
	"github.com/restgate/restgate/internal/metrics"
)

// This file is the shared cache: who an entry may serve, what is stored
// (RFC 9111 §3), for how long (§4.2), how it is refreshed (§4.3.4), and the
// store that bounds it by bytes.

// directives are parsed Cache-Control directives (RFC 9111 §5.2), names in
// lower case; a directive without a value maps to "".
type directives map[string]string

func parseCacheControl(h http.Header) directives {
	lines := h["Cache-Control"]
	if len(lines) == 0 {
		return nil
	}
	d := directives{}
	for _, line := range lines {
		for _, part := range strings.Split(line, ",") {
			part = textproto.TrimString(part)
			if part == "" {
				continue
			}
			name, val, _ := strings.Cut(part, "=")
			name = strings.ToLower(textproto.TrimString(name))
			val = strings.Trim(textproto.TrimString(val), `"`)
			if _, dup := d[name]; !dup { // the first occurrence counts
				d[name] = val
			}
		}
	}
	return d
}

func (d directives) has(name string) bool { _, ok := d[name]; return ok }

// seconds returns a delta-seconds directive; ok is false if it is absent or invalid.
func (d directives) seconds(name string) (time.Duration, bool) {
	v, ok := d[name]
	if !ok {
		return 0, false
	}
	return deltaSeconds(v)
}

// deltaSeconds reads delta-seconds (RFC 9111 §1.2.2), capped at 2^31.
func deltaSeconds(v string) (time.Duration, bool) {
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n < 0 {
		return 0, false
	}
	return time.Duration(min(n, 1<<31)) * time.Second, true
}

// principal is who a response may be served to.
type principal struct {
	kind string // classUser, classAnon or classShared
	// the user and the scopes of the key (a response may depend on
	// either), for classUser
	user, scopes string
	// the request carries an Authorization header the gateway did not check
	foreignAuth bool
}

// principal kinds in cache keys: a response is only ever served to the
// kind (and user and scopes) it was stored for.
const (
	classShared = "s" // public or s-maxage: deliberately shared (RFC 9111 §3.5)
	classAnon   = "a" // a response to an anonymous request
	classUser   = "u" // followed by the user and scopes: one principal's response
)

func principalOf(r *http.Request) principal {
	p := principal{kind: classAnon, foreignAuth: identity.ForeignAuthorization(r)}
	if user, scopes := identity.Principal(r); user != "" {
		p.kind, p.user, p.scopes = classUser, user, scopes
	}
	return p
}

func (p principal) authenticated() bool { return p.kind == classUser }

// cacheKey names one stored response exactly: the canonical host and
// escaped path, the query and the principal (see canon: a cache key never
// merges two targets a backend could tell apart).
func cacheKey(r *http.Request, p principal) string {
	var arr [256]byte // on the stack for the usual key: one allocation, the key's
	b := canon.AppendCacheTarget(arr[:0], r)
	b = append(append(append(append(b, 0), r.URL.RawQuery...), 0), p.kind...)
	if p.kind == classUser {
		b = append(append(append(b, p.user...), 0), p.scopes...)
	}
	return string(b)
}

// lookup finds an entry for r: one stored for this principal, else a
// deliberately shared one. A request with a credential the gateway did not
// check is answered only from shared entries (RFC 9111 §3.5).
func (h *Handler) lookup(r *http.Request, p principal) *entry {
	candidates := [...]principal{p, {kind: classShared}}
	from := 0
	if p.foreignAuth {
		from = 1
	}
	for _, c := range candidates[from:] {
		if e := h.store.get(cacheKey(r, c)); e != nil && e.varyMatches(r) {
			return e
		}
	}
	return nil
}

// Whether a stored entry may answer.
const (
	useFresh         = iota
	useStale         // it must be revalidated: it is stale
	useClientRefused // it must be revalidated: the client asked (no-cache, max-age)
)

// usable says whether e may answer without contacting the backend.
func (h *Handler) usable(e *entry, reqCC directives) int {
	if reqCC.has("no-cache") {
		return useClientRefused
	}
	age := e.age(h.now())
	if maxAge, ok := reqCC.seconds("max-age"); ok && age > maxAge {
		return useClientRefused
	}
	if age < e.freshFor {
		return useFresh
	}
	return useStale
}

// fill is one trip upstream whose response may be stored: when the request
// went (requested) and the response came back (received), for the age
// (RFC 9111 §4.2.3), and the store's invalidation generation before it
// went, so that a response a concurrent write made stale is not stored.
type fill struct {
	requested, received time.Time
	gen                 uint64
}

// maybeStore stores a response if RFC 9111 §3 allows it and no write
// invalidated the resource since the fill began, and says whether it did.
func (h *Handler) maybeStore(r *http.Request, who principal, status int, hdr http.Header, body []byte,
	etag string, generated bool, lastMod time.Time, f fill) bool {
	if status != http.StatusOK || len(hdr["Set-Cookie"]) > 0 {
		return false
	}
	respCC := cacheDirectives(hdr) // CDN-Cache-Control first (RFC 9213)
	if respCC.has("no-store") || respCC.has("private") {
		return false
	}
	// §3.5: a response to a request with a credential the gateway did not
	// check is stored only when the backend explicitly allows a shared
	// cache to reuse it, and then it is shared
	explicitlyShared := respCC.has("public") || respCC.has("s-maxage")
	if who.foreignAuth && !explicitlyShared && !respCC.has("must-revalidate") {
		return false
	}
	var vary []string
	for _, line := range hdr["Vary"] {
		for rest := line; rest != ""; {
			var name string
			name, rest, _ = strings.Cut(rest, ",")
			name = textproto.TrimString(name)
			if name == "*" {
				return false
			}
			if name != "" {
				vary = append(vary, http.CanonicalHeaderKey(name))
			}
		}
	}
	freshFor, ok := h.freshness(respCC, hdr, f.received)
	if !ok {
		return false
	}
	owner := who
	if explicitlyShared || who.foreignAuth {
		owner = principal{kind: classShared}
	}
	e := &entry{
		key: cacheKey(r, owner), pathKey: canon.ResourceKey(r),
		status: status, header: storedHeader(hdr), body: append([]byte(nil), body...),
		etag: etag, generated: generated, lastModified: lastMod,
		stored: f.received, initialAge: initialAge(hdr, f.requested, f.received), freshFor: freshFor, vary: vary,
	}
	e.header["Content-Length"] = []string{strconv.Itoa(len(body))}
	e.privateCC, e.privateChanges = privateCacheControl(e.header)
	for _, name := range vary {
		e.varyValues = append(e.varyValues, strings.Join(r.Header.Values(name), ","))
	}
	e.size = e.footprint()
	return h.store.put(e, f.gen)
}

// freshness is how long a response stays fresh (RFC 9111 §4.2.1), and
// whether it may be stored at all.
func (h *Handler) freshness(respCC directives, hdr http.Header, received time.Time) (time.Duration, bool) {
	if respCC.has("no-cache") {
		return 0, true // stored, but every use revalidates
	}
	if d, ok := respCC.seconds("s-maxage"); ok {
		return d, true
	}
	if d, ok := respCC.seconds("max-age"); ok {
		return d, true
	}
	if exp := hdr["Expires"]; len(exp) > 0 {
		// §5.3: an invalid Expires (or several) means already expired
		t, ok := parseHTTPDate(exp)
		if !ok {
			return 0, true
		}
		date, ok := parseHTTPDate(hdr["Date"])
		if !ok {
			date = received
		}
		return max(t.Sub(date), 0), true
	}
	if h.Cache.DefaultTTL > 0 {
		return time.Duration(h.Cache.DefaultTTL), true
	}
	return 0, false
}

// initialAge is corrected_initial_age (RFC 9111 §4.2.3): the larger of the
// apparent age (received − Date) and the Age the response came with plus
// the time it took to arrive.
func initialAge(hdr http.Header, requested, received time.Time) time.Duration {
	var apparent time.Duration
	if date, ok := parseHTTPDate(hdr["Date"]); ok {
		apparent = max(received.Sub(date), 0)
	}
	corrected := max(received.Sub(requested), 0)
	if age, ok := ageValue(hdr); ok {
		corrected += age
	}
	return max(apparent, corrected)
}

// ageValue reads Age; a list (`7200, 0`) is read by its first member
// (§5.1).
func ageValue(hdr http.Header) (time.Duration, bool) {
	v := hdr["Age"]
	if len(v) == 0 {
		return 0, false
	}
	first, _, _ := strings.Cut(v[0], ",")
	return deltaSeconds(textproto.TrimString(first))
}

// refresh returns the entry that a 304 makes of a stored one (RFC 9111
// §3.2, §4.3.4): every header field the 304 carries replaces the stored
// one, but for those never stored and Content-Length. The stored entry is
// never changed in place (other requests are reading it), and the fresh
// one is stored only if no write invalidated the resource since the fill
// began.
func (h *Handler) refresh(e *entry, hdr http.Header, f fill) *entry {
	fresh := e.header.Clone()
	for k, v := range hdr {
		if k == "Content-Length" || !storable(k) {
			continue
		}
		fresh[k] = slices.Clip(slices.Clone(v))
	}
	cp := *e
	cp.header, cp.stored, cp.initialAge = fresh, f.received, initialAge(hdr, f.requested, f.received)
	if et := fresh.Get("Etag"); et != "" && !e.generated {
		cp.etag = et
	}
	cp.lastModified = parseHTTPTime(fresh["Last-Modified"])
	cp.privateCC, cp.privateChanges = privateCacheControl(fresh)
	if freshFor, ok := h.freshness(cacheDirectives(fresh), fresh, f.received); ok {
		cp.freshFor = freshFor
	}
	cp.size = cp.footprint()
	h.store.put(&cp, f.gen)
	return &cp
}

// parseHTTPDate reads an HTTP-date (RFC 9110 §5.6.7) strictly: one field
// line in exactly one of the three formats. Go's http.ParseTime accepts
// more (two spaces, one-digit hours), which §5.3 asks caches to treat as
// invalid.
func parseHTTPDate(v []string) (time.Time, bool) {
	if len(v) != 1 {
		return time.Time{}, false
	}
	s := v[0]
	for _, layout := range httpDateLayouts {
		if t, err := time.Parse(layout, s); err == nil && t.Format(layout) == s {
			return t, true
		}
	}
	return time.Time{}, false
}

var httpDateLayouts = []string{
	"Mon, 02 Jan 2006 15:04:05 GMT",  // IMF-fixdate
	"Monday, 02-Jan-06 15:04:05 GMT", // obsolete RFC 850
	"Mon Jan _2 15:04:05 2006",       // obsolete asctime
}

// parseHTTPTime reads a date header's first value leniently (validators
// only); zero if absent or invalid.
func parseHTTPTime(v []string) time.Time {
	if len(v) == 0 || v[0] == "" {
		return time.Time{}
	}
	t, _ := http.ParseTime(v[0])
	return t
}

// entry is one stored response. It is never changed once stored.
type entry struct {
	key, pathKey string
	status       int
	header       http.Header // as received, without the fields never stored
	body         []byte
	etag         string
	generated    bool // the gateway made the ETag; the backend knows nothing of it
	lastModified time.Time
	stored       time.Time     // response_time
	initialAge   time.Duration // corrected_initial_age
	freshFor     time.Duration
	vary         []string // canonical request header names
	varyValues   []string
	size         int64
	// the Cache-Control an authenticated user's copy leaves with (§5.2.2.7),
	// computed once: privateChanges is false when the stored one serves
	privateCC      []string
	privateChanges bool
}

// entryOverhead is what an entry costs beyond its strings and body: the
// struct, its header map, the LRU's list element and map slot, and the
// path index's slots, measured with the heap profile (see TestCacheMemory).
const entryOverhead = 1024

// footprint is the bytes an entry holds, all told: what the byte bound
// counts.
func (e *entry) footprint() int64 {
	n := int64(len(e.body) + 3*len(e.key) + 2*len(e.pathKey) + len(e.etag) + entryOverhead)
	for k, v := range e.header {
		n += int64(len(k)) + 48
		for _, s := range v {
			n += int64(len(s)) + 16
		}
	}
	for i := range e.vary {
		n += int64(len(e.vary[i]) + len(e.varyValues[i]) + 32)
	}
	for _, s := range e.privateCC {
		n += int64(len(s)) + 16
	}
	return n
}

// age is current_age (RFC 9111 §4.2.3).
func (e *entry) age(now time.Time) time.Duration {
	return e.initialAge + max(now.Sub(e.stored), 0)
}

// varyMatches reports whether r selects this entry (RFC 9111 §4.1).
func (e *entry) varyMatches(r *http.Request) bool {
	for i, name := range e.vary {
		if strings.Join(r.Header.Values(name), ",") != e.varyValues[i] {
			return false
		}
	}
	return true
}

// store is an in-memory cache bounded by the total footprint of its
// entries: a golang-lru/v2 LRU does the recency bookkeeping, and the oldest
// entries are dropped until the total fits. An index by resource key finds
// every entry (all spellings, queries and principals) to invalidate.
//
// A fill (a miss or a revalidation) that went upstream before a write's
// invalidation and came back after it carries the old representation: it
// must not be stored. Every invalidation takes the next generation number
// and remembers it per resource key (in a bounded LRU: what it forgets
// raises a floor, so forgetting only refuses more fills); a fill notes the
// generation when it starts (ticket) and is stored only if its resource
// was not invalidated since.
type store struct {
	mu       sync.Mutex
	entries  *lru.Cache[string, *entry]
	byPath   map[string]map[string]struct{}
	bytes    int64
	maxBytes int64

	gen         uint64                     // the newest invalidation's generation
	invalidated *lru.Cache[string, uint64] // resource key → its newest invalidation's generation
	floor       uint64                     // the newest generation invalidated no longer remembers
}

// maxInvalidated bounds how many resource keys' invalidation generations
// are remembered (about 100 bytes each).
const maxInvalidated = 1 << 16

func newStore(maxBytes int64) *store {
	s := &store{byPath: map[string]map[string]struct{}{}, maxBytes: maxBytes}
	// the count bound is not the real bound (bytes are); it only keeps a
	// flood of tiny entries from growing the index without limit
	s.entries, _ = lru.NewWithEvict[string, *entry](1<<20, s.evicted)
	s.invalidated, _ = lru.NewWithEvict[string, uint64](maxInvalidated, func(_ string, gen uint64) {
		s.floor = max(s.floor, gen) // runs with s.mu held
	})
	return s
}

// ticket is the generation a fill starts at: pass it to put.
func (s *store) ticket() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.gen
}

// stale reports whether a fill that started at generation since may have
// read pathKey before an invalidation; s.mu is held.
func (s *store) stale(pathKey string, since uint64) bool {
	if s.floor > since {
		return true
	}
	gen, ok := s.invalidated.Peek(pathKey)
	return ok && gen > since
}

// evicted keeps the byte count and the path index in step; it runs with
// s.mu held (every call that can evict holds it).
func (s *store) evicted(key string, e *entry) {
	s.bytes -= e.size
	metrics.CacheBytes.Sub(float64(e.size))
	if keys := s.byPath[e.pathKey]; keys != nil {
		delete(keys, key)
		if len(keys) == 0 {
			delete(s.byPath, e.pathKey)
		}
	}
}

func (s *store) get(key string) *entry {
	s.mu.Lock()
	defer s.mu.Unlock()
	e, _ := s.entries.Get(key)
	return e
}

// put stores e, filled since generation since (a ticket), and says
// whether it did: not if it is larger than the whole cache, or its
// resource was invalidated since the fill began.
func (s *store) put(e *entry, since uint64) bool {
	if e.size > s.maxBytes {
		return false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stale(e.pathKey, since) {
		metrics.CacheStaleFill.Inc()
		return false
	}
	s.entries.Remove(e.key)
	s.entries.Add(e.key, e)
	s.bytes += e.size
	metrics.CacheBytes.Add(float64(e.size))
	metrics.CacheStored.Inc()
	keys := s.byPath[e.pathKey]
	if keys == nil {
		keys = map[string]struct{}{}
		s.byPath[e.pathKey] = keys
	}
	keys[e.key] = struct{}{}
	for s.bytes > s.maxBytes {
		if _, _, ok := s.entries.RemoveOldest(); !ok {
			break
		}
		metrics.CacheEvicted.Inc()
	}
	return true
}

// invalidate drops every entry for a resource key: all spellings, queries
// and principals; a fill of it in flight will not be stored.
func (s *store) invalidate(pathKey string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.gen++
	s.invalidated.Add(pathKey, s.gen)
	for key := range s.byPath[pathKey] {
		s.entries.Remove(key)
		metrics.CacheInvalidated.Inc()
	}
}

// purge drops every entry (its bytes leave the cache_bytes gauge); no fill
// in flight will be stored.
func (s *store) purge() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.gen++
	s.floor = s.gen
	s.entries.Purge()
}

func (s *store) len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.entries.Len()
}

// notStored are the fields a stored response does not keep (RFC 9111 §3.1:
// hop-by-hop fields), and those the gateway's own modules set on every
// response, which belong to the request that is being answered.
var notStored = []string{
	"Connection", "Keep-Alive", "Proxy-Connection", "Transfer-Encoding", "Upgrade", "Te", "Trailer",
	"Proxy-Authenticate", "Proxy-Authentication-Info",
	"Set-Cookie", "Age", "X-Request-Id", "Ratelimit", "Ratelimit-Policy", "Retry-After",
	"X-Ratelimit-Limit", "X-Ratelimit-Remaining", "X-Ratelimit-Reset", "Alt-Svc", "Server",
	"Strict-Transport-Security",
}

func storable(name string) bool {
	return !slices.Contains(notStored, name) && !strings.HasPrefix(name, "Access-Control-")
}

func storedHeader(h http.Header) http.Header {
	out := make(http.Header, len(h))
	for k, v := range h {
		if storable(k) {
			out[k] = slices.Clip(slices.Clone(v))
		}
	}
	return out
}

// parentPath is the collection a resource path belongs to: /v1/events/E1 →
// /v1/events. The root has none.
func parentPath(p string) string {
	p = strings.TrimSuffix(p, "/")
	i := strings.LastIndexByte(p, '/')
	if i <= 0 {
		return ""
	}
	return p[:i]
}
