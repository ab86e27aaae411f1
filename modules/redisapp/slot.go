package redisapp

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// Slot is the Redis Cluster hash slot of key: CRC16 of its hash tag (the
// part between the first "{" and the next "}", when that is not empty) or
// else of the whole key, modulo 16384. Keys that one command or script
// touches together must share a slot in a cluster; give them one tag.
func Slot(key string) int {
	if i := strings.IndexByte(key, '{'); i >= 0 {
		if j := strings.IndexByte(key[i+1:], '}'); j > 0 {
			key = key[i+1 : i+1+j]
		}
	}
	var crc uint16
	for k := 0; k < len(key); k++ {
		crc ^= uint16(key[k]) << 8
		for range 8 {
			if crc&0x8000 != 0 {
				crc = crc<<1 ^ 0x1021
			} else {
				crc <<= 1
			}
		}
	}
	return int(crc) % 16384
}

// Tag makes s (a principal, an address: part of a key) into a hash tag,
// "{s}", so that the keys built around it share a slot. A part that holds
// a brace, or is empty, would not be one tag: its digest is the tag
// ("{#…}"; a part that starts with "#" too, so that none can pose as one).
func Tag(s string) string { return Tagged("", s) }

// Tagged is prefix + Tag(s), in one allocation.
func Tagged(prefix, s string) string {
	if s == "" || s[0] == '#' || strings.ContainsAny(s, "{}") {
		sum := sha256.Sum256([]byte(s))
		return prefix + "{#" + hex.EncodeToString(sum[:12]) + "}"
	}
	return prefix + "{" + s + "}"
}

// ErrNotReplicated: a write that wait_replicas asked to wait for reached
// fewer replicas within wait_timeout. It may be on the primary: undo it.
var ErrNotReplicated = errors.New("redis: the write reached fewer replicas than wait_replicas in time")

// SetNX is `SET key value NX PX ttl` for writes that should survive a
// failover (a lock): with wait_replicas, on the same connection, WAIT for
// that many replicas (in a cluster, on the key's primary). Call it inside
// DoFor with the client it gives. It reports whether the key was set; a
// set that too few replicas acknowledged is (true, ErrNotReplicated).
func (a *App) SetNX(ctx context.Context, c redis.UniversalClient, key string, value any, ttl time.Duration) (bool, error) {
	if a.conn.replicas == 0 {
		return c.SetNX(ctx, key, value, ttl).Result()
	}
	var p redis.Pipeliner
	if cc, ok := c.(*redis.ClusterClient); ok {
		node, err := cc.MasterForKey(ctx, key)
		if err != nil {
			return false, err
		}
		p = node.Pipeline()
	} else {
		p = c.Pipeline() // one connection: WAIT counts this SET
	}
	set := p.SetNX(ctx, key, value, ttl)
	wait := p.Do(ctx, "WAIT", a.conn.replicas, a.conn.wait.Milliseconds())
	if _, err := p.Exec(ctx); err != nil && !isReply(err) {
		return false, err
	}
	ok, err := set.Result()
	if err != nil || !ok {
		return ok, err
	}
	if n, err := wait.Int64(); err != nil {
		return true, err
	} else if int(n) < a.conn.replicas {
		return true, fmt.Errorf("%w (%d of %d)", ErrNotReplicated, n, a.conn.replicas)
	}
	return true, nil
}
