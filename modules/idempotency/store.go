package idempotency

import (
	"container/heap"
	"container/list"
	"context"
	"errors"
	"net/http"
	"sync"
	"time"
)

// Store keeps idempotency records: in this process's memory (memStore, the
// default), or in Redis (redisStore), where every gateway that shares it
// answers a retry the same way, and a restart forgets nothing. One
// conformance suite runs against both (claims_test.go).
type Store interface {
	// Begin claims key for a request of principal with fingerprint fp.
	// When the key is free (never used, or expired), it records an
	// in-flight claim that lives until ttl passes and returns its handle
	// (a shared store keeps it alive by a lease its holder renews, so that
	// the claim of a gateway that died lapses soon). Otherwise it returns
	// the existing record, in flight or complete, unchanged. When the
	// principal, or the store as a whole, already holds as many in-flight
	// claims as it may, it claims nothing and returns ErrPrincipalBusy or
	// ErrStoreBusy; when it cannot be reached, an ErrStoreUnavailable.
	Begin(ctx context.Context, principal, key string, fp Fingerprint, now time.Time, ttl time.Duration) (*Claim, *Record, error)
	// Complete replaces the claim's in-flight record with the final
	// response. A stale claim (its key expired and was claimed again, or
	// was already completed or released) does nothing; Complete reports
	// whether the claim was current. A shared store that cannot be
	// reached goes on trying in the background while the claim's lease
	// lasts, and reports true.
	Complete(c *Claim, rec *Record) bool
	// Release forgets the claim's in-flight record, so that a retry runs
	// again. A stale claim does nothing; Release reports whether the claim
	// was current (as Complete, for a store that cannot be reached).
	Release(c *Claim) bool
}

// Claim is the handle Begin gives the one request that claimed a key:
// only its holder can complete or release that key's in-flight record.
type Claim struct {
	principal, key string
	token          uint64      // the memory store's: unique in its store; the record keeps it
	shared         *sharedHold // the Redis store's: its owner token and lease
}

// The refusals of Begin: nothing was claimed, and the request must not run.
var (
	ErrPrincipalBusy = errors.New("the principal holds as many in-flight idempotency claims as it may")
	ErrStoreBusy     = errors.New("the idempotency store holds as many in-flight claims as it may")
	// ErrStoreUnavailable wraps the failures of a shared store that could
	// not be reached: whether the key is free cannot be known.
	ErrStoreUnavailable = errors.New("the shared idempotency store cannot be reached")
)

// Fingerprint identifies a request: method, path, query, media type and a
// digest of the body.
type Fingerprint [32]byte

// Record is what a key holds: an in-flight claim, or a final response.
// A complete record is never changed.
type Record struct {
	Fingerprint Fingerprint
	InFlight    bool
	// Discarded marks a request that was carried out but whose response
	// could not be kept (larger than max_body, or than the principal's
	// quota): only its status and Location are. A retry is refused, never
	// run again.
	Discarded bool
	Status    int
	Header    http.Header
	Body      []byte
	Expires   time.Time
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

// discard returns the record of a response that is not kept: its status,
// its Location if short, and no body.
func (r *Record) discard() *Record {
	d := &Record{Fingerprint: r.Fingerprint, Discarded: true, Status: r.Status, Expires: r.Expires}
	if loc := r.Header.Get("Location"); loc != "" && len(loc) <= maxDiscardedLocation {
		d.Header = http.Header{"Location": {loc}}
	}
	return d
}

const (
	// recordOverhead is a record's struct, list element and map slot.
	recordOverhead = 256
	// maxDiscardedLocation bounds the Location a discarded record keeps.
	maxDiscardedLocation = 2048
)

// limits bound the in-memory store.
type limits struct {
	maxBytes      int64 // completed records, all principals
	quota         int64 // completed records, one principal
	inFlight      int   // in-flight claims, one principal
	inFlightTotal int   // in-flight claims, all principals
}

// memStore is the in-memory store.
//
// In-flight claims are never evicted: they are bounded by count, per
// principal and in total, and Begin refuses a claim beyond either bound.
// Completed records are bounded by bytes, per principal (its quota: its
// own least recently used records go first) and in total. When the total
// is exceeded, the least recently used record of the principal holding
// the most bytes goes: a principal is never evicted by another's traffic
// while it holds no more than max_size ÷ (principals with records), its
// fair share. The record just completed is never the one evicted; a record
// larger than the quota, or alone larger than its principal's fair share
// of a full store, is kept as a discarded record (status only).
// Expired records are dropped as they are met.
type memStore struct {
	mu        sync.Mutex
	lim       limits
	byKey     map[string]*memEntry
	who       map[string]*holder
	largest   holders // the principals with completed records, most bytes first
	bytes     int64   // completed records
	inFlight  int
	lastToken uint64
}

// holder is one principal's share of the store.
type holder struct {
	name     string
	done     *list.List // its completed entries; front: most recently used
	bytes    int64
	inFlight int
	index    int // in memStore.largest; -1 when it has no completed record
}

type memEntry struct {
	key   string
	owner *holder
	rec   *Record
	token uint64        // the claim's, while in flight
	el    *list.Element // in owner.done, once complete
	size  int64
}

func newMemStore(lim limits) *memStore {
	return &memStore{lim: lim, byKey: map[string]*memEntry{}, who: map[string]*holder{}}
}

func (s *memStore) Begin(_ context.Context, principal, key string, fp Fingerprint, now time.Time, ttl time.Duration) (*Claim, *Record, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if e, ok := s.byKey[key]; ok {
		if now.Before(e.rec.Expires) {
			if e.el != nil {
				e.owner.done.MoveToFront(e.el)
			}
			return nil, e.rec, nil
		}
		s.remove(e)
	}
	h := s.who[principal]
	switch {
	case h != nil && h.inFlight >= s.lim.inFlight:
		return nil, nil, ErrPrincipalBusy
	case s.inFlight >= s.lim.inFlightTotal:
		return nil, nil, ErrStoreBusy
	}
	if h == nil {
		h = &holder{name: principal, done: list.New(), index: -1}
		s.who[principal] = h
	}
	s.lastToken++
	e := &memEntry{key: key, owner: h, token: s.lastToken, rec: &Record{Fingerprint: fp, InFlight: true, Expires: now.Add(ttl)}}
	s.byKey[key] = e
	h.inFlight++
	s.inFlight++
	return &Claim{principal: principal, key: key, token: e.token}, nil, nil
}

// current returns the in-flight entry c still owns. Callers hold s.mu.
func (s *memStore) current(c *Claim) *memEntry {
	if c == nil {
		return nil
	}
	e, ok := s.byKey[c.key]
	if !ok || !e.rec.InFlight || e.token != c.token {
		return nil
	}
	return e
}

func (s *memStore) Complete(c *Claim, rec *Record) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	e := s.current(c)
	if e == nil {
		return false
	}
	h := e.owner
	s.remove(e)
	if rec.size(c.key) > s.lim.quota {
		rec = rec.discard()
	}
	s.putDone(h, c.key, rec)
	return true
}

func (s *memStore) Release(c *Claim) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	e := s.current(c)
	if e == nil {
		return false
	}
	s.remove(e)
	return true
}

// putDone adds h's completed record, then forgets h's own least recently
// used records until h fits its quota, and the least recently used records
// of the largest holder until the store fits its bound. The record just
// added is never forgotten: when it alone makes h the largest holder (it
// is larger than h's fair share), it is kept discarded rather than push
// out another's records. Callers hold s.mu.
func (s *memStore) putDone(h *holder, key string, rec *Record) {
	if h.done.Len() == 0 && h.inFlight == 0 {
		s.who[h.name] = h // remove dropped it with its last entry
	}
	e := &memEntry{key: key, owner: h, rec: rec, size: rec.size(key)}
	e.el = h.done.PushFront(e)
	s.byKey[key] = e
	s.account(h, e.size)
	for h.bytes > s.lim.quota && h.done.Len() > 1 {
		s.remove(h.done.Back().Value.(*memEntry))
	}
	for s.bytes > s.lim.maxBytes && len(s.largest) > 0 {
		v := s.largest[0]
		if v == h && h.done.Len() == 1 {
			if !e.rec.Discarded {
				d := e.rec.discard()
				size := d.size(key)
				s.account(h, size-e.size)
				e.rec, e.size = d, size // nobody has seen it yet
				continue
			}
			if v = s.next(); v == nil {
				return
			}
		}
		s.remove(v.done.Back().Value.(*memEntry))
	}
}

// next is the second largest holder, a child of the root. Callers hold s.mu.
func (s *memStore) next() *holder {
	var next *holder
	for _, i := range []int{1, 2} {
		if i < len(s.largest) && (next == nil || s.largest[i].bytes > next.bytes) {
			next = s.largest[i]
		}
	}
	return next
}

// account adds delta completed bytes to h and keeps the order of holders.
// Callers hold s.mu.
func (s *memStore) account(h *holder, delta int64) {
	h.bytes += delta
	s.bytes += delta
	switch {
	case h.index < 0 && h.done.Len() > 0:
		heap.Push(&s.largest, h)
	case h.index >= 0 && h.done.Len() == 0:
		heap.Remove(&s.largest, h.index)
	case h.index >= 0:
		heap.Fix(&s.largest, h.index)
	}
}

// remove forgets an entry, in flight or complete. Callers hold s.mu.
func (s *memStore) remove(e *memEntry) {
	h := e.owner
	delete(s.byKey, e.key)
	if e.el != nil {
		h.done.Remove(e.el)
		e.el = nil
		s.account(h, -e.size)
	} else {
		h.inFlight--
		s.inFlight--
	}
	if h.done.Len() == 0 && h.inFlight == 0 {
		delete(s.who, h.name)
	}
}

func (s *memStore) len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.byKey)
}

// holders is a max-heap of principals by the bytes of their completed
// records (container/heap).
type holders []*holder

func (q holders) Len() int           { return len(q) }
func (q holders) Less(i, j int) bool { return q[i].bytes > q[j].bytes }
func (q holders) Swap(i, j int) {
	q[i], q[j] = q[j], q[i]
	q[i].index, q[j].index = i, j
}

func (q *holders) Push(x any) {
	h := x.(*holder)
	h.index = len(*q)
	*q = append(*q, h)
}

func (q *holders) Pop() any {
	old := *q
	h := old[len(old)-1]
	old[len(old)-1] = nil
	h.index = -1
	*q = old[:len(old)-1]
	return h
}

// Interface guard
var _ Store = (*memStore)(nil)
