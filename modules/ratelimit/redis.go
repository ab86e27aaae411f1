package ratelimit

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"math"
	"strconv"
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

// decide takes a token for each ask, all or nothing; it returns the
// decisions up to and including the first refused one (as the local store
// does), and an error when Redis could not decide.
func (rd *redisDecider) decide(ctx context.Context, asks []ask, now time.Time, out []Decision) (int, error) {
	keys := make([]string, len(asks))
	args := make([]any, 2, 2+2*len(asks))
	args[0], args[1] = rd.clockArg(now), "1"
	for i, a := range asks {
		keys[i] = a.zone.redisPrefix + a.key
		args = append(args, perMicro(a.zone.perSecond), a.zone.burst)
	}
	res, err := rd.run(ctx, keys, args)
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
