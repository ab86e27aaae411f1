package idempotency

import (
	"container/list"
	"net/http"
	"sync"
	"time"
)

// Store keeps idempotency records. The in-memory store is the embedded
// default; a shared store (Redis) lets a retry that lands on another
// gateway be answered the same way.
type Store interface {
	// Begin claims key for a request with fingerprint fp. When the key is
	// free (never used, or expired), it records an in-flight claim that
	// lives until ttl passes, and returns claimed. Otherwise it returns the
	// existing record, in flight or complete, unchanged.
	Begin(key string, fp Fingerprint, now time.Time, ttl time.Duration) (existing *Record, claimed bool)
	// Complete replaces key's in-flight claim with the final response.
	Complete(key string, rec *Record)
	// Release forgets key's in-flight claim, so that a retry runs again.
	Release(key string)
}

// Fingerprint identifies a request: method, path, query, media type and a
// digest of the body.
type Fingerprint [32]byte

// Record is what a key holds: an in-flight claim, or a final response.
// A complete record is never changed.
type Record struct {
	Fingerprint Fingerprint
	InFlight    bool
	Status      int
	Header      http.Header
	Body        []byte
	Expires     time.Time
}

// size is what a record costs in memory, all told.
func (r *Record) size(key string) int64 {
	n := int64(len(key)*2 + len(r.Body) + recordOverhead)
	for k, v := range r.Header {
		n += int64(len(k)) + 48
		for _, s := range v {
			n += int64(len(s)) + 16
		}
	}
	return n
}

// recordOverhead is a record's struct, list element and map slot.
const recordOverhead = 256

// memStore is the in-memory store, bounded by the bytes of its records:
// the least recently used are forgotten first (in-flight claims too, which
// is safe: a forgotten claim lets a retry run again, as an expired key
// would), and expired records are dropped as they are met.
type memStore struct {
	mu       sync.Mutex
	byKey    map[string]*list.Element
	order    *list.List // front: most recently used
	bytes    int64
	maxBytes int64
}

type memEntry struct {
	key  string
	rec  *Record
	size int64
}

func newMemStore(maxBytes int64) *memStore {
	return &memStore{byKey: map[string]*list.Element{}, order: list.New(), maxBytes: maxBytes}
}

func (s *memStore) Begin(key string, fp Fingerprint, now time.Time, ttl time.Duration) (*Record, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if el, ok := s.byKey[key]; ok {
		e := el.Value.(*memEntry)
		if now.Before(e.rec.Expires) {
			s.order.MoveToFront(el)
			return e.rec, false
		}
		s.remove(el)
	}
	s.put(key, &Record{Fingerprint: fp, InFlight: true, Expires: now.Add(ttl)})
	return nil, true
}

func (s *memStore) Complete(key string, rec *Record) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if el, ok := s.byKey[key]; ok {
		s.remove(el)
	}
	s.put(key, rec)
}

func (s *memStore) Release(key string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if el, ok := s.byKey[key]; ok && el.Value.(*memEntry).rec.InFlight {
		s.remove(el)
	}
}

// put adds a record and forgets the least recently used until the total
// fits. Callers hold s.mu.
func (s *memStore) put(key string, rec *Record) {
	e := &memEntry{key: key, rec: rec, size: rec.size(key)}
	s.byKey[key] = s.order.PushFront(e)
	s.bytes += e.size
	for s.bytes > s.maxBytes && s.order.Len() > 1 {
		s.remove(s.order.Back())
	}
}

func (s *memStore) remove(el *list.Element) {
	e := el.Value.(*memEntry)
	s.order.Remove(el)
	delete(s.byKey, e.key)
	s.bytes -= e.size
}

func (s *memStore) len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.order.Len()
}
