package etag

import (
	"context"
	crand "crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"math/rand/v2"
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
// gateway can reach Redis at least once per lock_ttl (a holder that cannot
// extend its lock logs an error). A gateway that cannot reach Redis refuses
// conditional writes with 503 (it never writes unlocked).

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

// redisLocks takes the local lock first (writers through one gateway queue
// here, not by polling Redis), then the Redis lock.
type redisLocks struct {
	local  *keyedLocks
	app    *redisapp.App
	ttl    time.Duration
	logger *zap.Logger
}

func (l *redisLocks) lock(ctx context.Context, key string, timeout time.Duration) (func(), error) {
	deadline := time.Now().Add(timeout)
	unlockLocal, err := l.local.lock(ctx, key, timeout)
	if err != nil {
		return nil, err
	}
	var tok [16]byte
	_, _ = crand.Read(tok[:])
	token := hex.EncodeToString(tok[:])
	rkey := l.app.Key("lock:" + key)
	wait := 2 * time.Millisecond
	for {
		var ok bool
		err := l.app.Do(ctx, func(ctx context.Context, c *redis.Client) error {
			var err error
			ok, err = c.SetNX(ctx, rkey, token, l.ttl).Result()
			return err
		})
		if err != nil {
			unlockLocal()
			return nil, errLockUnavailable
		}
		if ok {
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

	stop := make(chan struct{})
	done := make(chan struct{})
	go l.extend(rkey, token, stop, done)
	return func() {
		close(stop)
		<-done
		err := l.app.Do(context.Background(), func(ctx context.Context, c *redis.Client) error {
			return releaseScript.Run(ctx, c, []string{rkey}, token).Err()
		})
		if err != nil {
			l.logger.Warn("releasing a shared write lock failed; it expires by itself", zap.Duration("lock_ttl", l.ttl), zap.Error(err))
		}
		unlockLocal()
	}, nil
}

// extend keeps the lock alive while the write goes on.
func (l *redisLocks) extend(rkey, token string, stop <-chan struct{}, done chan<- struct{}) {
	defer close(done)
	t := time.NewTicker(l.ttl / 3)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
		}
		var n int64
		err := l.app.Do(context.Background(), func(ctx context.Context, c *redis.Client) error {
			var err error
			n, err = extendScript.Run(ctx, c, []string{rkey}, token, l.ttl.Milliseconds()).Int64()
			return err
		})
		if err != nil || n == 0 {
			l.logger.Error("a conditional write outlived its shared lock: another gateway may write the same resource concurrently",
				zap.Duration("lock_ttl", l.ttl), zap.Error(err))
			return
		}
	}
}

// publishInvalidation tells the other gateways which keys a write made
// stale. A failure is logged: the others will have lost their subscription
// too if Redis is down, and drop their caches when it returns.
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
		h.logger.Warn("could not tell the other gateways about a write; their caches may serve the old representation until it expires or they reconnect",
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
