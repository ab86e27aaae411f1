package resources

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/restgate/restgate/internal/testpg"
)

// TestPostgresReadOnlyConnRecycled: the pool's connections were made
// before a switchover, to a server that has since turned read-only (here
// the whole cluster: default_transaction_read_only on in
// postgresql.auto.conf and a reload, which reaches the sessions already
// open), while a new connection would reach a server that takes writes
// (here: the same database set writable for new sessions, as a
// target_session_attrs=read-write dial would find the new primary). A
// write that meets such a connection fails with SQLSTATE 25006 and is a
// 503; the connection is closed then, so each pooled connection fails at
// most one write and the next acquire dials anew. Before, the pool kept
// the connection and every write failed until its lifetime (an hour) ran
// out. The cluster is the test's own: ALTER SYSTEM reaches every database.
func TestPostgresReadOnlyConnRecycled(t *testing.T) {
	srv, err := testpg.Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Stop)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	admin, err := pgx.Connect(ctx, srv.URL("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(context.Background())
	// exec runs an admin statement, failing the (sub)test t
	exec := func(t *testing.T, sql string) {
		t.Helper()
		if _, err := admin.Exec(ctx, sql); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	exec(t, `SET default_transaction_read_only = off`) // this session writes on

	tests := []struct {
		name  string
		conns int // the pool's connections, all open before the switchover
	}{
		{"one pooled connection", 1},
		{"four pooled connections", 4},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			url, err := srv.NewDatabase("recycle")
			if err != nil {
				t.Fatal(err)
			}
			db := url[strings.LastIndexByte(url, '/')+1 : strings.IndexByte(url, '?')]
			h := provisionAt(t, fmt.Sprintf("%s&pool_min_conns=%d&pool_max_conns=%d", url, tt.conns, tt.conns), "")
			do(t, h, "POST", "/v1/events", `{"name": "a"}`).want(201)
			// the pool opens its minimum in the background
			waitUntil(t, 30*time.Second, fmt.Sprintf("%d pooled sessions on %s", tt.conns, db), func() bool {
				var n int
				err := admin.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND query NOT LIKE 'LISTEN%'`, db).Scan(&n)
				return err == nil && n >= tt.conns
			})

			// new sessions on db take writes; the open ones stop, on the
			// reload
			exec(t, `ALTER DATABASE `+pgx.Identifier{db}.Sanitize()+` SET default_transaction_read_only = off`)
			exec(t, `ALTER SYSTEM SET default_transaction_read_only = on`)
			exec(t, `SELECT pg_reload_conf()`)
			t.Cleanup(func() {
				exec(t, `ALTER SYSTEM RESET default_transaction_read_only`)
				exec(t, `SELECT pg_reload_conf()`)
			})

			// a session takes the reload before its next statement, once
			// the postmaster has passed it on: writes succeed until then
			i := 0
			write := func() result {
				i++
				return do(t, h, "POST", "/v1/events", fmt.Sprintf(`{"name": "w%d"}`, i))
			}
			var r result
			waitUntil(t, 30*time.Second, "a write on a connection made read-only", func() bool {
				r = write()
				if r.Code != 201 && r.Code != 503 {
					t.Fatalf("a write: %d %s, want 201 or 503", r.Code, r.Body)
				}
				return r.Code == 503
			})
			if r.Header().Get("Retry-After") == "" || r.json()["code"] != "store_unavailable" {
				t.Fatalf("a write on a read-only connection: Retry-After %q, %s", r.Header().Get("Retry-After"), r.Body)
			}
			// each pooled connection fails at most one write, whenever
			// the pool hands it out (a fresh connection can come first):
			// count the failures across every call from here on, the one
			// that just failed included
			failed := 1
			call := func(method, path, body string, want int) {
				t.Helper()
				for {
					r := do(t, h, method, path, body)
					if r.Code == want {
						return
					}
					if failed++; r.Code != 503 || failed > tt.conns {
						t.Fatalf("%s %s after the switchover: %d %s; %d calls failed with %d pooled connections, want at most one each", method, path, r.Code, r.Body, failed, tt.conns)
					}
				}
			}
			for range 3 * tt.conns {
				i++
				call("POST", "/v1/events", fmt.Sprintf(`{"name": "w%d"}`, i), 201)
			}
			call("PUT", "/v1/events/a", `{"name": "a", "count": 1}`, 200)
		})
	}
}

// TestCloseReadOnly: the error handler closes a connection (returns
// false) on SQLSTATE 25006 and otherwise does what pgx's default does
// (closes on FATAL only).
func TestCloseReadOnly(t *testing.T) {
	cfg, err := pgconn.ParseConfig("postgres://localhost/x")
	if err != nil {
		t.Fatal(err)
	}
	def := cfg.OnPgError // pgx's
	tests := []struct {
		name     string
		severity string
		code     string
		next     pgconn.PgErrorHandler
		want     bool // keep the connection
	}{
		{"read-only transaction", "ERROR", "25006", def, false},
		{"read-only transaction, no handler before", "ERROR", "25006", nil, false},
		{"unique violation", "ERROR", "23505", def, true},
		{"serialization failure", "ERROR", "40001", def, true},
		{"fatal: admin shutdown", "FATAL", "57P01", def, false},
		{"no handler before", "ERROR", "23505", nil, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := closeReadOnly(tt.next)(nil, &pgconn.PgError{Severity: tt.severity, Code: tt.code}); got != tt.want {
				t.Errorf("closeReadOnly(%s %s) = %v, want %v", tt.severity, tt.code, got, tt.want)
			}
		})
	}
}
