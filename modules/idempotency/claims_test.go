package idempotency

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/restgate/restgate/internal/testclock"
	"github.com/restgate/restgate/modules/problem"
)

// recordSize is what every test record costs: testKey's 4 bytes twice,
// the overhead and a body that makes up the rest.
const recordSize = 1000

func testKey(i int) string { return fmt.Sprintf("k%03d", i) }

func testRecord(now time.Time, status int) *Record {
	return &Record{Status: status, Body: bytes.Repeat([]byte("x"), recordSize-2*4-recordOverhead), Expires: now.Add(time.Hour)}
}

func newClock() *testclock.Clock {
	return testclock.New(time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC), time.Millisecond)
}

// mustBegin claims key for principal, failing the test if it cannot.
func mustBegin(t *testing.T, s Store, clk *testclock.Clock, principal, key string) *Claim {
	t.Helper()
	c, rec, err := s.Begin(context.Background(), principal, key, Fingerprint{}, clk.Now(), time.Hour)
	if c == nil {
		t.Fatalf("Begin(%s, %s) = %+v, %v; want a claim", principal, key, rec, err)
	}
	return c
}

// held returns what key holds: "free", "in flight", "discarded <status>"
// or "stored <status>". Looking frees nothing: a free key is released.
func held(t *testing.T, s Store, clk interface{ Now() time.Time }, principal, key string) string {
	t.Helper()
	c, rec, err := s.Begin(context.Background(), principal, key, Fingerprint{}, clk.Now(), time.Hour)
	switch {
	case err != nil:
		return err.Error()
	case c != nil:
		s.Release(c)
		return "free"
	case rec.InFlight:
		return "in flight"
	case rec.Discarded:
		return fmt.Sprint("discarded ", rec.Status)
	}
	return fmt.Sprint("stored ", rec.Status)
}

// TestClaimOwnership: only the request that claimed a key completes or
// releases it; a stale claim (expired and claimed again, or already
// settled) changes nothing, above all not the newer claim's record.
func TestClaimOwnership(t *testing.T) {
	tests := []struct {
		name string
		// run gets a store and the clock, and returns the store's answer
		// for the key at the end
		run  func(t *testing.T, s Store, clk *testclock.Clock) string
		want string
	}{
		{"a stale release does not free the newer claim", func(t *testing.T, s Store, clk *testclock.Clock) string {
			first := mustBegin(t, s, clk, "user:alice", "k")
			clk.Add(2 * time.Hour) // the first request outlives its claim
			mustBegin(t, s, clk, "user:alice", "k")
			if s.Release(first) {
				t.Error("a stale claim released the key")
			}
			return held(t, s, clk, "user:alice", "k")
		}, "in flight"},
		{"a stale completion does not overwrite the newer claim", func(t *testing.T, s Store, clk *testclock.Clock) string {
			first := mustBegin(t, s, clk, "user:alice", "k")
			clk.Add(2 * time.Hour)
			second := mustBegin(t, s, clk, "user:alice", "k")
			if s.Complete(first, testRecord(clk.Now(), 500)) {
				t.Error("a stale claim completed the key")
			}
			if !s.Complete(second, testRecord(clk.Now(), 201)) {
				t.Error("the current claim could not complete the key")
			}
			return held(t, s, clk, "user:alice", "k")
		}, "stored 201"},
		{"a claim released, then claimed again, is stale", func(t *testing.T, s Store, clk *testclock.Clock) string {
			first := mustBegin(t, s, clk, "user:alice", "k")
			s.Release(first)
			mustBegin(t, s, clk, "user:alice", "k")
			if s.Release(first) || s.Complete(first, testRecord(clk.Now(), 201)) {
				t.Error("a released claim acted on the key again")
			}
			return held(t, s, clk, "user:alice", "k")
		}, "in flight"},
		{"a completed claim cannot complete or release again", func(t *testing.T, s Store, clk *testclock.Clock) string {
			c := mustBegin(t, s, clk, "user:alice", "k")
			s.Complete(c, testRecord(clk.Now(), 201))
			if s.Complete(c, testRecord(clk.Now(), 200)) || s.Release(c) {
				t.Error("a completed claim acted on the key again")
			}
			return held(t, s, clk, "user:alice", "k")
		}, "stored 201"},
		{"no claim acts on nothing", func(t *testing.T, s Store, clk *testclock.Clock) string {
			c := mustBegin(t, s, clk, "user:alice", "k")
			if s.Release(nil) || s.Complete(nil, testRecord(clk.Now(), 200)) {
				t.Error("a nil claim acted")
			}
			s.Complete(c, testRecord(clk.Now(), 201))
			return held(t, s, clk, "user:alice", "k")
		}, "stored 201"},
		{"an expired in-flight claim frees its principal's slot", func(t *testing.T, s Store, clk *testclock.Clock) string {
			mustBegin(t, s, clk, "user:alice", "k")
			clk.Add(2 * time.Hour)
			mustBegin(t, s, clk, "user:alice", "k") // would be refused if the expired claim still counted
			return held(t, s, clk, "user:alice", "k2")
		}, ErrPrincipalBusy.Error()},
	}
	for _, st := range testStores {
		for _, tt := range tests {
			t.Run(st.name+"/"+tt.name, func(t *testing.T) {
				clk := newClock()
				s := st.new(t, clk, limits{maxBytes: 1 << 20, quota: 1 << 20, inFlight: 1, inFlightTotal: 10})
				if got := tt.run(t, s, clk); got != tt.want {
					t.Errorf("the key holds %q, want %q", got, tt.want)
				}
			})
		}
	}
}

// TestInFlightNeverEvicted: a flood of large completed records, from
// another principal or the same one, never forgets a claim in flight.
func TestInFlightNeverEvicted(t *testing.T) {
	tests := []struct {
		name, flooder string
	}{
		{"another principal floods", "user:mallory"},
		{"the same principal floods", "user:alice"},
		{"anonymous clients flood", "ip:192.0.2.9"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clk := newClock()
			// room for 4 records in all, 2 a principal
			s := newMemStore(limits{maxBytes: 4 * recordSize, quota: 2 * recordSize, inFlight: 2, inFlightTotal: 10})
			c := mustBegin(t, s, clk, "user:alice", "slow")
			for i := range 100 {
				f := mustBegin(t, s, clk, tt.flooder, testKey(i))
				s.Complete(f, testRecord(clk.Now(), 201))
			}
			if got := held(t, s, clk, "user:alice", "slow"); got != "in flight" {
				t.Fatalf("after the flood the slow request's key holds %q, want in flight", got)
			}
			if !s.Complete(c, testRecord(clk.Now(), 201)) {
				t.Fatal("the slow request's claim was no longer current")
			}
			if got := held(t, s, clk, "user:alice", "slow"); got != "stored 201" {
				t.Errorf("the slow request's key holds %q, want stored 201", got)
			}
			if s.bytes > s.lim.maxBytes {
				t.Errorf("the store holds %d bytes of records, over its %d", s.bytes, s.lim.maxBytes)
			}
		})
	}
}

// TestInFlightBounds: claims in flight are bounded by count, per principal
// and in all; a refused claim claims nothing, and a settled one frees its
// slot.
func TestInFlightBounds(t *testing.T) {
	tests := []struct {
		name   string
		claims []string // principals claiming in turn, each a new key; none settles
		want   []error
	}{
		{"one principal up to its bound", []string{"a", "a", "a"}, []error{nil, nil, ErrPrincipalBusy}},
		{"another principal is not held back", []string{"a", "a", "a", "b", "b"}, []error{nil, nil, ErrPrincipalBusy, nil, nil}},
		{"the store's bound", []string{"a", "a", "b", "b", "c", "c"}, []error{nil, nil, nil, nil, nil, ErrStoreBusy}},
	}
	for _, st := range testStores {
		for _, tt := range tests {
			t.Run(st.name+"/"+tt.name, func(t *testing.T) {
				clk := newClock()
				s := st.new(t, clk, limits{maxBytes: 1 << 20, quota: 1 << 20, inFlight: 2, inFlightTotal: 5})
				var claims []*Claim
				for i, who := range tt.claims {
					c, _, err := s.Begin(context.Background(), who, testKey(i), Fingerprint{}, clk.Now(), time.Hour)
					if !errors.Is(err, tt.want[i]) || (err == nil) != (c != nil) {
						t.Fatalf("claim %d by %s: %v, %v; want %v", i, who, c, err, tt.want[i])
					}
					if c != nil {
						claims = append(claims, c)
					}
				}
				if n := inFlightCount(s); n != len(claims) {
					t.Errorf("%d claims counted in flight, want %d", n, len(claims))
				}
				// settling one frees a slot for its principal
				last := claims[len(claims)-1]
				s.Complete(last, testRecord(clk.Now(), 201))
				if c, _, err := s.Begin(context.Background(), last.principal, "again", Fingerprint{}, clk.Now(), time.Hour); c == nil {
					t.Errorf("after a claim settled, %s could not claim: %v", last.principal, err)
				}
			})
		}
	}
}

// TestQuotas: completed records are bounded per principal (its own least
// recently used go first) and in all (the largest holder's least recently
// used go first), so that a flood cannot push out a principal holding no
// more than its fair share.
func TestQuotas(t *testing.T) {
	type put struct {
		who   string
		n     int // records, keys who/0 … who/n-1
		touch bool
		pad   int // bytes added to each record
	}
	tests := []struct {
		name            string
		maxBytes, quota int64
		puts            []put
		want            map[string]string // who/i → what it holds
	}{
		{
			name: "a principal's own oldest go first", maxBytes: 100 * recordSize, quota: 3 * recordSize,
			puts: []put{{who: "bob", n: 1}, {who: "alice", n: 5}},
			want: map[string]string{"alice/0": "free", "alice/1": "free", "alice/2": "stored 201", "alice/4": "stored 201", "bob/0": "stored 201"},
		},
		{
			name: "a flood cannot push out a fair share", maxBytes: 4 * recordSize, quota: 4 * recordSize,
			puts: []put{{who: "bob", n: 2}, {who: "alice", n: 50}},
			want: map[string]string{"bob/0": "stored 201", "bob/1": "stored 201", "alice/48": "stored 201", "alice/49": "stored 201", "alice/47": "free"},
		},
		{
			name: "the largest holder pays, and only above its share", maxBytes: 6 * recordSize, quota: 6 * recordSize,
			puts: []put{{who: "bob", n: 1}, {who: "carol", n: 2}, {who: "alice", n: 20}},
			// three principals: 2 records each is the fair share
			want: map[string]string{"bob/0": "stored 201", "carol/0": "stored 201", "carol/1": "stored 201", "alice/17": "stored 201", "alice/19": "stored 201", "alice/16": "free"},
		},
		{
			name: "a principal over its share loses its least recently used", maxBytes: 4 * recordSize, quota: 4 * recordSize,
			puts: []put{{who: "bob", n: 3}, {who: "bob", n: 1, touch: true}, {who: "alice", n: 2}},
			want: map[string]string{"bob/0": "stored 201", "bob/1": "free", "bob/2": "stored 201", "alice/0": "stored 201", "alice/1": "stored 201"},
		},
		{
			name: "a response alone larger than its fair share of a full store is kept discarded", maxBytes: 5 * recordSize, quota: 5 * recordSize,
			puts: []put{{who: "bob", n: 2}, {who: "carol", n: 2}, {who: "alice", n: 1, pad: 2 * recordSize}},
			want: map[string]string{"alice/0": "discarded 201", "bob/0": "stored 201", "bob/1": "stored 201", "carol/0": "stored 201", "carol/1": "stored 201"},
		},
		{
			name: "a response larger than the quota is kept discarded", maxBytes: 4 * recordSize, quota: recordSize / 2,
			puts: []put{{who: "alice", n: 1}},
			want: map[string]string{"alice/0": "discarded 201"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clk := newClock()
			s := newMemStore(limits{maxBytes: tt.maxBytes, quota: tt.quota, inFlight: 10, inFlightTotal: 100})
			for _, p := range tt.puts {
				for i := range p.n {
					k := fmt.Sprintf("%s/%d", p.who, i)
					if p.touch {
						held(t, s, clk, p.who, k)
						continue
					}
					c := mustBegin(t, s, clk, p.who, k)
					rec := testRecord(clk.Now(), 201)
					rec.Body = rec.Body[:len(rec.Body)-2*(len(k)-4)] // every record recordSize bytes
					rec.Body = append(rec.Body, bytes.Repeat([]byte("x"), p.pad)...)
					s.Complete(c, rec)
				}
			}
			for k, want := range tt.want {
				who, _, _ := strings.Cut(k, "/")
				if got := held(t, s, clk, who, k); got != want {
					t.Errorf("%s holds %q, want %q", k, got, want)
				}
			}
			if s.bytes > tt.maxBytes {
				t.Errorf("the store holds %d bytes, over its %d", s.bytes, tt.maxBytes)
			}
		})
	}
}

// TestRefusedClaims: through the handler, a principal over its in-flight
// bound gets a 429 problem, the store over its bound a 503, and neither
// reaches the backend; another principal is not held back.
func TestRefusedClaims(t *testing.T) {
	forEachStore(t, func(t *testing.T, newHandler handlerMaker) {
		h, _ := newHandler(t, "api_idempotency {\n max_in_flight 2\n max_in_flight_total 3\n}")
		b := &backend{release: make(chan struct{})}
		var wg sync.WaitGroup
		start := func(user, k string) {
			wg.Add(1)
			go func() {
				defer wg.Done()
				send(h, b, req{user: user, body: "{}", headers: []string{KeyHeader, `"` + k + `"`}})
			}()
		}
		start("alice", "a1")
		start("alice", "a2")
		waitCalls(t, b, 2)

		tests := []struct {
			name, user, key string
			wantStatus      int
			wantCode        string
		}{
			{"the principal's bound", "alice", "a3", 429, "idempotency_in_flight_limit"},
			{"anonymous clients are a principal too", "", "n1", 0, ""},
			{"the store's bound", "bob", "b1", 503, "idempotency_store_busy"},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				if tt.wantStatus == 0 { // this one is let through, and holds its slot
					start(tt.user, tt.key)
					waitCalls(t, b, 3)
					return
				}
				probe := &backend{} // never blocks: a request let through by mistake answers at once
				w, err := send(h, probe, req{user: tt.user, body: "{}", headers: []string{KeyHeader, `"` + tt.key + `"`}})
				p := problemOf(t, err)
				if got := statusOf(w, err); got != tt.wantStatus || p.Code != tt.wantCode || w.Header().Get("Retry-After") == "" {
					t.Errorf("status %d code %q Retry-After %q; want %d %q and a Retry-After", got, p.Code, w.Header().Get("Retry-After"), tt.wantStatus, tt.wantCode)
				}
				if tt.wantStatus == 429 && p.Type != problem.TypeQuotaExceeded {
					t.Errorf("type %q, want %q", p.Type, problem.TypeQuotaExceeded)
				}
				if probe.calls.Load() != 0 {
					t.Error("a refused request reached the backend")
				}
			})
		}
		close(b.release)
		wg.Wait()
		// settled: every slot is free again
		if w, err := send(h, b, req{user: "alice", body: "{}", headers: []string{KeyHeader, `"a3"`}}); statusOf(w, err) != 201 {
			t.Errorf("after the requests in flight finished: %d %v, want 201", statusOf(w, err), err)
		}
	})
}

// TestStaleClaimThroughHandler: a first request that outlives its claim
// (its ttl) and then fails must not release the claim of the request that
// took the key after it, and its late end must not overwrite that one's
// response.
func TestStaleClaimThroughHandler(t *testing.T) {
	forEachStore(t, func(t *testing.T, newHandler handlerMaker) {
		tests := []struct {
			name        string
			firstStatus int // what the slow first request finally answers
		}{
			{"the first fails and releases", 503},
			{"the first succeeds and completes", 201},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				h, clk := newHandler(t, "api_idempotency {\n ttl 1h\n}")
				slow := &backend{release: make(chan struct{}), status: tt.firstStatus}
				done := make(chan struct{})
				go func() {
					defer close(done)
					send(h, slow, req{user: "alice", body: "{}", headers: []string{KeyHeader, key}})
				}()
				waitCalls(t, slow, 1)
				clk.Add(2 * time.Hour) // the first outlives its claim
				second := &backend{release: make(chan struct{})}
				secondCode := make(chan int, 1)
				go func() {
					w, err := send(h, second, req{user: "alice", body: "{}", headers: []string{KeyHeader, key}})
					secondCode <- statusOf(w, err)
				}()
				waitCalls(t, second, 1) // the second holds the key now
				close(slow.release)
				<-done
				// retries: a backend that never blocks, and answers 202
				retries := &backend{status: http.StatusAccepted}
				if w, err := send(h, retries, req{user: "alice", body: "{}", headers: []string{KeyHeader, key}}); statusOf(w, err) != 409 {
					t.Errorf("while the second is in flight, a retry got %d, want 409 (the backend ran it %d times)", statusOf(w, err), retries.calls.Load())
				}
				close(second.release)
				if got := <-secondCode; got != 201 {
					t.Fatalf("the second request: %d", got)
				}
				w, err := send(h, retries, req{user: "alice", body: "{}", headers: []string{KeyHeader, key}})
				if statusOf(w, err) != 201 || w.Header().Get(ReplayedHeader) != "true" || retries.calls.Load() != 0 {
					t.Errorf("a retry after both: %d replayed %q, the backend ran retries %d times; want the second's 201 replayed", statusOf(w, err), w.Header().Get(ReplayedHeader), retries.calls.Load())
				}
			})
		}
	})
}

// TestDiscardedResponse: a response too large to keep is not run again on
// a retry: the retry is a 409 problem that gives its status and Location.
func TestDiscardedResponse(t *testing.T) {
	forEachStore(t, func(t *testing.T, newHandler handlerMaker) {
		tests := []struct {
			name, cfg string
		}{
			{"larger than max_body", "api_idempotency {\n max_body 16\n}"},
			{"larger than the principal's quota", "api_idempotency {\n max_size 64KiB\n principal_quota 300\n}"},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				h, _ := newHandler(t, tt.cfg)
				b := &backend{}
				if w, err := send(h, b, req{user: "alice", headers: []string{KeyHeader, key}}); statusOf(w, err) != 201 {
					t.Fatalf("first: %d %v", statusOf(w, err), err)
				}
				w, err := send(h, b, req{user: "alice", headers: []string{KeyHeader, key}})
				p := problemOf(t, err)
				if statusOf(w, err) != 409 || p.Code != "idempotency_response_not_stored" || p.Extensions["original_status"] != 201 ||
					p.Extensions["original_location"] != "/v1/events/e1" {
					t.Errorf("retry: %d %+v", statusOf(w, err), p)
				}
				if b.calls.Load() != 1 {
					t.Errorf("the backend ran %d times, want once", b.calls.Load())
				}
				if js, _ := json.Marshal(p); !strings.Contains(string(js), `"original_status":201`) {
					t.Errorf("the problem reads %s", js)
				}
			})
		}
	})
}

// TestLimitsConfig: the new options parse, take their defaults and are
// checked against each other.
func TestLimitsConfig(t *testing.T) {
	tests := []struct {
		cfg     string
		want    limits
		wantErr string
	}{
		{"api_idempotency", limits{maxBytes: 64 << 20, quota: 8 << 20, inFlight: 100, inFlightTotal: 10000}, ""},
		{"api_idempotency {\n max_size 1MiB\n}", limits{maxBytes: 1 << 20, quota: 128 << 10, inFlight: 100, inFlightTotal: 10000}, ""},
		{"api_idempotency {\n principal_quota 2MiB\n max_in_flight 5\n max_in_flight_total 50\n}", limits{maxBytes: 64 << 20, quota: 2 << 20, inFlight: 5, inFlightTotal: 50}, ""},
		{"api_idempotency {\n max_size 1MiB\n principal_quota 2MiB\n}", limits{}, "must not exceed max_size"},
		{"api_idempotency {\n max_in_flight 20\n max_in_flight_total 10\n}", limits{}, "must not exceed max_in_flight_total"},
		{"api_idempotency {\n max_in_flight 0\n}", limits{}, "invalid count"},
		{"api_idempotency {\n max_in_flight_total many\n}", limits{}, "invalid count"},
		{"api_idempotency {\n principal_quota lots\n}", limits{}, "invalid size"},
		{"api_idempotency {\n max_in_flight 1 2\n}", limits{}, "wrong argument count"},
	}
	for _, tt := range tests {
		t.Run(tt.cfg, func(t *testing.T) {
			h := new(Handler)
			err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(tt.cfg))
			if err == nil {
				h.store = newMemStore(limits{}) // not the pool's
				ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
				defer cancel()
				if err = h.Provision(ctx); err == nil {
					err = h.Validate()
				}
			}
			switch {
			case tt.wantErr == "" && err != nil:
				t.Fatalf("error %v", err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Fatalf("error %v, want one saying %q", err, tt.wantErr)
			case tt.wantErr == "" && h.limits() != tt.want:
				t.Errorf("limits %+v, want %+v", h.limits(), tt.want)
			}
		})
	}
}

// waitCalls waits until the backend has seen n requests.
func waitCalls(t *testing.T, b *backend, n int64) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for b.calls.Load() < n {
		if time.Now().After(deadline) {
			t.Fatalf("the backend saw %d requests after 10s, want %d", b.calls.Load(), n)
		}
		time.Sleep(time.Millisecond)
	}
}

// problemOf returns the problem a handler error carries.
func problemOf(t *testing.T, err error) *problem.Problem {
	t.Helper()
	var p *problem.Problem
	var he caddyhttp.HandlerError
	if !errors.As(err, &he) || !errors.As(err, &p) {
		t.Fatalf("error %v carries no problem", err)
	}
	return p
}
