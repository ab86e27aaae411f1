package ratelimit

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/dunglas/httpsfv"
	"go.uber.org/zap"

	"github.com/restgate/restgate/internal/testclock"
	"github.com/restgate/restgate/internal/testredis"
	"github.com/restgate/restgate/modules/problem"
	"github.com/restgate/restgate/modules/redisapp"
)

var zoneSeq int

// testStore is the store newLimiter gives handlers: forEachStore runs a
// test against the local store and against Redis (a real redis-server,
// one for the package, on the test's clock: the script takes the caller's
// time when asked, so the same fake clock drives both).
var testStore = StoreLocal

func forEachStore(t *testing.T, test func(t *testing.T)) {
	for _, store := range []string{StoreLocal, StoreRedis} {
		t.Run(store, func(t *testing.T) {
			testStore = store
			defer func() { testStore = StoreLocal }()
			test(t)
		})
	}
}

var (
	testRedis    *testredis.Server
	testRedisApp *redisapp.App
)

func TestMain(m *testing.M) {
	os.Exit(runTests(m))
}

func runTests(m *testing.M) int {
	var err error
	testRedis, err = testredis.Start()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer testRedis.Stop()
	testRedisApp, err = redisapp.Connect(redisapp.App{Address: testRedis.Addr, Timeout: caddy.Duration(5 * time.Second)})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer testRedisApp.Cleanup()
	return m.Run()
}

// newLimiter provisions a handler from Caddyfile text with a fake clock.
// Each zone gets a unique name so tests never share pooled state.
func newLimiter(t testing.TB, cfg string, ip bool) (*Handler, *testclock.Clock) {
	t.Helper()
	h := new(Handler)
	if err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(cfg)); err != nil {
		t.Fatal(err)
	}
	if h.ShareRefunds != ip {
		t.Fatalf("%q: ShareRefunds = %v, want %v", cfg, h.ShareRefunds, ip)
	}
	clock := testclock.New(time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC), time.Microsecond)
	h.now = clock.Now
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	t.Cleanup(cancel)
	if err := h.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	h.logger, h.sampled = zap.NewNop(), zap.NewNop()
	if testStore == StoreRedis {
		h.Store, h.OnError, h.redis = StoreRedis, OnErrorDeny, testRedisApp
		h.shared = &redisDecider{app: testRedisApp, callerClock: true}
		for _, z := range h.Zones {
			z.redisPrefix = z.redisKeyPrefix(testRedisApp)
		}
	}
	if err := h.Validate(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = h.Cleanup() })
	return h, clock
}

func uniq(name string) string {
	zoneSeq++
	return name + strconv.Itoa(zoneSeq)
}

// request makes a request from ip, authenticated as user if set.
func request(method, path, ip, user string) *http.Request {
	r := httptest.NewRequest(method, path, nil)
	r.RemoteAddr = net.JoinHostPort(ip, "1234")
	repl := caddyhttp.NewTestReplacer(r)
	ctx := context.WithValue(r.Context(), caddy.ReplacerCtxKey, repl)
	ctx = context.WithValue(ctx, caddyhttp.VarsCtxKey, map[string]any{caddyhttp.ClientIPVarKey: ip})
	if user != "" {
		repl.Set("http.auth.user.id", user)
	}
	return r.WithContext(ctx)
}

var okNext = caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
	w.WriteHeader(200)
	return nil
})

func status(err error) int {
	var he caddyhttp.HandlerError
	if errors.As(err, &he) {
		return he.StatusCode
	}
	if err != nil {
		return 500
	}
	return 200
}

func send(h *Handler, r *http.Request) (*httptest.ResponseRecorder, error) {
	w := httptest.NewRecorder()
	return w, h.ServeHTTP(w, r, okNext)
}

// TestAccuracy: a zone of 10/s with burst 5, saturated, admits exactly
// 5 + 10·t requests over t seconds.
func TestAccuracy(t *testing.T) {
	forEachStore(t, func(t *testing.T) {
		h, clock := newLimiter(t, "api_rate_limit {\n zone "+uniq("acc")+" 10/s {\n  burst 5\n }\n}", false)
		admitted := 0
		const seconds = 7
		const step = 10 * time.Millisecond
		for i := 0; i <= seconds*int(time.Second/step); i++ {
			for j := 0; j < 3; j++ { // 300 attempts a second: always saturated
				if _, err := send(h, request("GET", "/", "192.0.2.1", "")); err == nil {
					admitted++
				}
			}
			if i < seconds*int(time.Second/step) {
				clock.Add(step)
			}
		}
		if want := 5 + 10*seconds; admitted != want {
			t.Errorf("admitted %d over %ds, want %d", admitted, seconds, want)
		}
	})
}

func TestHeadersAndRefusal(t *testing.T) {
	forEachStore(t, func(t *testing.T) {
		name := uniq("per-user")
		h, clock := newLimiter(t, "api_rate_limit {\n zone "+name+" 3/1m\n legacy_headers\n}", false)
		for i := 0; i < 3; i++ {
			w, err := send(h, request("GET", "/", "192.0.2.1", "alice"))
			if err != nil {
				t.Fatalf("request %d: %v", i, err)
			}
			list, err := httpsfv.UnmarshalList(w.Header().Values("RateLimit"))
			if err != nil {
				t.Fatalf("RateLimit %q is not a Structured Fields list: %v", w.Header().Values("RateLimit"), err)
			}
			item := list[0].(httpsfv.Item)
			r, _ := item.Params.Get("r")
			if item.Value != name || r != int64(2-i) {
				t.Errorf("request %d: RateLimit = %q, want %q;r=%d", i, w.Header().Get("RateLimit"), name, 2-i)
			}
			// t is the time until more quota is available (one token per
			// 20s), not until the bucket is full again (20s, 40s, 60s)
			if tt, _ := item.Params.Get("t"); tt != int64(20) {
				t.Errorf("request %d: t = %v, want 20", i, tt)
			}
			pol, err := httpsfv.UnmarshalList(w.Header().Values("RateLimit-Policy"))
			if err != nil {
				t.Fatalf("RateLimit-Policy: %v", err)
			}
			q, _ := pol[0].(httpsfv.Item).Params.Get("q")
			win, _ := pol[0].(httpsfv.Item).Params.Get("w")
			if q != int64(3) || win != int64(60) {
				t.Errorf("policy = %q", w.Header().Get("RateLimit-Policy"))
			}
			if w.Header().Get("X-RateLimit-Remaining") != strconv.Itoa(2-i) || w.Header().Get("X-RateLimit-Limit") != "3" {
				t.Errorf("legacy headers: %v", w.Header())
			}
		}
		w, err := send(h, request("GET", "/", "192.0.2.1", "alice"))
		if status(err) != 429 {
			t.Fatalf("4th request: %v", err)
		}
		var p *problem.Problem
		if !errors.As(err, &p) || p.Type != problem.TypeQuotaExceeded || fmt.Sprint(p.Extensions["violated-policies"]) != "["+name+"]" {
			t.Errorf("problem = %+v", p)
		}
		ra, _ := strconv.Atoi(w.Header().Get("Retry-After"))
		if ra != 20 { // one token per 20s
			t.Errorf("Retry-After = %d, want 20", ra)
		}
		// the draft: Retry-After never points earlier than t
		list, _ := httpsfv.UnmarshalList(w.Header().Values("RateLimit"))
		if tt, _ := list[0].(httpsfv.Item).Params.Get("t"); tt != int64(ra) {
			t.Errorf("429: t = %v, Retry-After = %d; want them equal", tt, ra)
		}
		// the client that waits Retry-After gets in; one second less does not
		clock.Add(time.Duration(ra-1) * time.Second)
		if _, err := send(h, request("GET", "/", "192.0.2.1", "alice")); status(err) != 429 {
			t.Error("admitted before Retry-After")
		}
		clock.Add(time.Second)
		if _, err := send(h, request("GET", "/", "192.0.2.1", "alice")); err != nil {
			t.Errorf("refused after Retry-After: %v", err)
		}
		// another user has their own bucket; anonymous falls back to the IP
		if _, err := send(h, request("GET", "/", "192.0.2.1", "bob")); err != nil {
			t.Errorf("bob: %v", err)
		}
		for i := 0; i < 3; i++ {
			if _, err := send(h, request("GET", "/", "192.0.2.9", "")); err != nil {
				t.Errorf("anonymous %d: %v", i, err)
			}
		}
		if _, err := send(h, request("GET", "/", "192.0.2.9", "")); status(err) != 429 {
			t.Error("anonymous requests from one IP were not limited together")
		}
	})
}

// TestRefunds: a request refused by a later zone spends nothing in the
// zones that admitted it, in this handler or an earlier one.
func TestRefunds(t *testing.T) {
	forEachStore(t, func(t *testing.T) {
		ipName, userName := uniq("ip"), uniq("user")
		ipH, clock := newLimiter(t, "api_rate_limit_ip {\n zone "+ipName+" 100/1m\n}", true)
		userH, _ := newLimiter(t, "api_rate_limit {\n zone "+userName+" 2/1m\n zone "+uniq("post")+" 1/1m {\n  methods POST\n }\n}", false)
		userH.now = clock.Now
		chain := func(method string) int {
			r := request(method, "/", "192.0.2.1", "alice")
			w := httptest.NewRecorder()
			err := ipH.ServeHTTP(w, r, caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
				return userH.ServeHTTP(w, r, okNext)
			}))
			return status(err)
		}
		ipLeft := func() int {
			w, _ := send(ipH, request("HEAD", "/", "192.0.2.1", ""))
			list, _ := httpsfv.UnmarshalList(w.Header().Values("RateLimit"))
			r, _ := list[0].(httpsfv.Item).Params.Get("r")
			return int(r.(int64))
		}
		if got := chain("POST"); got != 200 {
			t.Fatalf("first POST: %d", got)
		}
		// second POST: the user zone admits, the POST zone refuses → the user
		// zone and the IP zone get their tokens back
		if got := chain("POST"); got != 429 {
			t.Fatalf("second POST: %d", got)
		}
		if got := chain("GET"); got != 200 {
			t.Errorf("GET after a refused POST: %d (the refused POST spent the user zone's token)", got)
		}
		if got := chain("GET"); got != 429 {
			t.Errorf("third user request: %d, want 429", got)
		}
		// IP zone: 100 - the admitted POST and GET - the probe itself = 97;
		// the two refused requests cost nothing
		if left := ipLeft(); left != 97 {
			t.Errorf("IP zone has %d left, want 97 (refused requests must not spend)", left)
		}
	})
}

// TestRefundsAfterTimePasses: the per-IP token is taken, time passes (a
// slow auth, a slow handler), then the per-user zone refuses: the per-IP
// zone gets exactly its token back. x/time/rate's CancelAt did nothing here.
func TestRefundsAfterTimePasses(t *testing.T) {
	ipH, clock := newLimiter(t, "api_rate_limit_ip {\n zone "+uniq("ip")+" 100/1m\n}", true)
	userH, _ := newLimiter(t, "api_rate_limit {\n zone "+uniq("user")+" 1/1m\n}", false)
	userH.now = clock.Now
	chain := func() int {
		r := request("GET", "/", "192.0.2.7", "alice")
		err := ipH.ServeHTTP(httptest.NewRecorder(), r, caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
			clock.Add(10 * time.Millisecond)
			return userH.ServeHTTP(w, r, okNext)
		}))
		return status(err)
	}
	ipLeft := func() float64 {
		b, _ := ipH.Zones[0].state.store.(*memStore).buckets.Peek("192.0.2.7")
		b.mu.Lock()
		defer b.mu.Unlock()
		return b.tokens
	}
	if got := chain(); got != 200 {
		t.Fatalf("first request: %d", got)
	}
	before := ipLeft()
	for i := range 3 {
		if got := chain(); got != 429 {
			t.Fatalf("refused request %d: %d", i, got)
		}
	}
	// three refused requests cost nothing; the bucket was last updated
	// before the first request's 10ms, so 40ms of refill at 100/1m: +0.067
	if after := ipLeft(); after < before+0.065 || after > before+0.068 {
		t.Errorf("per-IP tokens went from %.3f to %.3f over three refused requests, want +0.067 (refunds lost)", before, after)
	}
}

// TestRedisUsesItsOwnClock: outside tests the script reads Redis's TIME,
// so a gateway whose clock jumps (or differs from the others') neither
// refills nor drains a bucket.
func TestRedisUsesItsOwnClock(t *testing.T) {
	testStore = StoreRedis
	h, clock := newLimiter(t, "api_rate_limit {\n zone "+uniq("clock")+" 1/1h\n}", false)
	testStore = StoreLocal
	h.shared.callerClock = false
	if _, err := send(h, request("GET", "/", "192.0.2.1", "a")); err != nil {
		t.Fatal(err)
	}
	clock.Add(2 * time.Hour) // this gateway's clock jumps two hours
	if _, err := send(h, request("GET", "/", "192.0.2.1", "a")); status(err) != 429 {
		t.Errorf("a gateway's clock refilled a Redis bucket: %v", err)
	}
}

// TestRedisBucketsExpire: a bucket in Redis lives only until it would be
// full again (a missing bucket is a full one), plus a second: idle keys
// do not pile up.
func TestRedisBucketsExpire(t *testing.T) {
	testStore = StoreRedis
	h, _ := newLimiter(t, "api_rate_limit {\n zone "+uniq("ttl")+" 10/1s\n}", false)
	testStore = StoreLocal
	for range 3 { // three tokens taken: full again in 300 ms
		if _, err := send(h, request("GET", "/", "192.0.2.1", "ttl-user")); err != nil {
			t.Fatal(err)
		}
	}
	c := testRedis.Client()
	defer c.Close()
	ttl, err := c.PTTL(context.Background(), redisKey(h.Zones[0], "ttl-user")).Result()
	if err != nil {
		t.Fatal(err)
	}
	if ttl <= time.Second || ttl > 1300*time.Millisecond {
		t.Errorf("bucket TTL = %v, want (1s, 1.3s]: the time until it is full again plus a second", ttl)
	}
}

// TestZoneNames: a name that is not a valid sf-string is refused at
// provision; every accepted one yields headers a Structured Fields parser
// reads back to the same name.
func TestZoneNames(t *testing.T) {
	forEachStore(t, func(t *testing.T) {
		for _, name := range []string{"zoné", "a\x01b", "tab\there", "", strings.Repeat("x", 65), "with space"} {
			if validName(name) {
				t.Errorf("validName(%q) = true, want false", name)
			}
		}
		for _, name := range []string{`per-user`, `a"b`, `semi;colon`, `comma,zone`, `~!@#$%^&*()`} {
			h, _ := newLimiter(t, "api_rate_limit {\n zone "+strconv.Quote(name)+" 5/1m\n}", false)
			w, err := send(h, request("GET", "/", "192.0.2.1", "a"))
			if err != nil {
				t.Fatalf("%q: %v", name, err)
			}
			for _, field := range []string{"RateLimit", "RateLimit-Policy"} {
				list, err := httpsfv.UnmarshalList(w.Header().Values(field))
				if err != nil || len(list) != 1 || list[0].(httpsfv.Item).Value != name {
					t.Errorf("zone %q: %s = %q does not parse back (%v)", name, field, w.Header().Get(field), err)
				}
			}
		}
	})
}

func TestEvictionAtMaxKeys(t *testing.T) {
	h, _ := newLimiter(t, "api_rate_limit {\n zone "+uniq("evict")+" 1/1h {\n  max_keys 100\n }\n}", false)
	for i := 0; i < 1000; i++ {
		if _, err := send(h, request("GET", "/", "192.0.2.1", fmt.Sprintf("user%d", i))); err != nil {
			t.Fatalf("user%d: %v", i, err)
		}
	}
	if n := h.Zones[0].state.store.Len(); n != 100 {
		t.Errorf("store holds %d keys, want 100", n)
	}
	// the most recent keys are remembered, the oldest forgotten
	if _, err := send(h, request("GET", "/", "192.0.2.1", "user999")); status(err) != 429 {
		t.Error("a recent key was forgotten")
	}
	if _, err := send(h, request("GET", "/", "192.0.2.1", "user0")); err != nil {
		t.Error("an evicted key was remembered")
	}
}

func TestKeys(t *testing.T) {
	forEachStore(t, func(t *testing.T) {
		h, _ := newLimiter(t, "api_rate_limit {\n zone "+uniq("tenant")+" 1/1h {\n  key {http.request.header.X-Tenant}\n }\n zone "+uniq("v6")+" 5/1h {\n  key {client_ip}\n }\n}", false)
		tenant := func(tn, ip string) int {
			r := request("GET", "/", ip, "")
			if tn != "" {
				r.Header.Set("X-Tenant", tn)
			}
			_, err := send(h, r)
			return status(err)
		}
		if tenant("acme", "192.0.2.1") != 200 || tenant("acme", "192.0.2.2") != 429 {
			t.Error("tenant key not shared across IPs")
		}
		if tenant("", "192.0.2.3") != 200 || tenant("", "192.0.2.4") != 200 {
			t.Error("an empty key must fall back to the IP, not one shared bucket")
		}
		// IPv6: one /64 is one client
		v6 := newZoneOnly(t, "api_rate_limit {\n zone "+uniq("v6")+" 2/1h {\n  key {client_ip}\n }\n}")
		for i, ip := range []string{"2001:db8::1", "2001:db8::2:3"} {
			if _, err := send(v6, request("GET", "/", ip, "")); err != nil {
				t.Errorf("v6 %d: %v", i, err)
			}
		}
		if _, err := send(v6, request("GET", "/", "2001:db8::ffff", "")); status(err) != 429 {
			t.Error("addresses in one /64 do not share a bucket")
		}
		if _, err := send(v6, request("GET", "/", "2001:db8:0:1::1", "")); err != nil {
			t.Error("another /64 shares the bucket")
		}
	})
}

func newZoneOnly(t *testing.T, cfg string) *Handler {
	h, _ := newLimiter(t, cfg, false)
	return h
}

func TestMatchersAndReportOnly(t *testing.T) {
	forEachStore(t, func(t *testing.T) {
		h, _ := newLimiter(t, "api_rate_limit {\n zone "+uniq("writes")+" 1/1h {\n  methods POST\n  paths /v1/*\n }\n mode report_only\n}", false)
		for i := 0; i < 3; i++ {
			w, err := send(h, request("POST", "/v1/events", "192.0.2.1", "a"))
			if err != nil {
				t.Fatalf("report_only refused: %v", err)
			}
			if w.Header().Get("RateLimit") == "" {
				t.Error("report_only without headers")
			}
		}
		w, _ := send(h, request("GET", "/v1/events", "192.0.2.1", "a"))
		if w.Header().Get("RateLimit") != "" {
			t.Error("a zone for POST applied to GET")
		}
		w, _ = send(h, request("POST", "/other", "192.0.2.1", "a"))
		if w.Header().Get("RateLimit") != "" {
			t.Error("a zone for /v1/* applied to /other")
		}
	})
}

// TestStateSurvivesReload: a new handler for the same zone (as a config
// reload provisions) keeps the buckets, even when the rate changes.
func TestStateSurvivesReload(t *testing.T) {
	forEachStore(t, func(t *testing.T) {
		name := uniq("reload")
		h1, clock := newLimiter(t, "api_rate_limit {\n zone "+name+" 2/1h\n}", false)
		for i := 0; i < 2; i++ {
			send(h1, request("GET", "/", "192.0.2.1", "a"))
		}
		h2, _ := newLimiter(t, "api_rate_limit {\n zone "+name+" 3/1h\n}", false)
		h2.now = clock.Now
		_ = h1.Cleanup() // the old config goes away after the new one is up
		if _, err := send(h2, request("GET", "/", "192.0.2.1", "a")); status(err) != 429 {
			t.Error("the bucket was reset by the reload")
		}
		if testStore == StoreLocal && h2.Zones[0].state.store.Len() != 1 {
			t.Error("keys lost in the reload")
		}
	})
}

func TestCaddyfileErrors(t *testing.T) {
	for name, in := range map[string]string{
		"no zone":         "api_rate_limit",
		"no rate":         "api_rate_limit {\n zone a\n}",
		"bad rate":        "api_rate_limit {\n zone a ten/s\n}",
		"bad window":      "api_rate_limit {\n zone a 10/forever\n}",
		"zero events":     "api_rate_limit {\n zone a 0/s\n}",
		"unknown":         "api_rate_limit {\n zone a 1/s\n nope\n}",
		"unknown in zone": "api_rate_limit {\n zone a 1/s {\n  nope 1\n }\n}",
		"bad mode":        "api_rate_limit {\n zone a 1/s\n mode maybe\n}",
		"dup option":      "api_rate_limit {\n zone a 1/s {\n  burst 1\n  burst 2\n }\n}",
		"bad burst":       "api_rate_limit {\n zone a 1/s {\n  burst many\n }\n}",
	} {
		t.Run(name, func(t *testing.T) {
			var h Handler
			if err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(in)); err == nil {
				t.Errorf("%q accepted", in)
			}
		})
	}
	for name, z := range map[string]*Zone{
		"accent in name":  {Name: "zoné", Events: 1},
		"control in name": {Name: "a\x7fb", Events: 1},
		"bad prefix":      {Name: "a", Events: 1, IPv6Prefix: 200},
		"dup zones":       nil,
	} {
		t.Run(name, func(t *testing.T) {
			h := &Handler{Zones: []*Zone{z}}
			if z == nil {
				h.Zones = []*Zone{{Name: "d", Events: 1}, {Name: "d", Events: 1}}
			}
			h.Mode = ModeEnforce
			if err := h.Validate(); err == nil {
				t.Error("accepted")
			}
		})
	}
}

// TestMemoryBound: 1,000,000 distinct keys through a zone with max_keys
// 100,000 keep the heap growth under 64 MB.
func TestMemoryBound(t *testing.T) {
	s, err := newMemStore(100_000)
	if err != nil {
		t.Fatal(err)
	}
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	now := time.Now()
	for i := 0; i < 1_000_000; i++ {
		s.Reserve("10."+strconv.Itoa(i>>16)+"."+strconv.Itoa(i>>8&255)+"."+strconv.Itoa(i&255), 10, 10, now)
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	growth := int64(after.HeapAlloc) - int64(before.HeapAlloc)
	t.Logf("heap growth after 1,000,000 keys (max_keys 100,000): %.1f MB; keys held %d", float64(growth)/(1<<20), s.Len())
	if growth > 64<<20 || s.Len() != 100_000 {
		t.Errorf("heap grew %d bytes with %d keys, want < 64 MB and 100000", growth, s.Len())
	}
}

// BenchmarkDecision is an admitted decision at steady state (a known key),
// without header formatting.
func BenchmarkDecision(b *testing.B) {
	s, _ := newMemStore(100_000)
	now := time.Now()
	s.Reserve("alice", 1e9, 1e9, now)
	b.ReportAllocs()
	for b.Loop() {
		if d := s.Reserve("alice", 1e9, 1e9, now); !d.Admitted {
			b.Fatal("refused")
		}
	}
}

// BenchmarkHandler is the whole handler on an admitted request: decision,
// headers, metrics.
func BenchmarkHandler(b *testing.B) {
	h, _ := newLimiter(b, "api_rate_limit {\n zone "+uniq("bench")+" 1000000000/1s\n}", false)
	r := request("GET", "/", "192.0.2.1", "alice")
	w := httptest.NewRecorder()
	b.ReportAllocs()
	for b.Loop() {
		clear(w.Header())
		if err := h.ServeHTTP(w, r, okNext); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkHeaders is the header formatting alone.
func BenchmarkHeaders(b *testing.B) {
	h := &Handler{}
	z := &Zone{Name: "per-user", Events: 100, quotedName: `"per-user"`, policy: `"per-user";q=100;w=60`}
	z.policyHeader = []string{z.policy}
	d := Decision{Admitted: true, Remaining: 42, NextIn: 18 * time.Second}
	hdr := http.Header{}
	zones, decided := []*Zone{z}, []Decision{d}
	b.ReportAllocs()
	for b.Loop() {
		clear(hdr)
		h.setHeaders(hdr, zones, decided)
	}
}

// TestHeadersOneLinePerField: the zones of every limiter a request passed
// are members of one RateLimit and one RateLimit-Policy field line, in the
// order the handlers ran (RFC 9110 §5.3 makes it the same list as separate
// lines; one line is less to write and to parse).
func TestHeadersOneLinePerField(t *testing.T) {
	forEachStore(t, func(t *testing.T) {
		ipName, userName, postName := uniq("ip"), uniq("user"), uniq("post")
		ipH, clock := newLimiter(t, "api_rate_limit_ip {\n zone "+ipName+" 100/1m\n}", true)
		userH, _ := newLimiter(t, "api_rate_limit {\n zone "+userName+" 2/1m\n zone "+postName+" 5/1m {\n  methods POST\n }\n}", false)
		userH.now = clock.Now
		for _, tc := range []struct {
			method string
			zones  []string
		}{{"GET", []string{ipName, userName}}, {"POST", []string{ipName, userName, postName}}} {
			w := httptest.NewRecorder()
			err := ipH.ServeHTTP(w, request(tc.method, "/", "192.0.2.1", "alice"), caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
				return userH.ServeHTTP(w, r, okNext)
			}))
			if err != nil {
				t.Fatal(err)
			}
			for _, field := range []string{"RateLimit", "RateLimit-Policy"} {
				lines := w.Header().Values(field)
				if len(lines) != 1 {
					t.Fatalf("%s %s: %d field lines %q, want 1", tc.method, field, len(lines), lines)
				}
				list, err := httpsfv.UnmarshalList(lines)
				if err != nil {
					t.Fatalf("%s %s %q: %v", tc.method, field, lines[0], err)
				}
				var names []string
				for _, m := range list {
					names = append(names, m.(httpsfv.Item).Value.(string))
				}
				if !slices.Equal(names, tc.zones) {
					t.Errorf("%s %s = %q: zones %q, want %q", tc.method, field, lines[0], names, tc.zones)
				}
			}
		}
	})
}

// TestUndecidedDenyRefundsThePerIPToken: when the per-user limiter cannot
// reach Redis and denies (on_error deny), the request is refused, so the
// per-IP token it took before auth goes back, as on a 429.
func TestUndecidedDenyRefundsThePerIPToken(t *testing.T) {
	dead, err := redisapp.Connect(redisapp.App{Address: "127.0.0.1:1", Timeout: caddy.Duration(200 * time.Millisecond)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = dead.Cleanup() })
	ipH, clock := newLimiter(t, "api_rate_limit_ip {\n zone "+uniq("ip")+" 100/1m\n}", true)
	ipH.Store, ipH.shared = StoreLocal, nil
	userH, _ := newLimiter(t, "api_rate_limit {\n zone "+uniq("user")+" 10/1m\n}", false)
	userH.now = clock.Now
	userH.Store, userH.OnError, userH.redis = StoreRedis, OnErrorDeny, dead
	userH.shared = &redisDecider{app: dead, callerClock: true}
	for _, z := range userH.Zones {
		z.redisPrefix = z.redisKeyPrefix(dead)
	}
	ipTokens := func() float64 {
		b, ok := ipH.Zones[0].state.store.(*memStore).buckets.Peek("192.0.2.9")
		if !ok {
			return 100
		}
		b.mu.Lock()
		defer b.mu.Unlock()
		return b.tokens
	}
	for i := range 3 {
		r := request("GET", "/", "192.0.2.9", "alice")
		err := ipH.ServeHTTP(httptest.NewRecorder(), r, caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
			return userH.ServeHTTP(w, r, okNext)
		}))
		if got := status(err); got != http.StatusServiceUnavailable {
			t.Fatalf("request %d: %d, want 503 (Redis unreachable, on_error deny)", i, got)
		}
	}
	if left := ipTokens(); left < 99.99 {
		t.Errorf("the per-IP zone has %.3f tokens after three refused requests, want 100 (refunds lost)", left)
	}
}
