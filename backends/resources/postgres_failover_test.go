package resources

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// TestUnavailableErrors: what a failover shows the store (a server that
// went away, one shutting down or not yet accepting connections, a standby
// still read-only) is ErrUnavailable, a 503 with Retry-After; an error
// about the statement itself is not.
func TestUnavailableErrors(t *testing.T) {
	pg := func(code string) error {
		return fmt.Errorf("in a transaction: %w", &pgconn.PgError{Severity: "ERROR", Code: code, Message: "m"})
	}
	refused := &net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED}
	for _, tc := range []struct {
		name string
		err  error
		want bool // ErrUnavailable
	}{
		{"read-only transaction (a standby)", pg("25006"), true},
		{"admin shutdown", pg("57P01"), true},
		{"crash shutdown", pg("57P02"), true},
		{"cannot connect now", pg("57P03"), true},
		{"connection failure", pg("08006"), true},
		{"too many connections", pg("53300"), true},
		{"connection refused", refused, true},
		{"connection reset", &net.OpError{Op: "read", Net: "tcp", Err: syscall.ECONNRESET}, true},
		{"cut mid-answer", io.ErrUnexpectedEOF, true},
		{"the call's deadline", context.DeadlineExceeded, true},
		{"unique violation", pg("23505"), false},
		{"undefined table", pg("42P01"), false},
		{"no rows", pgx.ErrNoRows, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := unavailable(tc.err)
			if got := errors.Is(err, ErrUnavailable); got != tc.want {
				t.Errorf("unavailable(%v) = %v, ErrUnavailable %v, want %v", tc.err, err, got, tc.want)
			}
			if !errors.Is(err, tc.err) && !tc.want {
				t.Errorf("unavailable(%v) = %v, lost the error", tc.err, err)
			}
		})
	}
	if unavailable(nil) != nil {
		t.Error("unavailable(nil) != nil")
	}
}

// TestPostgresReadOnlyHost: the database stops taking writes, as a
// standby does before its promotion (here: default_transaction_read_only
// on the database, and its sessions ended so that the pool reconnects).
// Writes are then 503 problems (store_unavailable, Retry-After), not 500s,
// while reads go on; once it takes writes again, writes succeed without a
// new handler.
func TestPostgresReadOnlyHost(t *testing.T) {
	url, err := testPG.NewDatabase("readonly")
	if err != nil {
		t.Fatal(err)
	}
	db := url[strings.LastIndexByte(url, '/')+1 : strings.IndexByte(url, '?')]
	h := provisionAt(t, url, "")
	do(t, h, "POST", "/v1/events", `{"name": "a"}`).want(201)

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	admin, err := pgx.Connect(ctx, testPG.URL("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(context.Background())
	readOnly := func(on bool) {
		t.Helper()
		set := "SET default_transaction_read_only = on"
		if !on {
			set = "RESET default_transaction_read_only"
		}
		if _, err := admin.Exec(ctx, "ALTER DATABASE "+pgx.Identifier{db}.Sanitize()+" "+set); err != nil {
			t.Fatal(err)
		}
		// the setting applies to new sessions: end the pool's (57P01)
		if _, err := admin.Exec(ctx, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", db); err != nil {
			t.Fatal(err)
		}
	}

	// the pool's sessions were ended: a call that meets one gets a 503
	// and drops it, at most one per pooled connection (pgx: the greater
	// of 4 and the CPUs)
	settle := func(method, path, body string, want int) {
		t.Helper()
		for range max(4, runtime.NumCPU()) + 1 {
			if do(t, h, method, path, body).Code == want {
				return
			}
		}
		t.Fatalf("%s %s: never %d", method, path, want)
	}

	readOnly(true)
	settle("GET", "/v1/events/a", "", 200)
	for i := range 10 {
		r := do(t, h, "POST", "/v1/events", fmt.Sprintf(`{"name": "b%d"}`, i)).want(503)
		if r.Header().Get("Retry-After") == "" || r.json()["code"] != "store_unavailable" {
			t.Fatalf("a write on a read-only database: Retry-After %q, %s", r.Header().Get("Retry-After"), r.Body)
		}
		do(t, h, "PUT", "/v1/events/a", `{"name": "a", "count": 1}`).want(503)
		do(t, h, "GET", "/v1/events/a", "").want(200)
	}

	readOnly(false)
	settle("GET", "/v1/events/a", "", 200)
	for i := range 10 {
		do(t, h, "POST", "/v1/events", fmt.Sprintf(`{"name": "c%d"}`, i)).want(201)
	}
	do(t, h, "PUT", "/v1/events/a", `{"name": "a", "count": 1}`).want(200)
}
