package resources

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"go.uber.org/zap"
)

func TestStoreTimeoutOption(t *testing.T) {
	for _, tc := range []struct {
		opt  string
		want time.Duration // 0: a Caddyfile error
	}{
		{"store_timeout 250ms", 250 * time.Millisecond},
		{"store_timeout 2s", 2 * time.Second},
		{"store_timeout 0", 0},
		{"store_timeout -1s", 0},
		{"store_timeout soon", 0},
		{"store_timeout", 0},
		{"store_timeout 1s 2s", 0},
	} {
		t.Run(tc.opt, func(t *testing.T) {
			h := new(Handler)
			err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser("resources {\n" + tc.opt + "\ncollection a\n}"))
			switch {
			case tc.want == 0 && err == nil:
				t.Errorf("accepted, store_timeout = %v", time.Duration(h.StoreTimeout))
			case tc.want != 0 && err != nil:
				t.Error(err)
			case time.Duration(h.StoreTimeout) != tc.want:
				t.Errorf("store_timeout = %v, want %v", time.Duration(h.StoreTimeout), tc.want)
			}
		})
	}
	if err := (&Handler{Durability: DurabilityFull, StoreTimeout: -1}).Validate(); err == nil {
		t.Error("a negative store_timeout in JSON is valid")
	}
}

// provisionAt provisions a handler of testConfig on database url.
func provisionAt(t *testing.T, url, options string) *Handler {
	t.Helper()
	h := new(Handler)
	if err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(strings.Replace(testConfig, "resources {", "resources {\n"+options, 1))); err != nil {
		t.Fatal(err)
	}
	h.Database = url
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	t.Cleanup(cancel)
	if err := h.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	h.logger = zap.NewNop()
	if testing.Verbose() {
		h.logger, _ = zap.NewDevelopment()
	}
	if err := h.Validate(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = h.Cleanup() })
	return h
}

// TestPostgresMultiHost: pgx's multi-host form with
// target_session_attrs=read-write is accepted by `database`: the first host
// refuses connections, the second (a primary) serves, and logs name both
// hosts without the password.
func TestPostgresMultiHost(t *testing.T) {
	url, err := testPG.NewDatabase("multihost")
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	down := l.Addr().String()
	l.Close() // nothing listens there now
	up := fmt.Sprintf("127.0.0.1:%d", testPG.Port)
	multi := strings.Replace(url, "postgres@"+up, "postgres:secret@"+down+","+up, 1) + "&target_session_attrs=read-write"
	h := provisionAt(t, multi, "")
	if time.Duration(h.StoreTimeout) != defaultStoreTimeout {
		t.Errorf("store_timeout = %v by default, want %v", time.Duration(h.StoreTimeout), defaultStoreTimeout)
	}
	do(t, h, "POST", "/v1/events", `{"name": "a"}`).want(201)
	do(t, h, "GET", "/v1/events/a", "").want(200)
	if got := redactURL(multi); !strings.Contains(got, down+","+up) || strings.Contains(got, "secret") {
		t.Errorf("redacted as %s", got)
	}
}

// freezer is a TCP proxy to PostgreSQL that can stop forwarding: while
// frozen it accepts connections and delivers nothing either way, as a
// server that stopped answering (SIGSTOP, a partition).
type freezer struct {
	mu sync.RWMutex // held for writing while frozen
}

func startFreezer(t *testing.T, upstream string) (*freezer, string) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := new(freezer)
	var conns sync.Map
	t.Cleanup(func() {
		l.Close()
		conns.Range(func(c, _ any) bool { c.(net.Conn).Close(); return true })
	})
	pipe := func(dst, src net.Conn) {
		defer dst.Close()
		defer src.Close()
		buf := make([]byte, 32<<10)
		for {
			n, err := src.Read(buf)
			if n > 0 {
				f.mu.RLock()
				_, werr := dst.Write(buf[:n])
				f.mu.RUnlock()
				if werr != nil {
					return
				}
			}
			if err != nil {
				return
			}
		}
	}
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			u, err := net.Dial("tcp", upstream)
			if err != nil {
				c.Close()
				continue
			}
			conns.Store(c, true)
			conns.Store(u, true)
			go pipe(u, c)
			go pipe(c, u)
		}
	}()
	return f, l.Addr().String()
}

func (f *freezer) freeze() { f.mu.Lock() }
func (f *freezer) thaw()   { f.mu.Unlock() }

// TestPostgresFrozenServer: with the server frozen, every call ends at
// store_timeout with a 503 problem (store_unavailable, Retry-After); after
// the thaw, reads and writes succeed on every pooled connection (more
// concurrent requests than the pool holds), without a new handler.
func TestPostgresFrozenServer(t *testing.T) {
	url, err := testPG.NewDatabase("frozen")
	if err != nil {
		t.Fatal(err)
	}
	up := fmt.Sprintf("127.0.0.1:%d", testPG.Port)
	f, addr := startFreezer(t, up)
	const timeout = time.Second
	h := provisionAt(t, strings.Replace(url, up, addr, 1), "store_timeout "+timeout.String())
	const n = 24 // concurrent requests, one key each; the pool holds max(4, CPUs)
	for i := range n {
		do(t, h, "POST", "/v1/events", fmt.Sprintf(`{"name": "a%d"}`, i)).want(201)
	}

	type answer struct {
		code       int
		took       time.Duration
		retryAfter string
		body       string
	}
	concurrently := func(n int) []answer {
		out := make([]answer, n)
		var wg sync.WaitGroup
		for i := range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				path := fmt.Sprintf("/v1/events/a%d", i)
				r := httptest.NewRequest("GET", path, nil)
				if i%2 == 1 {
					r = httptest.NewRequest("PUT", path, strings.NewReader(fmt.Sprintf(`{"name": "a%d", "count": %d}`, i, i)))
					r.Header.Set("Content-Type", "application/json")
				}
				w := httptest.NewRecorder()
				start := time.Now()
				_ = h.ServeHTTP(w, r, nil)
				out[i] = answer{w.Code, time.Since(start), w.Header().Get("Retry-After"), w.Body.String()}
			}()
		}
		wg.Wait()
		return out
	}
	for _, a := range concurrently(n) {
		if a.code != http.StatusOK {
			t.Fatalf("before the freeze: %d %s", a.code, a.body)
		}
	}

	f.freeze()
	thawed := false
	t.Cleanup(func() {
		if !thawed {
			f.thaw()
		}
	})
	answered := make(chan []answer, 1)
	go func() { answered <- concurrently(n) }()
	var frozen []answer
	select {
	case frozen = <-answered:
	case <-time.After(timeout + 5*time.Second):
		t.Fatalf("frozen: requests still unanswered after %v", timeout+5*time.Second)
	}
	for _, a := range frozen {
		if a.code != http.StatusServiceUnavailable || a.retryAfter == "" || !strings.Contains(a.body, `"store_unavailable"`) {
			t.Errorf("frozen: %d, Retry-After %q: %s; want a 503 store_unavailable problem with Retry-After", a.code, a.retryAfter, a.body)
		}
		if a.took > timeout+time.Second {
			t.Errorf("frozen: answered in %v, past store_timeout %v + 1s", a.took, timeout)
		}
	}
	f.thaw()
	thawed = true

	waitUntil(t, 10*time.Second, "a read after the thaw", func() bool {
		w := httptest.NewRecorder()
		_ = h.ServeHTTP(w, httptest.NewRequest("GET", "/v1/events/a0", nil), nil)
		return w.Code == http.StatusOK
	})
	for range 3 {
		for _, a := range concurrently(n) {
			if a.code != http.StatusOK {
				t.Fatalf("after the thaw: %d %s", a.code, a.body)
			}
		}
	}
}
