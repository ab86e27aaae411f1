package tests

import (
	"context"
	"fmt"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/restgate/restgate/internal/testpg"
)

// TestPostgresSwitchover: a gateway on pgx's multi-host URL
// (primary,standby with target_session_attrs=read-write), its pool holding
// connections to the primary. A switchover as an operator runs it: the
// primary is fenced (default_transaction_read_only on, ALTER SYSTEM and a
// reload, which reaches its open sessions; it stays up, read-only) and the
// synchronous standby promoted. Each pooled connection to the fenced
// primary fails at most one write (a 503 problem with Retry-After, SQLSTATE
// 25006) and is closed; the next write dials anew, skips the read-only
// host and lands on the promoted standby, without a restart and without
// waiting for the pool's connection lifetime (an hour). Before, the pool
// kept its connections to the fenced primary and every write was a 503.
func TestPostgresSwitchover(t *testing.T) {
	rp, err := testpg.StartReplicated()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(rp.Stop)
	db, err := rp.NewDatabase("switchover")
	if err != nil {
		t.Fatal(err)
	}
	g := StartGateway(t, pgConfig(rp.URL(db)), Options{})
	c := behindBalancer(g)
	create := func(name string) *Response {
		return Do(t, c, "POST", g.URL("/v1/notes"), `{"name": "`+name+`"}`, bearer("tester")...)
	}

	// concurrent writes, so that the pool holds several connections, all
	// to the primary
	poolSize := max(4, runtime.NumCPU()) // pgxpool's default
	var wg sync.WaitGroup
	for w := range 2 * poolSize {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 5 {
				r, err := Send(behindBalancer(g), "POST", g.URL("/v1/notes"), fmt.Sprintf(`{"name": "before-%d-%d"}`, w, i), bearer("tester")...)
				if err != nil {
					t.Errorf("a write before the switchover: %v", err)
					return
				}
				if r.StatusCode != 201 {
					t.Errorf("a write before the switchover: %d %s", r.StatusCode, r.Body)
					return
				}
			}
		}()
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	primary, err := pgx.Connect(ctx, rp.Primary.URL("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer primary.Close(context.Background())
	// the README's recipe, statement for statement
	for _, sql := range []string{
		`ALTER SYSTEM SET default_transaction_read_only = on`,
		`SELECT pg_reload_conf()`,
	} {
		if _, err := primary.Exec(ctx, sql); err != nil {
			t.Fatalf("fencing the primary: %s: %v", sql, err)
		}
	}
	promoter, err := pgx.Connect(ctx, rp.Standby.URL("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer promoter.Close(context.Background())
	// pg_promote() waits (60 s at most) until the standby takes writes
	var done bool
	if err := promoter.QueryRow(ctx, `SELECT pg_promote()`).Scan(&done); err != nil || !done {
		t.Fatalf("SELECT pg_promote(): %v, %v", done, err)
	}
	promoted := time.Now()

	// each stale connection fails one write at most, whenever the pool
	// hands it out (a fresh connection to the promoted standby can answer
	// before an old one has failed its write): the failures are counted
	// across every write from here on
	failed, resumed := 0, time.Duration(0)
	stale := func(r *Response) {
		t.Helper()
		if r.StatusCode != 503 || r.Header.Get("Retry-After") == "" || r.Header.Get("Content-Type") != "application/problem+json" {
			t.Fatalf("a write after the switchover: %d (Retry-After %q) %s, want 201 or a 503 problem with Retry-After", r.StatusCode, r.Header.Get("Retry-After"), r.Body)
		}
		if failed++; failed > poolSize {
			t.Fatalf("%d writes after the switchover failed with %d pooled connections, want at most one each: %s", failed, poolSize, r.Body)
		}
	}
	for i := 0; ; i++ {
		r := create(fmt.Sprintf("after-%d", i))
		if r.StatusCode == 201 {
			resumed = time.Since(promoted)
			break
		}
		stale(r)
	}
	for i := 0; i < 2*poolSize; {
		// a 503 changed nothing: the same document is sent again
		if r := create(fmt.Sprintf("later-%d", i)); r.StatusCode == 201 {
			i++
		} else {
			stale(r)
		}
	}

	// the writes are on the promoted standby
	standby, err := pgx.Connect(ctx, rp.Standby.URL(db))
	if err != nil {
		t.Fatal(err)
	}
	defer standby.Close(context.Background())
	var n int
	if err := standby.QueryRow(ctx, `SELECT count(*) FROM documents WHERE collection = 'notes' AND key LIKE 'later-%'`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 2*poolSize {
		t.Errorf("the promoted standby holds %d of the %d writes after the switchover", n, 2*poolSize)
	}
	t.Logf("%d writes failed (503) after the switchover with a pool of %d; the first write acknowledged %v after pg_promote() returned; every later one is on the promoted standby",
		failed, poolSize, resumed.Round(time.Millisecond))
}
