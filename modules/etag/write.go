package etag

import (
	"bytes"
	"context"
	"errors"
	"io"
	"maps"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/cespare/xxhash/v2"
	"go.uber.org/zap"

	"github.com/restgate/restgate/internal/canon"
	"github.com/restgate/restgate/internal/hold"
	"github.com/restgate/restgate/internal/httpcond"
	"github.com/restgate/restgate/internal/trace"
	"github.com/restgate/restgate/modules/problem"
	"github.com/restgate/restgate/modules/redisapp"
)

// requiresIfMatch reports whether require_if_match covers r's resource.
// The paths are matched as sent and as the resource key spells them (no
// trailing slash, no `;params`, lower case: /v1/config/ and
// /v1/config;v=1 are /v1/config, under one lock), so that no other
// spelling of a resource is a way around the 428.
func (h *Handler) requiresIfMatch(r *http.Request) bool {
	if len(h.RequireIfMatch) == 0 {
		return false
	}
	if h.RequireIfMatch.Match(r) {
		return true
	}
	key := canon.ResourceKey(r)
	if key == r.URL.Path {
		return false
	}
	u := *r.URL
	u.Path, u.RawPath = key, ""
	keyed := *r
	keyed.URL = &u
	return h.RequireIfMatch.Match(&keyed)
}

// serveWrite handles every unsafe method: a conditional PUT, PATCH or
// DELETE is decided under the resource's lock; anything else is forwarded.
// A successful write invalidates what the cache holds for the resource.
func (h *Handler) serveWrite(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	conditional := len(r.Header["If-Match"]) > 0 || len(r.Header["If-None-Match"]) > 0 ||
		len(r.Header["If-Unmodified-Since"]) > 0
	lockable := r.Method == http.MethodPut || r.Method == http.MethodPatch || r.Method == http.MethodDelete
	if lockable && !conditional && h.requiresIfMatch(r) {
		return problem.Error(http.StatusPreconditionRequired, "if_match_required",
			"this resource changes only with optimistic locking: GET it first, then send If-Match with its ETag")
	}
	if lockable && conditional {
		return h.conditionalWrite(w, r, next)
	}
	hw := hold.Get(w, 0, hold.Stream, holdNothing)
	defer hold.Put(hw)
	err := next.ServeHTTP(hw, r)
	h.invalidateAfter(r, w.Header(), hw.Status())
	return err
}

func holdNothing(int, http.Header) bool { return false }

// conditionalWrite decides If-Match, If-None-Match and If-Unmodified-Since
// for one resource at a time (see Handler).
func (h *Handler) conditionalWrite(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	// the body first: a slow upload must never hold the lock
	if err := h.bufferBody(r); err != nil {
		return err
	}
	// next runs up to three times: each run starts from the route groups
	// matched so far, as the first would
	groups := snapshotRouteGroups(r)
	lockStart := trace.Start(r.Context())
	unlock, lost, err := lockWithLoss(h.locks, r.Context(), canon.ResourceKey(r), time.Duration(h.LockTimeout))
	trace.Lock(r.Context(), lockStart, err)
	if errors.Is(err, errLockUnavailable) {
		if retry := h.redis.RetryInFor(redisapp.PurposeLock); retry > 0 {
			w.Header().Set("Retry-After", strconv.Itoa(int(retry.Seconds())+1))
		}
		return problem.Error(http.StatusServiceUnavailable, "lock_unavailable",
			"the gateway cannot coordinate this write with the other gateways right now (their shared lock is unreachable), so nothing was changed; retry shortly")
	}
	if err != nil {
		return problem.Error(http.StatusServiceUnavailable, "resource_busy",
			"another conditional write to this resource is still in progress; retry shortly (nothing was changed)")
	}
	defer unlock()

	cur := h.probe(groups.fresh(r), next)
	if !cur.known() {
		if c := h.logger.Check(zap.WarnLevel, "cannot read the resource to check a precondition; refusing the write"); c != nil {
			c.Write(zap.String("request_id", problem.RequestIDFromRequest(r)), zap.String("uri", r.URL.Path),
				zap.Int("probe_status", cur.status), zap.Error(cur.err))
		}
		return problem.Error(http.StatusServiceUnavailable, "precondition_unverifiable",
			"the gateway could not read the resource's current state to check the precondition, so nothing was changed; retry later")
	}
	exists := cur.status == http.StatusOK
	if httpcond.Evaluate(r, exists, cur.etag, cur.lastModified) == httpcond.Failed {
		if exists {
			w.Header().Set("ETag", cur.etag)
		}
		return problem.Error(http.StatusPreconditionFailed, "",
			"the resource has changed since you read it (or its existence differs from what the request expects); GET it again and retry with its current ETag")
	}
	if !cur.backendETag {
		// the backend cannot check validators it never made
		delete(r.Header, "If-Match")
		delete(r.Header, "If-None-Match")
		delete(r.Header, "If-Unmodified-Since")
	}
	if lost() {
		return problem.Error(http.StatusServiceUnavailable, "lock_lost",
			"the gateway lost its hold on this resource's shared lock before writing, so nothing was changed; retry shortly")
	}
	hw := hold.Get(w, h.MaxBody, hold.Stream, heldWrite(r.Method))
	defer hold.Put(hw)
	err = next.ServeHTTP(hw, groups.fresh(r))
	h.invalidateAfter(r, w.Header(), hw.Status())
	if err != nil || !hw.Held() {
		return err
	}
	// the write succeeded: learn the new representation's ETag, still under the lock
	if w.Header().Get("Etag") == "" {
		if after := h.probe(groups.fresh(r), next); after.err == nil && after.status == http.StatusOK {
			w.Header().Set("ETag", after.etag)
		}
	}
	w.Header().Set("Content-Length", strconv.Itoa(len(hw.Body())))
	w.WriteHeader(hw.Status())
	_, err = w.Write(hw.Body())
	return err
}

// routeGroupsKey is where Caddy keeps, per request, the route groups
// (mutually exclusive `handle` blocks) that have matched: a second run of
// next through the same groups would find them taken and skip them.
var routeGroupsKey = caddy.CtxKey("route_group")

type routeGroups map[string]struct{}

// snapshotRouteGroups copies the groups matched before this handler.
func snapshotRouteGroups(r *http.Request) routeGroups {
	g, _ := r.Context().Value(routeGroupsKey).(map[string]struct{})
	return maps.Clone(g)
}

// fresh returns r with its own copy of the snapshot, for one run of next.
func (g routeGroups) fresh(r *http.Request) *http.Request {
	if g == nil {
		return r
	}
	return r.WithContext(context.WithValue(r.Context(), routeGroupsKey, map[string]struct{}(maps.Clone(g))))
}

// heldWrite holds a successful write's response, which will carry the new
// ETag; a DELETE's has no representation.
func heldWrite(method string) func(int, http.Header) bool {
	if method == http.MethodDelete {
		return holdNothing
	}
	return func(status int, _ http.Header) bool {
		return status >= 200 && status < 300 && status != http.StatusNoContent
	}
}

// bufferBody reads a conditional write's body (at most MaxBody) before the
// lock is taken, so that the lock is held for the backend's time only.
func (h *Handler) bufferBody(r *http.Request) error {
	if r.Body == nil || r.Body == http.NoBody {
		return nil
	}
	if r.ContentLength > int64(h.MaxBody) {
		return tooLarge(h.MaxBody)
	}
	b, err := io.ReadAll(io.LimitReader(r.Body, int64(h.MaxBody)+1))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return caddyhttp.Error(http.StatusRequestEntityTooLarge, err)
		}
		return caddyhttp.Error(http.StatusBadRequest, err)
	}
	if len(b) > h.MaxBody {
		return tooLarge(h.MaxBody)
	}
	_ = r.Body.Close()
	r.Body = io.NopCloser(bytes.NewReader(b))
	r.ContentLength = int64(len(b))
	r.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil }
	return nil
}

func tooLarge(limit int) error {
	return problem.Error(http.StatusRequestEntityTooLarge, "",
		"a conditional write's body may be at most "+strconv.Itoa(limit)+" bytes (api_etag max_body)")
}

// probeResult is what the gateway learned from its own GET of a resource.
type probeResult struct {
	status       int
	etag         string // the backend's, or one hashed from the body
	backendETag  bool
	lastModified time.Time
	err          error
}

// known reports whether the probe says what the resource is: there (200)
// or not (404, 410). Anything else leaves the precondition undecidable.
func (p probeResult) known() bool {
	return p.err == nil && (p.status == http.StatusOK || p.status == http.StatusNotFound || p.status == http.StatusGone)
}

// probe GETs the resource that r targets, under r's identity. A body
// without an ETag is hashed as it streams, whatever its size.
func (h *Handler) probe(r *http.Request, next caddyhttp.Handler) probeResult {
	pr := r.Clone(r.Context())
	pr.Method = http.MethodGet
	pr.Body, pr.GetBody, pr.ContentLength = http.NoBody, nil, 0
	for _, k := range []string{"If-Match", "If-None-Match", "If-Modified-Since", "If-Unmodified-Since", "If-Range",
		"Content-Type", "Content-Length", "Content-Encoding", "Expect", "Transfer-Encoding", "Idempotency-Key"} {
		delete(pr.Header, k)
	}
	pw := &probeWriter{header: http.Header{}}
	res := probeResult{err: next.ServeHTTP(pw, pr)}
	res.status = pw.status
	if et := pw.header.Get("Etag"); et != "" {
		res.etag, res.backendETag = et, true
	} else if pw.status == http.StatusOK {
		res.etag = formatETag(pw.hash.Sum64())
	}
	res.lastModified = parseHTTPTime(pw.header["Last-Modified"])
	return res
}

// probeWriter takes a whole response that is never sent to the client:
// its status and headers, and its body's hash.
type probeWriter struct {
	header http.Header
	status int
	hash   xxhash.Digest
}

func (pw *probeWriter) Header() http.Header { return pw.header }

func (pw *probeWriter) WriteHeader(status int) {
	if pw.status == 0 && status >= 200 {
		pw.status = status
	}
}

func (pw *probeWriter) Write(p []byte) (int, error) {
	if pw.status == 0 {
		pw.status = http.StatusOK
	}
	return pw.hash.Write(p)
}

func (pw *probeWriter) Flush() {}

// invalidateAfter drops cached responses for the target, its collection
// and the Location / Content-Location after a successful unsafe request
// (RFC 9111 §4.4), whoever sent it. Every key is a resource key (see
// canon): every spelling of the resource, on any host, is dropped. Over-
// invalidating a Location on another host only drops more; RFC 9111 asks a
// cache not to let a backend invalidate another origin's responses, and
// every backend behind a gateway is the gateway's own.
func (h *Handler) invalidateAfter(r *http.Request, hdr http.Header, status int) {
	if h.store == nil || status < 200 || status >= 400 {
		return
	}
	keys := make([]string, 0, 4)
	rk := canon.ResourceKey(r)
	keys = append(keys, rk)
	if p := parentPath(rk); p != "" {
		keys = append(keys, p)
	}
	for _, field := range []string{"Location", "Content-Location"} {
		v := hdr.Get(field)
		if v == "" {
			continue
		}
		u, err := r.URL.Parse(v)
		if err != nil {
			continue
		}
		if k := canon.ResourcePath(u.Path); !slices.Contains(keys, k) {
			keys = append(keys, k)
		}
	}
	for _, k := range keys {
		h.store.invalidate(k)
	}
	h.publishInvalidation(r.Context(), keys)
}

// keyedLocks serialises conditional writes per resource; an entry lives
// only while someone holds or waits for it.
type keyedLocks struct {
	mu sync.Mutex
	m  map[string]*lockEntry
}

type lockEntry struct {
	held chan struct{} // one slot: full while the lock is held
	refs int
}

// lock takes key's lock, waiting at most timeout (and no longer than ctx).
func (k *keyedLocks) lock(ctx context.Context, key string, timeout time.Duration) (unlock func(), err error) {
	k.mu.Lock()
	e := k.m[key]
	if e == nil {
		e = &lockEntry{held: make(chan struct{}, 1)}
		k.m[key] = e
	}
	e.refs++
	k.mu.Unlock()
	release := func() {
		k.mu.Lock()
		if e.refs--; e.refs == 0 {
			delete(k.m, key)
		}
		k.mu.Unlock()
	}
	select {
	case e.held <- struct{}{}:
	default:
		t := time.NewTimer(timeout)
		defer t.Stop()
		select {
		case e.held <- struct{}{}:
		case <-t.C:
			release()
			return nil, context.DeadlineExceeded
		case <-ctx.Done():
			release()
			return nil, ctx.Err()
		}
	}
	return func() {
		<-e.held
		release()
	}, nil
}
