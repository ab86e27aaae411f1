package ratelimit

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"math"
	"strconv"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/restgate/restgate/modules/redisapp"
)

// Stores.
const (
	StoreLocal = "local"
	StoreRedis = "redis"
)

// On-error policies of the redis store.
const (
	OnErrorAllow = "allow" // admit requests while Redis cannot decide (fail open)
	OnErrorDeny  = "deny"  // refuse them with a 503 problem (fail closed)
)

// takeScript decides one request against every bucket of a handler's
// zones in one round trip, all or nothing: if any bucket lacks a token,
// none is taken (and nothing is written). It is the arithmetic of bucket
// (store.go), on Redis's clock unless the caller passes one (tests do).
// refundScript gives one token back to one bucket.
//
// KEYS[i]: bucket i, a hash {t: tokens, l: last update in µs}.
// ARGV[1]: now in µs, or "" for Redis's TIME. ARGV[2]: "1" take, "0" refund.
// ARGV[1+2i], ARGV[2+2i]: bucket i's refill (tokens per µs) and size.
// Returns {index of the first bucket without a token (0: none), then each
// bucket's tokens after the decision}. An idle bucket expires once it
// would be full again: a missing bucket is a full one.
var bucketScript = redis.NewScript(`
local now = tonumber(ARGV[1])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local take = ARGV[2] == '1'
local n = #KEYS
local tokens, lasts, rates, bursts = {}, {}, {}, {}
local refused = 0
for i = 1, n do
  local rate, burst = tonumber(ARGV[1 + 2 * i]), tonumber(ARGV[2 + 2 * i])
  local v = redis.call('HMGET', KEYS[i], 't', 'l')
  local tk, last = tonumber(v[1]), tonumber(v[2])
  if not tk or not last then tk, last = burst, now end
  if now > last then
    tk = tk + (now - last) * rate
    last = now
  end
  if tk > burst then tk = burst end
  tokens[i], lasts[i], rates[i], bursts[i] = tk, last, rate, burst
  if take and tk < 1 and refused == 0 then refused = i end
end
local out = {refused}
for i = 1, n do
  if refused == 0 then
    if take then tokens[i] = tokens[i] - 1 else tokens[i] = math.min(tokens[i] + 1, bursts[i]) end
    redis.call('HSET', KEYS[i], 't', string.format('%.17g', tokens[i]), 'l', string.format('%d', lasts[i]))
    redis.call('PEXPIRE', KEYS[i], math.ceil((bursts[i] - tokens[i]) / rates[i] / 1000) + 1000)
  end
  out[i + 1] = string.format('%.17g', tokens[i])
end
return out
`)

// redisDecider decides every zone of a handler through Redis.
type redisDecider struct {
	app *redisapp.App
	// the caller's clock instead of Redis's (tests only: the same table
	// runs against both stores with one fake clock)
	callerClock bool
}

// redisKeyPrefix is where a zone's buckets live in Redis. The zone is
// named and, so that two zones of one name that count different things
// never share buckets, fingerprinted by what its local pool key holds.
func (z *Zone) redisKeyPrefix(app *redisapp.App) string {
	sum := sha256.Sum256([]byte(z.poolKey))
	return app.Key("rl:" + z.Name + ":" + hex.EncodeToString(sum[:4]) + ":")
}

// redisKey is the bucket of key in zone z:
// <key_prefix>rl:<zone>:<fingerprint>:{<key>}. The key is the hash tag, so
// that in a Redis Cluster one request's buckets of one principal (or one
// address) share a slot and are decided by one script, whatever the zone.
func redisKey(z *Zone, key string) string {
	return redisapp.Tagged(z.redisPrefix, key)
}

// decide takes a token for each ask, all or nothing; it returns the
// decisions up to and including the first refused one (as the local store
// does), and an error when Redis could not decide.
//
// In a Redis Cluster a script may touch one slot only. Buckets of
// different keys (a per-user and a per-IP zone) are in different slots:
// each slot's buckets are decided by their own script, all or nothing
// there, at once; when one slot refuses, what the others took is given
// back before the answer (decideSplit).
func (rd *redisDecider) decide(ctx context.Context, asks []ask, now time.Time, out []Decision) (int, error) {
	keys := make([]string, len(asks))
	for i, a := range asks {
		keys[i] = redisKey(a.zone, a.key)
	}
	var groups [][]int
	if len(keys) > 1 && rd.app.IsCluster() {
		groups = slotGroups(keys)
	}
	var res []float64
	var err error
	if len(groups) > 1 {
		res, err = rd.decideSplit(ctx, asks, keys, groups, now)
	} else {
		res, err = rd.run(ctx, keys, rd.args(asks, now, "1"))
	}
	if err != nil {
		return 0, err
	}
	refused := int(res[0]) - 1
	n := len(asks)
	if refused >= 0 {
		n = refused + 1
	}
	for i := range n {
		z := asks[i].zone
		d := Decision{perSecond: z.perSecond, burst: z.burst}
		if refused < 0 {
			d.Admitted = true
			d.refund = &redisRefund{rd: rd, key: keys[i]}
		}
		d.setState(res[i+1])
		out[i] = d
	}
	return n, nil
}

// args are the script's arguments for asks: the clock, take ("1") or
// refund ("0"), then each bucket's refill and size.
func (rd *redisDecider) args(asks []ask, now time.Time, take string) []any {
	args := make([]any, 2, 2+2*len(asks))
	args[0], args[1] = rd.clockArg(now), take
	for _, a := range asks {
		args = append(args, perMicro(a.zone.perSecond), a.zone.burst)
	}
	return args
}

// slotGroups groups the indexes of keys by cluster slot, in order.
func slotGroups(keys []string) [][]int {
	var groups [][]int
	var slots []int
next:
	for i, k := range keys {
		s := redisapp.Slot(k)
		for g, gs := range slots {
			if gs == s {
				groups[g] = append(groups[g], i)
				continue next
			}
		}
		slots = append(slots, s)
		groups = append(groups, []int{i})
	}
	return groups
}

// decideSplit decides each slot's group of buckets with its own script,
// concurrently, and merges the replies into one as the single script
// gives it: the first refused bucket in zone order, then every bucket's
// tokens. When a group refused, the groups that took their tokens give
// them back (one refund script each) before the answer, and report the
// tokens after that; a group whose refund fails keeps them spent (the
// bucket refills at its rate), as an earlier handler's failed refund does.
// When a group could not be decided, the others' tokens are given back
// and the error returned.
func (rd *redisDecider) decideSplit(ctx context.Context, asks []ask, keys []string, groups [][]int, now time.Time) ([]float64, error) {
	type part struct {
		asks []ask
		keys []string
		res  []float64
		err  error
	}
	parts := make([]part, len(groups))
	var wg sync.WaitGroup
	for g, idx := range groups {
		p := &parts[g]
		for _, i := range idx {
			p.asks, p.keys = append(p.asks, asks[i]), append(p.keys, keys[i])
		}
		wg.Go(func() { p.res, p.err = rd.run(ctx, p.keys, rd.args(p.asks, now, "1")) })
	}
	wg.Wait()
	res := make([]float64, len(keys)+1)
	var err error
	refused := len(keys) // none
	for g, idx := range groups {
		p := &parts[g]
		if p.err != nil {
			err = p.err
			continue
		}
		if r := int(p.res[0]) - 1; r >= 0 {
			refused = min(refused, idx[r])
		}
		for j, i := range idx {
			res[i+1] = p.res[j+1]
		}
	}
	if err == nil && refused == len(keys) {
		return res, nil
	}
	// give back what the groups that admitted took
	for g, idx := range groups {
		p := &parts[g]
		if p.err != nil || p.res[0] != 0 {
			continue
		}
		wg.Go(func() {
			var v any
			if rd.app.DoFor(context.Background(), redisapp.PurposeRefund, func(ctx context.Context, c redis.UniversalClient) error {
				var err error
				v, err = bucketScript.Run(ctx, c, p.keys, rd.args(p.asks, now, "0")...).Result()
				return err
			}) != nil {
				return
			}
			if back, perr := parseReply(v, p.keys); perr == nil {
				for j, i := range idx {
					res[i+1] = back[j+1]
				}
			}
		})
	}
	wg.Wait()
	if err != nil {
		return nil, err
	}
	res[0] = float64(refused + 1)
	return res, nil
}

func (rd *redisDecider) clockArg(now time.Time) string {
	if rd.callerClock {
		return strconv.FormatInt(now.UnixMicro(), 10)
	}
	return ""
}

// run evaluates the script and parses its reply: the refused index, then
// each bucket's tokens.
func (rd *redisDecider) run(ctx context.Context, keys []string, args []any) ([]float64, error) {
	v, err := rd.app.RunScript(ctx, bucketScript, keys, args...)
	if err != nil {
		return nil, err
	}
	return parseReply(v, keys)
}

// parseReply reads the script's reply for keys.
func parseReply(v any, keys []string) ([]float64, error) {
	reply, ok := v.([]any)
	if !ok {
		return nil, fmt.Errorf("rate-limit script: unexpected %T", v)
	}
	if len(reply) != len(keys)+1 {
		return nil, fmt.Errorf("rate-limit script: %d values for %d buckets", len(reply), len(keys))
	}
	out := make([]float64, len(reply))
	for i, v := range reply {
		switch v := v.(type) {
		case int64:
			out[i] = float64(v)
		case string:
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				return nil, fmt.Errorf("rate-limit script: %q", v)
			}
			out[i] = f
		default:
			return nil, fmt.Errorf("rate-limit script: unexpected %T", v)
		}
	}
	return out, nil
}

func perMicro(perSecond float64) string {
	return strconv.FormatFloat(perSecond/1e6, 'g', -1, 64)
}

// redisRefund gives a token back to a bucket in Redis (a later handler of
// the same request refused it).
type redisRefund struct {
	rd  *redisDecider
	key string
}

// A refund has its own circuit (redisapp.PurposeRefund): the timeout of a
// later limiter's decision, which is what often calls for the refund,
// opens the rate-limit circuit and must not also drop the refund.
func (r *redisRefund) refund(now time.Time, perSecond float64, burst int) float64 {
	keys := []string{r.key}
	var v any
	err := r.rd.app.DoFor(context.Background(), redisapp.PurposeRefund, func(ctx context.Context, c redis.UniversalClient) error {
		var err error
		v, err = bucketScript.Run(ctx, c, keys, r.rd.clockArg(now), "0", perMicro(perSecond), burst).Result()
		return err
	})
	var res []float64
	if err == nil {
		res, err = parseReply(v, keys)
	}
	if err != nil {
		// the token stays spent: the bucket refills at its rate, and the
		// circuit has logged the failure
		return math.NaN()
	}
	return res[1]
}
