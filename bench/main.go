// Command bench measures what restgate costs per request, side by side with
// bare Caddy and nginx on the same machine in one run, and writes a
// Markdown report (BENCHMARKS.md):
//
//  1. Go microbenchmarks of every module's hot path, summarised by benchstat;
//  2. end to end over loopback with wrk, every configuration against the
//     same 1 KiB JSON backend, interleaved over several rounds: median
//     requests/s, p50 and p99 latency, and the ratio to bare Caddy;
//  3. the gateway's RSS after floods of distinct invalid API keys and of
//     distinct client IPs.
//
// Servers are pinned to CPU 0 and wrk to CPU 1 where the machine has two.
// All traffic stays on 127.0.0.1 and every run is bounded in time.
//
//	go run ./bench [-smoke] [-rounds 5] [-duration 10s] [-out BENCHMARKS.md]
package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/restgate/restgate/internal/chainbench"
	"github.com/restgate/restgate/internal/testpg"
	"github.com/restgate/restgate/internal/testredis"
)

type options struct {
	bin      string
	out      string
	rounds   int
	duration time.Duration
	conns    int
	attack   int
	micro    bool
	count    int
	smoke    bool
	quick    bool
	// caddyfile is the default Caddyfile whose chain the default-chain
	// rows run as shipped
	caddyfile string
}

func main() {
	var o options
	backendAddr := flag.String("serve-backend", "", "internal: serve the 1 KiB JSON backend on this address")
	attackURL := flag.String("attack-client", "", "internal: send -attack requests to this URL, each with a distinct -attack-mode value")
	attackMode := flag.String("attack-mode", "keys", "internal: keys (distinct X-API-Key) or ips (distinct X-Forwarded-For)")
	flag.StringVar(&o.bin, "bin", "bin/restgate", "the restgate binary")
	flag.StringVar(&o.out, "out", "BENCHMARKS.md", "where to write the report")
	flag.IntVar(&o.rounds, "rounds", 5, "interleaved rounds of every configuration")
	flag.DurationVar(&o.duration, "duration", 10*time.Second, "wrk duration per configuration and round")
	flag.IntVar(&o.conns, "conns", 64, "wrk connections")
	flag.IntVar(&o.attack, "attack", 1_000_000, "requests per memory attack")
	flag.BoolVar(&o.micro, "micro", true, "run the Go microbenchmarks")
	flag.IntVar(&o.count, "count", 5, "go test -count for the microbenchmarks")
	flag.BoolVar(&o.smoke, "smoke", false, "one short round of everything: proves the bench still works")
	flag.BoolVar(&o.quick, "quick", false, "3 rounds of 5 s, small attacks, the chain's Go benchmarks only (-count 3): about 8 minutes, for a developer's before/after")
	flag.StringVar(&o.caddyfile, "caddyfile", "Caddyfile", "the default Caddyfile, whose API site's chain the default-chain rows run as shipped")
	chainFrom := flag.String("chain-table", "", "print the per-handler table of BenchmarkChain from this raw microbenchmark output (bench/micro-baseline.txt) and exit")
	flag.Parse()
	if *chainFrom != "" {
		raw, err := os.ReadFile(*chainFrom)
		if err != nil {
			log.Fatal(err)
		}
		fmt.Print(chainTable(raw))
		return
	}
	if *backendAddr != "" {
		serveBackend(*backendAddr)
		return
	}
	if *attackURL != "" {
		if err := attackClient(*attackURL, *attackMode, o.attack, o.conns); err != nil {
			log.Fatal(err)
		}
		return
	}
	if o.smoke {
		// a few seconds in all: every configuration once (wrk's shortest
		// run), small attacks, no microbenchmarks (make test runs their
		// packages' tests already)
		o.rounds, o.duration, o.attack, o.count, o.micro = 1, time.Second, 2_000, 1, false
	}
	if o.quick {
		o.rounds, o.duration, o.attack, o.count = 3, 5*time.Second, 20_000, 3
	}
	log.SetFlags(0)
	log.SetPrefix("bench: ")
	if err := run(o); err != nil {
		log.Fatal(err)
	}
}

// doc is the backend's fixed 1 KiB JSON document.
var doc = chainbench.Doc

// serveBackend is the small JSON service every configuration proxies to:
// /doc has no caching headers; /cached may be cached for an hour.
func serveBackend(addr string) {
	mux := http.NewServeMux()
	mux.HandleFunc("/doc", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Write(doc)
	})
	mux.HandleFunc("/cached", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "max-age=3600")
		w.Write(doc)
	})
	srv := &http.Server{Addr: addr, Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	log.Fatal(srv.ListenAndServe())
}

// upstreamPool sizes Caddy's idle upstream connections like nginx's
// `keepalive 64` (Caddy's default is 32 per host, fewer than wrk's 64
// connections, which would make both Caddy rows measure connection churn).
const upstreamPool = "transport http {\n\t\t\tkeepalive_idle_conns_per_host 128\n\t\t}"

// config is one end-to-end configuration.
type config struct {
	name   string
	url    string
	header string // sent by wrk on every request
	note   string
	conns  int // wrk connections; 0 means -conns
	server int // the serving process group (set after the servers start)
}

type sample struct {
	rps      float64
	p50, p99 time.Duration
	requests int
	// CPU time per request, in µs, of the configuration's server (its
	// whole process group) and of the backend, over the same run
	serverCPU, backendCPU float64
	// heap allocations per request of the server's Go process (from its
	// admin /debug/vars), 0 where unknown
	allocs float64
}

func run(o options) error {
	for _, tool := range []string{"wrk", "nginx"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("%s is not installed (apt-get install wrk nginx-light): %v", tool, err)
		}
	}
	bin, err := filepath.Abs(o.bin)
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "restgate-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	ports, err := freePorts(25)
	if err != nil {
		return err
	}
	pBackend, pCaddy, pCaddyTLS, pMiss, pHit, pMissTLS, pNginxMiss, pNginxHit, pAdminCaddy, pAdminRG, pRespond, pMissRedis, pResSQLite, pResPG :=
		ports[0], ports[1], ports[2], ports[3], ports[4], ports[5], ports[6], ports[7], ports[8], ports[9], ports[10], ports[11], ports[12], ports[13]
	pDefault, pAdminDefault, pCaddyLog := ports[14], ports[15], ports[16]
	pMissCluster, pAdminCluster := ports[17], ports[18]
	pFeedA, pAdminFeedA, pFeedB, pAdminFeedB, pFeedOne, pAdminFeedOne := ports[19], ports[20], ports[21], ports[22], ports[23], ports[24]
	// the default Caddyfile's chain as shipped: limits that never refuse,
	// the keys below, the access log to a file
	shipped, err := chainbench.ReadShipped(o.caddyfile, map[string]string{
		"RESTGATE_RATE_PER_IP": "1000000000/1s", "RESTGATE_RATE_PER_USER": "1000000000/1s", "RESTGATE_DATA": dir,
	}, filepath.Join(dir, "access-restgate.log"))
	if err != nil {
		return err
	}
	bareLog := strings.ReplaceAll(shipped.Caddy, filepath.Join(dir, "access-restgate.log"), filepath.Join(dir, "access-caddy.log"))
	log.Printf("workdir %s", dir)

	// the Redis the redis-store rows share their buckets through
	rs, err := testredis.Start()
	if err != nil {
		return err
	}
	defer rs.Stop()
	rtt, err := redisRTT(rs)
	if err != nil {
		return err
	}
	// the Redis Cluster (3 primaries) of the Cluster row
	cluster, err := testredis.StartCluster()
	if err != nil {
		return fmt.Errorf("redis cluster: %w", err)
	}
	defer cluster.Stop()
	// the PostgreSQL the resources row on PostgreSQL uses
	pg, err := testpg.Start()
	if err != nil {
		return err
	}
	defer pg.Stop()
	pgURL, err := pg.NewDatabase("bench")
	if err != nil {
		return err
	}
	const keyCount = 10_000
	key := "rg_bench_key_0"

	self, err := os.Executable()
	if err != nil {
		return err
	}
	procs := []*exec.Cmd{}
	start := func(name string, args ...string) (*exec.Cmd, error) {
		cmd := pinned(ctx, 0, name, args...)
		// each server leads its own process group, so that stopping it
		// stops what it started (nginx's workers and cache manager)
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		logf, _ := os.Create(filepath.Join(dir, filepath.Base(name)+"-"+strconv.Itoa(len(procs))+".log"))
		cmd.Stdout, cmd.Stderr = logf, logf
		cmd.Env = append(os.Environ(), "HOME="+dir, "XDG_DATA_HOME="+dir, "XDG_CONFIG_HOME="+dir)
		if err := cmd.Start(); err != nil {
			return nil, fmt.Errorf("starting %s: %v", name, err)
		}
		procs = append(procs, cmd)
		log.Printf("process group %d: %s", cmd.Process.Pid, filepath.Base(name))
		return cmd, nil
	}
	defer func() {
		for _, p := range procs {
			stop(p)
		}
	}()

	backend, err := start(self, "-serve-backend", fmt.Sprintf("127.0.0.1:%d", pBackend))
	if err != nil {
		return err
	}
	// bare Caddy: the same binary, no restgate directive
	caddyfile := fmt.Sprintf(globalOptions("caddy-bare", "")+`
http://127.0.0.1:%d {
	reverse_proxy 127.0.0.1:%d {
		%s
	}
}
https://127.0.0.1:%d {
	tls internal
	reverse_proxy 127.0.0.1:%d {
		%s
	}
}
http://127.0.0.1:%d {
	header Content-Type application/json
	respond `+"`%s`"+` 200
}
http://127.0.0.1:%d {
%s
	handle /respond {
		header Content-Type application/json
		respond `+"`%[10]s`"+` 200
	}
	reverse_proxy 127.0.0.1:%[4]d {
		%[5]s
	}
}
`, pAdminCaddy, dir, pCaddy, pBackend, upstreamPool, pCaddyTLS, pBackend, upstreamPool, pRespond, doc, pCaddyLog, bareLog)
	if err := os.WriteFile(filepath.Join(dir, "Caddyfile.bare"), []byte(caddyfile), 0o600); err != nil {
		return err
	}
	bare, err := start(bin, "run", "--config", filepath.Join(dir, "Caddyfile.bare"), "--adapter", "caddyfile")
	if err != nil {
		return err
	}
	// restgate: the full chain, 10,000 keys, limits that never refuse
	var keys strings.Builder
	keys.WriteString("keys:\n")
	for i := 0; i < keyCount; i++ {
		sum := sha256.Sum256([]byte("rg_bench_key_" + strconv.Itoa(i)))
		fmt.Fprintf(&keys, "  - user: user%d\n    sha256: %s\n    scopes: [read, write]\n", i, hex.EncodeToString(sum[:]))
	}
	for _, name := range []string{"keys.yaml", "api-keys.yaml"} { // api-keys.yaml: the default Caddyfile's
		if err := os.WriteFile(filepath.Join(dir, name), []byte(keys.String()), 0o600); err != nil {
			return err
		}
	}
	chainTo := func(etag, store, terminal string) string {
		return fmt.Sprintf(`	api_errors
	api_rate_limit_ip {
		zone per-ip 1000000000/1s
		%[5]s
	}
	api_auth {
		keys_file %[1]s/keys.yaml
		no_env
	}
	api_rate_limit {
		zone per-user 1000000000/1s
		%[5]s
	}
	%[2]s
	%[3]s
`, dir, etag, terminal, "", store)
	}
	chain := func(etag, store string) string {
		return chainTo(etag, store, fmt.Sprintf("reverse_proxy 127.0.0.1:%d {\n\t\t%s\n\t}", pBackend, upstreamPool))
	}
	resources := func(database string) string {
		return chainTo("api_etag", "", fmt.Sprintf(`resources {
		database %s
		collection events {
			key name
			field name string
			field meta object
		}
	}`, database))
	}
	const redisStore = "store redis\n\t\ton_error deny"
	rgfile := fmt.Sprintf(globalOptions("caddy-rg", `
	servers {
		trusted_proxies static 127.0.0.1/32
		client_ip_headers X-Forwarded-For
	}
	redis {
		address %s
	}`)+`
http://127.0.0.1:%d {
%s}
http://127.0.0.1:%d {
%s}
https://127.0.0.1:%d {
	tls internal
%s}
http://127.0.0.1:%d {
%s}
http://127.0.0.1:%d {
%s}
http://127.0.0.1:%d {
%s}
`, pAdminRG, dir, rs.Addr, pMiss, chain("api_etag", ""), pHit, chain("api_etag {\n\t\tcache\n\t}", ""), pMissTLS, chain("api_etag", ""),
		pMissRedis, chain("api_etag {\n\t\tredis\n\t}", redisStore),
		pResSQLite, resources(filepath.Join(dir, "resources.db")), pResPG, resources(pgURL))
	if err := os.WriteFile(filepath.Join(dir, "Caddyfile.restgate"), []byte(rgfile), 0o600); err != nil {
		return err
	}
	rg, err := start(bin, "run", "--config", filepath.Join(dir, "Caddyfile.restgate"), "--adapter", "caddyfile")
	if err != nil {
		return err
	}
	// the Redis store row again on a Redis Cluster: one redis app a
	// process, so a process of its own
	clusterFile := fmt.Sprintf(globalOptions("caddy-cluster", `
	servers {
		trusted_proxies static 127.0.0.1/32
		client_ip_headers X-Forwarded-For
	}
	redis {
		cluster %s
	}`)+`
http://127.0.0.1:%d {
%s}
`, pAdminCluster, dir, strings.Join(cluster.Addrs(), " "), pMissCluster, chain("api_etag {\n\t\tredis\n\t}", redisStore))
	if err := os.WriteFile(filepath.Join(dir, "Caddyfile.cluster"), []byte(clusterFile), 0o600); err != nil {
		return err
	}
	rgCluster, err := start(bin, "run", "--config", filepath.Join(dir, "Caddyfile.cluster"), "--adapter", "caddyfile")
	if err != nil {
		return err
	}
	// restgate with the default Caddyfile's chain, in a process of its own
	// (no Redis app: `store auto` and `redis auto` are local, as shipped
	// without RESTGATE_REDIS); one site, so one access logger, as bare
	// Caddy's logged site
	defaultFile := fmt.Sprintf(globalOptions("caddy-default", "")+`
http://127.0.0.1:%d {
%s
	reverse_proxy 127.0.0.1:%d {
		%s
	}
}
`, pAdminDefault, dir, pDefault, shipped.Chain, pBackend, upstreamPool)
	if err := os.WriteFile(filepath.Join(dir, "Caddyfile.default"), []byte(defaultFile), 0o600); err != nil {
		return err
	}
	rgDefault, err := start(bin, "run", "--config", filepath.Join(dir, "Caddyfile.default"), "--adapter", "caddyfile")
	if err != nil {
		return err
	}
	// change feeds, measured after the rounds: latency on one gateway
	// (SQLite) and across two on one PostgreSQL database, each its own
	// process speaking HTTP/2 (h2c, so that idle streams share connections),
	// and the RSS of idle streams on the SQLite one. Started now, with the
	// others: a port picked free and left unused through the rounds can be
	// taken by one of their outgoing connections.
	feedsDB, err := pg.NewDatabase("feeds")
	if err != nil {
		return err
	}
	var feedGW [3]*exec.Cmd
	for i, p := range [][3]any{{pAdminFeedA, pFeedA, feedsDB}, {pAdminFeedB, pFeedB, feedsDB}, {pAdminFeedOne, pFeedOne, filepath.Join(dir, "feeds.db")}} {
		file := fmt.Sprintf(globalOptions(fmt.Sprintf("caddy-feed%d", i), `
	servers {
		protocols h1 h2c
	}`)+`
http://127.0.0.1:%d {
%s}
`, p[0], dir, p[1], chainTo("api_etag", "", fmt.Sprintf(`resources {
		database %s
		feed_max_streams 100000
		collection events {
			key name
			field name string
			field meta object
		}
	}`, p[2])))
		path := filepath.Join(dir, fmt.Sprintf("Caddyfile.feed%d", i))
		if err := os.WriteFile(path, []byte(file), 0o600); err != nil {
			return err
		}
		if feedGW[i], err = start(bin, "run", "--config", path, "--adapter", "caddyfile"); err != nil {
			return err
		}
		defer stop(feedGW[i])
	}
	// nginx: the closest equivalent
	nginxConf, err := writeNginx(dir, keyCount, pBackend, pNginxMiss, pNginxHit)
	if err != nil {
		return err
	}
	ngx, err := start("nginx", "-c", nginxConf, "-p", dir)
	if err != nil {
		return err
	}

	chainNote := "the default Caddyfile's API chain as shipped (" + strings.Join(shipped.Directives(), ", ") + "), read from " + o.caddyfile + ", keyed"
	configs := []config{
		{"backend (ceiling)", fmt.Sprintf("http://127.0.0.1:%d/doc", pBackend), "", "wrk → backend", 0, 0},
		{rowCaddyLogMiss, fmt.Sprintf("http://127.0.0.1:%d/doc", pCaddyLog), "", "bare Caddy with the default Caddyfile's access log (to a file, api_redact) and HSTS", 0, 0},
		{rowDefaultMiss, fmt.Sprintf("http://127.0.0.1:%d/doc", pDefault), "X-API-Key: " + key, chainNote + ", in front of reverse_proxy", 0, 0},
		{rowCaddyLogHit, fmt.Sprintf("http://127.0.0.1:%d/respond", pCaddyLog), "", "the same 1 KiB body from `respond`, with the same access log and HSTS", 0, 0},
		{rowDefaultHit, fmt.Sprintf("http://127.0.0.1:%d/cached", pDefault), "X-API-Key: " + key, "the same chain, answered from api_etag's cache", 0, 0},
		{"caddy reverse_proxy", fmt.Sprintf("http://127.0.0.1:%d/doc", pCaddy), "", "the baseline", 0, 0},
		{"restgate, cache miss", fmt.Sprintf("http://127.0.0.1:%d/doc", pMiss), "X-API-Key: " + key, "errors, both limits, auth (10k keys), etag, proxy", 0, 0},
		{"restgate, cache hit", fmt.Sprintf("http://127.0.0.1:%d/cached", pHit), "X-API-Key: " + key, "the same chain, etag with cache", 0, 0},
		{"nginx, miss", fmt.Sprintf("http://127.0.0.1:%d/doc", pNginxMiss), "X-API-Key: " + key, "map on the key header, limit_req ×2, proxy_pass", 0, 0},
		{"nginx, hit", fmt.Sprintf("http://127.0.0.1:%d/cached", pNginxHit), "X-API-Key: " + key, "the same, proxy_cache", 0, 0},
		{"caddy reverse_proxy, HTTPS", fmt.Sprintf("https://127.0.0.1:%d/doc", pCaddyTLS), "", "TLS 1.3, keep-alive", 0, 0},
		{"restgate, cache miss, HTTPS", fmt.Sprintf("https://127.0.0.1:%d/doc", pMissTLS), "X-API-Key: " + key, "TLS 1.3, keep-alive", 0, 0},
		// at saturation, latency is queueing (connections / throughput); one
		// connection shows what a request really waits for
		{"caddy reverse_proxy, 1 connection", fmt.Sprintf("http://127.0.0.1:%d/doc", pCaddy), "", "light load: latency without queueing", 1, 0},
		{"restgate, cache miss, 1 connection", fmt.Sprintf("http://127.0.0.1:%d/doc", pMiss), "X-API-Key: " + key, "light load: latency without queueing", 1, 0},
		{"caddy respond (ceiling inside Caddy)", fmt.Sprintf("http://127.0.0.1:%d/doc", pRespond), "", "the same 1 KiB body from `respond`: no proxy", 0, 0},
		{"restgate, cache miss, Redis store", fmt.Sprintf("http://127.0.0.1:%d/doc", pMissRedis), "X-API-Key: " + key, "both limits `store redis` (one script call each), `api_etag { redis }`", 0, 0},
		{"restgate, cache miss, Redis store, 1 connection", fmt.Sprintf("http://127.0.0.1:%d/doc", pMissRedis), "X-API-Key: " + key, "light load", 1, 0},
		{rowCluster, fmt.Sprintf("http://127.0.0.1:%d/doc", pMissCluster), "X-API-Key: " + key, "the Redis store row on a 3-primary Redis Cluster (`redis { cluster … }`): both limits `store redis`, `api_etag { redis }`", 0, 0},
		{"restgate → resources on SQLite", fmt.Sprintf("http://127.0.0.1:%d/v1/events/GW150914", pResSQLite), "X-API-Key: " + key, "the full chain in front of the in-process resources, GET of one document", 0, 0},
		{"restgate → resources on PostgreSQL", fmt.Sprintf("http://127.0.0.1:%d/v1/events/GW150914", pResPG), "X-API-Key: " + key, "the same on PostgreSQL (loopback)", 0, 0},
	}
	// each configuration's server, whose CPU time per request is measured
	admins := map[int]string{}
	for i, c := range configs {
		switch {
		case c.name == rowCluster:
			configs[i].server = rgCluster.Process.Pid
			admins[rgCluster.Process.Pid] = fmt.Sprintf("127.0.0.1:%d", pAdminCluster)
		case strings.HasPrefix(c.name, "restgate, default chain"):
			configs[i].server = rgDefault.Process.Pid
			admins[rgDefault.Process.Pid] = fmt.Sprintf("127.0.0.1:%d", pAdminDefault)
		case strings.HasPrefix(c.name, "backend"):
			configs[i].server = backend.Process.Pid
		case strings.HasPrefix(c.name, "caddy"):
			configs[i].server = bare.Process.Pid
			admins[bare.Process.Pid] = fmt.Sprintf("127.0.0.1:%d", pAdminCaddy)
		case strings.HasPrefix(c.name, "restgate"):
			configs[i].server = rg.Process.Pid
			admins[rg.Process.Pid] = fmt.Sprintf("127.0.0.1:%d", pAdminRG)
		case strings.HasPrefix(c.name, "nginx"):
			configs[i].server = ngx.Process.Pid
		}
	}
	for _, p := range []int{pResSQLite, pResPG} {
		if err := seedEvent(fmt.Sprintf("http://127.0.0.1:%d/v1/events", p), key); err != nil {
			return err
		}
	}
	for _, c := range configs {
		if err := waitReady(c, 60*time.Second); err != nil {
			return fmt.Errorf("%s: %v (logs in %s)", c.name, err, dir)
		}
	}
	log.Printf("all servers ready; %d rounds × %d configurations × %v", o.rounds, len(configs), o.duration)

	// warm up (fills connection pools and the caches), then interleave
	for _, c := range configs {
		if o.smoke {
			break
		}
		if _, err := runWrk(c, connsFor(c, o), min(o.duration, 2*time.Second)); err != nil {
			return fmt.Errorf("warm-up %s: %v", c.name, err)
		}
	}
	samples := make([][]sample, len(configs))
	for round := 0; round < o.rounds; round++ {
		for i, c := range configs {
			server0, backend0 := groupCPU(c.server), groupCPU(backend.Process.Pid)
			mallocs0, _ := mallocs(admins[c.server])
			s, err := runWrk(c, connsFor(c, o), o.duration)
			if err != nil {
				return fmt.Errorf("round %d, %s: %v", round+1, c.name, err)
			}
			if s.requests > 0 {
				s.serverCPU = float64(groupCPU(c.server)-server0) / float64(time.Microsecond) / float64(s.requests)
				s.backendCPU = float64(groupCPU(backend.Process.Pid)-backend0) / float64(time.Microsecond) / float64(s.requests)
				if m, err := mallocs(admins[c.server]); err == nil && mallocs0 > 0 {
					s.allocs = float64(m-mallocs0) / float64(s.requests)
				}
			}
			samples[i] = append(samples[i], s)
			log.Printf("round %d %-28s %9.0f req/s  p50 %-8v p99 %v", round+1, c.name, s.rps, s.p50, s.p99)
		}
	}

	// memory under attack
	attacks, err := runAttacks(o, rg.Process.Pid, fmt.Sprintf("http://127.0.0.1:%d/doc", pMiss), dir)
	if err != nil {
		return err
	}

	var h2c http.Protocols
	h2c.SetUnencryptedHTTP2(true)
	feedClient := &http.Client{Transport: &http.Transport{Protocols: &h2c}}
	feedWrites, feedIdle := 300, 10_000
	if o.smoke || o.quick {
		feedWrites, feedIdle = 20, 200
	}
	target := func(port int, c *http.Client) feedTarget {
		return feedTarget{URL: fmt.Sprintf("http://127.0.0.1:%d/v1/events", port), Client: c, Key: key}
	}
	for _, p := range []int{pFeedA, pFeedB, pFeedOne} {
		if err := seedEvent(fmt.Sprintf("http://127.0.0.1:%d/v1/events", p), key); err != nil {
			return err
		}
	}
	feeds, err := feedsSection(target(pFeedOne, feedClient), [2]feedTarget{target(pFeedA, feedClient), target(pFeedB, feedClient)},
		feedGW[2].Process.Pid, feedWrites, feedIdle)
	if err != nil {
		return fmt.Errorf("change feeds: %w", err)
	}

	var micro, perHandler, handlers string
	if o.micro {
		var raw []byte
		if micro, raw, err = runMicro(o); err != nil {
			return err
		}
		perHandler, handlers = chainTable(raw), handlerTable(raw)
	}
	report := render(o, configs, samples, attacks, micro, perHandler, handlers, chainNote, keyCount, rtt) + "\n" + feeds
	if err := os.WriteFile(o.out, []byte(report), 0o644); err != nil {
		return err
	}
	log.Printf("wrote %s", o.out)
	return nil
}

func connsFor(c config, o options) int {
	if c.conns > 0 {
		return c.conns
	}
	return o.conns
}

// seedEvent creates the document the resources rows read, once the
// gateway answers.
func seedEvent(url, key string) error {
	deadline := time.Now().Add(60 * time.Second)
	for {
		req, _ := http.NewRequest("POST", url, strings.NewReader(`{"name": "GW150914", "meta": {"padding": "`+strings.Repeat("x", 900)+`"}}`))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("X-API-Key", key)
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusCreated || resp.StatusCode == http.StatusConflict {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("seeding %s: %v %v", url, err, resp)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// stop ends a server and everything it started: SIGQUIT first (nginx's
// graceful stop; Caddy and Go programs exit on it too), then SIGKILL to
// the whole process group if it lingers.
func stop(cmd *exec.Cmd) {
	if cmd.Process == nil {
		return
	}
	pgid := cmd.Process.Pid
	_ = syscall.Kill(-pgid, syscall.SIGQUIT)
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		_ = syscall.Kill(-pgid, syscall.SIGKILL)
		<-done
	}
	// the group's other members (nginx workers) may outlive the leader
	for deadline := time.Now().Add(10 * time.Second); syscall.Kill(-pgid, 0) == nil && time.Now().Before(deadline); {
		time.Sleep(20 * time.Millisecond)
	}
	_ = syscall.Kill(-pgid, syscall.SIGKILL)
}

// redisRTT is the median of 200 PINGs to the bench's Redis: what one
// round trip costs on this machine.
func redisRTT(rs *testredis.Server) (time.Duration, error) {
	c := rs.Client()
	defer c.Close()
	var ds []float64
	for range 200 {
		t := time.Now()
		if err := c.Ping(context.Background()).Err(); err != nil {
			return 0, err
		}
		ds = append(ds, float64(time.Since(t)))
	}
	return time.Duration(median(ds)), nil
}

// pinned runs a command on one CPU when the machine has two or more and
// taskset is there; otherwise unpinned.
func pinned(ctx context.Context, cpu int, name string, args ...string) *exec.Cmd {
	if runtime.NumCPU() >= 2 {
		if ts, err := exec.LookPath("taskset"); err == nil {
			return exec.CommandContext(ctx, ts, append([]string{"-c", strconv.Itoa(cpu), name}, args...)...)
		}
	}
	return exec.CommandContext(ctx, name, args...)
}

func freePorts(n int) ([]int, error) {
	var ports []int
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	for i := 0; i < n; i++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
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

var (
	reRPS     = regexp.MustCompile(`Requests/sec:\s+([0-9.]+)`)
	reCount   = regexp.MustCompile(`(\d+) requests in`)
	reLatency = regexp.MustCompile(`(?m)^\s+(50|99)%\s+([0-9.]+)(us|ms|s)\s*$`)
	reNon2xx  = regexp.MustCompile(`Non-2xx or 3xx responses: (\d+)`)
	reErrors  = regexp.MustCompile(`Socket errors: .*`)
)

// runWrk runs wrk on CPU 1 and parses its report. Any non-2xx response
// makes the sample invalid: a gateway that refuses fast is not fast.
func runWrk(c config, conns int, d time.Duration) (sample, error) {
	args := []string{"-t1", "-c" + strconv.Itoa(conns), "-d" + strconv.Itoa(max(1, int(d.Round(time.Second).Seconds()))) + "s", "--latency", "--timeout", "5s"}
	if c.header != "" {
		args = append(args, "-H", c.header)
	}
	args = append(args, c.url)
	ctx, cancel := context.WithTimeout(context.Background(), d+30*time.Second)
	defer cancel()
	out, err := pinned(ctx, 1, "wrk", args...).CombinedOutput()
	if err != nil {
		return sample{}, fmt.Errorf("wrk: %v\n%s", err, out)
	}
	s := string(out)
	if m := reNon2xx.FindStringSubmatch(s); m != nil {
		return sample{}, fmt.Errorf("%s non-2xx responses:\n%s", m[1], s)
	}
	if m := reErrors.FindString(s); m != "" && !strings.Contains(m, "connect 0, read 0, write 0, timeout 0") {
		return sample{}, fmt.Errorf("wrk %s\n%s", m, s)
	}
	m := reRPS.FindStringSubmatch(s)
	if m == nil {
		return sample{}, fmt.Errorf("no Requests/sec in:\n%s", s)
	}
	var res sample
	res.rps, _ = strconv.ParseFloat(m[1], 64)
	if m := reCount.FindStringSubmatch(s); m != nil {
		res.requests, _ = strconv.Atoi(m[1])
	}
	for _, l := range reLatency.FindAllStringSubmatch(s, -1) {
		v, _ := strconv.ParseFloat(l[2], 64)
		unit := map[string]time.Duration{"us": time.Microsecond, "ms": time.Millisecond, "s": time.Second}[l[3]]
		d := time.Duration(v * float64(unit))
		if l[1] == "50" {
			res.p50 = d
		} else {
			res.p99 = d
		}
	}
	return res, nil
}

// groupCPU is the CPU time (user and system) the processes of a process
// group have used so far, from /proc (in clock ticks of 10 ms: Linux's
// USER_HZ is 100). A process that exited meanwhile is not counted, which
// no server does during a run.
func groupCPU(pgid int) time.Duration {
	if pgid == 0 {
		return 0
	}
	entries, _ := os.ReadDir("/proc")
	var ticks int64
	for _, e := range entries {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		// after the command in parentheses: state ppid pgrp … utime(12th) stime(13th)
		i := strings.LastIndex(string(b), ") ")
		if i < 0 {
			continue
		}
		f := strings.Fields(string(b)[i+2:])
		if len(f) < 13 || f[2] != strconv.Itoa(pgid) {
			continue
		}
		u, _ := strconv.ParseInt(f[11], 10, 64)
		st, _ := strconv.ParseInt(f[12], 10, 64)
		ticks += u + st
	}
	return time.Duration(ticks) * 10 * time.Millisecond
}

// attack is one memory measurement.
type attack struct {
	name             string
	requests         int
	rssBefore, after int64
}

// runAttacks floods the gateway with distinct invalid keys, then with
// distinct client IPs (X-Forwarded-For from a trusted proxy), from a client
// pinned to CPU 1, and reads the gateway's RSS before and after each.
func runAttacks(o options, pid int, url, dir string) ([]attack, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	var out []attack
	for _, a := range []struct{ name, mode string }{
		{"distinct invalid API keys", "keys"},
		{"distinct client IPs (X-Forwarded-For, trusted proxy)", "ips"},
	} {
		before := rss(pid)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
		res, err := pinned(ctx, 1, self, "-attack-client", url, "-attack-mode", a.mode,
			"-attack", strconv.Itoa(o.attack), "-conns", strconv.Itoa(o.conns)).CombinedOutput()
		cancel()
		if err != nil {
			return nil, fmt.Errorf("attack %q: %v\n%s", a.name, err, res)
		}
		if !o.smoke {
			time.Sleep(time.Second) // let the last responses settle before reading RSS
		}
		after := rss(pid)
		out = append(out, attack{name: a.name, requests: o.attack, rssBefore: before, after: after})
		log.Printf("attack %-55s %d requests, RSS %d → %d MiB", a.name, o.attack, before>>20, after>>20)
	}
	return out, nil
}

// attackClient sends n requests, each with a distinct invalid API key or a
// distinct client address, over conns keep-alive connections. Every
// response must be a 401 (the invalid key, or no key): anything else means
// the attack did not exercise what it claims to.
func attackClient(url, mode string, n, conns int) error {
	tr := &http.Transport{MaxIdleConnsPerHost: conns, MaxConnsPerHost: conns}
	client := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	var next atomic.Int64
	errs := make(chan error, conns)
	var wg sync.WaitGroup
	for c := 0; c < conns; c++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1)
				if i > int64(n) {
					return
				}
				req, _ := http.NewRequest("GET", url, nil)
				if mode == "keys" {
					req.Header.Set("X-API-Key", "rg_invalid_"+strconv.FormatInt(i, 10))
				} else {
					req.Header.Set("X-Forwarded-For", fmt.Sprintf("10.%d.%d.%d", i>>16&255, i>>8&255, i&255))
				}
				resp, err := client.Do(req)
				if err != nil {
					errs <- err
					return
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusUnauthorized {
					errs <- fmt.Errorf("request %d: status %d, want 401", i, resp.StatusCode)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	return <-errs
}

// rss reads a process's resident set size, in bytes.
func rss(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "VmRSS:") {
			f := strings.Fields(line)
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			return kb << 10
		}
	}
	return 0
}

// runMicro runs the Go microbenchmarks and summarises them with benchstat.
func runMicro(o options) (stat string, raw []byte, err error) {
	args := []string{"test", "-run", "^$", "-bench", ".", "-benchmem", "-count", strconv.Itoa(o.count)}
	if o.smoke {
		args = append(args, "-benchtime", "100x")
	}
	if o.quick {
		args = append(args, "./internal/chainbench")
	} else {
		args = append(args, "./modules/...", "./backends/...", "./internal/...")
	}
	log.Printf("go %s", strings.Join(args, " "))
	// benchmark lines from stdout only: a module's log line on stderr
	// would otherwise split a result line in two
	var stderr bytes.Buffer
	cmd := exec.Command("go", args...)
	cmd.Stderr = &stderr
	raw, err = cmd.Output()
	if err != nil {
		return "", nil, fmt.Errorf("microbenchmarks: %v\n%s\n%s", err, raw, stderr.Bytes())
	}
	raw = joinSplitResults(raw)
	f, err := os.CreateTemp("", "micro-*.txt")
	if err != nil {
		return "", nil, err
	}
	defer os.Remove(f.Name())
	f.Write(raw)
	f.Close()
	// against the committed numbers when there are some, so a regression
	// of a hot path shows as a delta; then this run becomes the baseline
	args = []string{"tool", "-modfile=tools/go.mod", "benchstat"}
	if _, err := os.Stat(microBaseline); err == nil && !o.smoke && !o.quick {
		args = append(args, "committed="+microBaseline, "now="+f.Name())
	} else {
		args = append(args, f.Name())
	}
	out, err := exec.Command("go", args...).CombinedOutput()
	if err != nil {
		return "", nil, fmt.Errorf("benchstat: %v\n%s", err, out)
	}
	if !o.smoke && !o.quick {
		if err := os.WriteFile(microBaseline, raw, 0o644); err != nil {
			return "", nil, err
		}
	}
	return string(out), raw, nil
}

// chainTable summarises BenchmarkChain (internal/chainbench): one Caddy
// server in process, the upstream answered from memory, each row adding one
// handler of the default chain. Medians of the -count runs.
func chainTable(raw []byte) string {
	type stats struct{ ns, bytes, allocs []float64 }
	rows := map[string]*stats{}
	re := regexp.MustCompile(`^BenchmarkChain/(\w+)(?:-\d+)?\s+\d+\s+([0-9.]+) ns/op\s+([0-9.]+) B/op\s+([0-9.]+) allocs/op`)
	for _, line := range strings.Split(string(raw), "\n") {
		m := re.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		st := rows[m[1]]
		if st == nil {
			st = new(stats)
			rows[m[1]] = st
		}
		ns, _ := strconv.ParseFloat(m[2], 64)
		by, _ := strconv.ParseFloat(m[3], 64)
		al, _ := strconv.ParseFloat(m[4], 64)
		st.ns, st.bytes, st.allocs = append(st.ns, ns), append(st.bytes, by), append(st.allocs, al)
	}
	order := []struct{ name, what string }{
		{"bare", "`reverse_proxy` alone"},
		{"errors", "+ `api_errors`"},
		{"ip_limit", "+ `api_rate_limit_ip`"},
		{"auth", "+ `api_auth` (10,000 keys)"},
		{"user_limit", "+ `api_rate_limit`"},
		{"full", "+ `api_etag`: the default chain, cache miss"},
		{"cache_hit", "the same chain, `api_etag { cache }`, a hit"},
		{"respond", "Caddy's `respond` of the same 1 KiB"},
	}
	var b strings.Builder
	b.WriteString("`BenchmarkChain` (internal/chainbench): one Caddy server in process with a site per row, the upstream answered from memory, `ServeHTTP` called directly: what each handler adds in CPU and allocations, without the kernel's and the backend's share. Medians of the runs; on these shared vCPUs a few hundred ns/op is noise, the allocation counts are exact.\n\n| site | ns/op | added | B/op | allocs/op | added |\n|---|---:|---:|---:|---:|---:|\n")
	var prev *stats
	for _, o := range order {
		st := rows[o.name]
		if st == nil {
			return ""
		}
		added, addedAllocs := "", ""
		switch {
		case o.name == "cache_hit":
			prev = nil
		case o.name == "respond":
			if hit := rows["cache_hit"]; hit != nil {
				added = fmt.Sprintf("hit − this: %+.0f", median(hit.ns)-median(st.ns))
				addedAllocs = fmt.Sprintf("hit − this: %+.0f", median(hit.allocs)-median(st.allocs))
			}
		case prev != nil:
			added = fmt.Sprintf("%+.0f", median(st.ns)-median(prev.ns))
			addedAllocs = fmt.Sprintf("%+.0f", median(st.allocs)-median(prev.allocs))
		}
		fmt.Fprintf(&b, "| %s | %.0f | %s | %.0f | %.0f | %s |\n", o.what, median(st.ns), added, median(st.bytes), median(st.allocs), addedAllocs)
		if o.name != "cache_hit" {
			prev = st
		}
	}
	if bare, full := rows["bare"], rows["full"]; bare != nil && full != nil {
		fmt.Fprintf(&b, "\nThe default chain adds %.1f µs and %.0f allocations to Caddy's %.1f µs per proxied request here (%.0f%%); the end-to-end rows add the kernel's and the backend's work to both.\n",
			(median(full.ns)-median(bare.ns))/1000, median(full.allocs)-median(bare.allocs), median(bare.ns)/1000, 100*(median(full.ns)-median(bare.ns))/median(bare.ns))
	}
	return b.String()
}

// joinSplitResults mends benchmark result lines that a package's own
// output on stdout (a debug log line of a module under test) split between
// the name and the numbers, and drops such lines: benchstat reads only
// whole result lines.
func joinSplitResults(raw []byte) []byte {
	var out bytes.Buffer
	pending := ""
	for _, line := range strings.Split(string(raw), "\n") {
		switch {
		case strings.HasPrefix(line, "Benchmark") && !strings.Contains(line, "ns/op"):
			pending = strings.Fields(line)[0] // the name; a log line may follow it
		case pending != "" && reResultTail.MatchString(line):
			out.WriteString(pending + "\t" + strings.TrimLeft(line, " \t") + "\n")
			pending = ""
		case strings.HasPrefix(line, "Benchmark"), strings.HasPrefix(line, "goos:"), strings.HasPrefix(line, "goarch:"),
			strings.HasPrefix(line, "pkg:"), strings.HasPrefix(line, "cpu:"), strings.HasPrefix(line, "PASS"), strings.HasPrefix(line, "ok "):
			out.WriteString(line + "\n")
		}
	}
	return out.Bytes()
}

// reResultTail is the numbers of a result line: iterations, then ns/op.
var reResultTail = regexp.MustCompile(`^\s*\d+\s+[0-9.]+ ns/op`)

// microBaseline holds the raw microbenchmark output of the last full
// `make bench`, committed with BENCHMARKS.md: the next run compares with it.
const microBaseline = "bench/micro-baseline.txt"

func median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

func render(o options, configs []config, samples [][]sample, attacks []attack, micro, chain, handlers, chainNote string, keyCount int, redisRTT time.Duration) string {
	var b strings.Builder
	host, _ := os.Hostname()
	cpu := "unknown CPU"
	if info, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		if m := regexp.MustCompile(`model name\s*:\s*(.*)`).FindSubmatch(info); m != nil {
			cpu = string(m[1])
		}
	}
	kernel, _ := exec.Command("uname", "-r").Output()
	wrkVer, _ := exec.Command("wrk", "-v").CombinedOutput()
	nginxVer, _ := exec.Command("nginx", "-v").CombinedOutput()
	fmt.Fprintf(&b, "# restgate benchmarks\n\n")
	if o.smoke {
		fmt.Fprintf(&b, "**Smoke run** (one short round): these numbers prove the bench works, nothing more.\n\n")
	}
	fmt.Fprintf(&b, "- Date: %s\n- Machine: %s, %d CPUs (%s), Linux %s, %s\n- wrk: %s\n- nginx: %s\n",
		time.Now().UTC().Format("2006-01-02 15:04 MST"), host, runtime.NumCPU(), cpu, strings.TrimSpace(string(kernel)),
		runtime.Version(), firstLine(wrkVer), strings.TrimSpace(strings.TrimPrefix(firstLine(nginxVer), "nginx version: ")))
	fmt.Fprintf(&b, "- Command: `go run ./bench -rounds %d -duration %v -conns %d -attack %d` (`make bench`)\n", o.rounds, o.duration, o.conns, o.attack)
	fmt.Fprintf(&b, "- Load: `wrk -t1 -c%d -d%v --latency [-H 'X-API-Key: …'] URL`, pinned to CPU 1 (`taskset -c 1`); every server pinned to CPU 0. Configurations run in turn, A/B/C/…, for %d rounds after a warm-up; a sample with any non-2xx response is an error.\n", o.conns, o.duration, o.rounds)
	fmt.Fprintf(&b, "- Both Caddy configurations keep up to 128 idle upstream connections (`keepalive_idle_conns_per_host 128`), as nginx keeps 64 (`keepalive 64`); Caddy's default of 32 is below wrk's 64 connections.\n- Backend: a Go net/http server answering a fixed 1 KiB JSON document (`/doc`; `/cached` adds `Cache-Control: max-age=3600`).\n")
	fmt.Fprintf(&b, "- restgate's default chain: read from the default Caddyfile (see the next section). restgate's reduced chain (the rows after it): `api_errors`, `api_rate_limit_ip` and `api_rate_limit` (limits that never refuse), `api_auth` with %d keys, `api_etag` (with `cache` for the hit rows), `reverse_proxy`; access logs off in those rows.\n\n", keyCount)

	row := func(name string) []sample {
		for i, c := range configs {
			if c.name == name {
				return samples[i]
			}
		}
		panic("no row " + name)
	}
	renderDefaultChain(&b, o, row, chainNote)
	base := median(rpsOf(row("caddy reverse_proxy")))
	baseP99 := median(p99Of(row("caddy reverse_proxy")))
	fmt.Fprintf(&b, "## End to end\n\nAt %d connections unless the row says otherwise.\n\n| configuration | median req/s | spread (min–max) | p50 | p99 | vs caddy proxy |\n|---|---:|---:|---:|---:|---:|\n", o.conns)
	for i, c := range configs {
		r := rpsOf(samples[i])
		fmt.Fprintf(&b, "| %s | %.0f | %.0f–%.0f | %v | %v | %.2f |\n", c.name, median(r), slices.Min(r), slices.Max(r),
			time.Duration(median(p50Of(samples[i]))).Round(time.Microsecond), time.Duration(median(p99Of(samples[i]))).Round(time.Microsecond), median(r)/base)
	}
	fmt.Fprintf(&b, "\nWhat each row runs: ")
	for i, c := range configs {
		if i > 0 {
			b.WriteString("; ")
		}
		fmt.Fprintf(&b, "*%s*: %s", c.name, c.note)
	}
	b.WriteString(".\n\n")

	// CPU per request: what each server spends, in the same runs
	fmt.Fprintf(&b, "## CPU per request\n\nCPU time (user + system) of the configuration's server process group and of the backend over each run, divided by the requests wrk completed; medians of the rounds. Servers and the backend share CPU 0, so throughput follows their sum. This machine's speed drifts between runs (the backend's own cost per request moves with it), so compare rows of one round or the ratios below.\n\n| configuration | server µs/request | backend µs/request | server + backend | server + backend, added to |\n|---|---:|---:|---:|---:|\n")
	// what each restgate row is measured against
	counterpart := map[string]string{
		rowDefaultMiss:                                    rowCaddyLogMiss,
		rowDefaultHit:                                     rowCaddyLogHit,
		"restgate, cache miss":                            "caddy reverse_proxy",
		"restgate, cache hit":                             "caddy respond (ceiling inside Caddy)",
		"restgate, cache miss, HTTPS":                     "caddy reverse_proxy, HTTPS",
		"restgate, cache miss, 1 connection":              "caddy reverse_proxy, 1 connection",
		"restgate, cache miss, Redis store":               "restgate, cache miss",
		"restgate, cache miss, Redis store, 1 connection": "restgate, cache miss, 1 connection",
		rowCluster:                                        "restgate, cache miss, Redis store",
	}
	total := func(s []sample) float64 { return median(cpuOf(s, false)) + median(cpuOf(s, true)) }
	for i, c := range configs {
		srv, be := median(cpuOf(samples[i], false)), median(cpuOf(samples[i], true))
		if strings.HasPrefix(c.name, "backend") {
			fmt.Fprintf(&b, "| %s | – | %.1f | %.1f | |\n", c.name, be, be)
			continue
		}
		added := ""
		if base, ok := counterpart[c.name]; ok {
			added = fmt.Sprintf("%+.1f µs (%s)", srv+be-total(row(base)), base)
		}
		fmt.Fprintf(&b, "| %s | %.1f | %.1f | %.1f | %s |\n", c.name, srv, be, srv+be, added)
	}
	b.WriteString("\n")

	rps := func(name string) float64 { return median(rpsOf(row(name))) }
	// paired: the ratio within each round (the two runs are 10 s apart, so
	// a drift of the machine's speed between rounds cancels), then the
	// median over rounds
	paired := func(num, den string) (mid, lo, hi float64) {
		a, d := row(num), row(den)
		var rs []float64
		for k := range min(len(a), len(d)) {
			rs = append(rs, a[k].rps/d[k].rps)
		}
		return median(rs), slices.Min(rs), slices.Max(rs)
	}
	p50 := func(name string) time.Duration { return time.Duration(median(p50Of(row(name)))) }
	miss := rps("restgate, cache miss") / base
	missTLS := rps("restgate, cache miss, HTTPS") / rps("caddy reverse_proxy, HTTPS")
	hit := rps("restgate, cache hit") / rps("caddy respond (ceiling inside Caddy)")
	redisRatio := rps("restgate, cache miss, Redis store") / rps("restgate, cache miss")
	addedP50 := p50("restgate, cache miss, 1 connection") - p50("caddy reverse_proxy, 1 connection")
	addedP50Redis := p50("restgate, cache miss, Redis store, 1 connection") - p50("restgate, cache miss, 1 connection")
	addedP99 := time.Duration(median(p99Of(row("restgate, cache miss, 1 connection"))) - median(p99Of(row("caddy reverse_proxy, 1 connection"))))
	addedP99Saturated := time.Duration(median(p99Of(row("restgate, cache miss"))) - baseP99)
	check := func(ok bool) string {
		if ok {
			return "met"
		}
		return "**missed**"
	}
	// a throughput target is met when both estimates reach it: the ratio of
	// the medians, and the median of the per-round ratios
	ratioTarget := func(label string, ofMedians float64, num, den string, target float64) {
		mid, lo, hi := paired(num, den)
		fmt.Fprintf(&b, "| %s | %.2f | %.2f (%.2f–%.2f) | %s |\n", label, ofMedians, mid, lo, hi, check(ofMedians >= target && mid >= target))
	}
	fmt.Fprintf(&b, "## Targets\n\nThroughput ratios twice: of the medians of all rounds, and the median (min–max) of the ratios within each round, where the two runs are seconds apart. A target is met when both reach it.\n\n| target | ratio of medians | per-round ratio | |\n|---|---:|---:|---|\n")
	ratioTarget("full chain, cache miss / caddy proxy ≥ 0.95 req/s", miss, "restgate, cache miss", "caddy reverse_proxy", 0.95)
	ratioTarget("the same over HTTPS ≥ 0.95", missTLS, "restgate, cache miss, HTTPS", "caddy reverse_proxy, HTTPS", 0.95)
	ratioTarget("cache hit / caddy `respond` (the ceiling inside Caddy) ≥ 0.8", hit, "restgate, cache hit", "caddy respond (ceiling inside Caddy)", 0.8)
	ratioTarget("Redis store / local store ≥ 0.90 req/s", redisRatio, "restgate, cache miss, Redis store", "restgate, cache miss", 0.90)
	fmt.Fprintf(&b, "\n| other measures | measured | |\n|---|---:|---|\n")
	fmt.Fprintf(&b, "| full chain, cache miss: added p50 ≤ 25 µs (1 connection) | %v | %s |\n", addedP50.Round(time.Microsecond), check(addedP50 <= 25*time.Microsecond))
	fmt.Fprintf(&b, "| full chain, cache miss: added p99 (1 connection) | %v | |\n", addedP99.Round(time.Microsecond))
	fmt.Fprintf(&b, "| (added p99 at %d connections, where it is queueing: connections ÷ throughput) | %v | |\n", o.conns, addedP99Saturated.Round(time.Microsecond))
	fmt.Fprintf(&b, "| cache hit / caddy proxy | %.2f | |\n", rps("restgate, cache hit")/base)
	fmt.Fprintf(&b, "| resources on PostgreSQL / on SQLite, full chain, GET | %.2f | |\n", rps("restgate → resources on PostgreSQL")/rps("restgate → resources on SQLite"))
	fmt.Fprintf(&b, "| Redis store: added p50 at 1 connection ≈ one Redis round trip (PING p50 %v) | %v | |\n", redisRTT.Round(time.Microsecond), addedP50Redis.Round(time.Microsecond))
	fmt.Fprintf(&b, "| Redis Cluster store (3 primaries) / one Redis server, req/s | %.2f | |\n", rps(rowCluster)/rps("restgate, cache miss, Redis store"))
	const perKey = 256 // bytes a remembered key may cost, from the Go benchmark of 1M keys
	bound := int64(100_000*perKey) + 64<<20
	for _, a := range attacks {
		growth := a.after - a.rssBefore
		fmt.Fprintf(&b, "| RSS growth under %s ≤ max_keys × %d B + 64 MiB (%d MiB) | %d MiB | %s |\n", a.name, perKey, bound>>20, growth>>20, check(growth <= bound))
	}
	fmt.Fprintf(&b, "\n## Memory under attack\n\n| attack | requests | RSS before | RSS after |\n|---|---:|---:|---:|\n")
	for _, a := range attacks {
		fmt.Fprintf(&b, "| %s | %d | %d MiB | %d MiB |\n", a.name, a.requests, a.rssBefore>>20, a.after>>20)
	}
	b.WriteString("\nThe per-IP zone keeps at most `max_keys` (100,000) buckets; invalid keys are hashed and refused without being remembered.\n")
	if o.smoke {
		b.WriteString("\n## Go microbenchmarks\n\nNot run in a smoke run.\n")
	}
	if handlers != "" {
		b.WriteString("\n## Each handler alone, and the default chain, in process\n\n" + handlers)
	}
	if chain != "" {
		b.WriteString("\n## The chain in process, handler by handler\n\n" + chain)
		b.WriteString("\nWhat these numbers add up to, and what of the distance to the targets cannot be removed from restgate's side: [README, Benchmarks](README.md#benchmarks).\n")
	}
	if micro != "" {
		fmt.Fprintf(&b, "\n## Go microbenchmarks\n\n`go test -run '^$' -bench . -benchmem -count %d ./modules/... ./backends/... ./internal/...`, summarised by `benchstat` (pinned in tools/go.mod) against the previous full run's raw numbers, committed as `bench/micro-baseline.txt` (this run's become the next baseline):\n\n```\n%s```\n", o.count, micro)
	}
	return b.String()
}

// cpuOf is the server's (or, with backend, the backend's) CPU µs per
// request of each sample.
func cpuOf(s []sample, backend bool) []float64 {
	out := make([]float64, len(s))
	for i, x := range s {
		out[i] = x.serverCPU
		if backend {
			out[i] = x.backendCPU
		}
	}
	return out
}

func rpsOf(s []sample) []float64 {
	out := make([]float64, len(s))
	for i, x := range s {
		out[i] = x.rps
	}
	return out
}

func p50Of(s []sample) []float64 {
	out := make([]float64, len(s))
	for i, x := range s {
		out[i] = float64(x.p50)
	}
	return out
}

func p99Of(s []sample) []float64 {
	out := make([]float64, len(s))
	for i, x := range s {
		out[i] = float64(x.p99)
	}
	return out
}

func firstLine(b []byte) string {
	s, _, _ := strings.Cut(strings.TrimSpace(string(b)), "\n")
	return s
}

// The default-chain rows and their references (bare Caddy with the same
// access log and HSTS).
const (
	rowCaddyLogMiss = "caddy reverse_proxy, access log + HSTS"
	rowDefaultMiss  = "restgate, default chain, cache miss"
	rowCaddyLogHit  = "caddy respond, access log + HSTS"
	rowDefaultHit   = "restgate, default chain, cache hit"
	// the Redis store row on a 3-primary Redis Cluster
	rowCluster = "restgate, cache miss, Redis Cluster store"
)

// mallocs reads the cumulative count of heap allocations of the Caddy
// process whose admin API listens on admin (its expvar /debug/vars).
func mallocs(admin string) (uint64, error) {
	if admin == "" {
		return 0, fmt.Errorf("no admin address")
	}
	client := http.Client{Timeout: 5 * time.Second}
	resp, err := client.Get("http://" + admin + "/debug/vars")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	var v struct {
		Memstats struct{ Mallocs uint64 } `json:"memstats"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&v); err != nil {
		return 0, err
	}
	return v.Memstats.Mallocs, nil
}

// globalOptions is a bench server's global options block, with its admin
// address and storage directory as the first two verbs (%d, %s), then
// extra's.
func globalOptions(storage, extra string) string {
	return `{
	admin 127.0.0.1:%d
	persist_config off
	skip_install_trust
	storage file_system %s/` + storage + `
	auto_https disable_redirects` + extra + `
}`
}
