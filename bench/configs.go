package main

import (
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"
)

// config is one end-to-end configuration: a row of the report.
type config struct {
	name   string
	url    string
	header string // sent by wrk on every request
	note   string
	conns  int    // wrk connections; 0 means -conns
	server server // whose CPU time and allocations per request the row measures
}

// The default-chain rows and their references (bare Caddy with the same
// access log and HSTS).
const (
	rowCaddyLogMiss = "caddy reverse_proxy, access log + HSTS"
	rowDefaultMiss  = "restgate, default chain, cache miss"
	rowCaddyLogHit  = "caddy respond, access log + HSTS"
	rowDefaultHit   = "restgate, default chain, cache hit"
	// bare Caddy again, setting the fields the default chain adds
	rowCaddyHdrMiss = "caddy reverse_proxy, access log + HSTS + the chain's fields"
	rowCaddyHdrHit  = "caddy respond, access log + HSTS + the chain's fields"
	// the Redis store row on a 3-primary Redis Cluster
	rowCluster = "restgate, cache miss, Redis Cluster store"
)

// endToEnd is every configuration, in the order the rounds run them and
// the report lists them. chainNote describes the default Caddyfile's chain.
func endToEnd(p ports, gw gateways, chainNote string) []config {
	at := func(port int, path string) string { return fmt.Sprintf("http://127.0.0.1:%d%s", port, path) }
	key := keyHeader
	return []config{
		{"backend (ceiling)", at(p.backend, "/doc"), "", "wrk → backend", 0, gw.backend},
		{rowCaddyLogMiss, at(p.caddyLog, "/doc"), key, "bare Caddy with the default Caddyfile's access log (to a file, api_redact) and HSTS, sent the same keyed request", 0, gw.bare},
		{rowCaddyHdrMiss, at(p.caddyHdr, "/doc"), key, "the same, also setting every field the default chain adds to the response and to the upstream request (and removing the key from it), with the chain's values, by `header` and `request_header`", 0, gw.bare},
		{rowDefaultMiss, at(p.def, "/doc"), key, chainNote + ", in front of reverse_proxy", 0, gw.def},
		{rowCaddyLogHit, at(p.caddyLog, "/respond"), key, "the same 1 KiB body from `respond`, with the same access log and HSTS", 0, gw.bare},
		{rowCaddyHdrHit, at(p.caddyHdr, "/respond"), key, "the same, also setting the fields the chain's cache hit carries", 0, gw.bare},
		{rowDefaultHit, at(p.def, "/cached"), key, "the same chain, answered from api_etag's cache", 0, gw.def},
		{"caddy reverse_proxy", at(p.caddy, "/doc"), "", "the baseline", 0, gw.bare},
		{"restgate, cache miss", at(p.miss, "/doc"), key, "errors, both limits, auth (10k keys), etag, proxy", 0, gw.rg},
		{"restgate, cache hit", at(p.hit, "/cached"), key, "the same chain, etag with cache", 0, gw.rg},
		{"nginx, miss", at(p.nginxMiss, "/doc"), key, "map on the key header, limit_req ×2, proxy_pass", 0, gw.nginx},
		{"nginx, hit", at(p.nginxHit, "/cached"), key, "the same, proxy_cache", 0, gw.nginx},
		{"caddy reverse_proxy, HTTPS", fmt.Sprintf("https://127.0.0.1:%d/doc", p.caddyTLS), "", "TLS 1.3, keep-alive", 0, gw.bare},
		{"restgate, cache miss, HTTPS", fmt.Sprintf("https://127.0.0.1:%d/doc", p.missTLS), key, "TLS 1.3, keep-alive", 0, gw.rg},
		// at saturation, latency is queueing (connections / throughput); one
		// connection shows what a request really waits for
		{"caddy reverse_proxy, 1 connection", at(p.caddy, "/doc"), "", "light load: latency without queueing", 1, gw.bare},
		{"restgate, cache miss, 1 connection", at(p.miss, "/doc"), key, "light load: latency without queueing", 1, gw.rg},
		{"caddy respond (ceiling inside Caddy)", at(p.respond, "/doc"), "", "the same 1 KiB body from `respond`: no proxy", 0, gw.bare},
		{"restgate, cache miss, Redis store", at(p.missRedis, "/doc"), key, "both limits `store redis` (paired: one script call for both), `api_etag { redis }`", 0, gw.rg},
		{"restgate, cache miss, Redis store, 1 connection", at(p.missRedis, "/doc"), key, "light load", 1, gw.rg},
		{rowCluster, at(p.missCluster, "/doc"), key, "the Redis store row on a 3-primary Redis Cluster (`redis { cluster … }`): both limits `store redis`, `api_etag { redis }`", 0, gw.cluster},
		{"restgate → resources on SQLite", at(p.resSQLite, "/v1/events/GW150914"), key, "the full chain in front of the in-process resources, GET of one document", 0, gw.rg},
		{"restgate → resources on PostgreSQL", at(p.resPG, "/v1/events/GW150914"), key, "the same on PostgreSQL (loopback)", 0, gw.rg},
	}
}

// ready seeds the document the resources rows read, then waits until
// every configuration answers.
func ready(configs []config, p ports, dir string) error {
	for _, port := range []int{p.resSQLite, p.resPG} {
		if err := seedEvent(fmt.Sprintf("http://127.0.0.1:%d/v1/events", port), benchKey); err != nil {
			return err
		}
	}
	for _, c := range configs {
		if err := waitReady(c, 60*time.Second); err != nil {
			return fmt.Errorf("%s: %v (logs in %s)", c.name, err, dir)
		}
	}
	return nil
}

// seedEvent creates the document the resources rows read, once the
// gateway answers.
func seedEvent(url, key string) error {
	deadline := time.Now().Add(60 * time.Second)
	for {
		req, _ := http.NewRequest("POST", url, strings.NewReader(`{"name": "GW150914", "meta": {"padding": "`+strings.Repeat("x", 900)+`"}}`))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("X-API-Key", key)
		last := ""
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusCreated || resp.StatusCode == http.StatusConflict {
				return nil
			}
			last = resp.Status
		} else {
			last = err.Error()
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("seeding %s: not created within 60 s: %s", url, last)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func waitReady(c config, timeout time.Duration) error {
	client := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, // the bench's own loopback servers
	}}
	deadline := time.Now().Add(timeout)
	var last string
	for time.Now().Before(deadline) {
		req, _ := http.NewRequest("GET", c.url, nil)
		if k, v, ok := strings.Cut(c.header, ": "); ok {
			req.Header.Set(k, v)
		}
		resp, err := client.Do(req)
		if err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return nil
			}
			last = resp.Status
		} else {
			last = err.Error()
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("not ready: %s", last)
}
