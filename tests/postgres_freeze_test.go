package tests

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/restgate/restgate/internal/testpg"
)

// freezeTimeout is the gateways' store_timeout in TestPostgresFreeze:
// short, so that the test is quick.
const freezeTimeout = time.Second

// TestPostgresFreeze: PostgreSQL stops answering (SIGSTOP on the
// postmaster and every backend: connections are accepted, nothing is
// answered) under concurrent GETs and PUTs through two gateways. Every
// request is answered within store_timeout plus 1 s, those sent during the
// freeze with a 503 problem and Retry-After; after SIGCONT, reads and
// writes succeed again on every pooled connection without a restart.
func TestPostgresFreeze(t *testing.T) {
	pg, err := testpg.Start() // its own server: freezing the shared one would stall other tests
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pg.Stop)
	url, err := pg.NewDatabase("freeze")
	if err != nil {
		t.Fatal(err)
	}
	cfg := strings.Replace(pgConfig(url), "database "+url, "database "+url+"\n\t\tstore_timeout "+freezeTimeout.String(), 1)
	gs := startGateways(t, 2, cfg)
	const keys = 8
	for i := range keys {
		Do(t, behindBalancer(gs[0]), "POST", gs[0].URL("/v1/notes"), fmt.Sprintf(`{"name": "k%d"}`, i), bearer("tester")...)
	}
	// more concurrent requests than a pool has connections (pgx: the
	// greater of 4 and the CPUs), so that every pooled connection serves
	burst := func() error {
		const each = 24
		errs := make(chan error, 2*each*len(gs))
		var wg sync.WaitGroup
		for _, g := range gs {
			for i := range each {
				wg.Add(1)
				go func() {
					defer wg.Done()
					if r := request(behindBalancer(g), g, i, keys); r.err != nil || r.status != 200 {
						errs <- fmt.Errorf("%s: %v %d %s", r.what, r.err, r.status, r.body)
					}
				}()
			}
		}
		wg.Wait()
		close(errs)
		return <-errs
	}
	if err := burst(); err != nil {
		t.Fatalf("before the freeze: %v", err)
	}

	// concurrent GETs and PUTs, 4 workers per gateway, each on a keep-alive
	// client (a TLS handshake is not the time measured)
	clients := make([]*http.Client, 8)
	for w := range clients {
		clients[w] = behindBalancer(gs[w%len(gs)])
	}
	var mu sync.Mutex
	var results []answer
	var frozenAt atomic.Int64 // unix nanoseconds; 0 while PostgreSQL answers
	stopLoad := load(len(clients), func(w, i int) bool {
		r := request(clients[w], gs[w%len(gs)], w*1000+i, keys)
		r.duringFreeze = frozenAt.Load() != 0 && r.start.UnixNano() >= frozenAt.Load()
		mu.Lock()
		results = append(results, r)
		mu.Unlock()
		return true
	})
	var once sync.Once
	stop := func() { once.Do(stopLoad) }
	t.Cleanup(stop) // after the thaw, when a failure ends the test early
	waitFor(t, 30*time.Second, "answers before the freeze", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(results) >= 40
	})

	pids := freeze(t, pg)
	frozenAt.Store(time.Now().UnixNano())
	waitFor(t, 30*time.Second, "every worker to be answered during the freeze", func() bool {
		mu.Lock()
		defer mu.Unlock()
		n := 0
		for _, r := range results {
			if r.duringFreeze {
				n++
			}
		}
		return n >= 5*8
	})
	stop()

	limit := freezeTimeout + time.Second
	var during int
	var slowest time.Duration
	for _, r := range results {
		if frozenAt.Load() > r.start.Add(r.took).UnixNano() {
			continue // answered before the freeze
		}
		slowest = max(slowest, r.took)
		if r.took > limit {
			t.Errorf("%s took %v, more than store_timeout + 1s (%v)", r.what, r.took, limit)
		}
		// the store's own code, through api_errors (which never keeps a
		// backend's 5xx code, but keeps resources': it runs in process)
		retryLater := r.err == nil && r.status == 503 && r.problem && r.retryAfter != "" && strings.Contains(r.body, `"code":"store_unavailable"`)
		switch {
		case r.duringFreeze && !retryLater:
			t.Errorf("%s sent during the freeze: %v %d (problem %v, Retry-After %q), want a 503 problem with Retry-After: %s",
				r.what, r.err, r.status, r.problem, r.retryAfter, r.body)
		case !r.duringFreeze && !retryLater && (r.err != nil || r.status != 200):
			t.Errorf("%s in flight at the freeze: %v %d %s, want 200 or a 503 problem with Retry-After", r.what, r.err, r.status, r.body)
		}
		if r.duringFreeze {
			during++
		}
	}
	t.Logf("frozen PostgreSQL (%d processes stopped): %d requests answered 503 with Retry-After, the slowest in %v (store_timeout %v)",
		len(pids), during, slowest.Round(time.Millisecond), freezeTimeout)

	thaw(pids)
	thawedAt := time.Now()
	for _, g := range gs {
		waitFor(t, 30*time.Second, "a read through "+g.URL("")+" after SIGCONT", func() bool {
			r := request(behindBalancer(g), g, 0, keys)
			return r.err == nil && r.status == 200
		})
	}
	recovered := time.Since(thawedAt)
	for round := range 3 {
		if err := burst(); err != nil {
			t.Fatalf("after SIGCONT (round %d): %v", round, err)
		}
	}
	t.Logf("after SIGCONT: both gateways served again within %v, then 3 bursts of %d concurrent GETs and PUTs all succeeded",
		recovered.Round(time.Millisecond), 2*24)
}

// answer is one request of TestPostgresFreeze and how it went.
type answer struct {
	what         string
	start        time.Time
	took         time.Duration
	err          error
	status       int
	problem      bool
	retryAfter   string
	body         string
	duringFreeze bool // sent after PostgreSQL froze
}

// request is a GET (i even) or a PUT (i odd) of one of keys notes.
func request(c *http.Client, g *Gateway, i, keys int) answer {
	key := fmt.Sprintf("k%d", i%keys)
	method, body := "GET", ""
	if i%2 == 1 {
		method, body = "PUT", fmt.Sprintf(`{"name": %q, "text": "%d"}`, key, i)
	}
	a := answer{what: method + " " + key, start: time.Now()}
	r, err := Send(c, method, g.URL("/v1/notes/"+key), body, bearer("tester")...)
	a.took = time.Since(a.start)
	if a.err = err; err == nil {
		a.status, a.body = r.StatusCode, string(r.Body)
		a.problem = r.Header.Get("Content-Type") == "application/problem+json"
		a.retryAfter = r.Header.Get("Retry-After")
	}
	return a
}

// freeze stops PostgreSQL's postmaster, then every process it forked
// (backends, background workers), with SIGSTOP: the kernel still accepts
// connections on its port, and nothing answers. A cleanup sends SIGCONT, so
// that a failed test never leaves a frozen server.
func freeze(t *testing.T, pg *testpg.Server) []int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := pgx.Connect(ctx, pg.URL("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	var dataDir string
	err = c.QueryRow(ctx, "SHOW data_directory").Scan(&dataDir)
	c.Close(ctx)
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(dataDir, "postmaster.pid"))
	if err != nil {
		t.Fatal(err)
	}
	postmaster, err := strconv.Atoi(strings.SplitN(string(b), "\n", 2)[0])
	if err != nil {
		t.Fatalf("postmaster.pid: %v", err)
	}
	pids := []int{postmaster}
	t.Cleanup(func() { thaw(pids) })
	if err := syscall.Kill(postmaster, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	// the postmaster forks no more: its children are a fixed set
	out, err := exec.Command("pgrep", "-P", strconv.Itoa(postmaster)).Output()
	if err != nil {
		t.Fatalf("pgrep -P %d: %v", postmaster, err)
	}
	for _, f := range strings.Fields(string(out)) {
		pid, err := strconv.Atoi(f)
		if err != nil {
			t.Fatalf("pgrep: %q", out)
		}
		pids = append(pids, pid)
		if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
			t.Fatal(err)
		}
	}
	return pids
}

// thaw sends SIGCONT to what freeze stopped, children first.
func thaw(pids []int) {
	for i := len(pids) - 1; i >= 0; i-- {
		_ = syscall.Kill(pids[i], syscall.SIGCONT)
	}
}
