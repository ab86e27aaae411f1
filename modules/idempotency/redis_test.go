package idempotency

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"go.uber.org/zap"

	"github.com/restgate/restgate/internal/testclock"
	"github.com/restgate/restgate/internal/testredis"
	"github.com/restgate/restgate/modules/redisapp"
)

// testRedis is the package's one redis-server (TestMain); each store gets
// its own key prefix.
var (
	testRedis  *testredis.Server
	prefixSeq  atomic.Int64
	testStores = []struct {
		name string
		new  func(t testing.TB, clk *testclock.Clock, lim limits) Store
	}{
		{"memory", func(_ testing.TB, _ *testclock.Clock, lim limits) Store { return newMemStore(lim) }},
		{"redis", func(t testing.TB, clk *testclock.Clock, lim limits) Store {
			return newTestRedisStore(t, testApp(t, testRedis.Addr), clk, lim)
		}},
	}
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
	return m.Run()
}

// testApp is a redis app on addr with a key prefix of its own.
func testApp(t testing.TB, addr string) *redisapp.App {
	t.Helper()
	app, err := redisapp.Connect(redisapp.App{
		Address: addr, KeyPrefix: fmt.Sprintf("t%d:", prefixSeq.Add(1)),
		Timeout: caddy.Duration(5 * time.Second), CircuitOpen: caddy.Duration(5 * time.Second),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = app.Cleanup() })
	return app
}

// newTestRedisStore is a gateway's Redis store on app, on the test's clock.
// Its claims stop being renewed when the test ends.
func newTestRedisStore(t testing.TB, app *redisapp.App, clk *testclock.Clock, lim limits) *redisStore {
	s := newRedisStore(app, lim, defaultClaimLease, zap.NewNop())
	if clk != nil {
		s.clock = clk.Now
	}
	t.Cleanup(func() {
		s.mu.Lock()
		var holds []*sharedHold
		for _, mine := range s.inFlight {
			for h := range mine {
				holds = append(holds, h)
			}
		}
		s.mu.Unlock()
		for _, h := range holds {
			abandon(h)
		}
	})
	return s
}

// wallClock is the real clock, for the Redis store on Redis's clock.
type wallClock struct{}

func (wallClock) Now() time.Time { return time.Now() }

// abandon stops renewing a claim without settling it: its gateway died.
func abandon(h *sharedHold) {
	if h.settled.CompareAndSwap(false, true) {
		close(h.stop)
		<-h.done
	}
}

// inFlightCount is how many claims a store counts in flight.
func inFlightCount(s Store) int {
	switch s := s.(type) {
	case *memStore:
		return s.inFlight
	case *redisStore:
		s.mu.Lock()
		defer s.mu.Unlock()
		return s.total
	}
	panic(fmt.Sprintf("a store of type %T", s))
}

// handlerMaker provisions a handler from Caddyfile text on one store.
type handlerMaker func(t testing.TB, cfg string) (*Handler, *testclock.Clock)

// forEachStore runs test once on each store.
func forEachStore(t *testing.T, test func(t *testing.T, newHandler handlerMaker)) {
	for _, st := range testStores {
		t.Run(st.name, func(t *testing.T) {
			test(t, func(t testing.TB, cfg string) (*Handler, *testclock.Clock) {
				h, clk := newHandler(t, cfg)
				h.store = st.new(t, clk, h.limits())
				if rs, ok := h.store.(*redisStore); ok {
					h.redis = rs.app
				}
				return h, clk
			})
		})
	}
}

// peer is another gateway of h's: the same configuration and clock, its
// own Redis store on the same Redis and key prefix.
func peer(t testing.TB, h *Handler, clk *testclock.Clock) *Handler {
	p := *h
	p.store = newTestRedisStore(t, h.redis, clk, h.limits())
	return &p
}

// sharedHandlers are two gateways sharing one Redis.
func sharedHandlers(t *testing.T, cfg string) (a, b *Handler, clk *testclock.Clock) {
	a, clk = newHandler(t, cfg)
	a.redis = testApp(t, testRedis.Addr)
	a.store = newTestRedisStore(t, a.redis, clk, a.limits())
	return a, peer(t, a, clk), clk
}

// TestAcrossGateways: two gateways sharing one Redis answer a request
// with a key as one gateway would: the retry sent to the other replays the
// first answer byte for byte without calling the backend, while the first
// is in flight the other answers 409, a different request with the key is
// a 422, and a response too large to keep is a 409 there too.
func TestAcrossGateways(t *testing.T) {
	t.Run("a retry on the other gateway is replayed", func(t *testing.T) {
		a, b, _ := sharedHandlers(t, "api_idempotency")
		be := &backend{}
		first, err := send(a, be, req{user: "alice", body: `{"name": "E1"}`, headers: []string{KeyHeader, key}})
		if err != nil || first.Code != 201 {
			t.Fatalf("first: %d %v", first.Code, err)
		}
		local, _ := send(a, be, req{user: "alice", body: `{"name": "E1"}`, headers: []string{KeyHeader, key}})
		retry, err := send(b, be, req{user: "alice", body: `{"name": "E1"}`, headers: []string{KeyHeader, key}})
		if err != nil || be.calls.Load() != 1 {
			t.Fatalf("retry: %v, the backend ran %d times, want once", err, be.calls.Load())
		}
		if retry.Code != 201 || !bytes.Equal(retry.Body.Bytes(), first.Body.Bytes()) {
			t.Errorf("replay on the other gateway: %d %q, want %d %q", retry.Code, retry.Body, first.Code, first.Body)
		}
		if fmt.Sprint(retry.Header()) != fmt.Sprint(local.Header()) {
			t.Errorf("replay on the other gateway has headers %v, want those of the first gateway's replay %v", retry.Header(), local.Header())
		}
	})
	t.Run("in flight on one gateway is a 409 on the other", func(t *testing.T) {
		a, b, _ := sharedHandlers(t, "api_idempotency")
		held := &backend{release: make(chan struct{})}
		done := make(chan int, 1)
		go func() {
			w, err := send(a, held, req{user: "alice", body: "{}", headers: []string{KeyHeader, key}})
			done <- statusOf(w, err)
		}()
		waitCalls(t, held, 1)
		probe := &backend{}
		w, err := send(b, probe, req{user: "alice", body: "{}", headers: []string{KeyHeader, key}})
		if p := problemOf(t, err); statusOf(w, err) != 409 || p.Code != "idempotency_key_in_use" || w.Header().Get("Retry-After") == "" {
			t.Errorf("the other gateway: %d %q Retry-After %q, want 409 idempotency_key_in_use", statusOf(w, err), p.Code, w.Header().Get("Retry-After"))
		}
		w, err = send(b, probe, req{user: "alice", body: `{"other": 1}`, headers: []string{KeyHeader, key}})
		if statusOf(w, err) != 422 {
			t.Errorf("a different request with the key on the other gateway: %d, want 422", statusOf(w, err))
		}
		close(held.release)
		if got := <-done; got != 201 {
			t.Fatalf("the first: %d", got)
		}
		if probe.calls.Load() != 0 {
			t.Errorf("the other gateway ran %d requests", probe.calls.Load())
		}
	})
	t.Run("a response too large to keep is a 409 on the other", func(t *testing.T) {
		a, b, _ := sharedHandlers(t, "api_idempotency {\n max_body 16\n}")
		be := &backend{}
		send(a, be, req{user: "alice", headers: []string{KeyHeader, key}})
		w, err := send(b, be, req{user: "alice", headers: []string{KeyHeader, key}})
		p := problemOf(t, err)
		if statusOf(w, err) != 409 || p.Code != "idempotency_response_not_stored" || p.Extensions["original_location"] != "/v1/events/e1" || be.calls.Load() != 1 {
			t.Errorf("the other gateway: %d %+v, the backend ran %d times; want 409 not stored, once", statusOf(w, err), p, be.calls.Load())
		}
	})
}

// TestClaimLease: the claim of a gateway that died mid-request lapses
// after its lease (a retry on another gateway gets a 409 until then, and
// runs after it), while the claim of a gateway whose request still runs
// is renewed past its lease.
func TestClaimLease(t *testing.T) {
	t.Run("a dead gateway's claim lapses after the lease", func(t *testing.T) {
		a, b, clk := sharedHandlers(t, "api_idempotency")
		c, _, err := a.store.Begin(context.Background(), "user:alice", "k", Fingerprint{}, clk.Now(), time.Hour)
		if c == nil {
			t.Fatalf("no claim: %v", err)
		}
		abandon(c.shared) // killed: neither renewed nor settled
		for _, tt := range []struct {
			after time.Duration
			want  string
		}{{0, "in flight"}, {defaultClaimLease - time.Second, "in flight"}, {2 * time.Second, "free"}} {
			clk.Add(tt.after)
			if got := held(t, b.store, clk, "user:alice", "k"); got != tt.want {
				t.Errorf("%v later, the other gateway finds the key %s, want %s", tt.after, got, tt.want)
			}
		}
	})
	t.Run("a running request's claim is renewed", func(t *testing.T) {
		app := testApp(t, testRedis.Addr)
		lim := limits{quota: 1 << 20, inFlight: 10, inFlightTotal: 10}
		a, b := newRedisStore(app, lim, 2*time.Second, zap.NewNop()), newRedisStore(app, lim, 2*time.Second, zap.NewNop())
		c, _, err := a.Begin(context.Background(), "user:alice", "k", Fingerprint{}, time.Now(), time.Hour)
		if c == nil {
			t.Fatalf("no claim: %v", err)
		}
		defer a.Release(c)
		for end := time.Now().Add(5 * time.Second); time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
			if got := held(t, b, wallClock{}, "user:alice", "k"); got != "in flight" {
				t.Fatalf("%v into a 2s lease, the other gateway finds the key %s, want in flight", 5*time.Second-time.Until(end), got)
			}
		}
		if !a.Complete(c, &Record{Status: 201, Body: []byte("ok")}) {
			t.Fatal("the renewed claim could not complete")
		}
		if got := held(t, b, wallClock{}, "user:alice", "k"); got != "stored 201" {
			t.Errorf("after it completed the key holds %s, want stored 201", got)
		}
	})
}

// TestRedisRecords: what the Redis store keeps: one key per record under
// the prefix, its scope in braces (one Cluster slot); a claim for its
// lease, a record for ttl; a response larger than the quota as a "not
// stored" marker; every field of a response as it was.
func TestRedisRecords(t *testing.T) {
	app := testApp(t, testRedis.Addr)
	clk := newClock()
	s := newTestRedisStore(t, app, clk, limits{quota: 4096, inFlight: 10, inFlightTotal: 10})
	rc := testRedis.Client()
	defer rc.Close()
	ctx := context.Background()
	fp := Fingerprint{1, 2, 3}

	c, _, err := s.Begin(ctx, "user:alice", "scope\x00one", fp, clk.Now(), time.Hour)
	if c == nil {
		t.Fatalf("no claim: %v", err)
	}
	keys, _ := rc.Keys(ctx, app.Key("*")).Result()
	want := regexp.MustCompile(`^` + regexp.QuoteMeta(app.Key("idem:{")) + `[0-9a-f]+\}$`)
	if len(keys) != 1 || !want.MatchString(keys[0]) {
		t.Fatalf("keys %q, want one matching %s", keys, want)
	}
	if ttl, _ := rc.PTTL(ctx, keys[0]).Result(); ttl <= 0 || ttl > defaultClaimLease {
		t.Errorf("a claim lives %v, want at most its lease %v", ttl, defaultClaimLease)
	}
	rec := &Record{Fingerprint: fp, Status: 201, Header: http.Header{"Location": {"/v1/e/1"}, "Vary": {"A", "B"}},
		Body: []byte("\x00binary\xff"), Expires: clk.Now().Add(time.Hour)}
	if !s.Complete(c, rec) {
		t.Fatal("Complete: the claim was not current")
	}
	if ttl, _ := rc.PTTL(ctx, keys[0]).Result(); ttl <= defaultClaimLease || ttl > time.Hour {
		t.Errorf("a record lives %v, want up to its ttl %v", ttl, time.Hour)
	}
	_, got, err := s.Begin(ctx, "user:alice", "scope\x00one", Fingerprint{}, clk.Now(), time.Hour)
	if err != nil || got == nil || got.Fingerprint != fp || got.Status != 201 || !bytes.Equal(got.Body, rec.Body) ||
		fmt.Sprint(got.Header) != fmt.Sprint(rec.Header) || got.InFlight || got.Discarded {
		t.Errorf("the stored record reads %+v %v, want %+v", got, err, rec)
	}

	c, _, _ = s.Begin(ctx, "user:alice", "large", fp, clk.Now(), time.Hour)
	rec.Body = bytes.Repeat([]byte("x"), 8192)
	s.Complete(c, rec)
	if got := held(t, s, clk, "user:alice", "large"); got != "discarded 201" {
		t.Errorf("a response over the quota is %s, want discarded 201", got)
	}
}

// TestRedisUnreachable: a request with a key that cannot be claimed
// because Redis cannot be reached is refused with a 503 problem and a
// Retry-After, and not carried out; a request without a key is.
func TestRedisUnreachable(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close() // nothing listens there now
	h, clk := newHandler(t, "api_idempotency")
	h.redis = testApp(t, addr)
	h.store = newTestRedisStore(t, h.redis, clk, h.limits())
	be := &backend{}
	for i := range 2 { // the first call fails, the second finds the circuit open
		w, err := send(h, be, req{user: "alice", body: "{}", headers: []string{KeyHeader, key}})
		p := problemOf(t, err)
		retry, _ := strconv.Atoi(w.Header().Get("Retry-After"))
		if statusOf(w, err) != 503 || p.Code != "idempotency_unavailable" || retry < 1 {
			t.Errorf("request %d: %d %q Retry-After %q, want 503 idempotency_unavailable with a Retry-After", i, statusOf(w, err), p.Code, w.Header().Get("Retry-After"))
		}
	}
	if be.calls.Load() != 0 {
		t.Errorf("the backend ran %d requests with a key", be.calls.Load())
	}
	if w, err := send(h, be, req{user: "alice", body: "{}"}); statusOf(w, err) != 201 {
		t.Errorf("without a key: %d %v, want 201", statusOf(w, err), err)
	}
	if n := inFlightCount(h.store); n != 0 {
		t.Errorf("%d refused claims still count in flight", n)
	}
}

// TestStoreConfig: `store` picks the store: local (the default) and auto
// without a redis app keep records in memory, redis without one refuses to
// load, saying what to add.
func TestStoreConfig(t *testing.T) {
	tests := []struct {
		cfg, want, wantErr string
	}{
		{"api_idempotency", "idempotency.pooledStore", ""},
		{"api_idempotency {\n store local\n}", "idempotency.pooledStore", ""},
		{"api_idempotency {\n store auto\n}", "idempotency.pooledStore", ""},
		{"api_idempotency {\n store redis\n}", "", "redis is not configured"},
	}
	for _, tt := range tests {
		t.Run(tt.cfg, func(t *testing.T) {
			h := new(Handler)
			if err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(tt.cfg)); err != nil {
				t.Fatal(err)
			}
			ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
			defer cancel()
			err := h.Provision(ctx)
			defer h.Cleanup()
			switch {
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Errorf("Provision: %v, want an error saying %q", err, tt.wantErr)
			case tt.wantErr == "" && err != nil:
				t.Errorf("Provision: %v", err)
			case tt.wantErr == "" && fmt.Sprintf("%T", h.store) != tt.want:
				t.Errorf("the store is a %T, want %s", h.store, tt.want)
			}
		})
	}
}

// BenchmarkStores: a claim and its completion (a first request), and the
// look-up that answers a retry, on each store.
func BenchmarkStores(b *testing.B) {
	for _, st := range testStores {
		clk := newClock()
		s := st.new(b, clk, limits{maxBytes: 1 << 30, quota: 1 << 30, inFlight: 10, inFlightTotal: 10})
		header := http.Header{"Location": {"/v1/events/e1"}, "Etag": {`"v1"`}}
		var n int
		b.Run(st.name+"/claim+complete", func(b *testing.B) {
			for range b.N {
				n++
				c, _, err := s.Begin(context.Background(), "user:alice", "bench-"+strconv.Itoa(n), Fingerprint{}, clk.Now(), time.Hour)
				if c == nil {
					b.Fatal(err)
				}
				s.Complete(c, &Record{Status: 201, Header: header, Body: []byte(`{"name": "e1"}`), Expires: clk.Now().Add(time.Hour)})
			}
		})
		b.Run(st.name+"/replay", func(b *testing.B) {
			// a record of its own, made now and kept for longer than any run
			// lasts on the clock (which moves a millisecond a read: the
			// first benchmark's record is an hour old after 3.6 million)
			n++
			key := "replay-" + strconv.Itoa(n)
			c, _, err := s.Begin(context.Background(), "user:alice", key, Fingerprint{}, clk.Now(), time.Hour)
			if c == nil {
				b.Fatal(err)
			}
			s.Complete(c, &Record{Status: 201, Header: header, Body: []byte(`{"name": "e1"}`), Expires: clk.Now().Add(100_000 * time.Hour)})
			for range b.N {
				if _, got, err := s.Begin(context.Background(), "user:alice", key, Fingerprint{}, clk.Now(), time.Hour); got == nil {
					b.Fatalf("the record is gone: %v", err)
				}
			}
		})
	}
}
