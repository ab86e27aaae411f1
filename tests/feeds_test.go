package tests

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// feedEvent is one server-sent event.
type feedEvent struct {
	ID, Event, Data string
}

// feed is an open change feed, read in the background.
type feed struct {
	resp   *http.Response
	events chan feedEvent
	retry  chan string
	ended  chan struct{}
	cancel context.CancelFunc
}

// openFeed asks url for its change feed with headers; a response other
// than a stream is returned with a nil feed.
func openFeed(t testing.TB, c *http.Client, url string, headers ...string) (*feed, *Response) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, err := http.NewRequestWithContext(ctx, "GET", url, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Accept", "text/event-stream")
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	resp, err := c.Do(req)
	if err != nil {
		cancel()
		t.Fatalf("opening %s: %v", url, err)
	}
	if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
		defer cancel()
		defer resp.Body.Close()
		var b strings.Builder
		bufio.NewReader(resp.Body).WriteTo(&b)
		return nil, &Response{Response: resp, Body: []byte(b.String())}
	}
	f := &feed{resp: resp, events: make(chan feedEvent, 8192), retry: make(chan string, 1), ended: make(chan struct{}), cancel: cancel}
	go func() {
		defer close(f.ended)
		defer resp.Body.Close()
		sc := bufio.NewScanner(resp.Body)
		var e feedEvent
		for sc.Scan() {
			line := sc.Text()
			switch {
			case line == "":
				if e.Event != "" {
					f.events <- e
				}
				e = feedEvent{}
			case strings.HasPrefix(line, "id: "):
				e.ID = line[4:]
			case strings.HasPrefix(line, "event: "):
				e.Event = line[7:]
			case strings.HasPrefix(line, "data: "):
				e.Data = line[6:]
			case strings.HasPrefix(line, "retry: "):
				f.retry <- line[7:]
			}
		}
	}()
	t.Cleanup(f.close)
	return f, nil
}

func (f *feed) close() { f.cancel(); <-f.ended }

// next is the next event, within a generous deadline.
func (f *feed) next(t testing.TB) feedEvent {
	t.Helper()
	if f == nil {
		t.Fatal("no stream was opened")
	}
	select {
	case e := <-f.events:
		return e
	case <-time.After(30 * time.Second):
		t.Fatal("no event within 30s")
	}
	return feedEvent{}
}

// started waits for the stream's first bytes (the retry hint): the
// watcher is following from here.
func (f *feed) started(t testing.TB) {
	t.Helper()
	if f == nil {
		t.Fatal("no stream was opened")
	}
	select {
	case <-f.retry:
	case <-time.After(30 * time.Second):
		t.Fatal("the stream sent nothing within 30s: held back on the way?")
	}
}

func (e feedEvent) resource(t testing.TB) map[string]any {
	t.Helper()
	var m struct {
		Resource map[string]any `json:"resource"`
	}
	if err := json.Unmarshal([]byte(e.Data), &m); err != nil {
		t.Fatalf("event data %q: %v", e.Data, err)
	}
	return m.Resource
}

// burstAndResume runs the burst test: writers create 1,000 notes through
// the write clients (worker w through writers[w%len]), while a watcher
// follows through watchAt(0), disconnects part-way and resumes with its
// last id through watchAt(1). Every note must arrive exactly once, each
// writer's in the order it wrote them, ids increasing.
func burstAndResume(t *testing.T, writers []*http.Client, writeURL string, watch [2]*http.Client, watchURL [2]string) {
	const workers, each = 4, 250
	f, _ := openFeed(t, watch[0], watchURL[0], bearer("tester")...)
	f.started(t)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				if r, err := Send(writers[w%len(writers)], "POST", writeURL, fmt.Sprintf(`{"name": "w%d-%d"}`, w, i), bearer("tester")...); err != nil || r.StatusCode != 201 {
					t.Errorf("write w%d-%d: %v %v", w, i, err, r)
					return
				}
			}
		}()
	}
	var got []feedEvent
	for len(got) < 100 {
		got = append(got, f.next(t))
	}
	f.close() // mid-burst
	drained := len(f.events)
	for range drained {
		got = append(got, <-f.events)
	}
	last := got[len(got)-1].ID
	f2, _ := openFeed(t, watch[1], watchURL[1], append(bearer("tester"), "Last-Event-ID", last)...)
	for len(got) < workers*each {
		got = append(got, f2.next(t))
	}
	wg.Wait()
	seen := map[string]bool{}
	next := make([]int, workers)
	prev := int64(0)
	for _, e := range got {
		id, err := strconv.ParseInt(e.ID, 10, 64)
		if err != nil || id <= prev || e.Event != "created" {
			t.Fatalf("event %+v after id %d", e, prev)
		}
		prev = id
		text, _ := e.resource(t)["name"].(string)
		if seen[text] {
			t.Fatalf("%s received twice", text)
		}
		seen[text] = true
		var w, i int
		fmt.Sscanf(text, "w%d-%d", &w, &i)
		if i != next[w] {
			t.Fatalf("writer %d's note %d arrived when %d was due", w, i, next[w])
		}
		next[w]++
	}
	select {
	case e := <-f2.events:
		t.Errorf("an event beyond the burst: %+v", e)
	case <-time.After(200 * time.Millisecond):
	}
	t.Logf("%d changes, %d before the disconnect, resumed from id %s: each once, in order", len(got), 100+drained, last)
}

// TestFeedsResumeAfterBurst (SQLite, the default Caddyfile): a watcher
// that disconnects during a burst of 1,000 writes and resumes with its
// last id gets every change exactly once, in commit order; the stream
// passes the whole chain (api_etag, the access log) unbuffered.
func TestFeedsResumeAfterBurst(t *testing.T) {
	g := StartGateway(t, repoFile(t, "Caddyfile"), Options{})
	c := g.Client()
	// resumed over HTTP/1.1 with the query form (as a client that cannot
	// set headers would)
	f, _ := openFeed(t, c, g.URL("/v1/events"), bearer("tester")...)
	f.started(t)
	Do(t, c, "POST", g.URL("/v1/events"), `{"name": "first"}`, bearer("tester")...)
	first := f.next(t).ID
	f.close()
	Do(t, c, "POST", g.URL("/v1/events"), `{"name": "second"}`, bearer("tester")...)
	q, _ := openFeed(t, g.ClientHTTP1(), g.URL("/v1/events?last-event-id="+first), bearer("tester")...)
	if e := q.next(t); e.resource(t)["name"] != "second" {
		t.Fatalf("resumed with ?last-event-id: %+v", e)
	}
	q.close()
	burstAndResume(t, []*http.Client{c}, g.URL("/v1/events"), [2]*http.Client{c, g.ClientHTTP1()},
		[2]string{g.URL("/v1/events"), g.URL("/v1/events")})
}

// TestFeedsOwnedCapAndTimeouts: through the default Caddyfile, bob's
// feed of an owned collection shows nothing of alice's; a principal's
// ninth stream is a 429 problem;
// a config reload ends streams with the retry hint sent, and the resume
// loses nothing.
func TestFeedsOwnedCapAndTimeouts(t *testing.T) {
	g := StartGateway(t, repoFile(t, "Caddyfile"), Options{})
	c := g.Client()
	bob, _ := openFeed(t, c, g.URL("/v1/secrets"), bearer("bob")...)
	alice, _ := openFeed(t, c, g.URL("/v1/secrets"), bearer("alice")...)
	bob.started(t)
	alice.started(t)
	Do(t, c, "POST", g.URL("/v1/secrets"), `{"name": "a", "value": "alice's"}`, bearer("alice")...)
	Do(t, c, "POST", g.URL("/v1/secrets"), `{"name": "b", "value": "bob's"}`, bearer("bob")...)
	Do(t, c, "POST", g.URL("/v1/secrets"), `{"name": "a2", "value": "alice's"}`, bearer("alice")...)
	if e := bob.next(t); !strings.Contains(e.Data, `"name":"b"`) || strings.Contains(e.Data, "bob's") {
		t.Errorf("bob's first event: %s", e.Data)
	}
	for _, key := range []string{"a", "a2"} {
		if e := alice.next(t); e.resource(t)["name"] != key {
			t.Errorf("alice's event: %s, want %s", e.Data, key)
		}
	}
	select {
	case e := <-bob.events:
		t.Errorf("bob saw %s", e.Data)
	case <-time.After(300 * time.Millisecond):
	}

	// the cap: bob has one stream open
	for i := range 7 {
		if f, r := openFeed(t, c, g.URL("/v1/events"), bearer("bob")...); f == nil {
			t.Fatalf("stream %d: %d %s", i+2, r.StatusCode, r.Body)
		}
	}
	_, r := openFeed(t, c, g.URL("/v1/events"), bearer("bob")...)
	if r == nil {
		t.Fatal("a ninth stream was opened")
	}
	if p := AssertProblem(t, r, 429); p["code"] != "too_many_streams" {
		t.Errorf("ninth stream: %v", p)
	}

	// a reload ends the streams; alice resumes and loses nothing
	Do(t, c, "POST", g.URL("/v1/secrets"), `{"name": "a3", "value": "x"}`, bearer("alice")...)
	last := alice.next(t).ID
	cmd := exec.Command(binary, "reload", "--force", "--config", g.Config, "--adapter", "caddyfile", "--address", fmt.Sprintf("127.0.0.1:%d", g.Admin))
	cmd.Env = g.Env
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("reload: %v\n%s", err, out)
	}
	select {
	case <-alice.ended:
	case <-time.After(20 * time.Second):
		t.Fatal("a stream outlived the reload")
	}
	Do(t, c, "POST", g.URL("/v1/secrets"), `{"name": "a4", "value": "x"}`, bearer("alice")...)
	again, _ := openFeed(t, c, g.URL("/v1/secrets"), append(bearer("alice"), "Last-Event-ID", last)...)
	if e := again.next(t); e.resource(t)["name"] != "a4" {
		t.Errorf("after the reload: %s", e.Data)
	}
}

// TestFeedsAcrossGatewaysPostgres: two gateways on one PostgreSQL
// database: a change made through A reaches a watcher on B; a watcher on B
// that disconnects during a burst of 1,000 writes through both and
// resumes on A gets every change exactly once, in commit order.
func TestFeedsAcrossGatewaysPostgres(t *testing.T) {
	gs := startGateways(t, 2, pgConfig(newPGDatabase(t)))
	a, b := behindBalancer(gs[0]), behindBalancer(gs[1])
	f, _ := openFeed(t, b, gs[1].URL("/v1/notes"), bearer("tester")...)
	f.started(t)
	start := time.Now()
	Do(t, a, "POST", gs[0].URL("/v1/notes"), `{"name": "n1", "text": "through A"}`, bearer("tester")...)
	if e := f.next(t); e.Event != "created" || e.resource(t)["text"] != "through A" {
		t.Fatalf("B's watcher: %+v", e)
	}
	t.Logf("a write through A reached B's watcher in %v", time.Since(start).Round(time.Millisecond))
	f.close()
	burstAndResume(t, []*http.Client{a, b}, gs[0].URL("/v1/notes"), [2]*http.Client{b, a}, [2]string{gs[1].URL("/v1/notes"), gs[0].URL("/v1/notes")})
}
