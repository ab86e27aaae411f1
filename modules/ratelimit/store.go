package ratelimit

import (
	"time"

	lru "github.com/hashicorp/golang-lru/v2"
	"golang.org/x/time/rate"
)

// Store holds the token buckets of one zone. The in-memory store is the
// embedded default; a shared store (Redis) lets several gateways enforce one
// limit.
type Store interface {
	// Reserve takes one token from key's bucket if it has one. It returns
	// whether the request is admitted, the tokens left, how long until the
	// bucket is full again, how long until a token is available (when not
	// admitted), and a refund that puts the token back (nil if nothing was
	// taken).
	Reserve(key string, limit rate.Limit, burst int, now time.Time) Decision
	// Resize bounds how many keys the store keeps.
	Resize(maxKeys int)
	// Len is how many keys it holds.
	Len() int
}

// Decision is the outcome of Reserve.
type Decision struct {
	Admitted    bool
	Remaining   float64
	ResetIn     time.Duration // until the bucket is full
	RetryIn     time.Duration // until a token is available, when refused
	reservation rate.Reservation
}

// Refund puts an admitted request's token back.
func (d *Decision) Refund(now time.Time) {
	if d.Admitted {
		d.reservation.CancelAt(now)
		d.Admitted = false
	}
}

// memStore is an LRU of golang.org/x/time/rate buckets bounded by maxKeys:
// the least recently seen key is forgotten first, so memory stays bounded
// however many distinct keys arrive.
type memStore struct {
	buckets *lru.Cache[string, *rate.Limiter]
}

func newMemStore(maxKeys int) (*memStore, error) {
	c, err := lru.New[string, *rate.Limiter](maxKeys)
	if err != nil {
		return nil, err
	}
	return &memStore{buckets: c}, nil
}

func (s *memStore) Reserve(key string, limit rate.Limit, burst int, now time.Time) Decision {
	lim, ok := s.buckets.Get(key)
	if !ok {
		lim = rate.NewLimiter(limit, burst)
		// a concurrent first request for the same key may have added one
		if prev, found, _ := s.buckets.PeekOrAdd(key, lim); found {
			lim = prev
		}
	}
	if lim.Limit() != limit { // the zone's rate changed in a config reload
		lim.SetLimitAt(now, limit)
	}
	if lim.Burst() != burst {
		lim.SetBurstAt(now, burst)
	}
	res := lim.ReserveN(now, 1)
	d := Decision{reservation: *res}
	if res.OK() && res.DelayFrom(now) == 0 {
		d.Admitted = true
	} else {
		d.RetryIn = res.DelayFrom(now)
		res.CancelAt(now) // a refused request spends nothing
	}
	d.Remaining = max(lim.TokensAt(now), 0)
	if limit > 0 {
		d.ResetIn = time.Duration((float64(burst) - d.Remaining) / float64(limit) * float64(time.Second))
	}
	return d
}

func (s *memStore) Resize(maxKeys int) { s.buckets.Resize(maxKeys) }

func (s *memStore) Len() int { return s.buckets.Len() }
