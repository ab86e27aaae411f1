// Package resources implements http.handlers.resources: conventional REST
// collections of JSON documents stored in SQLite, following the Polar
// convention for shapes and status codes and the Home Office blueprint for
// sorting, nesting, ETags and If-Match.
package resources

import (
	"context"
	"fmt"
	"hash/fnv"
	"net/http"
	"net/url"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
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

// Handler serves the configured collections under a prefix (default `/v1`):
//
//	GET    /v1/<coll>                 list: {"items": [...], "pagination": {"total_count", "max_page"}}
//	POST   /v1/<coll>                 create: 201 + Location (200 when an upsert updates)
//	GET    /v1/<coll>/{key}           one document (HEAD too)
//	PUT    /v1/<coll>/{key}           full replace
//	PATCH  /v1/<coll>/{key}           JSON merge patch (RFC 7396)
//	DELETE /v1/<coll>/{key}           204
//	…      /v1/<parent>/{key}/<coll>[/{key}]   the same, nested one level
//	GET    /v1/openapi.json           an OpenAPI 3.1 description of the collections
//
// Every error is an RFC 9457 problem. Documents carry `ETag` and
// `Last-Modified`; If-Match, If-None-Match, If-Modified-Since and
// If-Unmodified-Since are evaluated (RFC 9110 §13) inside the write's
// transaction, so two writers holding the same ETag cannot both win.
//
// It trusts the identity headers (`X-Auth-User`, `X-Auth-Scopes`) for owned
// collections: serve it only on loopback behind the gateway, which removes
// any client-sent copy of them.
type Handler struct {
	// Where the documents live: a SQLite file (default: `resources.db` in
	// Caddy's data directory), or a PostgreSQL database given as a URL,
	// `postgres://user@host:port/db?sslmode=verify-full`, for several
	// gateways to share. PostgreSQL's password comes from PGPASSWORD or a
	// password file (PGPASSFILE, ~/.pgpass); the URL is logged without it.
	// Several handlers may share one database.
	Database string `json:"database,omitempty"`

	// SQLite only. `full` (default): an acknowledged write survives a crash
	// and a power loss. `normal`: it survives a crash of the process, not of
	// the machine. (PostgreSQL's durability is its own configuration.)
	Durability string `json:"durability,omitempty"`

	// PostgreSQL only. The deadline of every store call: connecting,
	// waiting for a pooled connection and every statement of the call
	// (a write's whole transaction, retries included). A call past it is
	// answered 503 with Retry-After, as a database that is down, and its
	// connection is discarded, so that a server that stopped answering (frozen,
	// or behind a partition) holds no request longer than this, and the pool
	// recovers by itself once it answers again. A `connect_timeout` in the URL
	// bounds connecting instead. Default: 5s.
	StoreTimeout caddy.Duration `json:"store_timeout,omitempty"`

	// The URL prefix of the collections. Default: `/v1`.
	Prefix string `json:"prefix,omitempty"`

	// The largest request body accepted, in bytes (413 beyond). Default: 1 MiB.
	MaxBody int64 `json:"max_body,omitempty"`

	// The header that names the authenticated user. Default: `X-Auth-User`.
	UserHeader string `json:"user_header,omitempty"`

	// The header the gateway's api_auth accepts API keys in, as the
	// OpenAPI document describes it. Default: `X-API-Key` (api_auth's
	// default); set it to api_auth's `header` if that is changed.
	APIKeyHeader string `json:"api_key_header,omitempty"`

	// The header that lists the user's scopes, separated by spaces or
	// commas. Default: `X-Auth-Scopes`.
	ScopesHeader string `json:"scopes_header,omitempty"`

	// The scope that sees and changes every user's documents in owned
	// collections. Default: `admin`.
	AdminScope string `json:"admin_scope,omitempty"`

	// The collections to serve.
	Collections []*Collection `json:"collections,omitempty"`

	// How long the change log keeps a change, for feeds to resume from.
	// A feed resumed from an id older than the log gets a `reset` event.
	// Handlers sharing a database share one log; the longest retention of
	// any of them applies. Default: 24h.
	FeedRetention caddy.Duration `json:"feed_retention,omitempty"`

	// The most changes the log keeps, whatever their age. Default: 100000.
	FeedMaxChanges int `json:"feed_max_changes,omitempty"`

	// How often an idle feed sends a comment line, so that proxies keep
	// it open. Default: 15s.
	FeedHeartbeat caddy.Duration `json:"feed_heartbeat,omitempty"`

	// The most feeds one principal may have open on this gateway at once
	// (429 beyond). Default: 8.
	FeedMaxStreams int `json:"feed_max_streams,omitempty"`

	// How long a write to a feed may take: a client that stops reading
	// for longer is disconnected, and resumes from the last id it got.
	// Default: 30s.
	FeedWriteTimeout caddy.Duration `json:"feed_write_timeout,omitempty"`

	byName      map[string]*Collection
	store       Store
	hub         *feedHub
	feedDone    chan struct{} // closed by endFeeds: the server shuts down or the config unloads
	endFeeds    func()
	newTicker   func(time.Duration) (<-chan time.Time, func())
	poolKey     string
	openapi     []byte
	openapiETag string
	now         func() time.Time
	logger      *zap.Logger
}

// CaddyModule returns the Caddy module information.
func (Handler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.resources",
		New: func() caddy.Module { return new(Handler) },
	}
}

const (
	defaultMaxBody      = 1 << 20
	defaultStoreTimeout = 5 * time.Second
	defaultLimit        = 10
	maxLimit            = 100
)

// Provision sets defaults, checks the collections and opens the store.
func (h *Handler) Provision(ctx caddy.Context) error {
	h.logger = ctx.Logger()
	if h.now == nil {
		h.now = time.Now
	}
	if h.Database == "" {
		h.Database = filepath.Join(caddy.AppDataDir(), "resources.db")
	}
	if h.Durability == "" {
		h.Durability = DurabilityFull
	}
	if h.StoreTimeout == 0 {
		h.StoreTimeout = caddy.Duration(defaultStoreTimeout)
	}
	if h.Prefix == "" {
		h.Prefix = "/v1"
	}
	h.Prefix = "/" + strings.Trim(h.Prefix, "/")
	if h.MaxBody == 0 {
		h.MaxBody = defaultMaxBody
	}
	if h.UserHeader == "" {
		h.UserHeader = identity.UserHeader
	}
	if h.ScopesHeader == "" {
		h.ScopesHeader = identity.ScopesHeader
	}
	if h.APIKeyHeader == "" {
		h.APIKeyHeader = identity.KeyHeader
	}
	if h.AdminScope == "" {
		h.AdminScope = "admin"
	}
	if h.FeedRetention == 0 {
		h.FeedRetention = caddy.Duration(defaultFeedRetention)
	}
	if h.FeedMaxChanges == 0 {
		h.FeedMaxChanges = defaultFeedMaxChanges
	}
	if h.FeedHeartbeat == 0 {
		h.FeedHeartbeat = caddy.Duration(defaultFeedHeartbeat)
	}
	if h.FeedMaxStreams == 0 {
		h.FeedMaxStreams = defaultFeedMaxStreams
	}
	if h.FeedWriteTimeout == 0 {
		h.FeedWriteTimeout = caddy.Duration(defaultFeedWriteTimeout)
	}
	done := make(chan struct{})
	h.feedDone, h.endFeeds = done, sync.OnceFunc(func() { close(done) })
	// streams end when the server shuts down (a reload or a stop), so that
	// it does not wait for them
	if srv, ok := ctx.Value(caddyhttp.ServerCtxKey).(*caddyhttp.Server); ok && srv != nil {
		srv.RegisterOnShutdown(h.endFeeds)
	}
	if err := h.prepareCollections(); err != nil {
		return err
	}
	var err error
	if h.openapi, err = h.openAPI(); err != nil {
		return fmt.Errorf("generating OpenAPI document: %v", err)
	}
	sum := fnv.New64a()
	sum.Write(h.openapi)
	h.openapiETag = `"` + strconv.FormatUint(sum.Sum64(), 36) + `"`

	ps, err := h.openStore(ctx)
	if err != nil {
		return err
	}
	h.hub = ps.hub
	h.hub.configure(time.Duration(h.FeedRetention), h.FeedMaxChanges)
	h.store = loggedStore(ps)
	for _, c := range h.Collections {
		if err := ps.ensureIndexes(c); err != nil {
			return err
		}
	}
	return nil
}

// openStore opens the handler's database, or shares it with the handlers
// (and earlier configurations) that already have it open: a SQLite file by
// its absolute path, a PostgreSQL database by its URL and store_timeout
// (a pool's deadline is its own).
func (h *Handler) openStore(ctx caddy.Context) (pooledStore, error) {
	key, name := h.Database, redactURL(h.Database)
	if isPostgresURL(h.Database) {
		key += "\x00" + time.Duration(h.StoreTimeout).String()
	} else {
		path, err := filepath.Abs(h.Database)
		if err != nil {
			return pooledStore{}, err
		}
		key, name = path, path
	}
	h.poolKey = key
	val, _, err := stores.LoadOrNew(key, func() (caddy.Destructor, error) {
		if isPostgresURL(key) {
			s, err := openPostgres(ctx, h.Database, time.Duration(h.StoreTimeout))
			if err != nil {
				return nil, err
			}
			h.logger.Debug("resources on PostgreSQL", zap.String("database", name))
			return newPooledStore(ctx, s, h.logger)
		}
		s, err := openSQLite(key, h.Durability)
		if err != nil {
			return nil, err
		}
		return newPooledStore(ctx, s, h.logger)
	})
	if err != nil {
		h.poolKey = ""
		return pooledStore{}, fmt.Errorf("opening %s: %v", name, err)
	}
	return val.(pooledStore), nil
}

func (h *Handler) prepareCollections() error {
	if len(h.Collections) == 0 {
		return fmt.Errorf("no collections configured")
	}
	h.byName = make(map[string]*Collection, len(h.Collections))
	for _, c := range h.Collections {
		if err := c.prepare(); err != nil {
			return err
		}
		if c.Name == "openapi.json" {
			return fmt.Errorf("collection name %q is reserved", c.Name)
		}
		if _, dup := h.byName[c.Name]; dup {
			return fmt.Errorf("collection %q configured twice", c.Name)
		}
		h.byName[c.Name] = c
	}
	for _, c := range h.Collections {
		if c.Parent == "" {
			continue
		}
		p := h.byName[c.Parent]
		switch {
		case p == nil:
			return fmt.Errorf("collection %s: parent %q is not configured", c.Name, c.Parent)
		case p.Parent != "":
			return fmt.Errorf("collection %s: parent %s is itself nested; nesting is one level deep", c.Name, p.Name)
		}
		c.parent = p
		p.children = append(p.children, c)
	}
	return nil
}

// Validate checks the configuration.
func (h *Handler) Validate() error {
	if h.Durability != DurabilityFull && h.Durability != DurabilityNormal {
		return fmt.Errorf("durability must be %s or %s, not %q", DurabilityFull, DurabilityNormal, h.Durability)
	}
	if h.MaxBody < 0 {
		return fmt.Errorf("max_body must not be negative")
	}
	if h.StoreTimeout < 0 {
		return fmt.Errorf("store_timeout must not be negative")
	}
	if h.FeedRetention < 0 || h.FeedMaxChanges < 0 || h.FeedHeartbeat < 0 || h.FeedMaxStreams < 0 || h.FeedWriteTimeout < 0 {
		return fmt.Errorf("feed_retention, feed_max_changes, feed_heartbeat, feed_max_streams and feed_write_timeout must not be negative")
	}
	return nil
}

// Cleanup ends the feeds and releases the store; the last user closes it.
func (h *Handler) Cleanup() error {
	if h.endFeeds != nil {
		h.endFeeds()
	}
	if h.poolKey == "" {
		return nil
	}
	_, err := stores.Delete(h.poolKey)
	return err
}

// stores shares one open database per file across handlers and config reloads.
var stores = caddy.NewUsagePool()

// pooledStore is an open store in the pool, with the hub that follows its
// change log; ensureIndexes creates the indexes a collection's sortable
// fields need.
type pooledStore struct {
	indexedStore
	hub *feedHub
}

type indexedStore interface {
	Store
	changeLog
	ensureIndexes(*Collection) error
}

func newPooledStore(ctx context.Context, s indexedStore, logger *zap.Logger) (pooledStore, error) {
	if err := s.initChangeLog(ctx); err != nil {
		s.Close()
		return pooledStore{}, fmt.Errorf("creating the change log: %w", err)
	}
	return pooledStore{s, newFeedHub(s, logger)}, nil
}

func (p pooledStore) Destruct() error {
	p.hub.close()
	return p.Close()
}

// target is what a request path names.
type target struct {
	coll      *Collection
	parentKey string // the parent document's key, for nested collections
	key       string // the document's key; "" for the collection
}

func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, _ caddyhttp.Handler) error {
	problem.EnsureRequestID(w, r)
	path := r.URL.EscapedPath()
	if path != h.Prefix && !strings.HasPrefix(path, h.Prefix+"/") {
		return h.fail(w, r, problem.New(http.StatusNotFound, "no resource at this path"))
	}
	if path == h.Prefix+"/openapi.json" {
		return h.serveOpenAPI(w, r)
	}
	t, p := h.route(path[len(h.Prefix):])
	if p != nil {
		return h.fail(w, r, p)
	}
	if t.key == "" {
		return h.serveCollection(w, r, t)
	}
	return h.serveDocument(w, r, t)
}

// route parses /<coll>[/<key>[/<child>[/<key>]]].
func (h *Handler) route(rest string) (target, *problem.Problem) {
	segs := strings.Split(strings.Trim(rest, "/"), "/")
	if len(segs) == 0 || segs[0] == "" || len(segs) > 4 {
		return target{}, problem.New(http.StatusNotFound, "no resource at this path")
	}
	for i, s := range segs {
		u, err := url.PathUnescape(s)
		if err != nil || (i%2 == 1 && !validKey(u)) {
			return target{}, problem.New(http.StatusNotFound, "no resource at this path")
		}
		segs[i] = u
	}
	c := h.byName[segs[0]]
	if c == nil || (c.parent != nil) {
		return target{}, problem.New(http.StatusNotFound, fmt.Sprintf("there is no collection %q", segs[0]))
	}
	if len(segs) <= 2 {
		t := target{coll: c}
		if len(segs) == 2 {
			t.key = segs[1]
		}
		return t, nil
	}
	child := h.byName[segs[2]]
	if child == nil || child.parent != c {
		return target{}, problem.New(http.StatusNotFound, fmt.Sprintf("%s have no collection %q", c.Name, segs[2]))
	}
	t := target{coll: child, parentKey: segs[1]}
	if len(segs) == 4 {
		t.key = segs[3]
	}
	return t, nil
}

// fail writes a problem natively (the backend can run without api_errors).
func (h *Handler) fail(w http.ResponseWriter, r *http.Request, p *problem.Problem) error {
	problem.Write(w, r, p)
	return nil
}

// Interface guards
var (
	_ caddy.Provisioner           = (*Handler)(nil)
	_ caddy.Validator             = (*Handler)(nil)
	_ caddy.CleanerUpper          = (*Handler)(nil)
	_ caddyhttp.MiddlewareHandler = (*Handler)(nil)
)
