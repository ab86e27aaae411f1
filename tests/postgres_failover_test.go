package tests

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/restgate/restgate/internal/testpg"
)

// failoverTimeout is the gateways' store_timeout in TestPostgresFailover.
const failoverTimeout = 2 * time.Second

// TestPostgresFailover: two gateways on pgx's multi-host URL
// (primary,standby with target_session_attrs=read-write), and a third on
// the same URL without target_session_attrs (whose pool, once the primary
// is gone, connects to the standby while it is read-only: its writes fail
// there with SQLSTATE 25006), under a write load (creates, and If-Match
// PATCH increments of two counters shared by the three gateways). The
// primary is killed (SIGKILL to its process group);
// once the gateways have answered 503s with no primary, the synchronous
// standby is promoted. Every answer is a success, a 412 (an increment that
// lost a race) or a 503 problem with Retry-After, within store_timeout
// plus 1 s; writes succeed again through every gateway without a restart;
// every acknowledged create is on the promoted standby, and each counter
// holds at least its acknowledged increments and at most those plus the
// ones whose answer was a 503 (a commit cut off mid-answer may have
// happened).
func TestPostgresFailover(t *testing.T) {
	rp, err := testpg.StartReplicated()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(rp.Stop)
	db, err := rp.NewDatabase("failover")
	if err != nil {
		t.Fatal(err)
	}
	config := func(url string) string {
		return strings.Replace(pgConfig(url), "database "+url, "database "+url+"\n\t\tstore_timeout "+failoverTimeout.String(), 1)
	}
	url := rp.URL(db)
	gs := append(startGateways(t, 2, config(url)),
		StartGateway(t, config(strings.Replace(url, "&target_session_attrs=read-write", "", 1)), Options{}))
	const counters = 2
	for i := range counters {
		if r := Do(t, behindBalancer(gs[0]), "POST", gs[0].URL("/v1/counters"), fmt.Sprintf(`{"name": "c%d", "n": 0}`, i), bearer("tester")...); r.StatusCode != 201 {
			t.Fatalf("creating counter c%d: %d %s", i, r.StatusCode, r.Body)
		}
	}

	// 12 workers, 4 per gateway (w%3), each on its keep-alive client:
	// workers 0–5 create notes, 6–11 increment counter w%2 (so each
	// counter is incremented through every gateway)
	const workers = 12
	clients := make([]*http.Client, workers)
	for w := range clients {
		clients[w] = behindBalancer(gs[w%len(gs)])
	}
	var (
		mu        sync.Mutex
		results   []answer
		created   = map[string]bool{} // acknowledged creates (201)
		incAcked  [counters]int       // acknowledged increments (200)
		incMaybe  [counters]int       // increments answered 503: made or not
		okAfter   [3]int              // writes acknowledged per gateway after the promotion
		killedAt  time.Time
		promoted  time.Time
		firstOK   [3]time.Time // first acknowledged write per gateway after the kill
		lastRetry time.Time    // end of the last 503 answer
	)
	record := func(w int, a answer, ok bool) {
		mu.Lock()
		defer mu.Unlock()
		results = append(results, a)
		end := a.start.Add(a.took)
		if a.status == 503 && end.After(lastRetry) {
			lastRetry = end
		}
		if !ok || killedAt.IsZero() || a.start.Before(killedAt) {
			return
		}
		if g := w % len(gs); firstOK[g].IsZero() {
			firstOK[g] = end
		}
		if !promoted.IsZero() && a.start.After(promoted) {
			okAfter[w%len(gs)]++
		}
	}
	stopLoad := load(workers, func(w, i int) bool {
		c, g := clients[w], gs[w%len(gs)]
		if w < 6 {
			key := fmt.Sprintf("w%d-%d", w, i)
			a, _ := call(c, "POST", g.URL("/v1/notes"), `{"name": "`+key+`"}`)
			if a.status == 201 {
				mu.Lock()
				created[key] = true
				mu.Unlock()
			}
			record(w, a, a.status == 201)
			return true
		}
		n := w % counters
		path := g.URL(fmt.Sprintf("/v1/counters/c%d", n))
		get, etag := call(c, "GET", path, "")
		var v struct{ N int }
		if err := json.Unmarshal([]byte(get.body), &v); get.status == 200 && err != nil {
			get.err = fmt.Errorf("%v: %s", err, get.body)
		}
		record(w, get, false)
		if get.status != 200 || get.err != nil {
			time.Sleep(10 * time.Millisecond) // a client honouring Retry-After waits longer
			return true
		}
		a, _ := call(c, "PATCH", path, fmt.Sprintf(`{"n": %d}`, v.N+1), "If-Match", etag)
		mu.Lock()
		switch a.status {
		case 200:
			incAcked[n]++
		case 503:
			incMaybe[n]++
		}
		mu.Unlock()
		record(w, a, a.status == 200)
		return true
	})
	var once sync.Once
	stop := func() { once.Do(stopLoad) }
	t.Cleanup(stop)
	acked := func() int {
		mu.Lock()
		defer mu.Unlock()
		return len(created) + incAcked[0] + incAcked[1]
	}
	waitFor(t, 60*time.Second, "100 acknowledged writes before the kill", func() bool { return acked() >= 100 })

	if err := rp.Primary.Kill(); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	killedAt = time.Now()
	mu.Unlock()
	retries := func() int {
		mu.Lock()
		defer mu.Unlock()
		n := 0
		for _, a := range results {
			if a.status == 503 && a.start.After(killedAt) {
				n++
			}
		}
		return n
	}
	// a failover manager takes a while to decide: the gateways answer
	// without a primary before the promotion
	waitFor(t, 30*time.Second, "20 answers of 503 with the primary killed", func() bool { return retries() >= 20 })
	beforePromote := retries()
	promoting := time.Now()
	if err := rp.Promote(); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	promoted = time.Now()
	mu.Unlock()
	waitFor(t, 30*time.Second, "20 acknowledged writes through each gateway after the promotion, without a restart", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return min(okAfter[0], okAfter[1], okAfter[2]) >= 20
	})
	stop()

	limit := failoverTimeout + time.Second
	var slowest time.Duration
	byStatus := map[int]int{}
	bad := 0
	for _, a := range results {
		slowest = max(slowest, a.took)
		byStatus[a.status]++
		var why string
		switch {
		case a.took > limit:
			why = fmt.Sprintf("took %v, more than store_timeout + 1s (%v)", a.took, limit)
		case a.err != nil:
			why = a.err.Error()
		case a.status == 503 && (!a.problem || a.retryAfter == ""):
			why = fmt.Sprintf("503 without a problem (%v) or Retry-After (%q): %s", a.problem, a.retryAfter, a.body)
		case a.status != 200 && a.status != 201 && a.status != 412 && a.status != 503:
			why = fmt.Sprintf("%d %s, want a success, a 412 or a 503 problem with Retry-After", a.status, a.body)
		default:
			continue
		}
		if bad++; bad <= 5 {
			t.Errorf("%s, sent %v after the kill: %s", a.what, a.start.Sub(killedAt).Round(time.Millisecond), why)
		}
	}
	if bad > 0 {
		t.Errorf("%d of %d answers were not a success, a 412 or a 503 problem with Retry-After in time (by status: %v)", bad, len(results), byStatus)
	}

	// every acknowledged write is on the promoted standby
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, rp.Standby.URL(db))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	rows, err := conn.Query(ctx, `SELECT key FROM documents WHERE collection = 'notes'`)
	if err != nil {
		t.Fatal(err)
	}
	keys, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	have := map[string]bool{}
	for _, k := range keys {
		have[k] = true
	}
	lost := 0
	for k := range created {
		if !have[k] {
			lost++
			if lost <= 5 {
				t.Errorf("acknowledged create %s is not on the promoted standby", k)
			}
		}
	}
	if lost > 0 {
		t.Errorf("%d of %d acknowledged creates lost", lost, len(created))
	}
	for i := range counters {
		var doc string
		if err := conn.QueryRow(ctx, `SELECT doc FROM documents WHERE collection = 'counters' AND key = $1`, fmt.Sprintf("c%d", i)).Scan(&doc); err != nil {
			t.Fatal(err)
		}
		var v struct{ N int }
		if err := json.Unmarshal([]byte(doc), &v); err != nil {
			t.Fatal(err)
		}
		if v.N < incAcked[i] || v.N > incAcked[i]+incMaybe[i] {
			t.Errorf("counter c%d = %d after %d acknowledged increments and %d answered 503, want %d–%d",
				i, v.N, incAcked[i], incMaybe[i], incAcked[i], incAcked[i]+incMaybe[i])
		}
	}

	var resumed time.Time // through every gateway
	for _, ok := range firstOK {
		if ok.After(resumed) {
			resumed = ok
		}
	}
	t.Logf("answers by status %v, the slowest in %v (store_timeout %v); %d acknowledged creates and %d+%d increments, none lost",
		byStatus, slowest.Round(time.Millisecond), failoverTimeout, len(created), incAcked[0], incAcked[1])
	t.Logf("primary killed → promotion: %v (%d answers of 503); pg_ctl promote took %v; writes acknowledged again through every gateway %v after promote returned (%v after the kill), last 503 answered %v after the kill",
		promoted.Sub(killedAt).Round(time.Millisecond), beforePromote, promoted.Sub(promoting).Round(time.Millisecond), resumed.Sub(promoted).Round(time.Millisecond),
		resumed.Sub(killedAt).Round(time.Millisecond), lastRetry.Sub(killedAt).Round(time.Millisecond))
}

// call sends one request of TestPostgresFailover: how it went, and the
// ETag answered.
func call(c *http.Client, method, url, body string, headers ...string) (a answer, etag string) {
	a = answer{what: method + " " + url[strings.Index(url, "/v1/"):], start: time.Now()}
	r, err := Send(c, method, url, body, append(bearer("tester"), headers...)...)
	a.took = time.Since(a.start)
	if a.err = err; err == nil {
		a.status, a.body, etag = r.StatusCode, string(r.Body), r.Header.Get("ETag")
		a.problem = r.Header.Get("Content-Type") == "application/problem+json"
		a.retryAfter = r.Header.Get("Retry-After")
	}
	return a, etag
}
