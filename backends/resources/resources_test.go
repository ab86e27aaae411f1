package resources

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"go.uber.org/zap"

	"github.com/restgate/restgate/internal/testpg"
)

// testConfig is the default Caddyfile's collections, plus a schemaless one
// and a cascading one.
const testConfig = `resources {
	durability normal
	max_body 2MiB
	collection events {
		key name
		field name string
		field meta object
		field repository string
		field working_directory string
		field count integer
		field score number
		field done boolean
	}
	collection productions {
		parent events
		key name
		field name string
		field pipeline string required enum bilby rift bayeswave lalinference
		field status string default ready
		field comment string
		field dependencies array
		field meta object
	}
	collection secrets {
		key name
		field name string
		field value string required write_only
		upsert
		owned
	}
	collection notes {
	}
	collection folders {
		key name
	}
	collection files {
		parent folders
		cascade
	}
}`

// clock is an injectable time that advances one millisecond a reading.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(time.Millisecond)
	return c.t
}

// The store conformance suite: every test that goes through newTestHandler
// runs once on SQLite and once on PostgreSQL (a real server, one for the
// package, a new database per handler), with the same assertions.
var (
	testStore = storeSQLite
	testPG    *testpg.Server
)

const (
	storeSQLite   = "sqlite"
	storePostgres = "postgres"
)

func forEachStore(t *testing.T, test func(t *testing.T)) {
	for _, store := range []string{storeSQLite, storePostgres} {
		t.Run(store, func(t *testing.T) {
			testStore = store
			defer func() { testStore = storeSQLite }()
			test(t)
		})
	}
}

func TestMain(m *testing.M) {
	os.Exit(runTests(m))
}

func runTests(m *testing.M) int {
	var err error
	if testPG, err = testpg.Start(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer testPG.Stop()
	return m.Run()
}

// testDatabase is a new, empty database of the current test store.
func testDatabase(t testing.TB) string {
	t.Helper()
	if testStore == storePostgres {
		url, err := testPG.NewDatabase("resources")
		if err != nil {
			t.Fatal(err)
		}
		return url
	}
	return filepath.Join(t.TempDir(), "test.db")
}

func newTestHandler(t testing.TB, config string) *Handler {
	t.Helper()
	h := new(Handler)
	if err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(config)); err != nil {
		t.Fatal(err)
	}
	h.Database = testDatabase(t)
	c := &clock{t: time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)}
	h.now = c.now
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	t.Cleanup(cancel)
	if err := h.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	h.logger = zap.NewNop()
	if err := h.Validate(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = h.Cleanup() })
	return h
}

type result struct {
	*httptest.ResponseRecorder
	t testing.TB
}

func (r result) json() map[string]any {
	r.t.Helper()
	var m map[string]any
	if err := json.Unmarshal(r.Body.Bytes(), &m); err != nil {
		r.t.Fatalf("body is not JSON: %v: %q", err, r.Body)
	}
	return m
}

func (r result) want(status int) result {
	r.t.Helper()
	if r.Code != status {
		r.t.Fatalf("status = %d, want %d: %s", r.Code, status, r.Body)
	}
	if status >= 400 && r.Header().Get("Content-Type") != "application/problem+json" {
		r.t.Fatalf("error Content-Type = %q", r.Header().Get("Content-Type"))
	}
	return r
}

func do(t testing.TB, h *Handler, method, target, body string, headers ...string) result {
	t.Helper()
	var r *http.Request
	if body != "" {
		r = httptest.NewRequest(method, target, strings.NewReader(body))
		r.Header.Set("Content-Type", "application/json")
	} else {
		r = httptest.NewRequest(method, target, nil)
	}
	for i := 0; i+1 < len(headers); i += 2 {
		if headers[i+1] != "" {
			r.Header.Set(headers[i], headers[i+1])
		}
	}
	w := httptest.NewRecorder()
	if err := h.ServeHTTP(w, r, nil); err != nil {
		t.Fatalf("ServeHTTP returned %v", err)
	}
	return result{w, t}
}

func TestCRUD(t *testing.T) {
	forEachStore(t, func(t *testing.T) {
		h := newTestHandler(t, testConfig)
		created := do(t, h, "POST", "/v1/events", `{"name": "GW150914", "meta": {"mass": 36.2}, "count": 3}`).want(201)
		if loc := created.Header().Get("Location"); loc != "/v1/events/GW150914" {
			t.Errorf("Location = %q", loc)
		}
		etag1 := created.Header().Get("ETag")
		doc := created.json()
		if doc["name"] != "GW150914" || doc["created_at"] != "2026-11-01T12:00:00.001000Z" || doc["modified_at"] != nil {
			t.Errorf("created = %s", created.Body)
		}
		if created.Header().Get("Last-Modified") != "Sun, 01 Nov 2026 12:00:00 GMT" {
			t.Errorf("Last-Modified = %q", created.Header().Get("Last-Modified"))
		}

		got := do(t, h, "GET", "/v1/events/GW150914", "").want(200)
		if got.Header().Get("ETag") != etag1 || got.Body.String() != created.Body.String() {
			t.Errorf("GET = %s %s, want %s %s", got.Header().Get("ETag"), got.Body, etag1, created.Body)
		}
		if head := do(t, h, "HEAD", "/v1/events/GW150914", "").want(200); head.Body.Len() != 0 || head.Header().Get("ETag") != etag1 {
			t.Errorf("HEAD body %q etag %q", head.Body, head.Header().Get("ETag"))
		}

		patched := do(t, h, "PATCH", "/v1/events/GW150914", `{"meta": {"mass": null, "spin": 0.7}, "repository": "git@x"}`).want(200).json()
		if m := patched["meta"].(map[string]any); len(m) != 1 || m["spin"] != 0.7 || patched["repository"] != "git@x" || patched["count"] != 3.0 {
			t.Errorf("merge patch gave %v", patched)
		}
		if patched["modified_at"] == nil {
			t.Error("modified_at not set by PATCH")
		}

		put := do(t, h, "PUT", "/v1/events/GW150914", `{"working_directory": "/tmp"}`).want(200).json()
		if _, ok := put["meta"]; ok || put["working_directory"] != "/tmp" || put["name"] != "GW150914" {
			t.Errorf("PUT did not replace: %v", put)
		}

		do(t, h, "DELETE", "/v1/events/GW150914", "").want(204)
		do(t, h, "GET", "/v1/events/GW150914", "").want(404)
		do(t, h, "DELETE", "/v1/events/GW150914", "").want(404)
		do(t, h, "PUT", "/v1/events/GW150914", `{}`).want(404)
		do(t, h, "PATCH", "/v1/events/GW150914", `{}`).want(404)

		// a document created again under the same key has a new ETag
		again := do(t, h, "POST", "/v1/events", `{"name": "GW150914"}`).want(201)
		if again.Header().Get("ETag") == etag1 {
			t.Error("a re-created document reuses the old ETag")
		}
	})
}

func TestGeneratedIDs(t *testing.T) {
	forEachStore(t, func(t *testing.T) {
		h := newTestHandler(t, testConfig)
		a := do(t, h, "POST", "/v1/notes", `{"text": "free-form", "n": [1, {"x": true}]}`).want(201).json()
		id, _ := a["id"].(string)
		if len(id) != 36 || id[14] != '4' {
			t.Fatalf("id = %q, want a UUID4", id)
		}
		do(t, h, "GET", "/v1/notes/"+id, "").want(200)
		do(t, h, "POST", "/v1/notes", `{"id": "mine"}`).want(422)
		if p := do(t, h, "PATCH", "/v1/notes/"+id, `{"created_at": "2000-01-01T00:00:00Z"}`).want(422).json(); !strings.Contains(fmt.Sprint(p["errors"]), "read-only") {
			t.Errorf("errors = %v", p["errors"])
		}
	})
}

func TestValidation(t *testing.T) {
	forEachStore(t, func(t *testing.T) {
		h := newTestHandler(t, testConfig)
		do(t, h, "POST", "/v1/events", `{"name": "E1"}`).want(201)
		tests := []struct {
			name, method, target, body, contentType string
			want                                    int
			wantPointer                             string
		}{
			{"missing key", "POST", "/v1/events", `{"meta": {}}`, "", 422, "/name"},
			{"key not a string", "POST", "/v1/events", `{"name": 5}`, "", 422, "/name"},
			{"key with slash", "POST", "/v1/events", `{"name": "a/b"}`, "", 422, "/name"},
			{"key too long", "POST", "/v1/events", `{"name": "` + strings.Repeat("k", 257) + `"}`, "", 422, "/name"},
			{"key with control byte", "POST", "/v1/events", `{"name": "a\u0001"}`, "", 422, "/name"},
			{"wrong type", "POST", "/v1/events", `{"name": "E2", "meta": "x"}`, "", 422, "/meta"},
			{"not an integer", "POST", "/v1/events", `{"name": "E2", "count": 1.5}`, "", 422, "/count"},
			{"not a boolean", "POST", "/v1/events", `{"name": "E2", "done": "yes"}`, "", 422, "/done"},
			{"unknown field", "POST", "/v1/events", `{"name": "E2", "colour": "red"}`, "", 422, "/colour"},
			{"quoted field name", "POST", "/v1/events", `{"name": "E2", "a\"b": 1}`, "", 422, `/a"b`},
			{"pointer escaping", "POST", "/v1/events", `{"name": "E2", "a/b~c": 1}`, "", 422, "/a~1b~0c"},
			{"enum", "POST", "/v1/events/E1/productions", `{"name": "p", "pipeline": "other"}`, "", 422, "/pipeline"},
			{"required", "POST", "/v1/events/E1/productions", `{"name": "p"}`, "", 422, "/pipeline"},
			{"array body", "POST", "/v1/events", `[{"name": "E2"}]`, "", 422, ""},
			{"not json", "POST", "/v1/events", `{"name": `, "", 400, ""},
			{"trailing data", "POST", "/v1/events", `{"name": "E2"} {}`, "", 400, ""},
			{"empty body", "POST", "/v1/events", ``, "application/json", 400, ""},
			{"wrong content type", "POST", "/v1/events", `{"name": "E2"}`, "text/plain", 415, ""},
			{"form body", "POST", "/v1/events", `name=E2`, "application/x-www-form-urlencoded", 415, ""},
			{"merge-patch type on POST", "POST", "/v1/events", `{"name": "E2"}`, "application/merge-patch+json", 415, ""},
			{"too large", "POST", "/v1/notes", `{"s": "` + strings.Repeat("x", 3<<20) + `"}`, "", 413, ""},
			{"too deep", "POST", "/v1/notes", `{"d": ` + strings.Repeat("[", 40) + strings.Repeat("]", 40) + `}`, "", 422, "/d"},
			{"key change by PUT", "PUT", "/v1/events/E1", `{"name": "E9"}`, "", 422, "/name"},
			{"key change by PATCH", "PATCH", "/v1/events/E1", `{"name": "E9"}`, "", 422, "/name"},
			{"PATCH breaks a type", "PATCH", "/v1/events/E1", `{"meta": 3}`, "", 422, "/meta"},
			{"duplicate", "POST", "/v1/events", `{"name": "E1"}`, "", 409, ""},
			{"child of a missing parent", "POST", "/v1/events/nope/productions", `{"name": "p", "pipeline": "rift"}`, "", 404, ""},
			{"unknown collection", "GET", "/v1/widgets", "", "", 404, ""},
			{"too deep a path", "GET", "/v1/events/E1/productions/p/more", "", "", 404, ""},
			{"nested under the wrong parent", "GET", "/v1/folders/f/productions", "", "", 404, ""},
			{"child at top level", "GET", "/v1/productions", "", "", 404, ""},
			{"outside the prefix", "GET", "/v2/events", "", "", 404, ""},
			{"method on collection", "PUT", "/v1/events", `{}`, "", 405, ""},
			{"method on document", "POST", "/v1/events/E1", `{}`, "", 405, ""},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				before := do(t, h, "GET", "/v1/events?limit=100", "").want(200).Body.String()
				r := do(t, h, tt.method, tt.target, tt.body, "Content-Type", tt.contentType).want(tt.want)
				p := r.json()
				if tt.wantPointer != "" {
					errs, _ := p["errors"].([]any)
					found := false
					for _, e := range errs {
						if e.(map[string]any)["pointer"] == tt.wantPointer {
							found = true
						}
					}
					if !found {
						t.Errorf("errors = %v, want one with pointer %q", p["errors"], tt.wantPointer)
					}
				}
				if tt.want == 405 && r.Header().Get("Allow") == "" {
					t.Error("405 without Allow")
				}
				if after := do(t, h, "GET", "/v1/events?limit=100", "").want(200).Body.String(); after != before {
					t.Errorf("a refused request changed the data:\nbefore %s\nafter  %s", before, after)
				}
			})
		}
	})
}

func TestStrangeButValidValues(t *testing.T) {
	forEachStore(t, func(t *testing.T) {
		h := newTestHandler(t, testConfig)
		for name, body := range map[string]string{
			"unicode key":    `{"name": "GW✓ 事件 \"q\" 'x'"}`,
			"sql in key":     `{"name": "x'); DROP TABLE documents; --"}`,
			"1 MB string":    `{"name": "big", "repository": "` + strings.Repeat("é", 500_000) + `"}`,
			"deep but legal": `{"name": "deep", "meta": {"a": ` + strings.Repeat(`{"b": `, 20) + `1` + strings.Repeat("}", 20) + `}}`,
			"big number":     `{"name": "num", "score": 1e308, "count": 9007199254740992}`,
		} {
			t.Run(name, func(t *testing.T) {
				created := do(t, h, "POST", "/v1/events", body).want(201)
				key := created.json()["name"].(string)
				got := do(t, h, "GET", created.Header().Get("Location"), "").want(200)
				if got.json()["name"] != key || got.Body.String() != created.Body.String() {
					t.Errorf("stored %q, read back %q", created.Body.String()[:min(80, created.Body.Len())], got.Body.String()[:min(80, got.Body.Len())])
				}
			})
		}
		if n := do(t, h, "GET", "/v1/events?limit=100", "").want(200).json()["pagination"].(map[string]any)["total_count"]; n != 5.0 {
			t.Errorf("total_count = %v, want 5 (the table must still be there)", n)
		}
	})
}

func TestListing(t *testing.T) {
	forEachStore(t, func(t *testing.T) {
		h := newTestHandler(t, testConfig)
		for i := 0; i < 25; i++ {
			do(t, h, "POST", "/v1/events", fmt.Sprintf(`{"name": "E%02d", "count": %d, "done": %v, "repository": "r%d"}`, i, i%5, i%2 == 0, i%3)).want(201)
		}
		page := func(query string) (names []string, total, maxPage int) {
			t.Helper()
			m := do(t, h, "GET", "/v1/events"+query, "").want(200).json()
			for _, it := range m["items"].([]any) {
				names = append(names, it.(map[string]any)["name"].(string))
			}
			p := m["pagination"].(map[string]any)
			return names, int(p["total_count"].(float64)), int(p["max_page"].(float64))
		}
		names, total, maxPage := page("")
		if len(names) != 10 || total != 25 || maxPage != 3 || names[0] != "E00" {
			t.Errorf("default page: %v total %d max %d", names, total, maxPage)
		}
		if names, _, _ := page("?page=3&limit=10"); len(names) != 5 || names[0] != "E20" {
			t.Errorf("page 3: %v", names)
		}
		if names, _, _ := page("?page=4"); len(names) != 0 {
			t.Errorf("past the end: %v", names)
		}
		if names, _, _ := page("?sort=-name&limit=2"); strings.Join(names, ",") != "E24,E23" {
			t.Errorf("sort=-name: %v", names)
		}
		// '+' arrives as a space unless escaped; both mean ascending
		if names, _, _ := page("?sort=+count,-name&limit=3"); strings.Join(names, ",") != "E20,E15,E10" {
			t.Errorf("sort=+count,-name: %v", names)
		}
		if names, _, _ := page("?sort=%2Bcount,-created_at&limit=2"); strings.Join(names, ",") != "E20,E15" {
			t.Errorf("sort=%%2Bcount,-created_at: %v", names)
		}
		if _, total, _ := page("?count=3"); total != 5 {
			t.Errorf("count=3: total %d, want 5", total)
		}
		if _, total, _ := page("?done=true&repository=r0"); total != 5 {
			t.Errorf("done=true&repository=r0: total %d, want 5", total)
		}
		if _, total, maxPage := page("?repository=none"); total != 0 || maxPage != 1 {
			t.Errorf("no match: total %d max_page %d", total, maxPage)
		}
		for _, q := range []string{"?page=0", "?page=x", "?limit=0", "?limit=101", "?limit=-1", "?sort=colour", "?sort=meta", "?colour=red", "?count=abc", "?count=1.5", "?done=maybe", "?page=1&page=2"} {
			p := do(t, h, "GET", "/v1/events"+q, "").want(422).json()
			if !strings.Contains(fmt.Sprint(p["errors"]), "parameter") {
				t.Errorf("%s: errors %v do not name the parameter", q, p["errors"])
			}
		}
		if p := do(t, h, "GET", "/v1/events?%zz=1", "").want(422).json(); !strings.Contains(fmt.Sprint(p["errors"]), "malformed") {
			t.Errorf("malformed query: %v", p["errors"])
		}
	})
}

func TestNestingAndCascade(t *testing.T) {
	forEachStore(t, func(t *testing.T) {
		h := newTestHandler(t, testConfig)
		do(t, h, "POST", "/v1/events", `{"name": "E1"}`).want(201)
		do(t, h, "POST", "/v1/events", `{"name": "E2"}`).want(201)
		p := do(t, h, "POST", "/v1/events/E1/productions", `{"name": "prod0", "pipeline": "bilby"}`).want(201)
		if p.Header().Get("Location") != "/v1/events/E1/productions/prod0" || p.json()["status"] != "ready" {
			t.Errorf("production: %s %s", p.Header().Get("Location"), p.Body)
		}
		do(t, h, "POST", "/v1/events/E2/productions", `{"name": "prod0", "pipeline": "rift"}`).want(201) // same key, other parent
		do(t, h, "GET", "/v1/events/E2/productions/prod0", "").want(200)
		do(t, h, "GET", "/v1/events/E9/productions", "").want(404)
		do(t, h, "GET", "/v1/events/E9/productions/prod0", "").want(404)
		if m := do(t, h, "GET", "/v1/events/E1/productions", "").want(200).json(); m["pagination"].(map[string]any)["total_count"] != 1.0 {
			t.Errorf("E1 productions: %v", m)
		}
		do(t, h, "DELETE", "/v1/events/E1", "").want(409)
		do(t, h, "DELETE", "/v1/events/E1/productions/prod0", "").want(204)
		do(t, h, "DELETE", "/v1/events/E1", "").want(204)
		do(t, h, "GET", "/v1/events/E2/productions/prod0", "").want(200)

		do(t, h, "POST", "/v1/folders", `{"name": "f"}`).want(201)
		file := do(t, h, "POST", "/v1/folders/f/files", `{"x": 1}`).want(201).json()
		do(t, h, "DELETE", "/v1/folders/f", "").want(204)
		do(t, h, "POST", "/v1/folders", `{"name": "f"}`).want(201)
		do(t, h, "GET", "/v1/folders/f/files/"+file["id"].(string), "").want(404) // cascaded away
	})
}

func TestOwnedAndUpsert(t *testing.T) {
	forEachStore(t, func(t *testing.T) {
		h := newTestHandler(t, testConfig)
		alice := []string{"X-Auth-User", "alice", "X-Auth-Scopes", "read write"}
		bob := []string{"X-Auth-User", "bob", "X-Auth-Scopes", "read,write"}
		admin := []string{"X-Auth-User", "root", "X-Auth-Scopes", "read admin"}

		do(t, h, "GET", "/v1/secrets", "").want(401)
		do(t, h, "POST", "/v1/secrets", `{"name": "token", "value": "s3cr3t"}`).want(401)

		created := do(t, h, "POST", "/v1/secrets", `{"name": "token", "value": "s3cr3t"}`, alice...).want(201)
		if strings.Contains(created.Body.String(), "s3cr3t") || created.json()["owner"] != "alice" {
			t.Errorf("create: %s", created.Body)
		}
		got := do(t, h, "GET", "/v1/secrets/token", "", alice...).want(200)
		if strings.Contains(got.Body.String(), "s3cr3t") {
			t.Errorf("write-only value returned: %s", got.Body)
		}
		if strings.Contains(do(t, h, "GET", "/v1/secrets", "", alice...).want(200).Body.String(), "s3cr3t") {
			t.Error("write-only value listed")
		}
		do(t, h, "GET", "/v1/secrets?value=s3cr3t", "", alice...).want(422) // not filterable

		// upsert: same key, same owner → 200 update
		up := do(t, h, "POST", "/v1/secrets", `{"name": "token", "value": "n3w"}`, alice...).want(200)
		if up.Header().Get("ETag") == created.Header().Get("ETag") || up.json()["modified_at"] == nil {
			t.Errorf("upsert: %s", up.Body)
		}

		// bob sees nothing of alice's and cannot touch it
		if m := do(t, h, "GET", "/v1/secrets", "", bob...).want(200).json(); m["pagination"].(map[string]any)["total_count"] != 0.0 {
			t.Errorf("bob lists %v", m)
		}
		do(t, h, "GET", "/v1/secrets/token", "", bob...).want(404)
		do(t, h, "PATCH", "/v1/secrets/token", `{"value": "x"}`, bob...).want(404)
		do(t, h, "DELETE", "/v1/secrets/token", "", bob...).want(404)
		do(t, h, "POST", "/v1/secrets", `{"name": "token", "value": "mine"}`, bob...).want(409)

		// the admin scope sees everyone's
		if m := do(t, h, "GET", "/v1/secrets", "", admin...).want(200).json(); m["pagination"].(map[string]any)["total_count"] != 1.0 {
			t.Errorf("admin lists %v", m)
		}
		do(t, h, "DELETE", "/v1/secrets/token", "", admin...).want(204)
	})
}

func TestConditionalRequests(t *testing.T) {
	forEachStore(t, func(t *testing.T) {
		h := newTestHandler(t, testConfig)
		c := do(t, h, "POST", "/v1/events", `{"name": "E1"}`).want(201)
		etag, lastMod := c.Header().Get("ETag"), c.Header().Get("Last-Modified")

		nm := do(t, h, "GET", "/v1/events/E1", "", "If-None-Match", etag).want(304)
		if nm.Body.Len() != 0 || nm.Header().Get("ETag") != etag {
			t.Errorf("304: body %q etag %q", nm.Body, nm.Header().Get("ETag"))
		}
		do(t, h, "GET", "/v1/events/E1", "", "If-None-Match", `W/`+etag).want(304)
		do(t, h, "GET", "/v1/events/E1", "", "If-None-Match", `"other"`).want(200)
		do(t, h, "GET", "/v1/events/E1", "", "If-Modified-Since", lastMod).want(304)

		do(t, h, "PATCH", "/v1/events/E1", `{"repository": "a"}`, "If-Match", `"stale"`).want(412)
		do(t, h, "PATCH", "/v1/events/E1", `{"repository": "a"}`, "If-Match", "W/"+etag).want(412) // weak never matches If-Match
		do(t, h, "PUT", "/v1/events/E1", `{}`, "If-Unmodified-Since", "Sat, 31 Oct 2026 00:00:00 GMT").want(412)
		do(t, h, "DELETE", "/v1/events/E1", "", "If-Match", `"stale"`).want(412)
		if got := do(t, h, "GET", "/v1/events/E1", "").want(200).json(); got["repository"] != nil {
			t.Errorf("a failed precondition changed the document: %v", got)
		}

		p := do(t, h, "PATCH", "/v1/events/E1", `{"repository": "a"}`, "If-Match", etag).want(200)
		newTag := p.Header().Get("ETag")
		if newTag == etag {
			t.Fatal("ETag did not change on write")
		}
		do(t, h, "PATCH", "/v1/events/E1", `{"repository": "b"}`, "If-Match", etag).want(412) // the old tag is stale now
		do(t, h, "PUT", "/v1/events/E1", `{}`, "If-Match", "*").want(200)
		do(t, h, "DELETE", "/v1/events/E1", "", "If-Match", `"a", `+do(t, h, "GET", "/v1/events/E1", "").Header().Get("ETag")).want(204)
	})
}

// TestConcurrentWrites: 200 creates and 200 merge patches at once; every
// acknowledged write is there afterwards, none lost, none doubled.
func TestConcurrentWrites(t *testing.T) {
	forEachStore(t, func(t *testing.T) {
		h := newTestHandler(t, testConfig)
		do(t, h, "POST", "/v1/events", `{"name": "hot", "meta": {}}`).want(201)
		var wg sync.WaitGroup
		codes := make(chan int, 400)
		for i := 0; i < 200; i++ {
			wg.Add(2)
			go func() {
				defer wg.Done()
				codes <- do(t, h, "POST", "/v1/notes", fmt.Sprintf(`{"i": %d}`, i)).Code
			}()
			go func() {
				defer wg.Done()
				codes <- do(t, h, "PATCH", "/v1/events/hot", fmt.Sprintf(`{"meta": {"k%d": %d}}`, i, i)).Code
			}()
		}
		wg.Wait()
		close(codes)
		for c := range codes {
			if c != 201 && c != 200 {
				t.Fatalf("a write failed with %d", c)
			}
		}
		meta := do(t, h, "GET", "/v1/events/hot", "").want(200).json()["meta"].(map[string]any)
		if len(meta) != 200 {
			t.Errorf("meta has %d keys after 200 merges, want 200", len(meta))
		}
		seen := map[float64]bool{}
		for page := 1; page <= 2; page++ {
			m := do(t, h, "GET", fmt.Sprintf("/v1/notes?limit=100&page=%d", page), "").want(200).json()
			for _, it := range m["items"].([]any) {
				seen[it.(map[string]any)["i"].(float64)] = true
			}
			if n := m["pagination"].(map[string]any)["total_count"]; n != 200.0 {
				t.Errorf("total_count = %v, want 200", n)
			}
		}
		if len(seen) != 200 {
			t.Errorf("%d distinct notes, want 200", len(seen))
		}
	})
}

func TestOpenAPI(t *testing.T) {
	h := newTestHandler(t, testConfig)
	r := do(t, h, "GET", "/v1/openapi.json", "").want(200)
	var doc map[string]any
	if err := json.Unmarshal(r.Body.Bytes(), &doc); err != nil {
		t.Fatal(err)
	}
	if doc["openapi"] != "3.1.0" {
		t.Errorf("openapi = %v", doc["openapi"])
	}
	info := doc["info"].(map[string]any)
	if info["title"] == "" || info["version"] == "" {
		t.Error("info.title and info.version are required")
	}
	paths := doc["paths"].(map[string]any)
	for _, p := range []string{"/v1/events", "/v1/events/{name}", "/v1/events/{events_name}/productions", "/v1/events/{events_name}/productions/{name}", "/v1/secrets", "/v1/notes/{id}"} {
		if paths[p] == nil {
			t.Errorf("no path %s", p)
		}
	}
	// every $ref resolves; every operation has responses; every path
	// template parameter is declared
	var walk func(v any)
	walk = func(v any) {
		switch t2 := v.(type) {
		case map[string]any:
			if ref, ok := t2["$ref"].(string); ok {
				if resolve(doc, ref) == nil {
					t.Errorf("$ref %s does not resolve", ref)
				}
			}
			for _, x := range t2 {
				walk(x)
			}
		case []any:
			for _, x := range t2 {
				walk(x)
			}
		}
	}
	walk(doc)
	opIDs := map[string]bool{}
	for path, item := range paths {
		declared := map[string]bool{}
		collect := func(ps any) {
			for _, p := range asSlice(ps) {
				pm := p.(map[string]any)
				if pm["in"] == "path" {
					declared[pm["name"].(string)] = true
				}
			}
		}
		collect(item.(map[string]any)["parameters"])
		for method, op := range item.(map[string]any) {
			if method == "parameters" {
				continue
			}
			om := op.(map[string]any)
			if len(om["responses"].(map[string]any)) == 0 {
				t.Errorf("%s %s has no responses", method, path)
			}
			id := om["operationId"].(string)
			if opIDs[id] {
				t.Errorf("operationId %s is not unique", id)
			}
			opIDs[id] = true
			collect(om["parameters"])
		}
		for _, seg := range strings.Split(path, "/") {
			if strings.HasPrefix(seg, "{") && !declared[strings.Trim(seg, "{}")] {
				t.Errorf("%s: path parameter %s is not declared", path, seg)
			}
		}
	}
	secret := resolve(doc, "#/components/schemas/Secret").(map[string]any)["properties"].(map[string]any)
	if secret["value"] != nil {
		t.Error("the write-only value is in the response schema")
	}
	do(t, h, "GET", "/v1/openapi.json", "", "If-None-Match", r.Header().Get("ETag")).want(304)
	do(t, h, "POST", "/v1/openapi.json", "{}").want(405)
}

func asSlice(v any) []any {
	s, _ := v.([]any)
	return s
}

func resolve(doc map[string]any, ref string) any {
	var cur any = doc
	for _, part := range strings.Split(strings.TrimPrefix(ref, "#/"), "/") {
		m, ok := cur.(map[string]any)
		if !ok {
			return nil
		}
		cur = m[part]
	}
	return cur
}

func TestPersistence(t *testing.T) {
	forEachStore(t, func(t *testing.T) {
		h := newTestHandler(t, testConfig)
		do(t, h, "POST", "/v1/events", `{"name": "kept"}`).want(201)
		db := h.Database
		if err := h.Cleanup(); err != nil {
			t.Fatal(err)
		}
		h.poolKey = ""
		h2 := new(Handler)
		_ = h2.UnmarshalCaddyfile(caddyfile.NewTestDispenser(testConfig))
		h2.Database = db
		ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
		defer cancel()
		if err := h2.Provision(ctx); err != nil {
			t.Fatal(err)
		}
		defer h2.Cleanup()
		do(t, h2, "GET", "/v1/events/kept", "").want(200)
	})
}

func TestConfigErrors(t *testing.T) {
	for name, cfg := range map[string]string{
		"no collections":     "resources",
		"bad name":           "resources {\n collection bad-name\n}",
		"unknown option":     "resources {\n nope\n}",
		"unknown coll opt":   "resources {\n collection a {\n  nope\n }\n}",
		"bad type":           "resources {\n collection a {\n  field x colour\n }\n}",
		"bad enum for type":  "resources {\n collection a {\n  field x integer enum a b\n }\n}",
		"bad default":        "resources {\n collection a {\n  field x boolean default maybe\n }\n}",
		"missing parent":     "resources {\n collection a {\n  parent b\n }\n}",
		"two levels":         "resources {\n collection a\n collection b {\n  parent a\n }\n collection c {\n  parent b\n }\n}",
		"duplicate":          "resources {\n collection a\n collection a\n}",
		"duplicate field":    "resources {\n collection a {\n  field x\n  field x\n }\n}",
		"managed field":      "resources {\n collection a {\n  field created_at\n }\n}",
		"id declared":        "resources {\n collection a {\n  field id string\n }\n}",
		"bad durability":     "resources {\n durability sometimes\n collection a\n}",
		"bad size":           "resources {\n max_body lots\n collection a\n}",
		"duplicate database": "resources {\n database a\n database b\n collection a\n}",
		"write-only key":     "resources {\n collection a {\n  key k\n  field k string write_only\n }\n}",
	} {
		t.Run(name, func(t *testing.T) {
			h := new(Handler)
			err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(cfg))
			if err == nil {
				h.Database = filepath.Join(t.TempDir(), "x.db")
				ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
				defer cancel()
				if err = h.Provision(ctx); err == nil {
					err = h.Validate()
				}
				_ = h.Cleanup()
			}
			if err == nil {
				t.Fatalf("config %q was accepted", cfg)
			}
		})
	}
}

// TestPostgresSchemaByManyAtOnce: gateways that start together on a new
// database create the schema and the indexes once, under the migration
// lock, without an error (CREATE … IF NOT EXISTS alone races); a
// configuration that adds a sortable field later gets its index.
func TestPostgresSchemaByManyAtOnce(t *testing.T) {
	url, err := testPG.NewDatabase("migrate")
	if err != nil {
		t.Fatal(err)
	}
	h := new(Handler)
	if err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(testConfig)); err != nil {
		t.Fatal(err)
	}
	if err := h.prepareCollections(); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	errs := make(chan error, 6)
	for range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s, err := openPostgres(context.Background(), url, defaultStoreTimeout)
			if err == nil {
				for _, c := range h.Collections {
					if err = s.ensureIndexes(c); err != nil {
						break
					}
				}
				s.Close()
			}
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatalf("a concurrent start failed: %v", err)
		}
	}
	// a new sortable field: its index appears on the next start
	added := strings.Replace(testConfig, "field working_directory string", "field working_directory string\n\t\tfield priority number", 1)
	h2 := new(Handler)
	if err := h2.UnmarshalCaddyfile(caddyfile.NewTestDispenser(added)); err != nil {
		t.Fatal(err)
	}
	if err := h2.prepareCollections(); err != nil {
		t.Fatal(err)
	}
	s, err := openPostgres(context.Background(), url, defaultStoreTimeout)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var before, after int
	count := `SELECT COUNT(*) FROM pg_indexes WHERE tablename = 'documents' AND indexdef LIKE '%priority%'`
	_ = s.pool.QueryRow(context.Background(), count).Scan(&before)
	for _, c := range h2.Collections {
		if err := s.ensureIndexes(c); err != nil {
			t.Fatal(err)
		}
	}
	_ = s.pool.QueryRow(context.Background(), count).Scan(&after)
	if before != 0 || after != 1 {
		t.Errorf("indexes on the new field: %d before, %d after; want 0 and 1", before, after)
	}
}
