package ratelimit

import (
	"math"
	"sync"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"
)

// Store holds the token buckets of one zone. The in-memory store is the
// embedded default; a shared store (Redis) lets several gateways enforce one
// limit with the same algorithm.
type Store interface {
	// Reserve takes one token from key's bucket if it has one; a refused
	// request takes nothing. perSecond is the refill rate, burst the
	// bucket's size.
	Reserve(key string, perSecond float64, burst int, now time.Time) Decision
	// Resize bounds how many keys the store keeps.
	Resize(maxKeys int)
	// Len is how many keys it holds.
	Len() int
}

// Decision is the outcome of Reserve.
type Decision struct {
	Admitted bool
	// Remaining is how many whole tokens are left.
	Remaining float64
	// NextIn is how long until the bucket holds one more whole token: for a
	// refused request, until it may be retried; zero when the bucket is full.
	// It is the `t` of the RateLimit header and, on a 429, Retry-After.
	NextIn time.Duration

	// the bucket's tokens (setState), whole or not
	tokens float64
	// what gives the token back; nil if none was taken
	refund    refunder
	perSecond float64
	burst     int
}

// refunder gives back one token taken from a bucket and returns the
// bucket's tokens after it (NaN if that is not known).
type refunder interface {
	refund(now time.Time, perSecond float64, burst int) float64
}

// Refund puts an admitted request's token back: exactly one token, whatever
// time has passed since it was taken (capped at the bucket's size). The
// decision then describes the bucket as the refund left it.
func (d *Decision) Refund(now time.Time) {
	if d.Admitted && d.refund != nil {
		if tokens := d.refund.refund(now, d.perSecond, d.burst); !math.IsNaN(tokens) {
			d.setState(tokens)
		}
		d.Admitted = false
	}
}

// setState describes a bucket holding tokens.
func (d *Decision) setState(tokens float64) {
	d.tokens = tokens
	d.Remaining = math.Floor(max(tokens, 0))
	d.NextIn = nextIn(tokens, d.perSecond, d.burst)
}

// bucket is one key's token bucket: tokens refill continuously at the
// zone's rate up to its burst. golang.org/x/time/rate is not used because
// its reservations cannot be cancelled once their time has passed (CancelAt
// returns early), so a refund made later in the same request would be lost;
// this bucket is also exactly what the Redis script computes.
type bucket struct {
	mu     sync.Mutex
	tokens float64
	last   int64 // Unix nanoseconds of the last update
}

// advance refills the bucket up to now; it never moves time backwards.
// Callers hold b.mu.
func (b *bucket) advance(now time.Time, perSecond float64, burst int) {
	t := now.UnixNano()
	if t > b.last {
		b.tokens += float64(t-b.last) / 1e9 * perSecond
		b.last = t
	}
	b.tokens = min(b.tokens, float64(burst))
}

func (b *bucket) take(now time.Time, perSecond float64, burst int) Decision {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.advance(now, perSecond, burst)
	d := Decision{perSecond: perSecond, burst: burst}
	if b.tokens >= 1 {
		b.tokens--
		d.Admitted, d.refund = true, b
	}
	d.setState(b.tokens)
	return d
}

func (b *bucket) refund(now time.Time, perSecond float64, burst int) float64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.advance(now, perSecond, burst)
	b.tokens = min(b.tokens+1, float64(burst))
	return b.tokens
}

// ask is one zone's bucket that a request needs a token from.
type ask struct {
	zone *Zone
	key  string
}

// A request is decided against the buckets of every zone that applies by
// the local stores (decideLocal) or Redis (redisDecider.decide), with the
// same semantics: out gets the decisions up to and including the first
// refused zone (n of them), and a refused request spends nothing. (Direct
// calls, not an interface: the caller's arrays then stay on its stack.)

// decideLocal takes from each zone's in-memory store in turn and gives
// back what it took if a later zone refuses.
func decideLocal(asks []ask, now time.Time, out []Decision) int {
	for i, a := range asks {
		out[i] = a.zone.state.store.Reserve(a.key, a.zone.perSecond, a.zone.burst, now)
		if !out[i].Admitted {
			for j := range i {
				out[j].Refund(now)
			}
			return i + 1
		}
	}
	return len(asks)
}

// nextIn is how long until a bucket holding tokens gains one whole token.
func nextIn(tokens, perSecond float64, burst int) time.Duration {
	if tokens >= float64(burst) || perSecond <= 0 {
		return 0
	}
	missing := math.Floor(tokens) + 1 - tokens
	return time.Duration(math.Ceil(missing / perSecond * 1e9))
}

// memStore is an LRU of token buckets bounded by maxKeys: the least recently
// seen key is forgotten first, so memory stays bounded however many distinct
// keys arrive.
type memStore struct {
	buckets *lru.Cache[string, *bucket]
}

func newMemStore(maxKeys int) (*memStore, error) {
	c, err := lru.New[string, *bucket](maxKeys)
	if err != nil {
		return nil, err
	}
	return &memStore{buckets: c}, nil
}

func (s *memStore) Reserve(key string, perSecond float64, burst int, now time.Time) Decision {
	b, ok := s.buckets.Get(key)
	if !ok {
		b = &bucket{tokens: float64(burst), last: now.UnixNano()}
		// a concurrent first request for the same key may have added one
		if prev, found, _ := s.buckets.PeekOrAdd(key, b); found {
			b = prev
		}
	}
	return b.take(now, perSecond, burst)
}

func (s *memStore) Resize(maxKeys int) { s.buckets.Resize(maxKeys) }

func (s *memStore) Len() int { return s.buckets.Len() }
