package tests

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"
)

// TestResourcesCacheControl: through the default Caddyfile, every
// resource response says how caches may use it (REDbot: "this response
// allows caches to assign their own freshness lifetimes" on every resource
// URL before). Documents and lists are `private, no-cache` (resources'
// `no-cache`, the gateway's `private` for a keyed request): each use is
// revalidated with the ETag, so the gateway's cache never answers from a
// stored copy alone; an owned collection's are never stored at all;
// problems are `no-store`.
func TestResourcesCacheControl(t *testing.T) {
	g := StartGateway(t, repoFile(t, "Caddyfile"), Options{})
	c := g.Client()
	if r := Do(t, c, "POST", g.URL("/v1/events"), `{"name": "E1"}`, bearer("tester")...); r.StatusCode != 201 {
		t.Fatalf("create: %d %s", r.StatusCode, r.Body)
	}
	if r := Do(t, c, "POST", g.URL("/v1/secrets"), `{"name": "s1", "value": "v"}`, bearer("alice")...); r.StatusCode != 201 {
		t.Fatalf("create a secret: %d %s", r.StatusCode, r.Body)
	}
	tests := []struct {
		name, path, user string
		status           int
		want             string
	}{
		{"document", "/v1/events/E1", "tester", 200, "private, no-cache"},
		{"list", "/v1/events", "tester", 200, "private, no-cache"},
		{"nested list", "/v1/events/E1/productions", "tester", 200, "private, no-cache"},
		{"owned document", "/v1/secrets/s1", "alice", 200, "private, no-cache"},
		{"owned list", "/v1/secrets", "alice", 200, "private, no-cache"},
		{"missing document", "/v1/events/nope", "tester", 404, "no-store"},
		{"another user's secret", "/v1/secrets/s1", "bob", 404, "no-store"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for i := range 2 {
				r := Do(t, c, "GET", g.URL(tt.path), "", bearer(tt.user)...)
				if r.StatusCode != tt.status {
					t.Fatalf("GET %s: %d, want %d: %s", tt.path, r.StatusCode, tt.status, r.Body)
				}
				if got := r.Header.Get("Cache-Control"); got != tt.want {
					t.Errorf("GET %s: Cache-Control %q, want %q", tt.path, got, tt.want)
				}
				cs := r.Header.Get("Cache-Status")
				if i == 1 && tt.status == 200 && !strings.Contains(cs, "fwd=") {
					t.Errorf("second GET %s: Cache-Status %q: answered without revalidating", tt.path, cs)
				}
				if strings.HasPrefix(tt.path, "/v1/secrets") && strings.Contains(cs, "stored") {
					t.Errorf("GET %s: Cache-Status %q: an owned document was stored by the gateway", tt.path, cs)
				}
			}
		})
	}

	// a write is seen at once, whoever reads
	etag := Do(t, c, "GET", g.URL("/v1/events/E1"), "", bearer("tester")...).Header.Get("ETag")
	if r := Do(t, c, "PUT", g.URL("/v1/events/E1"), `{"name": "E1", "repository": "r2"}`, append(bearer("tester"), "If-Match", etag)...); r.StatusCode != 200 {
		t.Fatalf("PUT: %d %s", r.StatusCode, r.Body)
	}
	if r := Do(t, c, "GET", g.URL("/v1/events/E1"), "", bearer("tester")...); r.JSON(t)["repository"] != "r2" {
		t.Errorf("after the PUT: %s (%s)", r.Body, r.Header.Get("Cache-Status"))
	}
}

// TestOpenAPINoVaryHost: /v1/openapi.json is one document for every Host
// (its server URL is relative), so it sends no `Vary: Host`, which kept a
// cache from sharing it across Host spellings, and it says how to cache it.
func TestOpenAPINoVaryHost(t *testing.T) {
	g := StartGateway(t, repoFile(t, "Caddyfile"), Options{})
	c := g.Client()
	var etags []string
	for _, host := range []string{"", "API.localhost", "api.localhost"} {
		var hdr []string
		if host != "" {
			hdr = []string{"Host", host}
		}
		r := Do(t, c, "GET", g.URL("/v1/openapi.json"), "", hdr...)
		if r.StatusCode != http.StatusOK {
			t.Fatalf("Host %q: %d %s", host, r.StatusCode, r.Body)
		}
		for _, v := range r.Header.Values("Vary") {
			for _, name := range strings.Split(v, ",") {
				if strings.EqualFold(strings.TrimSpace(name), "Host") {
					t.Errorf("Host %q: Vary %q", host, r.Header.Values("Vary"))
				}
			}
		}
		if cc := r.Header.Get("Cache-Control"); cc != "no-cache" {
			t.Errorf("Host %q: Cache-Control %q, want no-cache", host, cc)
		}
		var doc struct {
			Servers []struct {
				URL string `json:"url"`
			} `json:"servers"`
		}
		if err := json.Unmarshal(r.Body, &doc); err != nil || len(doc.Servers) != 1 || doc.Servers[0].URL != "/" {
			t.Errorf("Host %q: servers %+v (%v), want one, relative: /", host, doc.Servers, err)
		}
		etags = append(etags, r.Header.Get("ETag"))
	}
	if etags[0] == "" || etags[1] != etags[0] || etags[2] != etags[0] {
		t.Errorf("ETags %q: want one for every Host", etags)
	}
}

// TestStaleWriteCarriesCurrentETag: through the default Caddyfile, a
// PATCH, PUT or DELETE with a stale If-Match is a 412 problem that carries
// the document's current ETag (the README's api_etag section promises it),
// and changes nothing; retrying with that ETag succeeds.
func TestStaleWriteCarriesCurrentETag(t *testing.T) {
	g := StartGateway(t, repoFile(t, "Caddyfile"), Options{})
	c := g.Client()
	r := Do(t, c, "POST", g.URL("/v1/events"), `{"name": "E1", "meta": {"n": 0}}`, bearer("tester")...)
	if r.StatusCode != 201 {
		t.Fatalf("create: %d %s", r.StatusCode, r.Body)
	}
	first := r.Header.Get("ETag")
	r = Do(t, c, "PATCH", g.URL("/v1/events/E1"), `{"meta": {"n": 1}}`, append(bearer("tester"), "If-Match", first)...)
	if r.StatusCode != 200 {
		t.Fatalf("patch: %d %s", r.StatusCode, r.Body)
	}
	current := r.Header.Get("ETag")
	for _, m := range []struct{ method, body string }{
		{"PATCH", `{"meta": {"n": 2}}`},
		{"PUT", `{"name": "E1", "meta": {"n": 2}}`},
		{"DELETE", ""},
	} {
		r := Do(t, c, m.method, g.URL("/v1/events/E1"), m.body, append(bearer("tester"), "If-Match", first)...)
		AssertProblem(t, r, 412)
		if got := r.Header.Get("ETag"); got != current {
			t.Errorf("%s with a stale If-Match: 412 with ETag %q, want the current %q", m.method, got, current)
		}
	}
	r = Do(t, c, "GET", g.URL("/v1/events/E1"), "", bearer("tester")...)
	if r.StatusCode != 200 || r.Header.Get("ETag") != current || !strings.Contains(string(r.Body), `"n":1`) {
		t.Fatalf("after the refused writes: %d %s %s", r.StatusCode, r.Header.Get("ETag"), r.Body)
	}
	if r := Do(t, c, "PATCH", g.URL("/v1/events/E1"), `{"meta": {"n": 2}}`, append(bearer("tester"), "If-Match", current)...); r.StatusCode != 200 {
		t.Fatalf("retry with the 412's ETag: %d %s", r.StatusCode, r.Body)
	}
}
