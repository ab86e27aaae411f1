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
)

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
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n < 0 {
		return 0, false
	}
	if n > 1<<31 {
		n = 1 << 31
	}
	return time.Duration(n) * time.Second, true
}

// principal kinds in cache keys: a response is only ever served to the
// kind (and user) it was stored for.
const (
	classShared = "s" // public or s-maxage: deliberately shared (RFC 9111 §3.5)
	classAnon   = "a" // a response to an anonymous request
	classUser   = "u" // followed by the user id: one principal's response
)

// entry is one stored response.
type entry struct {
	key, pathKey string
	status       int
	header       http.Header // without hop-by-hop and per-request fields
	body         []byte
	etag         string
	generated    bool // the gateway made the ETag; the backend knows nothing of it
	lastModified time.Time
	stored       time.Time // when it was received
	initialAge   time.Duration
	freshFor     time.Duration
	vary         []string // canonical request header names
	varyValues   []string
	size         int64
}

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

// store is an in-memory cache bounded by the total bytes of its entries:
// a golang-lru/v2 LRU does the recency bookkeeping, and the oldest entries
// are dropped until the total fits. An index by host and path finds every
// entry (all queries, all principals) to invalidate for a URI.
type store struct {
	mu       sync.Mutex
	entries  *lru.Cache[string, *entry]
	byPath   map[string]map[string]struct{}
	bytes    int64
	maxBytes int64
}

func newStore(maxBytes int64) *store {
	s := &store{byPath: map[string]map[string]struct{}{}, maxBytes: maxBytes}
	// the count bound is not the real bound (bytes are); it only keeps a
	// flood of tiny entries from growing the index without limit
	s.entries, _ = lru.NewWithEvict[string, *entry](1<<20, s.evicted)
	return s
}

// evicted keeps the byte count and the path index in step; it runs with
// s.mu held (every call that can evict holds it).
func (s *store) evicted(key string, e *entry) {
	s.bytes -= e.size
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

func (s *store) put(e *entry) {
	if e.size > s.maxBytes {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.entries.Remove(e.key)
	s.entries.Add(e.key, e)
	s.bytes += e.size
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
	}
}

// invalidate drops every entry for host+path: all queries, all principals.
func (s *store) invalidate(pathKey string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for key := range s.byPath[pathKey] {
		s.entries.Remove(key)
	}
}

func (s *store) len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.entries.Len()
}

// hopByHop and per-request fields are not stored with a response.
var notStored = []string{
	"Connection", "Keep-Alive", "Proxy-Connection", "Transfer-Encoding", "Upgrade", "Te", "Trailer",
	"Set-Cookie", "Age", "Date", "X-Request-Id", "Ratelimit", "Ratelimit-Policy", "Retry-After",
	"X-Ratelimit-Limit", "X-Ratelimit-Remaining", "X-Ratelimit-Reset", "Cache-Status", "Alt-Svc", "Server",
}

func storedHeader(h http.Header) http.Header {
	out := make(http.Header, len(h))
	for k, v := range h {
		if !slices.Contains(notStored, k) {
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
