package ratelimit

import (
	"context"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/restgate/restgate/modules/redisapp"
)

// TestRedisSplitDecisionsMatch: in a Redis Cluster the buckets of one
// request that lie in different slots (a per-user and a per-IP zone) are
// decided by one script per slot, and what one slot took is given back
// when another refused. Request by request, that gives the same decisions
// and the same tokens as the one script over all of them (here both run
// on the package's single Redis, on fresh buckets, on one clock).
func TestRedisSplitDecisionsMatch(t *testing.T) {
	cfg := func() string {
		return "api_rate_limit {\n zone " + uniq("user") + " 3/1m\n zone " + uniq("ip") + " 5/1m {\n key {client_ip}\n }\n zone " + uniq("user-day") + " 4/1h\n}"
	}
	testStore = StoreRedis
	defer func() { testStore = StoreLocal }()
	one, clock := newLimiter(t, cfg(), false)
	split, _ := newLimiter(t, cfg(), false)
	rd := &redisDecider{app: testRedisApp, callerClock: true}
	ctx := context.Background()
	asks := func(h *Handler, user string) ([]ask, []string) {
		a := []ask{{h.Zones[0], "key:" + user}, {h.Zones[1], "192.0.2.1"}, {h.Zones[2], "key:" + user}}
		keys := make([]string, len(a))
		for i := range a {
			keys[i] = redisKey(a[i].zone, a[i].key)
		}
		return a, keys
	}
	if _, keys := asks(split, "alice"); len(slotGroups(keys)) != 2 || redisapp.Slot(keys[0]) != redisapp.Slot(keys[2]) {
		t.Fatalf("keys %q: want the user's buckets in one slot and the address's in another", keys)
	}
	refusals := map[int]int{}
	for i, user := range strings.Fields("alice bob alice alice bob carol alice bob carol carol bob alice carol dave dave") {
		now := clock.Now()
		oa, ok := asks(one, user)
		want, err := rd.run(ctx, ok, rd.args(oa, now, "1"))
		if err != nil {
			t.Fatal(err)
		}
		sa, sk := asks(split, user)
		got, err := rd.decideSplit(ctx, sa, sk, slotGroups(sk), now)
		if err != nil {
			t.Fatal(err)
		}
		for j := range want {
			if math.Abs(got[j]-want[j]) > 1e-9 {
				t.Fatalf("request %d (%s): split %v, one script %v", i, user, got, want)
			}
		}
		refusals[int(want[0])]++
		clock.Add(time.Second)
	}
	// the sequence must exercise admissions and refusals by each kind
	// of zone: the user zone, the address zone, the daily zone
	if refusals[0] == 0 || refusals[1] == 0 || refusals[2] == 0 {
		t.Errorf("decisions by refused zone (0: admitted) %v: the sequence missed a case", refusals)
	}
}
