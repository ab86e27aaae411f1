package etag

import (
	"context"
	crand "crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"math/rand/v2"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"

	"github.com/restgate/restgate/modules/redisapp"
)

// With `redis`, api_etag coordinates with every gateway that uses the same
// Redis: conditional writes take a lock per resource there as well as here,
// and a write that invalidates cached responses tells the other gateways,
// which drop them too.
//
// The lock is `SET <key> <random token> NX PX <lock_ttl>`, released only by
// its owner (a compare-and-delete script) and, while the write goes on,
// extended every lock_ttl/3 by its owner (compare-and-expire). Fencing: the
// backends behind a gateway do not know lock tokens, so nothing can refuse a
// write from a holder whose lock expired. The guarantee is therefore: two
// conditional writes to one resource never overlap as long as the holder's
// gateway can reach Redis at least once per lock_ttl. A gateway that cannot
// reach Redis refuses conditional writes with 503 (it never writes unlocked).
//
// Through a Redis hiccup (slow, frozen, restarted):
//   - taking a lock has its own circuit (redisapp.PurposeLock): rate-limit
//     timeouts never refuse it, and its timeouts never refuse anything else.
//   - a `SET NX` whose reply did not come may still have been done by Redis:
//     its token is released (compare-and-delete) in the background, retried
//     until Redis has answered twice at least 200 ms apart (the SET may be
//     queued behind the first answer) or the lock has expired anyway.
//   - releasing and extending have no circuit and are retried: a release
//     that fails goes on in the background until Redis takes it or the lock
//     has expired (the resource is never left locked for lock_ttl because
//     of one lost reply); an extension that fails is retried until the
//     lock's expiry, and only then (or when Redis says the token is gone) is
//     the lock lost. A holder that knows its lock is lost does not forward
//     the write (503 lock_lost, nothing changed).
//   - invalidations are published with their own circuit, and one that
//     fails is sent again until Redis takes it; a gateway whose
//     subscription broke or stopped answering (a frozen Redis never closes
//     it) drops its whole cache, when it notices (1.5 s of silence) and again
//     when it is subscribed again. So once Redis answers, every gateway has
//     had each invalidation or dropped its cache within about a second
//     (see redisapp's bus).
//
// Through a failover (Sentinel promotes a replica, a Cluster primary's
// replica takes its slots): Redis replicates asynchronously, so a lock
// granted just before the primary died may be missing on the new one and
// be granted again: two writers may then overlap once. The redis app's
// wait_replicas narrows this to grants no replica acknowledged, which are
// refused (503). Locks are single keys (lock:<resource key>): in a
// Cluster they spread over the slots and need no hash tag.

// invalidateTopic carries the resource keys a write invalidated, as a JSON
// array of strings: framed, so that no character a key may contain can
// split one key into two. A message that is not such an array (a gateway of
// an older version, which joined keys with newlines) drops the whole cache:
// what it meant cannot be trusted.
const invalidateTopic = "etag.invalidate"

// defaultLockTTL is how long a Redis lock lives without being extended.
const defaultLockTTL = 30 * time.Second

var (
	releaseScript = redis.NewScript(`if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0`)
	extendScript  = redis.NewScript(`if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end return 0`)
)

// errLockUnavailable: Redis could not be asked for the lock.
var errLockUnavailable = errors.New("the shared lock is unavailable")

// locker serialises conditional writes per resource.
type locker interface {
	lock(ctx context.Context, key string, timeout time.Duration) (unlock func(), err error)
}

// lockWithLoss takes key's lock from l; lost reports whether the holder
// knows it no longer holds it (a shared lock it could not extend in time).
func lockWithLoss(l locker, ctx context.Context, key string, timeout time.Duration) (unlock func(), lost func() bool, err error) {
	if rl, ok := l.(*redisLocks); ok {
		held, err := rl.acquire(ctx, key, timeout)
		if err != nil {
			return nil, nil, err
		}
		return held.unlock, held.isLost, nil
	}
	unlock, err = l.lock(ctx, key, timeout)
	return unlock, func() bool { return false }, err
}

// redisLocks takes the local lock first (writers through one gateway queue
// here, not by polling Redis), then the Redis lock.
type redisLocks struct {
	local  *keyedLocks
	app    *redisapp.App
	ttl    time.Duration
	logger *zap.Logger
}

// heldLock is one taken Redis lock.
type heldLock struct {
	l           *redisLocks
	rkey, token string
	unlockLocal func()
	validUntil  atomic.Int64 // unix nanoseconds: the lock's expiry as last set
	lost        atomic.Bool  // Redis said the token is gone, or validUntil passed unextended
	stop, done  chan struct{}
}

func (l *redisLocks) lock(ctx context.Context, key string, timeout time.Duration) (func(), error) {
	held, err := l.acquire(ctx, key, timeout)
	if err != nil {
		return nil, err
	}
	return held.unlock, nil
}

func (l *redisLocks) acquire(ctx context.Context, key string, timeout time.Duration) (*heldLock, error) {
	deadline := time.Now().Add(timeout)
	unlockLocal, err := l.local.lock(ctx, key, timeout)
	if err != nil {
		return nil, err
	}
	var tok [16]byte
	_, _ = crand.Read(tok[:])
	h := &heldLock{l: l, rkey: l.app.Key("lock:" + key), token: hex.EncodeToString(tok[:]), unlockLocal: unlockLocal}
	wait := 2 * time.Millisecond
	for {
		var ok bool
		sent := time.Now()
		err := l.app.DoFor(ctx, redisapp.PurposeLock, func(ctx context.Context, c redis.UniversalClient) error {
			var err error
			// with the redis app's wait_replicas, the grant waits until
			// replicas have it (a failover then keeps it); a grant too few
			// replicas have is an error, released below like a lost reply
			ok, err = l.app.SetNX(ctx, c, h.rkey, h.token, l.ttl)
			return err
		})
		if err != nil {
			if err != redisapp.ErrUnavailable { // sent: Redis may have set it
				go l.release(h.rkey, h.token, sent.Add(l.ttl), true)
			}
			unlockLocal()
			return nil, errLockUnavailable
		}
		if ok {
			h.validUntil.Store(sent.Add(l.ttl).UnixNano())
			break
		}
		if time.Now().Add(wait).After(deadline) {
			unlockLocal()
			return nil, context.DeadlineExceeded
		}
		// another gateway holds it: poll with growing, jittered waits
		t := time.NewTimer(wait/2 + rand.N(wait))
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			unlockLocal()
			return nil, ctx.Err()
		}
		wait = min(wait*2, 50*time.Millisecond)
	}
	h.stop, h.done = make(chan struct{}), make(chan struct{})
	go h.extend()
	return h, nil
}

func (h *heldLock) isLost() bool {
	return h.lost.Load() || time.Now().UnixNano() >= h.validUntil.Load()
}

// unlock stops extending, releases the Redis lock (in the background if
// Redis does not answer at once) and then the local one.
func (h *heldLock) unlock() {
	close(h.stop)
	<-h.done
	if !h.l.releaseOnce(h.rkey, h.token, nil) {
		go h.l.release(h.rkey, h.token, time.Unix(0, h.validUntil.Load()), false)
	}
	h.unlockLocal()
}

// releaseOnce tries the compare-and-delete once; it reports whether Redis
// answered (deleted tells whether the token still held the lock).
func (l *redisLocks) releaseOnce(rkey, token string, deleted *bool) bool {
	var n int64
	err := l.app.DoFor(context.Background(), redisapp.PurposeBackground, func(ctx context.Context, c redis.UniversalClient) error {
		var err error
		n, err = releaseScript.Run(ctx, c, []string{rkey}, token).Int64()
		return err
	})
	if deleted != nil {
		*deleted = n == 1
	}
	return err == nil
}

// release retries the compare-and-delete until Redis answers (an orphan:
// until it deleted the token, or answered twice at least 200 ms apart) or
// the lock has expired by itself at until.
func (l *redisLocks) release(rkey, token string, until time.Time, orphan bool) {
	wait := 50 * time.Millisecond
	var answered time.Time
	for time.Now().Before(until) {
		var deleted bool
		if l.releaseOnce(rkey, token, &deleted) {
			if !orphan || deleted || (!answered.IsZero() && time.Since(answered) >= 200*time.Millisecond) {
				return
			}
			if answered.IsZero() {
				answered = time.Now()
			}
			wait = 200 * time.Millisecond
		} else {
			wait = min(wait*2, time.Second)
		}
		time.Sleep(wait)
	}
	if !orphan {
		l.logger.Warn("releasing a shared write lock failed until it expired by itself", zap.Duration("lock_ttl", l.ttl))
	}
}

// extend keeps the lock alive while the write goes on: every lock_ttl/3,
// and after a failure again soon, until the lock's expiry; the lock is
// lost when Redis says the token is gone or the expiry passes unextended.
func (h *heldLock) extend() {
	defer close(h.done)
	l := h.l
	t := time.NewTimer(l.ttl / 3)
	defer t.Stop()
	retry := 50 * time.Millisecond
	for {
		select {
		case <-h.stop:
			return
		case <-t.C:
		}
		var n int64
		sent := time.Now()
		err := l.app.DoFor(context.Background(), redisapp.PurposeBackground, func(ctx context.Context, c redis.UniversalClient) error {
			var err error
			n, err = extendScript.Run(ctx, c, []string{h.rkey}, h.token, l.ttl.Milliseconds()).Int64()
			return err
		})
		switch {
		case err == nil && n == 1:
			h.validUntil.Store(sent.Add(l.ttl).UnixNano())
			t.Reset(l.ttl / 3)
			retry = 50 * time.Millisecond
			continue
		case err == nil || time.Now().UnixNano() >= h.validUntil.Load():
			h.lost.Store(true)
			l.logger.Error("a conditional write outlived its shared lock: another gateway may write the same resource concurrently",
				zap.Duration("lock_ttl", l.ttl), zap.Error(err))
			return
		}
		t.Reset(min(retry, time.Until(time.Unix(0, h.validUntil.Load()))))
		retry = min(retry*2, time.Second)
	}
}

// publishInvalidation tells the other gateways which keys a write made
// stale. A failure is logged; the redis app sends the event again until
// Redis takes it.
func (h *Handler) publishInvalidation(ctx context.Context, keys []string) {
	if h.redis == nil || len(keys) == 0 {
		return
	}
	msg, err := json.Marshal(keys)
	if err != nil {
		return // cannot happen: keys are strings
	}
	err = h.redis.Publish(context.WithoutCancel(ctx), invalidateTopic, string(msg))
	if err != nil {
		h.logger.Warn("could not tell the other gateways about a write yet; it is sent again until Redis takes it",
			zap.Error(err))
	}
}

// subscribe drops what other gateways' writes invalidated, and everything
// after a break in the subscription.
func (h *Handler) subscribe() func() {
	return h.redis.Subscribe(invalidateTopic, h.applyInvalidation, h.store.purge)
}

// applyInvalidation drops what another gateway's write invalidated (see
// invalidateTopic).
func (h *Handler) applyInvalidation(payload string) {
	var keys []string
	if err := json.Unmarshal([]byte(payload), &keys); err != nil {
		h.logger.Warn("an invalidation from another gateway could not be read; dropping the whole cache", zap.Error(err))
		h.store.purge()
		return
	}
	for _, key := range keys {
		h.store.invalidate(key)
	}
}
