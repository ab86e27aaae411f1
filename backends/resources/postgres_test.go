package resources

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// newPostgresHandler is newTestHandler on PostgreSQL, with a connection of
// its own to the handler's database for the test to set the scene with.
func newPostgresHandler(t *testing.T) (*Handler, *pgx.Conn) {
	t.Helper()
	testStore = storePostgres
	defer func() { testStore = storeSQLite }()
	h := newTestHandler(t, testConfig)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, h.Database)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close(context.Background()) })
	return h, conn
}

func execSQL(t *testing.T, conn *pgx.Conn, sql string, args ...any) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := conn.Exec(ctx, sql, args...); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

func queryInt(t *testing.T, conn *pgx.Conn, sql string, args ...any) int64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var n int64
	if err := conn.QueryRow(ctx, sql, args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return n
}

// waitUntil polls cond until it holds, or fails the test after timeout.
func waitUntil(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("after %v: still waiting for %s", timeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestPostgresRetryStartsOver: PostgreSQL aborts an upsert's first attempt
// (a serialization failure, raised by a trigger on the real server) after
// it found the document and prepared its replacement; before the second
// attempt another writer deletes the document. The second attempt inserts:
// it must store a new document (version 1, the caller its owner) and
// answer 201 with Location, not the first attempt's replacement as a 200.
func TestPostgresRetryStartsOver(t *testing.T) {
	h, conn := newPostgresHandler(t)
	alice := []string{"X-Auth-User", "alice"}
	do(t, h, "POST", "/v1/secrets", `{"name": "k", "value": "v1"}`, alice...).want(201)
	do(t, h, "PUT", "/v1/secrets/k", `{"name": "k", "value": "v2"}`, alice...).want(200) // version 2
	execSQL(t, conn, `CREATE SEQUENCE aborts`)
	execSQL(t, conn, `CREATE FUNCTION abort_once() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	IF NEW.key <> 'k' THEN
		RETURN NEW;
	END IF;
	IF TG_OP = 'UPDATE' AND nextval('aborts') = 1 THEN
		RAISE EXCEPTION 'injected' USING ERRCODE = 'serialization_failure';
	END IF;
	IF TG_OP = 'INSERT' AND (SELECT is_called FROM aborts) THEN
		-- between the attempts, another writer deleted the document
		DELETE FROM documents WHERE collection = NEW.collection AND parent = NEW.parent AND key = NEW.key;
	END IF;
	RETURN NEW;
END $$`)
	execSQL(t, conn, `CREATE TRIGGER abort_once BEFORE INSERT OR UPDATE ON documents FOR EACH ROW EXECUTE FUNCTION abort_once()`)

	r := do(t, h, "POST", "/v1/secrets", `{"name": "k", "value": "v3"}`, alice...)
	if n := queryInt(t, conn, `SELECT last_value FROM aborts`); n != 1 {
		t.Fatalf("the first attempt was not aborted (sequence at %d)", n)
	}
	if r.Code != http.StatusCreated || r.Header().Get("Location") != "/v1/secrets/k" {
		t.Errorf("retried create: %d, Location %q, want 201 and /v1/secrets/k: %s", r.Code, r.Header().Get("Location"), r.Body)
	}
	if etag := r.Header().Get("ETag"); !strings.HasSuffix(etag, `-1"`) {
		t.Errorf("ETag %s, want version 1", etag)
	}
	var version int64
	var owner string
	var modified *time.Time
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := conn.QueryRow(ctx, `SELECT version, owner, modified_at FROM documents WHERE collection = 'secrets' AND key = 'k'`).Scan(&version, &owner, &modified)
	if err != nil {
		t.Fatal(err)
	}
	if version != 1 || owner != "alice" || modified != nil {
		t.Errorf("stored version %d, owner %q, modified_at %v; want 1, alice, null", version, owner, modified)
	}
}

// TestPostgresExhaustedRetries: a write PostgreSQL aborts on every attempt
// is answered 503 with Retry-After and the store_busy code, after
// maxAttempts attempts, and leaves nothing behind.
func TestPostgresExhaustedRetries(t *testing.T) {
	h, conn := newPostgresHandler(t)
	execSQL(t, conn, `CREATE SEQUENCE attempts`)
	execSQL(t, conn, `CREATE FUNCTION abort_always() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	IF NEW.key = 'stuck' THEN
		PERFORM nextval('attempts');
		RAISE EXCEPTION 'injected' USING ERRCODE = 'serialization_failure';
	END IF;
	RETURN NEW;
END $$`)
	execSQL(t, conn, `CREATE TRIGGER abort_always BEFORE INSERT ON documents FOR EACH ROW EXECUTE FUNCTION abort_always()`)

	r := do(t, h, "POST", "/v1/events", `{"name": "stuck"}`).want(503)
	if m := r.json(); m["code"] != "store_busy" {
		t.Errorf("code = %v, want store_busy", m["code"])
	}
	if r.Header().Get("Retry-After") == "" {
		t.Error("no Retry-After")
	}
	if n := queryInt(t, conn, `SELECT last_value FROM attempts`); n != maxAttempts {
		t.Errorf("%d attempts, want %d", n, maxAttempts)
	}
	do(t, h, "GET", "/v1/events/stuck", "").want(404)
}

// TestPostgresChildCreatesShareTheParent: two creates under one parent
// both get past the parent check while the other's transaction is open (a
// trigger holds each inside its INSERT), and a delete of the parent sent
// meanwhile waits for them, then finds the children and is refused.
func TestPostgresChildCreatesShareTheParent(t *testing.T) {
	h, conn := newPostgresHandler(t)
	do(t, h, "POST", "/v1/events", `{"name": "E"}`).want(201)
	execSQL(t, conn, `CREATE FUNCTION hold_children() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	IF NEW.collection = 'productions' THEN
		PERFORM pg_advisory_xact_lock_shared(7);
	END IF;
	RETURN NEW;
END $$`)
	execSQL(t, conn, `CREATE TRIGGER hold_children BEFORE INSERT ON documents FOR EACH ROW EXECUTE FUNCTION hold_children()`)
	execSQL(t, conn, `SELECT pg_advisory_lock(7)`)
	locked := true
	unlock := func() {
		if locked {
			execSQL(t, conn, `SELECT pg_advisory_unlock(7)`)
			locked = false
		}
	}

	type answer struct {
		name string
		w    *httptest.ResponseRecorder
	}
	answers := make(chan answer, 3)
	var wg sync.WaitGroup
	send := func(name, method, target, body string) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := httptest.NewRequest(method, target, strings.NewReader(body))
			if body != "" {
				r.Header.Set("Content-Type", "application/json")
			}
			w := httptest.NewRecorder()
			_ = h.ServeHTTP(w, r, nil)
			answers <- answer{name, w}
		}()
	}
	defer func() {
		unlock()
		wg.Wait()
	}()

	send("P1", "POST", "/v1/events/E/productions", `{"name": "P1", "pipeline": "bilby"}`)
	send("P2", "POST", "/v1/events/E/productions", `{"name": "P2", "pipeline": "rift"}`)
	waitUntil(t, 10*time.Second, "both child creates inside their INSERT at once", func() bool {
		return queryInt(t, conn, `SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted
			AND database = (SELECT oid FROM pg_database WHERE datname = current_database())`) == 2
	})
	send("delete", "DELETE", "/v1/events/E", "")
	waitUntil(t, 10*time.Second, "the parent's delete waiting for the child creates", func() bool {
		return queryInt(t, conn, `SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()
			AND wait_event_type = 'Lock' AND wait_event IN ('transactionid', 'tuple')`) == 1
	})
	unlock()
	wg.Wait()
	close(answers)
	for a := range answers {
		want := http.StatusCreated
		if a.name == "delete" {
			want = http.StatusConflict
		}
		if a.w.Code != want {
			t.Errorf("%s: %d, want %d: %s", a.name, a.w.Code, want, a.w.Body)
		}
	}
	if n := do(t, h, "GET", "/v1/events/E/productions", "").want(200).json()["pagination"].(map[string]any)["total_count"]; n != 2.0 {
		t.Errorf("%v productions, want 2", n)
	}
}
