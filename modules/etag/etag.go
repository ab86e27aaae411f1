// Package etag implements http.handlers.api_etag: strong ETags for
// backends that send none, conditional requests (RFC 9110 §13), If-Match
// optimistic locking decided by the gateway, and a bounded shared cache
// (RFC 9111) that never serves one principal's response to another.
//
// The files follow one request: etag.go (the type and its lifecycle),
// read.go (GET and HEAD), write.go (unsafe methods: preconditions, probes,
// per-resource locks, invalidation) and cache.go (the store and all of its
// RFC 9111 policy).
package etag

import (
	"fmt"
	"net/http"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/restgate/restgate/internal/metrics"
	"github.com/restgate/restgate/modules/redisapp"
)

func init() {
	caddy.RegisterModule(Handler{})
}

// Handler adds strong ETags, answers conditional requests, decides
// preconditions on writes, and optionally caches.
//
// Reads (GET, HEAD): a 200 response without an ETag, whose body fits in
// MaxBody, gets a strong ETag hashed from the body (xxHash64: the same in
// every process, so several gateways agree). If-None-Match and
// If-Modified-Since are then answered with 304. Larger and streaming
// responses (text/event-stream) pass through untouched. A backend's own
// ETag and Last-Modified are kept. HEAD is sent upstream as GET, so that
// its ETag is the GET's.
//
// Writes (PUT, PATCH, DELETE) with If-Match, If-None-Match or
// If-Unmodified-Since: the request body is read first (at most MaxBody),
// then, holding a lock for the resource, the gateway GETs the resource
// under the caller's identity (the probe), evaluates the preconditions
// against what it got (412 on a mismatch), forwards the write and, if the
// backend sends no ETag of its own, GETs the resource once more to return
// the new ETag. So one conditional write may call the next handler up to
// three times. A backend with its own ETags also receives the
// precondition, so it stays protected across several gateways; one
// without them gets the write without it. When the gateway cannot read the
// resource (the probe fails or answers with another error), the write is
// refused with a 503 problem: the lock never fails open.
//
// Every target is taken in its canonical form (internal/canon), so
// several spellings of one resource share one lock and one cache entry.
type Handler struct {
	// The largest body hashed and cached, and the largest request body of
	// a conditional write. Larger responses pass through without an ETag;
	// a larger conditional write is refused with 413. Default: 1 MiB.
	MaxBody int `json:"max_body,omitempty"`

	// Paths (Caddy path matcher syntax) where PUT, PATCH and DELETE must be
	// conditional: an unconditional one is a 428.
	RequireIfMatch caddyhttp.MatchPath `json:"require_if_match,omitempty"`

	// How long a conditional write waits for another one on the same
	// resource before it is refused with 503. Default: 10s.
	LockTimeout caddy.Duration `json:"lock_timeout,omitempty"`

	// The shared cache; off unless set.
	Cache *CacheConfig `json:"cache,omitempty"`

	// Coordinate with the other gateways through the redis app: conditional
	// writes lock the resource in Redis too (so the lost-update guarantee
	// holds across gateways), and invalidations reach every gateway's cache.
	// While Redis is unreachable, conditional writes are refused with 503.
	Redis bool `json:"redis,omitempty"`

	// Redis when the redis app is configured with an address, else this
	// gateway's own locks and cache only (the Caddyfile's `redis auto`).
	RedisAuto bool `json:"redis_auto,omitempty"`

	// How long a Redis lock lives unless its holder extends it (which it
	// does every third of it while the write goes on). Default: 30s.
	LockTTL caddy.Duration `json:"lock_ttl,omitempty"`

	store       *store
	locks       locker
	redis       *redisapp.App
	unsubscribe func()
	now         func() time.Time
	logger      *zap.Logger
}

// CacheConfig configures the in-memory shared cache.
type CacheConfig struct {
	// The most bytes the cache holds, counting everything an entry keeps
	// (body, headers, keys and bookkeeping). Default: 64 MiB.
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
	defaultMaxBody     = 1 << 20
	defaultCacheSize   = 64 << 20
	defaultLockTimeout = 10 * time.Second
)

// Provision sets defaults.
func (h *Handler) Provision(ctx caddy.Context) error {
	h.logger = ctx.Logger()
	if err := metrics.Register(ctx.GetMetricsRegistry()); err != nil {
		return err
	}
	if h.now == nil {
		h.now = time.Now
	}
	if h.MaxBody == 0 {
		h.MaxBody = defaultMaxBody
	}
	if h.LockTimeout == 0 {
		h.LockTimeout = caddy.Duration(defaultLockTimeout)
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
	local := &keyedLocks{m: map[string]*lockEntry{}}
	h.locks = local
	var app *redisapp.App
	var err error
	switch {
	case h.Redis:
		app, err = redisapp.Get(ctx)
	case h.RedisAuto:
		app, err = redisapp.Enabled(ctx)
	}
	if err != nil {
		return err
	}
	if app != nil {
		if h.LockTTL == 0 {
			h.LockTTL = caddy.Duration(defaultLockTTL)
		}
		h.redis = app
		h.locks = &redisLocks{local: local, app: app, ttl: time.Duration(h.LockTTL), logger: h.logger}
		if h.store != nil {
			h.unsubscribe = h.subscribe()
		}
	}
	return nil
}

// Cleanup drops the cache of a config that is being unloaded.
func (h *Handler) Cleanup() error {
	if h.unsubscribe != nil {
		h.unsubscribe()
	}
	if h.store != nil {
		h.store.purge()
	}
	return nil
}

// Validate checks the configuration.
func (h *Handler) Validate() error {
	if h.MaxBody < 0 || h.LockTimeout < 0 || h.LockTTL < 0 {
		return fmt.Errorf("max_body, lock_timeout and lock_ttl must not be negative")
	}
	if h.Cache != nil && (h.Cache.MaxSize < 0 || h.Cache.DefaultTTL < 0) {
		return fmt.Errorf("cache: sizes and durations must not be negative")
	}
	if h.Redis && h.RedisAuto {
		return fmt.Errorf("redis and redis_auto contradict each other: redis needs the redis app, redis_auto follows it; set one")
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

// Interface guards
var (
	_ caddy.Provisioner           = (*Handler)(nil)
	_ caddy.Validator             = (*Handler)(nil)
	_ caddyhttp.MiddlewareHandler = (*Handler)(nil)
)
