package idempotency

import (
	"context"
	crand "crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"

	"github.com/restgate/restgate/modules/redisapp"
)

// With `store redis` (or `auto` and the redis app configured), the records
// live in Redis, where every gateway that shares it finds them: a retry
// that the load balancer sends to another gateway, or that arrives after
// a restart, is answered as the first gateway would have answered it.
//
// A key is one Redis hash, `<key_prefix>idem:{<scope>}` (the scope is the
// digest of principal, method, resource and key, in hex; the braces make it
// the hash tag, so a Redis Cluster keeps it in one slot), and each script
// touches that one key:
//
//   - claim: if the key holds nothing current, it holds an in-flight claim
//     now (the request's fingerprint and a random owner token) for a short
//     lease (claim_lease, 10s by default) that the holder renews every
//     lease/3 while its request runs; otherwise the script answers what
//     the key holds.
//   - complete: only the owner's token turns the claim into the stored
//     response (status, headers, body up to max_body; a larger one is kept
//     as a "not stored" marker, so that its retry is a 409, never a second
//     run) for ttl.
//   - release (an error, a 5xx): only the owner's token deletes the claim.
//
// Expiry is on Redis's clock, one for every gateway. A gateway that dies
// mid-request leaves its claim: a retry gets the 409 "in flight" until the
// lease lapses, then runs. The gateway cannot know whether the backend had
// carried the request out when it died; if it had, the retry runs it
// again (a backend that must never see a request twice needs its own
// check, such as a natural key answering 409).
//
// The in-flight bounds (max_in_flight, max_in_flight_total) count this
// gateway's requests; max_size does not apply (Redis holds each record
// for ttl: size it for that), and a response larger than principal_quota
// is kept as the "not stored" marker, as in memory.
//
// Through Redis trouble: a claim that cannot be made (Redis unreachable,
// its circuit open) is refused with a 503 problem and a Retry-After: a
// request with a key is never carried out unprotected. Completing,
// releasing and renewing have no circuit and are retried in the
// background while the lease lasts. A claim whose reply was lost (Redis
// may have made it) is released in the background.

// claimPurpose is the redis app's circuit for claims: its own, so limiter
// timeouts never refuse a claim.
const claimPurpose = redisapp.PurposeIdempotency

// defaultClaimLease is how long a claim lives unless its holder renews it.
const defaultClaimLease = 10 * time.Second

// The scripts. KEYS[1] is the key's hash: tok (the owner's token, while in
// flight), fp, exp (ms; on the caller's clock if ARGV gives one, else
// Redis's), st, d ("1": not stored), h (JSON header), b (body).
var (
	// ARGV: now ms or "", token, fingerprint, lease ms, "1" to look only.
	// Returns 1 when claimed (0 when it would be, looking only), else
	// {exp, tok, fp, st, d, h, b}.
	claimScript = redis.NewScript(`
local now = tonumber(ARGV[1])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local v = redis.call('HMGET', KEYS[1], 'exp', 'tok', 'fp', 'st', 'd', 'h', 'b')
local exp = tonumber(v[1])
if exp and exp > now then
  return {v[1], v[2] or '', v[3] or '', v[4] or '', v[5] or '', v[6] or '', v[7] or ''}
end
if ARGV[5] == '1' then return 0 end
local lease = tonumber(ARGV[4])
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'tok', ARGV[2], 'fp', ARGV[3], 'exp', now + lease)
redis.call('PEXPIRE', KEYS[1], lease)
return 1
`)
	// ARGV: token, now ms or "", lease ms. Returns 1 when renewed.
	renewScript = redis.NewScript(`
if redis.call('HGET', KEYS[1], 'tok') ~= ARGV[1] then return 0 end
local now = tonumber(ARGV[2])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
redis.call('HSET', KEYS[1], 'exp', now + tonumber(ARGV[3]))
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
`)
	// ARGV: token, expiry ms or "" (now + ttl), ttl ms, fp, st, d, h, b.
	// Returns 1 when stored.
	completeScript = redis.NewScript(`
if redis.call('HGET', KEYS[1], 'tok') ~= ARGV[1] then return 0 end
local ttl = tonumber(ARGV[3])
local exp = tonumber(ARGV[2])
if not exp then
  local t = redis.call('TIME')
  exp = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + ttl
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'fp', ARGV[4], 'exp', exp, 'st', ARGV[5], 'd', ARGV[6], 'h', ARGV[7], 'b', ARGV[8])
redis.call('PEXPIRE', KEYS[1], ttl)
return 1
`)
	// ARGV: token. Returns 1 when deleted.
	releaseScript = redis.NewScript(`if redis.call('HGET', KEYS[1], 'tok') == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0`)
)

// redisStore keeps the records in Redis (see above).
type redisStore struct {
	app    *redisapp.App
	lim    limits
	lease  time.Duration
	logger *zap.Logger
	// the caller's clock instead of Redis's (tests only: one fake clock
	// for both stores); nil in production
	clock func() time.Time

	mu       sync.Mutex
	inFlight map[string]map[*sharedHold]time.Time // this gateway's claims by principal, with their ttl's end
	total    int
}

// sharedHold is a claim's owner token and lease.
type sharedHold struct {
	rkey, owner string
	ttl, lease  time.Duration
	until       time.Time    // the claim's ttl: it is not renewed past it
	validUntil  atomic.Int64 // unix ns, local clock: the lease as last set
	settled     atomic.Bool
	stop, done  chan struct{}
}

func newRedisStore(app *redisapp.App, lim limits, lease time.Duration, logger *zap.Logger) *redisStore {
	return &redisStore{app: app, lim: lim, lease: lease, logger: logger, inFlight: map[string]map[*sharedHold]time.Time{}}
}

// rkey is the Redis key of a scope.
func (s *redisStore) rkey(key string) string {
	return s.app.Key("idem:{" + hex.EncodeToString([]byte(key)) + "}")
}

// clockArg is now in ms for the scripts, or "" for Redis's clock.
func (s *redisStore) clockArg(now time.Time) string {
	if s.clock == nil {
		return ""
	}
	return strconv.FormatInt(now.UnixMilli(), 10)
}

func (s *redisStore) Begin(ctx context.Context, principal, key string, fp Fingerprint, now time.Time, ttl time.Duration) (*Claim, *Record, error) {
	var tok [16]byte
	_, _ = crand.Read(tok[:])
	h := &sharedHold{rkey: s.rkey(key), owner: hex.EncodeToString(tok[:]), ttl: ttl, lease: min(s.lease, ttl)}
	// over a bound, the key's record is still answered, as in memory:
	// only a claim is refused (the script only looks)
	busy := s.take(principal, h, now)
	lookOnly := "0"
	if busy != nil {
		lookOnly = "1"
	}
	var reply any
	sent := time.Now()
	err := s.app.DoFor(ctx, claimPurpose, func(ctx context.Context, c redis.UniversalClient) error {
		var err error
		reply, err = claimScript.Run(ctx, c, []string{h.rkey}, s.clockArg(now), h.owner, fp[:], h.lease.Milliseconds(), lookOnly).Result()
		return err
	})
	h.validUntil.Store(sent.Add(h.lease).UnixNano())
	switch n, claimed := reply.(int64); {
	case err != nil && busy == nil:
		s.give(principal, h)
		if errors.Is(err, redisapp.ErrUnavailable) && err != redisapp.ErrUnavailable { // sent: Redis may have made the claim
			go s.retry(h, true, func() (bool, bool) { return s.releaseOnce(h) })
		}
		return nil, nil, fmt.Errorf("%w: %w", ErrStoreUnavailable, err)
	case err != nil || (claimed && busy != nil):
		return nil, nil, busy
	case claimed && n == 1:
		h.until = sent.Add(ttl)
		h.stop, h.done = make(chan struct{}), make(chan struct{})
		go s.keep(h)
		return &Claim{principal: principal, key: key, shared: h}, nil, nil
	}
	s.give(principal, h)
	rec, err := parseRecord(reply)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %w", ErrStoreUnavailable, err)
	}
	return nil, rec, nil
}

// take counts a claim of principal's in flight on this gateway, unless
// that makes too many; claims whose ttl has passed (by now) no longer
// count, as in memory.
func (s *redisStore) take(principal string, h *sharedHold, now time.Time) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	mine := s.inFlight[principal]
	for o, end := range mine {
		if !now.Before(end) {
			delete(mine, o)
			s.total--
		}
	}
	switch {
	case len(mine) >= s.lim.inFlight:
		return ErrPrincipalBusy
	case s.total >= s.lim.inFlightTotal:
		return ErrStoreBusy
	}
	if mine == nil {
		mine = map[*sharedHold]time.Time{}
		s.inFlight[principal] = mine
	}
	mine[h] = now.Add(h.ttl)
	s.total++
	return nil
}

// give uncounts a claim.
func (s *redisStore) give(principal string, h *sharedHold) {
	s.mu.Lock()
	defer s.mu.Unlock()
	mine := s.inFlight[principal]
	if _, ok := mine[h]; ok {
		delete(mine, h)
		s.total--
	}
	if len(mine) == 0 {
		delete(s.inFlight, principal)
	}
}

// settle ends c's hold here (renewal, in-flight count), once: it returns
// nil for a claim already settled.
func (s *redisStore) settle(c *Claim) *sharedHold {
	if c == nil || c.shared == nil || !c.shared.settled.CompareAndSwap(false, true) {
		return nil
	}
	h := c.shared
	close(h.stop)
	<-h.done
	s.give(c.principal, h)
	return h
}

func (s *redisStore) Complete(c *Claim, rec *Record) bool {
	h := s.settle(c)
	if h == nil {
		return false
	}
	if rec.size(c.key) > s.lim.quota {
		rec = rec.discard()
	}
	header, err := json.Marshal(rec.Header)
	if err != nil {
		return false // cannot happen: strings
	}
	exp, discarded := "", "0"
	if s.clock != nil {
		exp = strconv.FormatInt(rec.Expires.UnixMilli(), 10)
	}
	if rec.Discarded {
		discarded = "1"
	}
	args := []any{h.owner, exp, h.ttl.Milliseconds(), rec.Fingerprint[:], rec.Status, discarded, header, rec.Body}
	once := func() (answered, current bool) {
		return s.run(completeScript, h.rkey, args)
	}
	answered, current := once()
	if !answered {
		go s.retry(h, false, once)
		return true
	}
	return current
}

func (s *redisStore) Release(c *Claim) bool {
	h := s.settle(c)
	if h == nil {
		return false
	}
	answered, current := s.releaseOnce(h)
	if !answered {
		go s.retry(h, false, func() (bool, bool) { return s.releaseOnce(h) })
		return true
	}
	return current
}

func (s *redisStore) releaseOnce(h *sharedHold) (answered, current bool) {
	return s.run(releaseScript, h.rkey, []any{h.owner})
}

// run runs a script that answers 1 or 0 on Redis, without a circuit: it
// reports whether Redis answered, and what.
func (s *redisStore) run(script *redis.Script, rkey string, args []any) (answered, one bool) {
	var n int64
	err := s.app.DoFor(context.Background(), redisapp.PurposeBackground, func(ctx context.Context, c redis.UniversalClient) error {
		var err error
		n, err = script.Run(ctx, c, []string{rkey}, args...).Int64()
		return err
	})
	return err == nil, n == 1
}

// retry calls once until Redis answers or h's lease has lapsed (then the
// claim is gone by itself). An orphan (a claim whose reply was lost) is
// retried until it is deleted or Redis has answered twice at least 200 ms
// apart: the claim may be queued behind the first answer.
func (s *redisStore) retry(h *sharedHold, orphan bool, once func() (answered, current bool)) {
	wait := 50 * time.Millisecond
	var answered time.Time
	for time.Now().UnixNano() < h.validUntil.Load() {
		time.Sleep(wait)
		ok, current := once()
		switch {
		case !ok:
			wait = min(wait*2, time.Second)
			continue
		case !orphan || current || (!answered.IsZero() && time.Since(answered) >= 200*time.Millisecond):
			return
		case answered.IsZero():
			answered = time.Now()
		}
		wait = 200 * time.Millisecond
	}
	if !orphan {
		s.logger.Error("Redis could not be reached to settle an Idempotency-Key claim before its lease lapsed: a retry of the request may carry it out again",
			zap.Duration("claim_lease", h.lease))
	}
}

// keep renews h's lease every lease/3 while its request runs (and after a
// failure again soon, until the lease lapses), up to the claim's ttl.
func (s *redisStore) keep(h *sharedHold) {
	defer close(h.done)
	t := time.NewTimer(h.lease / 3)
	defer t.Stop()
	retry := 50 * time.Millisecond
	for {
		select {
		case <-h.stop:
			return
		case <-t.C:
		}
		if time.Now().After(h.until) {
			return // as in memory: the claim lives until ttl at most
		}
		var now time.Time
		if s.clock != nil {
			now = s.clock()
		}
		var n int64
		sent := time.Now()
		err := s.app.DoFor(context.Background(), redisapp.PurposeBackground, func(ctx context.Context, c redis.UniversalClient) error {
			var err error
			n, err = renewScript.Run(ctx, c, []string{h.rkey}, h.owner, s.clockArg(now), h.lease.Milliseconds()).Int64()
			return err
		})
		switch {
		case err == nil && n == 1:
			h.validUntil.Store(sent.Add(h.lease).UnixNano())
			t.Reset(h.lease / 3)
			retry = 50 * time.Millisecond
			continue
		case err == nil || time.Now().UnixNano() >= h.validUntil.Load():
			s.logger.Error("a request with an Idempotency-Key outlived its claim's lease (Redis could not be reached to renew it): another gateway may carry out a retry of it too",
				zap.Duration("claim_lease", h.lease), zap.Error(err))
			return
		}
		t.Reset(min(retry, time.Until(time.Unix(0, h.validUntil.Load()))))
		retry = min(retry*2, time.Second)
	}
}

// parseRecord reads the claim script's answer for a key that holds
// something: {exp, tok, fp, st, d, h, b}.
func parseRecord(reply any) (*Record, error) {
	v, ok := reply.([]any)
	if !ok || len(v) != 7 {
		return nil, fmt.Errorf("idempotency claim script: unexpected %T %v", reply, reply)
	}
	f := make([]string, len(v))
	for i := range v {
		if f[i], ok = v[i].(string); !ok {
			return nil, fmt.Errorf("idempotency claim script: field %d is %T", i, v[i])
		}
	}
	exp, err := strconv.ParseInt(f[0], 10, 64)
	if err != nil || len(f[2]) != len(Fingerprint{}) {
		return nil, errors.New("idempotency claim script: a malformed record")
	}
	rec := &Record{InFlight: f[1] != "", Discarded: f[4] == "1", Expires: time.UnixMilli(exp)}
	copy(rec.Fingerprint[:], f[2])
	if rec.InFlight {
		return rec, nil
	}
	if rec.Status, err = strconv.Atoi(f[3]); err != nil {
		return nil, errors.New("idempotency claim script: a record without a status")
	}
	if f[5] != "" && f[5] != "null" {
		var h http.Header
		if err := json.Unmarshal([]byte(f[5]), &h); err != nil {
			return nil, fmt.Errorf("idempotency claim script: header: %v", err)
		}
		rec.Header = h
	}
	rec.Body = []byte(f[6])
	return rec, nil
}

// Interface guard
var _ Store = (*redisStore)(nil)
