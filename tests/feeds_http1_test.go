package tests

import (
	"testing"
	"time"
)

// TestFeedsOutliveTheReadTimeout: over HTTP/1.1 a change feed is one long
// GET, and the server's whole-request read timeout (read_body,
// RESTGATE_READ_BODY_TIMEOUT) kept running under it: the stream was cut
// when it expired (the connection's background read timed out and
// cancelled the request). Over HTTP/2 it never applied. A stream that
// stays open past the timeout still gets the next change.
func TestFeedsOutliveTheReadTimeout(t *testing.T) {
	const readTimeout = time.Second
	g := StartGateway(t, repoFile(t, "Caddyfile"), Options{Env: map[string]string{"RESTGATE_READ_BODY_TIMEOUT": readTimeout.String()}})
	c := g.ClientHTTP1()
	f, r := openFeed(t, c, g.URL("/v1/events"), bearer("alice")...)
	if f == nil {
		t.Fatalf("opening the feed: %d %s", r.StatusCode, r.Body)
	}
	if f.resp.ProtoMajor != 1 {
		t.Fatalf("the feed came over %s, want HTTP/1.1", f.resp.Proto)
	}
	f.started(t)
	// the read timeout's expiry is what is tested: the stream must still be
	// open well after it (before the fix it ended at readTimeout)
	select {
	case <-f.ended:
		t.Fatalf("the HTTP/1.1 stream ended at the server's read timeout (%v)", readTimeout)
	case <-time.After(3 * readTimeout):
	}
	Do(t, g.Client(), "POST", g.URL("/v1/events"), `{"name": "after-the-timeout"}`, bearer("alice")...)
	if e := f.next(t); e.Event != "created" || e.resource(t)["name"] != "after-the-timeout" {
		t.Errorf("after the read timeout: %s %s", e.Event, e.Data)
	}
}
