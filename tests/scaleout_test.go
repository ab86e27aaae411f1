package tests

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"
)

// perUserQuota is the per-user limit of the scale-out tests: small, and an
// hour's window so that nothing refills while they run.
const perUserQuota = 10

// TestScaleOutOneSwitch: the default Caddyfile as shipped, on two gateways
// (each on its own port) started with RESTGATE_REDIS naming one Redis and
// nothing else changed: the per-user limit is one bucket across both
// gateways (the 11th request, wherever it goes, is a 429), and a write
// through one gateway drops the other's cached copy.
func TestScaleOutOneSwitch(t *testing.T) {
	rs := sharedRedis(t)
	_, upstream := startCoarseCounter(t)
	redisSwitch(t) // the shipped Caddyfile has the switch
	cfg := withCounter(t, upstream)
	env := map[string]string{
		"RESTGATE_REDIS":         rs.Addr,
		"RESTGATE_RATE_PER_USER": fmt.Sprintf("%d/1h", perUserQuota),
	}
	gs := []*Gateway{StartGateway(t, cfg, Options{Env: env}), StartGateway(t, cfg, Options{Env: env})}

	t.Run("one per-user bucket across the gateways", func(t *testing.T) {
		for i := range perUserQuota {
			g := gs[i%2]
			if r := Do(t, g.Client(), "GET", g.URL("/v1/events"), "", bearer("bob")...); r.StatusCode != 200 {
				t.Fatalf("request %d (gateway %d): %d %s", i+1, i%2, r.StatusCode, r.Body)
			}
		}
		for i, g := range gs {
			m := AssertProblem(t, Do(t, g.Client(), "GET", g.URL("/v1/events"), "", bearer("bob")...), 429)
			if vp, _ := m["violated-policies"].([]any); len(vp) != 1 || vp[0] != "per-user" {
				t.Errorf("gateway %d's 429 names %v, want the per-user zone", i, m["violated-policies"])
			}
		}
		keys, err := rs.Client().Keys(context.Background(), "restgate:rl:per-user:*").Result()
		if err != nil || len(keys) == 0 {
			t.Errorf("no per-user bucket in Redis: %v (%v)", keys, err)
		}
	})

	t.Run("a write through one gateway drops the other's copy", func(t *testing.T) {
		c0, c1 := behindBalancer(gs[0]), behindBalancer(gs[1])
		Do(t, c1, "GET", gs[1].URL("/v1/counter"), "", bearer("tester")...)
		if r := Do(t, c1, "GET", gs[1].URL("/v1/counter"), "", bearer("tester")...); r.Header.Get("Cache-Status") != "restgate; hit" {
			t.Fatalf("gateway 1 does not cache: %q", r.Header.Get("Cache-Status"))
		}
		r := Do(t, c0, "GET", gs[0].URL("/v1/counter"), "", bearer("tester")...)
		const want = `{"n": 4242}`
		if p := Do(t, c0, "PUT", gs[0].URL("/v1/counter"), want, append(bearer("tester"), "If-Match", r.Header.Get("ETag"))...); p.StatusCode != 200 {
			t.Fatalf("PUT through gateway 0: %d %s", p.StatusCode, p.Body)
		}
		waitFor(t, 5*time.Second, "gateway 1 drops its copy after a PUT through gateway 0", func() bool {
			return string(Do(t, c1, "GET", gs[1].URL("/v1/counter"), "", bearer("tester")...).Body) == want
		})
	})
}

// TestScaleOutSwitchOff: the same Caddyfile without RESTGATE_REDIS stays
// local, as before the switch existed: each gateway has its own per-user
// bucket, the load says that no Redis connection is made and nothing tries
// one; and a configuration that names Redis explicitly (`store redis`)
// without an address still refuses to load, saying why.
func TestScaleOutSwitchOff(t *testing.T) {
	cfg := redisSwitch(t)
	env := map[string]string{"RESTGATE_RATE_PER_USER": fmt.Sprintf("%d/1h", perUserQuota)}
	gs := []*Gateway{StartGateway(t, cfg, Options{Env: env}), StartGateway(t, cfg, Options{Env: env})}
	for i, g := range gs {
		for n := range perUserQuota {
			if r := Do(t, g.Client(), "GET", g.URL("/v1/events"), "", bearer("bob")...); r.StatusCode != 200 {
				t.Fatalf("gateway %d, request %d: %d %s (a bucket shared with the other gateway?)", i, n+1, r.StatusCode, r.Body)
			}
		}
		AssertProblem(t, Do(t, g.Client(), "GET", g.URL("/v1/events"), "", bearer("bob")...), 429)
		logs := g.Logs()
		if !strings.Contains(logs, "redis: no address: shared stores stay local, no connection is made") {
			t.Errorf("gateway %d's log does not say that Redis is off:\n%s", i, logs)
		}
		for _, l := range strings.Split(logs, "\n") {
			if strings.Contains(l, "6379") || strings.Contains(l, "redis unavailable") || strings.Contains(l, "circuit") {
				t.Errorf("gateway %d tried Redis: %s", i, l)
			}
		}
	}

	explicit := strings.Replace(cfg, "\t\tstore auto\n", "\t\tstore redis\n", 1)
	if explicit == cfg {
		t.Fatal("no `store auto` to make explicit")
	}
	out, err := validateCaddyfile(t, explicit)
	if err == nil || !strings.Contains(out, "redis has no address") || !strings.Contains(out, "RESTGATE_REDIS") {
		t.Fatalf("store redis with RESTGATE_REDIS unset loads (%v):\n%s", err, out)
	}
}
