package tests

import (
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestResourcesThroughGateway(t *testing.T) {
	g := StartGateway(t, repoFile(t, "Caddyfile"), Options{})
	c := g.Client()

	r := Do(t, c, "POST", g.URL("/v1/events"), `{"name": "GW150914", "meta": {"detector": "LIGO"}}`, bearer("tester")...)
	if r.StatusCode != 201 || r.Header.Get("Location") != "/v1/events/GW150914" || r.Header.Get("ETag") == "" {
		t.Fatalf("create: %d %v %s", r.StatusCode, r.Header, r.Body)
	}
	if ids := r.Header.Values("X-Request-Id"); len(ids) != 1 {
		t.Errorf("X-Request-Id = %q, want one value", ids)
	}
	r = Do(t, c, "POST", g.URL("/v1/events/GW150914/productions"), `{"name": "Prod0", "pipeline": "bilby"}`, bearer("tester")...)
	if r.StatusCode != 201 || r.JSON(t)["status"] != "ready" {
		t.Fatalf("production: %d %s", r.StatusCode, r.Body)
	}
	m := AssertProblem(t, Do(t, c, "POST", g.URL("/v1/events/GW150914/productions"), `{"name": "Prod1", "pipeline": "nope"}`, bearer("tester")...), 422)
	if !strings.Contains(fmt.Sprint(m["errors"]), "/pipeline") {
		t.Errorf("422 errors = %v", m["errors"])
	}
	AssertProblem(t, Do(t, c, "POST", g.URL("/v1/events"), `{"name": "GW150914"}`, bearer("tester")...), 409)
	AssertProblem(t, Do(t, c, "GET", g.URL("/v1/events/nope"), "", bearer("tester")...), 404)
	AssertProblem(t, Do(t, c, "DELETE", g.URL("/v1/events"), "", bearer("tester")...), 405)
	AssertProblem(t, Do(t, c, "POST", g.URL("/v1/events"), `{"name": `, bearer("tester")...), 400)
	AssertProblem(t, Do(t, c, "POST", g.URL("/v1/events"), `x`, append(bearer("tester"), "Content-Type", "text/plain")...), 415)
	AssertProblem(t, Do(t, c, "POST", g.URL("/v1/events"), `{"name": "big", "repository": "`+strings.Repeat("x", 2<<20)+`"}`, bearer("tester")...), 413)
	AssertProblem(t, Do(t, c, "GET", g.URL("/v1/events?limit=500"), "", bearer("tester")...), 422)

	list := Do(t, c, "GET", g.URL("/v1/events?sort=-created_at"), "", bearer("tester")...).JSON(t)
	if p := list["pagination"].(map[string]any); p["total_count"] != 1.0 || p["max_page"] != 1.0 {
		t.Errorf("pagination = %v", p)
	}
	if Do(t, c, "GET", g.URL("/v1/openapi.json"), "").JSON(t)["openapi"] != "3.1.0" {
		t.Error("no OpenAPI document")
	}

	// no key: 401 with a challenge, whatever identity the client claims
	r = Do(t, c, "GET", g.URL("/v1/secrets"), "", "X-Auth-User", "admin", "X-Auth-Scopes", "admin")
	AssertProblem(t, r, 401)
	if r.Header.Get("WWW-Authenticate") != `Bearer realm="restgate"` {
		t.Errorf("challenge = %q", r.Header.Get("WWW-Authenticate"))
	}
}

func TestResourcesSurviveRestartAndKill(t *testing.T) {
	dir := t.TempDir()
	g := StartGateway(t, repoFile(t, "Caddyfile"), Options{Dir: dir})
	c := g.Client()

	// a write burst from 8 clients; kill -9 once 200 writes are acknowledged
	var acked sync.Map
	var n atomic.Int64
	stop := load(8, func(w, i int) bool {
		name := fmt.Sprintf("w%d-%d", w, i)
		r, err := Send(c, "POST", g.URL("/v1/events"), `{"name": "`+name+`"}`, bearer("tester")...)
		if err != nil {
			return false // the gateway is gone
		}
		if r.StatusCode == 201 {
			acked.Store(name, true)
			n.Add(1)
		}
		return true
	})
	waitFor(t, 60*time.Second, "200 acknowledged writes", func() bool { return n.Load() >= 200 })
	g.Kill()
	stop()

	g2 := StartGateway(t, repoFile(t, "Caddyfile"), Options{Dir: dir})
	c2 := g2.Client()
	missing := 0
	total := 0
	acked.Range(func(k, _ any) bool {
		total++
		if r := Do(t, c2, "GET", g2.URL("/v1/events/"+k.(string)), "", bearer("tester")...); r.StatusCode != 200 {
			missing++
		}
		return true
	})
	if missing > 0 {
		t.Fatalf("%d of %d acknowledged writes are missing after kill -9", missing, total)
	}
	t.Logf("all %d acknowledged writes survived kill -9", total)
}
