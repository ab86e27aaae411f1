package ratelimit

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	dto "github.com/prometheus/client_model/go"

	"github.com/restgate/restgate/internal/identity"
	"github.com/restgate/restgate/internal/metrics"
	"github.com/restgate/restgate/internal/testclock"
	"github.com/restgate/restgate/modules/apiauth"
	"github.com/restgate/restgate/modules/problem"
	"github.com/restgate/restgate/modules/redisapp"
)

// Credentials of the paired-chain tests: two keys api_auth knows, one it
// does not.
const (
	aliceKey = "rg_pair_alice_0000000000000000000000000001"
	bobKey   = "rg_pair_bob_00000000000000000000000000002"
	badKey   = "rg_pair_nobody_000000000000000000000000003"
)

// chain is the default Caddyfile's limits around a real api_auth (public
// /v1/health; reads need a key) behind api_errors' require_auth lock.
type chain struct {
	ip, user *Handler
	auth     *apiauth.Handler
	clock    *testclock.Clock
}

// newChain provisions the per-IP handler ipCfg, api_auth and the
// per-principal handler userCfg on app's Redis (on the chain's fake
// clock), paired or not.
func newChain(t testing.TB, ipCfg, userCfg string, app *redisapp.App, onError string, paired bool) *chain {
	t.Helper()
	testStore = StoreRedis
	defer func() { testStore = StoreLocal }()
	c := new(chain)
	c.ip, c.clock = newLimiter(t, ipCfg, true)
	c.user, _ = newLimiter(t, userCfg, false)
	c.user.now = c.clock.Now
	for _, h := range []*Handler{c.ip, c.user} {
		h.OnError, h.redis = onError, app
		h.shared = &redisDecider{app: app, callerClock: true}
		for _, z := range h.Zones {
			z.redisPrefix = z.redisKeyPrefix(app)
		}
	}
	if paired {
		if err := Pair(c.ip, c.user); err != nil {
			t.Fatal(err)
		}
	}
	c.auth = new(apiauth.Handler)
	var cfg strings.Builder
	cfg.WriteString("api_auth {\n no_env\n public /v1/health\n")
	for user, key := range map[string]string{"alice": aliceKey, "bob": bobKey} {
		sum := sha256.Sum256([]byte(key))
		fmt.Fprintf(&cfg, " key %s %s read write\n", hex.EncodeToString(sum[:]), user)
	}
	cfg.WriteString("}")
	if err := c.auth.UnmarshalCaddyfile(caddyfile.NewTestDispenser(cfg.String())); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	t.Cleanup(cancel)
	if err := c.auth.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	return c
}

// outcome is what a client and the backend see of one request.
type outcome struct {
	status  int
	served  bool
	code    string // the problem's
	headers string
}

// headersSeen are the response fields the limits and api_auth set.
var headersSeen = []string{"RateLimit", "RateLimit-Policy", "Retry-After", "WWW-Authenticate",
	"X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset"}

// send runs one request through the chain: per-IP limit, api_auth,
// limit, backend.
func (c *chain) send(method, path, ip, key string) outcome {
	r := request(method, path, ip, "")
	if key != "" {
		r.Header.Set("Authorization", "Bearer "+key)
	}
	r = identity.Lock(r) // api_errors require_auth
	var o outcome
	backend := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		if r.Context().Err() != nil {
			return errors.New("the backend got a locked request")
		}
		o.served = true
		w.WriteHeader(http.StatusOK)
		return nil
	})
	w := httptest.NewRecorder()
	err := c.ip.ServeHTTP(w, r, caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		return c.auth.ServeHTTP(w, r, caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
			return c.user.ServeHTTP(w, r, backend)
		}))
	}))
	o.status = status(err)
	var p *problem.Problem
	if errors.As(err, &p) {
		o.code = p.Code
		if vp, ok := p.Extensions["violated-policies"]; ok {
			o.code += fmt.Sprint(vp)
		}
	}
	var hs []string
	for _, f := range headersSeen {
		if v := w.Header().Values(f); len(v) > 0 {
			hs = append(hs, f+": "+strings.Join(v, " | "))
		}
	}
	o.headers = strings.Join(hs, "; ")
	return o
}

type step struct {
	method, path, ip, key string
	want                  int // status
}

// TestPairedDecisionsMatch: paired, the two limits decide in one Redis
// round trip what they decide unpaired, one after the other: request by
// request the same status, problem, RateLimit fields, Retry-After and
// WWW-Authenticate, the same requests served, the same counters, and the
// same tokens left in every bucket.
func TestPairedDecisionsMatch(t *testing.T) {
	const ip1, ip2 = "192.0.2.1", "192.0.2.2"
	get := func(key string, want int) step { return step{"GET", "/v1/events", ip1, key, want} }
	tests := []struct {
		name        string
		ip, user    string // the handlers' blocks, without zones' names: %s is each name
		steps       []step
		paired      int // script calls of the paired chain
		dead        bool
		onError     string
		wouldRefuse bool
	}{
		{
			name: "the per-IP limit refuses",
			ip:   "zone %s 2/1m\n legacy_headers", user: "zone %s 100/1m",
			steps:  []step{get(aliceKey, 200), get(aliceKey, 200), get(aliceKey, 429), get(bobKey, 429)},
			paired: 4,
		},
		{
			name: "the per-user limit refuses",
			ip:   "zone %s 100/1m", user: "zone %s 2/1m\n legacy_headers",
			steps:  []step{get(aliceKey, 200), get(aliceKey, 200), get(aliceKey, 429), get(aliceKey, 429), get(bobKey, 200)},
			paired: 5,
		},
		{
			name: "both refuse, several users and zones",
			ip:   "zone %s 3/1m", user: "zone %s 2/1m\n zone %s 1/1m {\n  methods POST\n }",
			steps: []step{
				get(aliceKey, 200), {"POST", "/v1/events", ip1, aliceKey, 200}, {"POST", "/v1/events", ip1, aliceKey, 429},
				get(bobKey, 200), get(bobKey, 429), {"GET", "/v1/events", ip2, aliceKey, 429}, {"GET", "/v1/events", ip2, bobKey, 200},
			},
			paired: 7,
		},
		{
			name: "a public path is counted and refused before it is served",
			ip:   "zone %s 2/1m", user: "zone %s 100/1m",
			steps: []step{
				{"GET", "/v1/health", ip1, "", 200}, {"GET", "/v1/health", ip1, "", 200}, {"GET", "/v1/health", ip1, "", 429},
				{"GET", "/v1/health", ip2, "", 200}, get("", 429),
			},
			paired: 5,
		},
		{
			name: "auth failures over the per-IP limit get the 429",
			ip:   "zone %s 2/1m", user: "zone %s 100/1m",
			steps: []step{
				get(badKey, 401), get("", 401), get(badKey, 429), get("", 429), get(aliceKey, 429),
				{"DELETE", "/v1/events/x", ip1, aliceKey, 429},
			},
			paired: 6,
		},
		{
			name: "the per-user zones do not apply",
			ip:   "zone %s 2/1m", user: "zone %s 1/1m {\n  methods POST\n }",
			steps:  []step{get(aliceKey, 200), get(badKey, 401), get(aliceKey, 429)},
			paired: 3,
		},
		{
			name: "report_only",
			ip:   "zone %s 1/1m\n mode report_only", user: "zone %s 2/1m\n mode report_only\n legacy_headers",
			// the per-IP zone would refuse from the second request on: the
			// per-user zones are then decided alone, as unpaired
			steps:       []step{get(aliceKey, 200), get(aliceKey, 200), get(aliceKey, 200), get(badKey, 401), get(aliceKey, 200)},
			paired:      1 + 2 + 2 + 1 + 2,
			wouldRefuse: true,
		},
		{
			name: "Redis cannot decide, on_error deny",
			ip:   "zone %s 5/1m", user: "zone %s 5/1m",
			steps: []step{get(aliceKey, 503), get(badKey, 503), {"GET", "/v1/health", ip1, "", 503}},
			dead:  true, onError: OnErrorDeny,
		},
		{
			name: "Redis cannot decide, on_error allow",
			ip:   "zone %s 5/1m", user: "zone %s 5/1m",
			steps: []step{get(aliceKey, 200), get(badKey, 401), {"GET", "/v1/health", ip1, "", 200}},
			dead:  true, onError: OnErrorAllow,
		},
	}
	pairedApp, err := redisapp.Connect(redisapp.App{Address: testRedis.Addr, KeyPrefix: "restgate-paired:", Timeout: caddy.Duration(5 * time.Second)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = pairedApp.Cleanup() })
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var names []string
			block := func(directive, body string) string {
				var args []any
				for range strings.Count(body, "%s") {
					names = append(names, uniq("z"))
					args = append(args, names[len(names)-1])
				}
				return directive + " {\n " + fmt.Sprintf(body, args...) + "\n}"
			}
			ipCfg, userCfg := block("api_rate_limit_ip", tt.ip), block("api_rate_limit", tt.user)
			apps := [2]*redisapp.App{testRedisApp, pairedApp}
			onError := OnErrorDeny
			if tt.dead {
				onError = tt.onError
				for i := range apps {
					dead, err := redisapp.Connect(redisapp.App{Address: "127.0.0.1:1", Timeout: caddy.Duration(200 * time.Millisecond)})
					if err != nil {
						t.Fatal(err)
					}
					t.Cleanup(func() { _ = dead.Cleanup() })
					apps[i] = dead
				}
			}
			var got [2][]outcome
			var counts [2]map[string]float64
			var calls [2]int64
			var c *chain
			for run, paired := range []bool{false, true} {
				c = newChain(t, ipCfg, userCfg, apps[run], onError, paired)
				before, callsBefore := decisionCounts(t, names), scriptCalls(t)
				for _, s := range tt.steps {
					got[run] = append(got[run], c.send(s.method, s.path, s.ip, s.key))
					c.clock.Add(time.Second)
				}
				counts[run] = decisionCounts(t, names)
				for k, v := range before {
					counts[run][k] -= v
				}
				calls[run] = scriptCalls(t) - callsBefore
			}
			for i, s := range tt.steps {
				u, p := got[0][i], got[1][i]
				if u.status != s.want {
					t.Errorf("step %d (%s %s %s): unpaired %d, want %d", i, s.method, s.path, s.key, u.status, s.want)
				}
				if u != p {
					t.Errorf("step %d (%s %s %s):\n unpaired %+v\n   paired %+v", i, s.method, s.path, s.key, u, p)
				}
				if p.status == 429 && (p.served || strings.Contains(p.headers, "WWW-Authenticate")) {
					t.Errorf("step %d: a 429 that was served or tells about the credential: %+v", i, p)
				}
			}
			for k, v := range counts[0] {
				if counts[1][k] != v {
					t.Errorf("counter %s: unpaired %v, paired %v", k, v, counts[1][k])
				}
			}
			if tt.wouldRefuse && counts[0][names[0]+" would_refuse"] == 0 {
				t.Errorf("report_only: the per-IP zone refused nothing: %v", counts[0])
			}
			if !tt.dead {
				if calls[1] != int64(tt.paired) {
					t.Errorf("the paired chain made %d script calls for %d requests, want %d (unpaired: %d)", calls[1], len(tt.steps), tt.paired, calls[0])
				}
				compareBuckets(t, c, apps[0], apps[1])
			}
		})
	}
}

// decisionCounts reads the decision counters of zones.
func decisionCounts(t *testing.T, zones []string) map[string]float64 {
	t.Helper()
	out := map[string]float64{}
	for _, z := range zones {
		for _, o := range []string{"admitted", "refused", "would_refuse", "undecided"} {
			var m dto.Metric
			if err := metrics.RateLimitDecisions.WithLabelValues(z, o).Write(&m); err != nil {
				t.Fatal(err)
			}
			out[z+" "+o] = m.GetCounter().GetValue()
		}
	}
	return out
}

// scriptCalls is how many scripts the package's Redis has run.
func scriptCalls(t testing.TB) int64 {
	t.Helper()
	n, err := testRedis.ScriptCalls(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// compareBuckets checks that the buckets of the zones of c hold the same
// tokens under the two apps' prefixes; a bucket missing under one is a
// full one (the script writes nothing for a refused request; a refund
// writes).
func compareBuckets(t *testing.T, c *chain, a, b *redisapp.App) {
	t.Helper()
	rc := testRedis.Client()
	defer rc.Close()
	ctx := context.Background()
	tokens := func(app *redisapp.App, z *Zone) map[string]float64 {
		prefix := app.Key("rl:" + z.Name + ":")
		keys, err := rc.Keys(ctx, prefix+"*").Result()
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]float64{}
		for _, k := range keys {
			v, err := rc.HGet(ctx, k, "t").Float64()
			if err != nil {
				t.Fatal(err)
			}
			out[strings.TrimPrefix(k, prefix)] = v
		}
		return out
	}
	for _, z := range append(c.ip.Zones[:len(c.ip.Zones):len(c.ip.Zones)], c.user.Zones...) {
		ta, tb := tokens(a, z), tokens(b, z)
		for k := range tb {
			if _, ok := ta[k]; !ok {
				ta[k] = float64(z.burst)
			}
		}
		for k, v := range ta {
			w, ok := tb[k]
			if !ok {
				w = float64(z.burst)
			}
			if math.Abs(v-w) > 1e-3 {
				t.Errorf("zone %s bucket %s: unpaired %.4f tokens, paired %.4f", z.Name, k, v, w)
			}
		}
	}
}

// BenchmarkPairedChain is a keyed GET through the per-IP limit, api_auth
// and the per-user limit: on the local store (the reference), and on the
// package's Redis (loopback) one after the other (unpaired: two script
// calls) and paired (one); one request at a time, and from concurrent
// clients (whose scripts the redis app batches).
func BenchmarkPairedChain(b *testing.B) {
	for _, name := range []string{"local", "unpaired", "paired"} {
		c := newChain(b, "api_rate_limit_ip {\n zone "+uniq("bench-ip")+" 1000000000/1s\n}",
			"api_rate_limit {\n zone "+uniq("bench-user")+" 1000000000/1s\n}", testRedisApp, OnErrorDeny, name == "paired")
		for _, h := range []*Handler{c.ip, c.user} {
			h.shared.callerClock = false // Redis's clock, as in production
			if name == "local" {
				h.Store, h.shared, h.redis = StoreLocal, nil, nil
			}
		}
		b.Run(name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if o := c.send("GET", "/v1/events", "192.0.2.1", aliceKey); o.status != 200 {
					b.Fatalf("%+v", o)
				}
			}
		})
		b.Run(name+"/parallel", func(b *testing.B) {
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if o := c.send("GET", "/v1/events", "192.0.2.1", aliceKey); o.status != 200 {
						b.Errorf("%+v", o)
						return
					}
				}
			})
		})
	}
}
