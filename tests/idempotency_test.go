package tests

import (
	"crypto/tls"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestIdempotencyThroughGateway: the default Caddyfile's api_idempotency in
// front of the resources backend.
func TestIdempotencyThroughGateway(t *testing.T) {
	g := StartGateway(t, repoFile(t, "Caddyfile"), Options{})
	c := g.Client()
	count := func(name string) int {
		t.Helper()
		r := Do(t, c, "GET", g.URL("/v1/events?name="+name), "", bearer("tester")...)
		var n int
		fmt.Sscanf(string(r.Body[strings.Index(string(r.Body), `"total_count":`)+len(`"total_count":`):]), "%d", &n)
		return n
	}
	// retry bounded: while the first is in flight the answer is a 409
	retry := func(body string, headers ...string) *Response {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for {
			r := Do(t, c, "POST", g.URL("/v1/events"), body, headers...)
			if r.StatusCode != 409 || !strings.Contains(string(r.Body), "idempotency_key_in_use") {
				return r
			}
			if time.Now().After(deadline) {
				t.Fatalf("the key was still in use after 10s: %s", r.Body)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}

	t.Run("the connection is cut after the request is sent", func(t *testing.T) {
		const body = `{"name": "cut-1"}`
		conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", fmt.Sprintf("127.0.0.1:%d", g.HTTPS),
			&tls.Config{ServerName: "api.localhost", RootCAs: g.ca, NextProtos: []string{"http/1.1"}})
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(conn, "POST /v1/events HTTP/1.1\r\nHost: api.localhost:%d\r\n%sIdempotency-Key: \"cut-key-1\"\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s",
			g.HTTPS, bearerLine("tester"), len(body), body)
		conn.Close() // the client never reads the answer
		r := retry(body, append(bearer("tester"), "Idempotency-Key", `"cut-key-1"`)...)
		if r.StatusCode != 201 || r.Header.Get("Idempotent-Replayed") != "true" || r.Header.Get("Location") != "/v1/events/cut-1" || r.Header.Get("ETag") == "" {
			t.Errorf("retry: %d replayed %q Location %q ETag %q: %s", r.StatusCode, r.Header.Get("Idempotent-Replayed"), r.Header.Get("Location"), r.Header.Get("ETag"), r.Body)
		}
		if n := count("cut-1"); n != 1 {
			t.Errorf("%d events exist, want 1", n)
		}
	})

	t.Run("20 concurrent identical requests", func(t *testing.T) {
		const body = `{"name": "burst-1"}`
		var wg sync.WaitGroup
		var mu sync.Mutex
		statuses := map[string]int{}
		for range 20 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				r, err := Send(c, "POST", g.URL("/v1/events"), body, append(bearer("tester"), "Idempotency-Key", `"burst-key"`)...)
				if err != nil {
					t.Error(err)
					return
				}
				outcome := fmt.Sprint(r.StatusCode)
				switch {
				case r.StatusCode == 201 && r.Header.Get("Idempotent-Replayed") == "true":
					outcome = "replayed"
				case r.StatusCode == 409 && strings.Contains(string(r.Body), "idempotency_key_in_use"):
					outcome = "in flight"
				}
				mu.Lock()
				statuses[outcome]++
				mu.Unlock()
			}()
		}
		wg.Wait()
		if statuses["201"] != 1 || statuses["201"]+statuses["replayed"]+statuses["in flight"] != 20 {
			t.Errorf("outcomes %v: want one 201, the rest replayed or in flight (never a second creation)", statuses)
		}
		if n := count("burst-1"); n != 1 {
			t.Errorf("%d events exist, want 1", n)
		}
	})

	t.Run("same key, different request", func(t *testing.T) {
		Do(t, c, "POST", g.URL("/v1/events"), `{"name": "k-1"}`, append(bearer("tester"), "Idempotency-Key", `"reused"`)...)
		m := AssertProblem(t, Do(t, c, "POST", g.URL("/v1/events"), `{"name": "k-2"}`, append(bearer("tester"), "Idempotency-Key", `"reused"`)...), 422)
		if m["code"] != "idempotency_key_reused" {
			t.Errorf("code = %v", m["code"])
		}
		if n := count("k-2"); n != 0 {
			t.Error("the reused key's different request was carried out")
		}
		// another user's key is another key
		r := Do(t, c, "POST", g.URL("/v1/events"), `{"name": "k-3"}`, append(bearer("alice"), "Idempotency-Key", `"reused"`)...)
		if r.StatusCode != 201 || r.Header.Get("Idempotent-Replayed") != "" {
			t.Errorf("alice with bob's key: %d replayed %q", r.StatusCode, r.Header.Get("Idempotent-Replayed"))
		}
	})

	t.Run("malformed keys", func(t *testing.T) {
		for _, k := range []string{"bare-token", `"` + strings.Repeat("x", 300) + `"`, `"a", "b"`} {
			m := AssertProblem(t, Do(t, c, "POST", g.URL("/v1/events"), `{"name": "bad-key"}`, append(bearer("tester"), "Idempotency-Key", k)...), 400)
			if m["code"] != "idempotency_key_invalid" {
				t.Errorf("%s: code %v", k, m["code"])
			}
		}
		if n := count("bad-key"); n != 0 {
			t.Error("a request with a malformed key was carried out")
		}
	})
}
