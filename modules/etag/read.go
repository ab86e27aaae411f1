package etag

import (
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/cespare/xxhash/v2"

	"github.com/restgate/restgate/internal/fieldvalue"
	"github.com/restgate/restgate/internal/hold"
	"github.com/restgate/restgate/internal/httpcond"
	"github.com/restgate/restgate/internal/metrics"
	"github.com/restgate/restgate/internal/trace"
)

// Our Cache-Status entries (RFC 9211 §2), added after any upstream cache's.
const (
	statusHit            = "restgate; hit"
	statusMiss           = "restgate; fwd=uri-miss"
	statusMissStored     = "restgate; fwd=uri-miss; stored"
	statusRequest        = "restgate; fwd=request"
	statusRequest304     = "restgate; fwd=request; fwd-status=304"
	statusStale          = "restgate; fwd=stale"
	statusStaleStored    = "restgate; fwd=stale; fwd-status=200; stored"
	statusStale304       = "restgate; fwd=stale; fwd-status=304"
	statusRequestRefresh = "restgate; fwd=request; fwd-status=200; stored"
)

// statusValues are the Cache-Status values of a response no upstream cache
// marked, one per entry above: shared, clipped, never changed in place.
var statusValues = func() map[string][]string {
	m := map[string][]string{}
	for _, s := range []string{statusHit, statusMiss, statusMissStored, statusRequest, statusRequest304,
		statusStale, statusStaleStored, statusStale304, statusRequestRefresh} {
		m[s] = []string{s}
	}
	return m
}()

// ageValues are the Age values of the first ten minutes, made once: a hit
// on a fresh entry takes its Age from here (shared, clipped, never changed
// in place).
var ageValues = func() [600][]string {
	var a [600][]string
	for i := range a {
		a[i] = []string{strconv.Itoa(i)}
	}
	return a
}()

// ageField is the Age field's value for an entry age old.
func ageField(age time.Duration) []string {
	if s := int64(age / time.Second); s >= 0 && s < int64(len(ageValues)) {
		return ageValues[s]
	}
	return []string{strconv.FormatInt(int64(age/time.Second), 10)}
}

// serveRead answers GET and HEAD: from the cache when it may, else from
// upstream, holding a 200 that fits MaxBody to give it an ETag, answer the
// client's conditions and store it.
func (h *Handler) serveRead(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	var (
		reqCC directives
		stale *entry
		fwd   = fwdMiss // why the request goes upstream
	)
	who := principalOf(r)
	if h.store != nil {
		reqCC = parseCacheControl(r.Header)
		if reqCC.has("no-store") {
			fwd = fwdRequest
		} else if e := h.lookup(r, who); e != nil {
			switch h.usable(e, reqCC) {
			case useFresh:
				metrics.CacheHit.Inc()
				trace.Cache(r.Context(), trace.CacheHit)
				return h.serveEntry(w, r, e, who, statusHit)
			case useClientRefused:
				stale, fwd = e, fwdRequest
			default:
				stale, fwd = e, fwdStale
			}
		}
		if fwd == fwdMiss {
			metrics.CacheMiss.Inc()
		}
		trace.Cache(r.Context(), [...]string{fwdMiss: trace.CacheMiss, fwdStale: trace.CacheStale, fwdRequest: trace.CacheBypass}[fwd])
	}

	// ask upstream with a copy: the handlers behind this one may change
	// the request in place (rewrite, handle_path's prefix, request_header),
	// and the cache key, the Vary values and the client's conditions are
	// read from the client's request once upstream has answered. HEAD goes
	// as GET so that its ETag is the GET's, and the client's validators
	// stay here when the cache needs a full response.
	upstream := r.Clone(r.Context())
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
	revalidating := stale != nil
	hw := hold.Get(w, h.MaxBody, hold.Stream, func(status int, hdr http.Header) bool {
		held := h.holdable(status, hdr, revalidating)
		if !held && who.authenticated() {
			markPrivate(hdr)
		}
		return held
	})
	defer hold.Put(hw)
	var f fill
	if h.store != nil {
		f.gen = h.store.ticket()
	}
	f.requested = h.now()
	if err := next.ServeHTTP(hw, upstream); err != nil || !hw.Held() {
		return err
	}
	f.received = h.now()
	hdr := w.Header()
	if hw.Status() == http.StatusNotModified && revalidating {
		status := statusStale304
		if fwd == fwdRequest {
			status = statusRequest304
		}
		metrics.CacheRevalidated.Inc()
		return h.serveEntry(w, r, h.refresh(stale, hdr, f), who, status)
	}

	body := hw.Body()
	etag := hdr.Get("Etag")
	generated := etag == ""
	if generated {
		// the field's value and its string in one allocation
		v := etagField(xxhash.Sum64(body))
		etag, hdr["Etag"] = v[0], v
	}
	lastMod := parseHTTPTime(hdr["Last-Modified"])
	if h.store != nil {
		stored := !reqCC.has("no-store") &&
			h.maybeStore(r, who, hw.Status(), hdr, body, etag, generated, lastMod, f)
		addCacheStatus(hdr, cacheStatus(fwd, stored))
	}
	if who.authenticated() {
		markPrivate(hdr)
	}
	if httpcond.Evaluate(r, true, etag, lastMod) == httpcond.NotModified {
		writeNotModified(w)
		return nil
	}
	if cl := hdr["Content-Length"]; len(cl) != 1 || !isLength(cl[0], len(body)) {
		hdr["Content-Length"] = []string{strconv.Itoa(len(body))}
	}
	w.WriteHeader(hw.Status())
	if r.Method != http.MethodHead {
		_, err := w.Write(body)
		return err
	}
	return nil
}

// isLength reports whether a Content-Length value is n, without allocating
// (the upstream's own length is kept when it is the held body's).
func isLength(v string, n int) bool {
	l, err := strconv.Atoi(v)
	return err == nil && l == n
}

// Why a read went upstream.
const (
	fwdMiss    = iota // nothing stored
	fwdStale          // stored, but stale
	fwdRequest        // the client's Cache-Control asked for it
)

func cacheStatus(fwd int, stored bool) string {
	switch {
	case fwd == fwdMiss && stored:
		return statusMissStored
	case fwd == fwdMiss:
		return statusMiss
	case fwd == fwdStale && stored:
		return statusStaleStored
	case fwd == fwdStale:
		return statusStale
	case stored:
		return statusRequestRefresh
	}
	return statusRequest
}

// addCacheStatus appends our entry after any upstream cache's (RFC 9211 §2).
func addCacheStatus(hdr http.Header, status string) {
	if old := hdr["Cache-Status"]; len(old) > 0 {
		hdr["Cache-Status"] = append(old[:len(old):len(old)], status)
		return
	}
	if v, ok := statusValues[status]; ok {
		hdr["Cache-Status"] = v
		return
	}
	hdr["Cache-Status"] = []string{status}
}

// holdable: a 200 (and, when revalidating, a 304) that is not an event
// stream and whose declared length fits is held back.
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

// serveEntry answers from a stored response: its status, headers (the
// origin's Date among them) and body, with Age and Cache-Status.
func (h *Handler) serveEntry(w http.ResponseWriter, r *http.Request, e *entry, who principal, status string) error {
	hdr := w.Header()
	for k, v := range e.header {
		hdr[k] = v // shared, clipped slices: nobody appends to them in place
	}
	hdr["Age"] = ageField(e.age(h.now()))
	addCacheStatus(hdr, status)
	if who.authenticated() && e.privateChanges {
		hdr["Cache-Control"] = e.privateCC
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

// strongETag is a strong validator of body: 16 hex digits of xxHash64.
func strongETag(body []byte) string { return formatETag(xxhash.Sum64(body)) }

func formatETag(sum uint64) string {
	b := appendETag(sum)
	return string(b[:])
}

// etagField is formatETag's value as a header field's value, in one
// allocation (internal/fieldvalue).
func etagField(sum uint64) []string {
	b := appendETag(sum)
	return fieldvalue.Of(b[:])
}

func appendETag(sum uint64) [18]byte {
	var b [18]byte
	b[0], b[17] = '"', '"'
	const hex = "0123456789abcdef"
	for i := 16; i >= 1; i-- {
		b[i] = hex[sum&15]
		sum >>= 4
	}
	return b
}

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

// markPrivate keeps browsers' and CDNs' shared caches downstream from
// storing a response to an authenticated request (RFC 9111 §5.2.2.7): it
// adds `private` unless the backend declared the response `public`,
// `private` or `no-store` already. It changes only what leaves the
// gateway: the gateway's own cache decides on the backend's directives
// (stored per principal, or shared when `public` or `s-maxage`).
func markPrivate(hdr http.Header) {
	if v, change := privateCacheControl(hdr); change {
		hdr["Cache-Control"] = v
	}
}

// privateCacheControl is the Cache-Control that markPrivate gives hdr,
// and whether it differs from hdr's own. A stored entry computes it once.
func privateCacheControl(hdr http.Header) ([]string, bool) {
	if len(hdr["Cache-Control"]) == 0 {
		return privateCC, true
	}
	d := parseCacheControl(hdr)
	if d.has("public") || d.has("private") || d.has("no-store") {
		return nil, false
	}
	cc := strings.Join(hdr["Cache-Control"], ", ")
	if strings.TrimSpace(cc) == "" {
		return privateCC, true
	}
	return []string{"private, " + cc}, true
}

var privateCC = []string{"private"}
