package resources

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
)

func benchHandler(b *testing.B, durability string) *Handler {
	cfg := strings.Replace(testConfig, "durability normal", "durability "+durability, 1)
	return newTestHandler(b, cfg)
}

// benchStores runs a benchmark on SQLite and on PostgreSQL (the test
// server, on loopback: a round trip per statement that SQLite does not pay).
func benchStores(b *testing.B, bench func(b *testing.B)) {
	for _, store := range []string{storeSQLite, storePostgres} {
		b.Run(store, func(b *testing.B) {
			testStore = store
			defer func() { testStore = storeSQLite }()
			bench(b)
		})
	}
}

type nopWriter struct{ h http.Header }

func (w *nopWriter) Header() http.Header         { return w.h }
func (w *nopWriter) Write(p []byte) (int, error) { return len(p), nil }
func (w *nopWriter) WriteHeader(int)             {}

func BenchmarkGetByKey(b *testing.B) { benchStores(b, benchmarkGetByKey) }

func benchmarkGetByKey(b *testing.B) {
	h := benchHandler(b, DurabilityFull)
	do(b, h, "POST", "/v1/events", `{"name": "GW150914", "meta": {"mass": 36.2, "distance": 410}, "repository": "git@example.com:events.git"}`).want(201)
	r := httptest.NewRequest("GET", "/v1/events/GW150914", nil)
	w := &nopWriter{h: http.Header{}}
	b.ReportAllocs()
	for b.Loop() {
		clear(w.h)
		_ = h.ServeHTTP(w, r, nil)
	}
}

func benchmarkCreate(b *testing.B, durability string) {
	h := benchHandler(b, durability)
	w := &nopWriter{h: http.Header{}}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		i++
		r := httptest.NewRequest("POST", "/v1/events", strings.NewReader(fmt.Sprintf(`{"name": "E%d", "repository": "r"}`, i)))
		r.Header.Set("Content-Type", "application/json")
		clear(w.h)
		_ = h.ServeHTTP(w, r, nil)
	}
}

func BenchmarkCreate(b *testing.B) {
	benchStores(b, func(b *testing.B) { benchmarkCreate(b, DurabilityFull) })
}
func BenchmarkCreateNormal(b *testing.B) { benchmarkCreate(b, DurabilityNormal) }

// benchmarkBareInsert is the floor for Create: one INSERT in its own
// transaction through the same driver, file settings and durability.
func benchmarkBareInsert(b *testing.B, durability string) {
	s, err := openSQLite(filepath.Join(b.TempDir(), "bare.db"), durability)
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		i++
		if _, err := s.writer.ExecContext(context.Background(),
			`INSERT INTO documents (collection, parent, key, doc, owner, version, created_at) VALUES ('events', '', ?, ?, '', 1, '2026-11-01T12:00:00.000000Z')`,
			fmt.Sprintf("E%d", i), `{"name":"x","repository":"r"}`); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkBareInsert(b *testing.B)       { benchmarkBareInsert(b, DurabilityFull) }
func BenchmarkBareInsertNormal(b *testing.B) { benchmarkBareInsert(b, DurabilityNormal) }

// BenchmarkListSorted: page 1 of a 10,000-document collection sorted by a field.
func BenchmarkListSorted(b *testing.B) { benchStores(b, benchmarkListSorted) }

func benchmarkListSorted(b *testing.B) {
	h := benchHandler(b, DurabilityNormal)
	err := h.store.Update(context.Background(), func(tx Tx) error {
		for i := 0; i < 10_000; i++ {
			d := &Doc{Collection: "events", Key: fmt.Sprintf("E%05d", i), Version: 1, Created: h.now(),
				Body: []byte(fmt.Sprintf(`{"name":"E%05d","repository":"r%d","count":%d}`, i, (i*7919)%10_000, i%50))}
			if err := tx.Insert(d); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		b.Fatal(err)
	}
	if ps, ok := h.store.(*pgStore); ok {
		// what autovacuum does after a bulk load: statistics for the
		// planner, a visibility map for index-only counts
		if _, err := ps.pool.Exec(context.Background(), "VACUUM ANALYZE documents"); err != nil {
			b.Fatal(err)
		}
	}
	r := httptest.NewRequest("GET", "/v1/events?sort=-repository&limit=10", nil)
	w := &nopWriter{h: http.Header{}}
	b.ReportAllocs()
	for b.Loop() {
		clear(w.h)
		_ = h.ServeHTTP(w, r, nil)
	}
}
