package resources

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// sseEvent is one event block of a stream: an id-only block (a heartbeat
// that moves the id) has no event and no data.
type sseEvent struct {
	ID, Event, Data string
}

func (e sseEvent) json(t testing.TB) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal([]byte(e.Data), &m); err != nil {
		t.Fatalf("event data %q: %v", e.Data, err)
	}
	return m
}

// feedStream is an open feed read in the background.
type feedStream struct {
	resp     *http.Response
	events   chan sseEvent
	comments chan string
	retry    chan string
	ended    chan struct{}
	cancel   context.CancelFunc
}

func readStream(resp *http.Response, cancel context.CancelFunc) *feedStream {
	s := &feedStream{resp: resp, events: make(chan sseEvent, 4096), comments: make(chan string, 64), retry: make(chan string, 1), ended: make(chan struct{}), cancel: cancel}
	go func() {
		defer close(s.ended)
		sc := bufio.NewScanner(resp.Body)
		var e sseEvent
		var id bool
		for sc.Scan() {
			line := sc.Text()
			switch {
			case line == "":
				if e.Event != "" || e.Data != "" || id {
					s.events <- e
				}
				e, id = sseEvent{}, false
			case strings.HasPrefix(line, ":"):
				select {
				case s.comments <- strings.TrimSpace(line[1:]):
				default:
				}
			case strings.HasPrefix(line, "id: "):
				e.ID, id = line[4:], true
			case strings.HasPrefix(line, "event: "):
				e.Event = line[7:]
			case strings.HasPrefix(line, "data: "):
				e.Data = line[6:]
			case strings.HasPrefix(line, "retry: "):
				s.retry <- line[7:]
			}
		}
	}()
	return s
}

func (s *feedStream) close() { s.cancel(); <-s.ended }

// next returns the next event, failing after a generous deadline.
func (s *feedStream) next(t testing.TB) sseEvent {
	t.Helper()
	select {
	case e := <-s.events:
		return e
	case <-s.ended:
		select {
		case e := <-s.events:
			return e
		default:
		}
		t.Fatal("the stream ended before the next event")
	case <-time.After(20 * time.Second):
		t.Fatal("no event within 20s")
	}
	return sseEvent{}
}

// feedServer serves h over real HTTP, so that responses stream.
func feedServer(t testing.TB, h *Handler) *httptest.Server {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := h.ServeHTTP(w, r, nil); err != nil {
			t.Errorf("ServeHTTP: %v", err)
		}
	}))
	t.Cleanup(func() {
		h.endFeeds()
		srv.Close()
	})
	return srv
}

// openFeed opens a feed as user ("" for none); the response is returned
// as is when it is not a stream.
func openFeed(t testing.TB, srv *httptest.Server, path, user string, headers ...string) (*feedStream, *http.Response) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "GET", srv.URL+path, nil)
	req.Header.Set("Accept", "text/event-stream")
	if user != "" {
		req.Header.Set("X-Auth-User", user)
	}
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	resp, err := srv.Client().Do(req)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	if resp.StatusCode != 200 {
		cancel()
		return nil, resp
	}
	s := readStream(resp, cancel)
	t.Cleanup(s.close)
	return s, resp
}

func TestFeedEvents(t *testing.T) {
	forEachStore(t, func(t *testing.T) {
		h := newTestHandler(t, testConfig)
		srv := feedServer(t, h)
		s, resp := openFeed(t, srv, "/v1/events", "tester")
		if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "text/event-stream" || resp.Header.Get("Cache-Control") != "no-store" ||
			resp.Header.Get("Vary") != "Accept" || resp.Header.Get("ETag") != "" {
			t.Fatalf("open: %d %v", resp.StatusCode, resp.Header)
		}
		if r := <-s.retry; r != strconv.Itoa(feedRetry) {
			t.Errorf("retry: %s", r)
		}
		created := do(t, h, "POST", "/v1/events", `{"name": "a", "count": 1}`).want(201)
		updated := do(t, h, "PATCH", "/v1/events/a", `{"count": 2}`).want(200)
		do(t, h, "POST", "/v1/notes", `{"x": 1}`).want(201) // another collection
		do(t, h, "DELETE", "/v1/events/a", "").want(204)

		var ids []int64
		for i, want := range []struct {
			event, etag string
			count       float64
		}{{"created", created.Header().Get("ETag"), 1}, {"updated", updated.Header().Get("ETag"), 2}, {"deleted", updated.Header().Get("ETag"), 0}} {
			e := s.next(t)
			m := e.json(t)
			id, err := strconv.ParseInt(e.ID, 10, 64)
			if err != nil || e.Event != want.event || m["url"] != "/v1/events/a" || m["etag"] != want.etag {
				t.Fatalf("event %d: %+v, want %s with ETag %s", i, e, want.event, want.etag)
			}
			ids = append(ids, id)
			res, _ := m["resource"].(map[string]any)
			if want.event == "deleted" {
				if res != nil {
					t.Errorf("a deleted event carries a resource: %v", m)
				}
				continue
			}
			if res["count"] != want.count || res["name"] != "a" || res["created_at"] == nil {
				t.Errorf("%s: resource %v", want.event, res)
			}
		}
		if !(ids[0] < ids[1] && ids[1] < ids[2]) {
			t.Errorf("ids not increasing: %v", ids)
		}
		// a plain GET is still the list
		if r := do(t, h, "GET", "/v1/events", "").want(200); r.Header().Get("Vary") != "Accept" || !strings.HasPrefix(r.Header().Get("Content-Type"), "application/json") {
			t.Errorf("list: %v", r.Header())
		}
	})
}

// TestFeedOwnedAndFiltered: an owned collection's feed shows a caller only
// their own documents, without write-only fields; filters and child
// collections select as the list does.
func TestFeedOwnedAndFiltered(t *testing.T) {
	forEachStore(t, func(t *testing.T) {
		h := newTestHandler(t, testConfig)
		srv := feedServer(t, h)
		alice, _ := openFeed(t, srv, "/v1/secrets", "alice")
		bob, _ := openFeed(t, srv, "/v1/secrets", "bob")
		admin, _ := openFeed(t, srv, "/v1/secrets", "root", "X-Auth-Scopes", "read admin")
		if _, r := openFeed(t, srv, "/v1/secrets", ""); r.StatusCode != 401 {
			t.Errorf("anonymous feed of an owned collection: %d", r.StatusCode)
		}
		do(t, h, "POST", "/v1/secrets", `{"name": "a1", "value": "hush"}`, "X-Auth-User", "alice").want(201)
		do(t, h, "POST", "/v1/secrets", `{"name": "b1", "value": "hush"}`, "X-Auth-User", "bob").want(201)
		do(t, h, "POST", "/v1/secrets", `{"name": "a2", "value": "hush"}`, "X-Auth-User", "alice").want(201)
		for _, key := range []string{"a1", "a2"} {
			e := alice.next(t)
			res := e.json(t)["resource"].(map[string]any)
			if res["name"] != key || res["owner"] != "alice" || res["value"] != nil {
				t.Errorf("alice's feed: %s", e.Data)
			}
		}
		if e := bob.next(t); !strings.Contains(e.Data, `"b1"`) || strings.Contains(e.Data, "hush") {
			t.Errorf("bob's feed: %s", e.Data)
		}
		for _, key := range []string{"a1", "b1", "a2"} {
			if e := admin.next(t); !strings.Contains(e.Data, `"name":"`+key+`"`) {
				t.Errorf("admin's feed: %s, want %s", e.Data, key)
			}
		}
		select {
		case e := <-bob.events:
			t.Errorf("bob saw %s", e.Data)
		default:
		}

		do(t, h, "POST", "/v1/events", `{"name": "e"}`).want(201)
		do(t, h, "POST", "/v1/events", `{"name": "f"}`).want(201)
		prod, _ := openFeed(t, srv, "/v1/events/e/productions?pipeline=bilby&sort=-name&limit=5", "tester")
		if _, r := openFeed(t, srv, "/v1/events/nope/productions", "tester"); r.StatusCode != 404 {
			t.Errorf("feed of a missing parent's children: %d", r.StatusCode)
		}
		if _, r := openFeed(t, srv, "/v1/events?colour=red", "tester"); r.StatusCode != 422 {
			t.Errorf("feed with an unknown filter: %d", r.StatusCode)
		}
		do(t, h, "POST", "/v1/events/e/productions", `{"name": "p1", "pipeline": "rift"}`).want(201)
		do(t, h, "POST", "/v1/events/f/productions", `{"name": "p2", "pipeline": "bilby"}`).want(201)
		do(t, h, "POST", "/v1/events/e/productions", `{"name": "p3", "pipeline": "bilby"}`).want(201)
		if e := prod.next(t); e.Event != "created" || e.json(t)["url"] != "/v1/events/e/productions/p3" {
			t.Errorf("filtered child feed: %+v", e)
		}
	})
}

// TestFeedResume: a client that resumes with the last id it got, by
// header or by query, receives every later change once, in order.
func TestFeedResume(t *testing.T) {
	forEachStore(t, func(t *testing.T) {
		h := newTestHandler(t, testConfig)
		srv := feedServer(t, h)
		s, _ := openFeed(t, srv, "/v1/notes", "tester")
		do(t, h, "POST", "/v1/notes", `{"i": 0}`).want(201)
		last := s.next(t).ID
		s.close()
		for i := 1; i <= 300; i++ { // more than a page
			do(t, h, "POST", "/v1/notes", fmt.Sprintf(`{"i": %d}`, i)).want(201)
		}
		for _, how := range []string{"header", "query"} {
			var s *feedStream
			if how == "header" {
				s, _ = openFeed(t, srv, "/v1/notes?last-event-id=0", "tester", "Last-Event-ID", last)
			} else {
				s, _ = openFeed(t, srv, "/v1/notes?last-event-id="+last, "tester")
			}
			for i := 1; i <= 300; i++ {
				if e := s.next(t); e.json(t)["resource"].(map[string]any)["i"] != float64(i) {
					t.Fatalf("%s: event %d: %s", how, i, e.Data)
				}
			}
			s.close()
		}
	})
}

// TestFeedReset: a resume from an id the log no longer holds (or never
// sent) gets one reset event, then the changes from now.
func TestFeedReset(t *testing.T) {
	forEachStore(t, func(t *testing.T) {
		h := newTestHandler(t, strings.Replace(testConfig, "durability normal", "durability normal\n\tfeed_max_changes 5", 1))
		srv := feedServer(t, h)
		s, _ := openFeed(t, srv, "/v1/notes", "tester")
		do(t, h, "POST", "/v1/notes", `{"i": 0}`).want(201)
		first := s.next(t).ID
		s.close()
		for i := 1; i <= 20; i++ {
			do(t, h, "POST", "/v1/notes", fmt.Sprintf(`{"i": %d}`, i)).want(201)
		}
		// pruning runs after the hub reads the log: wait for it
		waitUntil(t, 10*time.Second, "the log pruned", func() bool {
			_, ok := h.hub.after(1, 1)
			return !ok
		})
		for _, id := range []string{first, "99999999", "garbage"} {
			latest, _ := h.hub.log.latestChange(context.Background())
			r, _ := openFeed(t, srv, "/v1/notes", "tester", "Last-Event-ID", id)
			if e := r.next(t); e.Event != "reset" || e.ID != strconv.FormatInt(latest, 10) || e.json(t)["url"] != "/v1/notes" {
				t.Fatalf("resume from %s: %+v, want a reset at %d", id, e, latest)
			}
			do(t, h, "POST", "/v1/notes", `{"after": "reset"}`).want(201)
			if e := r.next(t); e.Event != "created" || !strings.Contains(e.Data, "reset") {
				t.Errorf("after the reset: %+v", e)
			}
			r.close()
		}
	})
}

// TestFeedStreamCap: a principal's streams beyond feed_max_streams get a
// 429 problem; closing one makes room.
func TestFeedStreamCap(t *testing.T) {
	h := newTestHandler(t, strings.Replace(testConfig, "durability normal", "durability normal\n\tfeed_max_streams 2", 1))
	srv := feedServer(t, h)
	a, _ := openFeed(t, srv, "/v1/notes", "alice")
	openFeed(t, srv, "/v1/events", "alice")
	_, r := openFeed(t, srv, "/v1/notes", "alice")
	var p map[string]any
	json.NewDecoder(r.Body).Decode(&p)
	if r.StatusCode != 429 || p["code"] != "too_many_streams" || r.Header.Get("Retry-After") == "" {
		t.Fatalf("third stream: %d %v", r.StatusCode, p)
	}
	if s, r := openFeed(t, srv, "/v1/notes", "bob"); s == nil {
		t.Fatalf("bob's stream: %d", r.StatusCode)
	}
	a.close()
	waitUntil(t, 10*time.Second, "alice's closed stream released", func() bool {
		s, _ := openFeed(t, srv, "/v1/notes", "alice")
		return s != nil
	})
}

// TestFeedHeartbeatAndShutdown: a tick sends a comment (and moves the id
// past changes the stream does not show); shutting down ends the stream.
func TestFeedHeartbeatAndShutdown(t *testing.T) {
	h := newTestHandler(t, testConfig)
	ticks := make(chan time.Time)
	h.newTicker = func(time.Duration) (<-chan time.Time, func()) { return ticks, func() {} }
	srv := feedServer(t, h)
	s, _ := openFeed(t, srv, "/v1/events", "tester")
	do(t, h, "POST", "/v1/notes", `{"x": 1}`).want(201)
	do(t, h, "POST", "/v1/events", `{"name": "a"}`).want(201)
	e := s.next(t)
	do(t, h, "POST", "/v1/notes", `{"x": 2}`).want(201)
	// the hub has read the note once the events feed sees a later change
	do(t, h, "POST", "/v1/events", `{"name": "b"}`).want(201)
	s.next(t)
	do(t, h, "POST", "/v1/notes", `{"x": 3}`).want(201)
	want, _ := h.hub.log.latestChange(context.Background())
	waitUntil(t, 10*time.Second, "the hub read the note", func() bool {
		b, _ := h.hub.after(want-1, 1)
		return len(b) == 1
	})
	ticks <- time.Now() // the stream reads the ring before waiting again
	ticks <- time.Now()
	if c := <-s.comments; c != "heartbeat" {
		t.Errorf("comment %q", c)
	}
	if hb := s.next(t); hb.ID != strconv.FormatInt(want, 10) || hb.Event != "" {
		t.Errorf("heartbeat block %+v after %s, want id %d", hb, e.ID, want)
	}
	h.endFeeds()
	select {
	case <-s.ended:
	case <-time.After(10 * time.Second):
		t.Fatal("the stream outlived the shutdown")
	}
}

// stalledWriter is a client that stopped reading: a write blocks until
// the deadline set on it passes.
type stalledWriter struct {
	header   http.Header
	mu       sync.Mutex
	deadline time.Time
	maxWrite int
	writes   int
}

func (w *stalledWriter) Header() http.Header { return w.header }
func (w *stalledWriter) WriteHeader(int)     {}
func (w *stalledWriter) Flush()              {}
func (w *stalledWriter) SetWriteDeadline(t time.Time) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.deadline = t
	return nil
}

func (w *stalledWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	w.writes++
	w.maxWrite = max(w.maxWrite, len(p))
	d := w.deadline
	w.mu.Unlock()
	if w.writes == 1 {
		return len(p), nil // the retry line goes out; then the client stalls
	}
	time.Sleep(time.Until(d))
	return 0, os.ErrDeadlineExceeded
}

// TestFeedStalledClient: a client that stops reading during a burst holds
// one batch at most (the rest stays in the log), and is disconnected
// after feed_write_timeout.
func TestFeedStalledClient(t *testing.T) {
	h := newTestHandler(t, strings.Replace(testConfig, "durability normal", "durability normal\n\tfeed_write_timeout 200ms", 1))
	w := &stalledWriter{header: http.Header{}}
	r := httptest.NewRequest("GET", "/v1/notes", nil)
	r.Header.Set("Accept", "text/event-stream")
	done := make(chan error, 1)
	go func() { done <- h.ServeHTTP(w, r, nil) }()
	waitUntil(t, 10*time.Second, "the stream open", func() bool {
		w.mu.Lock()
		defer w.mu.Unlock()
		return w.writes > 0
	})
	body := strings.Repeat("x", 1000)
	for i := range 1000 {
		do(t, h, "POST", "/v1/notes", fmt.Sprintf(`{"i": %d, "pad": %q}`, i, body)).want(201)
	}
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		t.Fatal("a stalled client was never disconnected")
	}
	// one write of at most a page of events, never the burst
	if limit := feedPage * 1400; w.maxWrite > limit || w.writes > 3 {
		t.Errorf("the stalled stream wrote %d times, %d bytes at most (limit %d)", w.writes, w.maxWrite, limit)
	}
	h.hub.mu.Lock()
	defer h.hub.mu.Unlock()
	if len(h.hub.ring) > ringChanges || h.hub.ringSize > ringBytes || len(h.hub.waiters) != 0 {
		t.Errorf("hub: %d changes, %d bytes in the ring, %d waiters", len(h.hub.ring), h.hub.ringSize, len(h.hub.waiters))
	}
}

// TestFeedOpenAPI: each collection's GET documents its event stream.
func TestFeedOpenAPI(t *testing.T) {
	h := newTestHandler(t, testConfig)
	var doc struct {
		Paths map[string]struct {
			Get struct {
				Responses map[string]struct {
					Content map[string]any `json:"content"`
				} `json:"responses"`
			} `json:"get"`
		} `json:"paths"`
	}
	if err := json.Unmarshal(h.openapi, &doc); err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{"/v1/events", "/v1/events/{events_name}/productions", "/v1/secrets"} {
		if _, ok := doc.Paths[path].Get.Responses["200"].Content["text/event-stream"]; !ok {
			t.Errorf("GET %s documents no text/event-stream response", path)
		}
	}
}
