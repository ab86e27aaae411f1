package tests

import (
	"context"
	"strconv"
	"strings"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/restgate/restgate/internal/testredis"
)

// TestRateLimitOneRoundTrip: the default Caddyfile as shipped, with
// RESTGATE_REDIS, decides both limits of a keyed request in one Redis
// script call (the per-IP limit before api_auth and the per-user limit
// after it, paired): N keyed GETs cost N script calls, not 2N. The limits
// still hold: the per-user limit refuses its user once used up, and an
// unauthenticated flood from one address gets 401s until the per-IP limit
// is used up, then 429s that say nothing about the credential, as does a
// valid key from that address.
func TestRateLimitOneRoundTrip(t *testing.T) {
	const perIP, perUser, n = 40, 25, 20
	rs, err := testredis.Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(rs.Stop)
	g := StartGateway(t, redisSwitch(t), Options{Env: map[string]string{
		"RESTGATE_REDIS":         rs.Addr,
		"RESTGATE_RATE_PER_IP":   strconv.Itoa(perIP) + "/1h",
		"RESTGATE_RATE_PER_USER": strconv.Itoa(perUser) + "/1h",
	}})
	c := g.Client()
	scripts := func() int64 {
		n, err := rs.ScriptCalls(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		return n
	}

	// the first request loads the script into Redis (EVALSHA, NOSCRIPT,
	// EVAL)
	if r := Do(t, c, "GET", g.URL("/v1/events"), "", bearer("tester")...); r.StatusCode != 200 {
		t.Fatalf("first keyed GET: %d %s", r.StatusCode, r.Body)
	}
	before := scripts()
	for i := range n {
		if r := Do(t, c, "GET", g.URL("/v1/events"), "", bearer("tester")...); r.StatusCode != 200 {
			t.Fatalf("keyed GET %d: %d %s", i, r.StatusCode, r.Body)
		}
	}
	if got := scripts() - before; got != n {
		t.Errorf("%d keyed GETs ran %d scripts in Redis, want %d (one round trip a request for both limits)", n, got, n)
	}

	// the per-user limit: tester has used 1+n of perUser
	for i := 1 + n; i < perUser; i++ {
		if r := Do(t, c, "GET", g.URL("/v1/events"), "", bearer("tester")...); r.StatusCode != 200 {
			t.Fatalf("keyed GET %d of %d: %d %s", i+1, perUser, r.StatusCode, r.Body)
		}
	}
	m := AssertProblem(t, Do(t, c, "GET", g.URL("/v1/events"), "", bearer("tester")...), 429)
	if vp, _ := m["violated-policies"].([]any); len(vp) != 1 || vp[0] != "per-user" {
		t.Errorf("over the per-user limit: the 429 names %v, want per-user", m["violated-policies"])
	}

	// an unauthenticated flood from the same address: the per-IP limit has
	// perIP-perUser tokens left (the refused request spent none)
	bad := []string{"Authorization", "Bearer rg_test_nobody_000000000000000000000000009"}
	for i := range perIP - perUser {
		r := Do(t, c, "GET", g.URL("/v1/events"), "", bad...)
		if r.StatusCode != 401 {
			t.Fatalf("bad key %d within the per-IP limit: %d %s, want 401", i, r.StatusCode, r.Body)
		}
	}
	for _, tc := range []struct {
		name    string
		headers []string
	}{{"a bad key", bad}, {"no key", nil}, {"a valid key", bearer("alice")}, {"the public health path", nil}} {
		path := "/v1/events"
		if tc.name == "the public health path" {
			path = "/v1/health"
		}
		r := Do(t, c, "GET", g.URL(path), "", tc.headers...)
		m := AssertProblem(t, r, 429)
		if vp, _ := m["violated-policies"].([]any); len(vp) != 1 || vp[0] != "per-ip" {
			t.Errorf("%s over the per-IP limit: the 429 names %v, want per-ip", tc.name, m["violated-policies"])
		}
		if h := r.Header.Get("WWW-Authenticate"); h != "" {
			t.Errorf("%s over the per-IP limit: WWW-Authenticate %q tells the client about its credential", tc.name, h)
		}
	}
}

// TestRateLimitOneRoundTripCluster: the default Caddyfile on a Redis
// Cluster (its redis block given the nodes). The per-IP and per-user
// buckets of a request lie in different slots, so the paired decision is
// one script per slot, sent at once; a refusal in either slot still
// spends nothing in the other.
func TestRateLimitOneRoundTripCluster(t *testing.T) {
	const perIP, perUser = 10, 3
	cluster, err := testredis.StartCluster()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cluster.Stop)
	const addressLine = "\t\taddress {$RESTGATE_REDIS}\n"
	cfg := redisSwitch(t)
	if strings.Count(cfg, addressLine) != 1 {
		t.Fatalf("the default Caddyfile has %d %q, want 1", strings.Count(cfg, addressLine), addressLine)
	}
	cfg = strings.Replace(cfg, addressLine, addressLine+"\t\tcluster "+strings.Join(cluster.Addrs(), " ")+"\n", 1)
	g := StartGateway(t, cfg, Options{Env: map[string]string{
		"RESTGATE_RATE_PER_IP":   strconv.Itoa(perIP) + "/1h",
		"RESTGATE_RATE_PER_USER": strconv.Itoa(perUser) + "/1h",
	}})
	c := g.Client()
	bad := []string{"Authorization", "Bearer rg_test_nobody_000000000000000000000000009"}
	steps := []struct {
		headers []string
		times   int
		want    int
		zone    string // of a 429
	}{
		{bearer("tester"), perUser, 200, ""},
		{bearer("tester"), 2, 429, "per-user"}, // spends nothing in the per-IP slot
		{bearer("alice"), perUser, 200, ""},
		{bearer("alice"), 1, 429, "per-user"},
		{bad, perIP - 2*perUser, 401, ""},
		{bearer("bob"), 1, 429, "per-ip"}, // spends nothing in bob's slot
		{bad, 1, 429, "per-ip"},
	}
	for i, s := range steps {
		for j := range s.times {
			r := Do(t, c, "GET", g.URL("/v1/events"), "", s.headers...)
			if r.StatusCode != s.want {
				t.Fatalf("step %d, request %d: %d %s, want %d", i, j+1, r.StatusCode, r.Body, s.want)
			}
			if s.want == 429 {
				m := AssertProblem(t, r, 429)
				if vp, _ := m["violated-policies"].([]any); len(vp) != 1 || vp[0] != s.zone {
					t.Errorf("step %d: the 429 names %v, want %s", i, m["violated-policies"], s.zone)
				}
				if h := r.Header.Get("WWW-Authenticate"); h != "" {
					t.Errorf("step %d: a 429 with WWW-Authenticate %q", i, h)
				}
			}
		}
	}
	// bob's refused request took nothing from his bucket: his slot took a
	// token while the address's slot refused, and gave it back (which
	// wrote the bucket, full)
	cc := cluster.Client()
	defer cc.Close()
	ctx := context.Background()
	var bobTokens []string
	err = cc.ForEachMaster(ctx, func(ctx context.Context, node *redis.Client) error {
		keys, err := node.Keys(ctx, "restgate:rl:per-user:*{bob}").Result()
		for _, k := range keys {
			v, _ := node.HGet(ctx, k, "t").Result()
			bobTokens = append(bobTokens, v)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(bobTokens) != 1 || bobTokens[0] != strconv.Itoa(perUser) {
		t.Errorf("bob's per-user bucket holds %q tokens after a request the per-IP limit refused, want [%d]", bobTokens, perUser)
	}
}
