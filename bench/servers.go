package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"log"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/restgate/restgate/internal/chainbench"
)

// servers owns a run's servers: the work dir that holds their files and
// logs, the loopback ports they listen on, and their processes, each the
// leader of its own process group.
type servers struct {
	dir    string
	bin    string // the restgate binary
	self   string // this program, which serves the backend
	ports  ports
	ctx    context.Context
	cancel context.CancelFunc
	procs  []*exec.Cmd
}

// server is one running server: the process group whose CPU time a row
// measures and, for Caddy, its admin address, whose /debug/vars counts its
// allocations.
type server struct {
	pid   int
	admin string // host:port; "" for the backend and nginx
}

// gateways is every server of a run.
type gateways struct {
	backend server
	bare    server // bare Caddy
	rg      server // restgate's reduced chain, on one Redis and on PostgreSQL
	cluster server // the Redis store row on the Redis Cluster
	def     server // the default Caddyfile's chain
	feeds   [3]server
	nginx   server
}

// ports are the loopback ports of every server, picked free at the start.
type ports struct {
	backend, caddy, caddyTLS, miss, hit, missTLS, nginxMiss, nginxHit int
	adminCaddy, adminRG, respond, missRedis, resSQLite, resPG         int
	def, adminDefault, caddyLog, caddyHdr, missCluster, adminCluster  int
	feedA, adminFeedA, feedB, adminFeedB, feedOne, adminFeedOne       int
}

func pickPorts() (ports, error) {
	var p ports
	fields := []*int{
		&p.backend, &p.caddy, &p.caddyTLS, &p.miss, &p.hit, &p.missTLS, &p.nginxMiss, &p.nginxHit,
		&p.adminCaddy, &p.adminRG, &p.respond, &p.missRedis, &p.resSQLite, &p.resPG,
		&p.def, &p.adminDefault, &p.caddyLog, &p.caddyHdr, &p.missCluster, &p.adminCluster,
		&p.feedA, &p.adminFeedA, &p.feedB, &p.adminFeedB, &p.feedOne, &p.adminFeedOne,
	}
	free, err := freePorts(len(fields))
	if err != nil {
		return p, err
	}
	for i, f := range fields {
		*f = free[i]
	}
	return p, nil
}

// newServers picks the ports and makes the work dir; close removes it.
func newServers(bin string) (*servers, error) {
	bin, err := filepath.Abs(bin)
	if err != nil {
		return nil, err
	}
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	p, err := pickPorts()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "restgate-bench-")
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &servers{dir: dir, bin: bin, self: self, ports: p, ctx: ctx, cancel: cancel}, nil
}

// close kills what is left of the processes and removes the work dir.
func (s *servers) close() {
	s.cancel()
	os.RemoveAll(s.dir)
}

// stopAll stops every server, in the order they started.
func (s *servers) stopAll() {
	for _, p := range s.procs {
		stop(p)
	}
}

// start starts a server on CPU 0, logging to a file in the work dir.
func (s *servers) start(name string, args ...string) (*exec.Cmd, error) {
	cmd := pinned(s.ctx, 0, name, args...)
	// each server leads its own process group, so that stopping it
	// stops what it started (nginx's workers and cache manager)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	logf, _ := os.Create(filepath.Join(s.dir, filepath.Base(name)+"-"+strconv.Itoa(len(s.procs))+".log"))
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = append(os.Environ(), "HOME="+s.dir, "XDG_DATA_HOME="+s.dir, "XDG_CONFIG_HOME="+s.dir)
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s: %v", name, err)
	}
	s.procs = append(s.procs, cmd)
	log.Printf("process group %d: %s", cmd.Process.Pid, filepath.Base(name))
	return cmd, nil
}

// caddy writes a Caddyfile to the work dir as Caddyfile.<name> and runs
// the restgate binary on it; admin is its admin port.
func (s *servers) caddy(name, caddyfile string, admin int) (server, error) {
	path := filepath.Join(s.dir, "Caddyfile."+name)
	if err := os.WriteFile(path, []byte(caddyfile), 0o600); err != nil {
		return server{}, err
	}
	cmd, err := s.start(s.bin, "run", "--config", path, "--adapter", "caddyfile")
	if err != nil {
		return server{}, err
	}
	return server{pid: cmd.Process.Pid, admin: fmt.Sprintf("127.0.0.1:%d", admin)}, nil
}

// startAll starts every server configuration: the backend, bare Caddy,
// restgate's reduced chain (on st's Redis and PostgreSQL), the same on
// st's Redis Cluster, the default Caddyfile's chain as shipped, the feed
// gateways and nginx.
func (s *servers) startAll(st *stores, shipped chainbench.Shipped) (gw gateways, added addedHeaders, err error) {
	if gw.backend, err = s.startBackend(); err != nil {
		return gw, added, err
	}
	if err := s.writeKeys(); err != nil {
		return gw, added, err
	}
	// the default chain first: bare Caddy's "+ the chain's headers" site
	// sets the fields it adds, read from it
	if gw.def, err = s.startDefault(shipped); err != nil {
		return gw, added, err
	}
	def := fmt.Sprintf("http://127.0.0.1:%d", s.ports.def)
	if err := waitReady(config{url: def + "/doc", header: keyHeader}, 60*time.Second); err != nil {
		return gw, added, fmt.Errorf("the default chain: %v (logs in %s)", err, s.dir)
	}
	if added, err = readAddedHeaders(def, fmt.Sprintf("http://127.0.0.1:%d", s.ports.backend), keyHeader); err != nil {
		return gw, added, err
	}
	if gw.bare, err = s.startBare(shipped, added); err != nil {
		return gw, added, err
	}
	if gw.rg, err = s.startReduced(st.redis.Addr, st.pgURL); err != nil {
		return gw, added, err
	}
	if gw.cluster, err = s.startCluster(st.cluster.Addrs()); err != nil {
		return gw, added, err
	}
	// change feeds, measured after the rounds, started now, with the
	// others: a port picked free and left unused through the rounds can
	// be taken by one of their outgoing connections
	feedsDB, err := st.pg.NewDatabase("feeds")
	if err != nil {
		return gw, added, err
	}
	if gw.feeds, err = s.startFeeds(feedsDB); err != nil {
		return gw, added, err
	}
	gw.nginx, err = s.startNginx()
	return gw, added, err
}

// accessLog is where the default Caddyfile's chain logs.
const accessLog = "access-restgate.log"

// readShipped reads the default Caddyfile's chain as shipped: limits that
// never refuse, the keys of writeKeys, the access log to a file.
func (s *servers) readShipped(caddyfile string) (chainbench.Shipped, error) {
	return chainbench.ReadShipped(caddyfile, map[string]string{
		"RESTGATE_RATE_PER_IP": "1000000000/1s", "RESTGATE_RATE_PER_USER": "1000000000/1s", "RESTGATE_DATA": s.dir,
	}, filepath.Join(s.dir, accessLog))
}

func (s *servers) startBackend() (server, error) {
	cmd, err := s.start(s.self, "-serve-backend", fmt.Sprintf("127.0.0.1:%d", s.ports.backend))
	if err != nil {
		return server{}, err
	}
	return server{pid: cmd.Process.Pid}, nil
}

// startBare starts bare Caddy: the same binary, no restgate directive. Its
// sites: reverse_proxy, the same over HTTPS, `respond`, reverse_proxy or
// `respond` with the default Caddyfile's access log (to its own file) and
// HSTS, and the same again setting the fields the default chain adds
// (added), statically.
func (s *servers) startBare(shipped chainbench.Shipped, added addedHeaders) (server, error) {
	p := s.ports
	logTo := func(file string) string {
		return strings.ReplaceAll(shipped.Caddy, filepath.Join(s.dir, accessLog), filepath.Join(s.dir, file))
	}
	bareLog := logTo("access-caddy.log")
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
http://127.0.0.1:%[13]d {
%[14]s%[15]s
	handle /respond {
%[16]s		header Content-Type application/json
		respond `+"`%[10]s`"+` 200
	}
	handle {
%[17]s		reverse_proxy 127.0.0.1:%[4]d {
			%[5]s
		}
	}
}
`, p.adminCaddy, s.dir, p.caddy, p.backend, upstreamPool, p.caddyTLS, p.backend, upstreamPool, p.respond, doc, p.caddyLog, bareLog,
		p.caddyHdr, logTo("access-caddy-headers.log"), added.requestHeaders(), headerBlock(added.hit), headerBlock(added.miss))
	return s.caddy("bare", caddyfile, p.adminCaddy)
}

// keyCount is how many API keys the keyed servers know; benchKey is the
// one wrk sends, in keyHeader.
const (
	keyCount  = 10_000
	benchKey  = "rg_bench_key_0"
	keyHeader = "X-API-Key: " + benchKey
)

// writeKeys writes the keys file of the reduced chain and of the default
// Caddyfile's (api-keys.yaml): keyCount keys, read and write.
func (s *servers) writeKeys() error {
	var keys strings.Builder
	keys.WriteString("keys:\n")
	for i := 0; i < keyCount; i++ {
		sum := sha256.Sum256([]byte("rg_bench_key_" + strconv.Itoa(i)))
		fmt.Fprintf(&keys, "  - user: user%d\n    sha256: %s\n    scopes: [read, write]\n", i, hex.EncodeToString(sum[:]))
	}
	for _, name := range []string{"keys.yaml", "api-keys.yaml"} {
		if err := os.WriteFile(filepath.Join(s.dir, name), []byte(keys.String()), 0o600); err != nil {
			return err
		}
	}
	return nil
}

// chainTo is restgate's reduced chain in front of terminal: limits that
// never refuse (in store), auth with the keys of writeKeys, and etag.
func (s *servers) chainTo(etag, store, terminal string) string {
	return fmt.Sprintf(`	api_errors
	api_rate_limit_ip {
		zone per-ip 1000000000/1s
		%[4]s
	}
	api_auth {
		keys_file %[1]s/keys.yaml
		no_env
	}
	api_rate_limit {
		zone per-user 1000000000/1s
		%[4]s
	}
	%[2]s
	%[3]s
`, s.dir, etag, terminal, store)
}

// chain is the reduced chain in front of the backend.
func (s *servers) chain(etag, store string) string {
	return s.chainTo(etag, store, fmt.Sprintf("reverse_proxy 127.0.0.1:%d {\n\t\t%s\n\t}", s.ports.backend, upstreamPool))
}

// resources is the reduced chain in front of the resources of database.
func (s *servers) resources(database string) string {
	return s.chainTo("api_etag", "", fmt.Sprintf(`resources {
		database %s
		collection events {
			key name
			field name string
			field meta object
		}
	}`, database))
}

const (
	// redisStore makes a rate limit keep its buckets in Redis
	redisStore = "store redis\n\t\ton_error deny"
	// trustLoopback makes X-Forwarded-For from loopback the client's
	// address (the attack on distinct client IPs)
	trustLoopback = `
	servers {
		trusted_proxies static 127.0.0.1/32
		client_ip_headers X-Forwarded-For
	}`
)

// startReduced starts restgate with the reduced chain, 10,000 keys and
// limits that never refuse: cache miss, cache hit, miss over HTTPS, miss
// with the Redis store, and the resources on SQLite and on PostgreSQL.
func (s *servers) startReduced(redisAddr, pgURL string) (server, error) {
	p := s.ports
	caddyfile := fmt.Sprintf(globalOptions("caddy-rg", trustLoopback+`
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
`, p.adminRG, s.dir, redisAddr, p.miss, s.chain("api_etag", ""), p.hit, s.chain("api_etag {\n\t\tcache\n\t}", ""), p.missTLS, s.chain("api_etag", ""),
		p.missRedis, s.chain("api_etag {\n\t\tredis\n\t}", redisStore),
		p.resSQLite, s.resources(filepath.Join(s.dir, "resources.db")), p.resPG, s.resources(pgURL))
	return s.caddy("restgate", caddyfile, p.adminRG)
}

// startCluster starts the Redis store row again on a Redis Cluster: one
// redis app a process, so a process of its own.
func (s *servers) startCluster(addrs []string) (server, error) {
	p := s.ports
	caddyfile := fmt.Sprintf(globalOptions("caddy-cluster", trustLoopback+`
	redis {
		cluster %s
	}`)+`
http://127.0.0.1:%d {
%s}
`, p.adminCluster, s.dir, strings.Join(addrs, " "), p.missCluster, s.chain("api_etag {\n\t\tredis\n\t}", redisStore))
	return s.caddy("cluster", caddyfile, p.adminCluster)
}

// startDefault starts restgate with the default Caddyfile's chain, in a
// process of its own (no Redis app: `store auto` and `redis auto` are
// local, as shipped without RESTGATE_REDIS); one site, so one access
// logger, as bare Caddy's logged site.
func (s *servers) startDefault(shipped chainbench.Shipped) (server, error) {
	p := s.ports
	caddyfile := fmt.Sprintf(globalOptions("caddy-default", "")+`
http://127.0.0.1:%d {
%s
	reverse_proxy 127.0.0.1:%d {
		%s
	}
}
`, p.adminDefault, s.dir, p.def, shipped.Chain, p.backend, upstreamPool)
	return s.caddy("default", caddyfile, p.adminDefault)
}

// startFeeds starts the change-feed gateways: two on one PostgreSQL
// database (feedsDB) and one on SQLite, each its own process speaking
// HTTP/2 (h2c, so that idle streams share connections).
func (s *servers) startFeeds(feedsDB string) (gws [3]server, err error) {
	p := s.ports
	for i, f := range []struct {
		admin, port int
		database    string
	}{{p.adminFeedA, p.feedA, feedsDB}, {p.adminFeedB, p.feedB, feedsDB}, {p.adminFeedOne, p.feedOne, filepath.Join(s.dir, "feeds.db")}} {
		caddyfile := fmt.Sprintf(globalOptions(fmt.Sprintf("caddy-feed%d", i), `
	servers {
		protocols h1 h2c
	}`)+`
http://127.0.0.1:%d {
%s}
`, f.admin, s.dir, f.port, s.chainTo("api_etag", "", fmt.Sprintf(`resources {
		database %s
		feed_max_streams 100000
		collection events {
			key name
			field name string
			field meta object
		}
	}`, f.database)))
		if gws[i], err = s.caddy(fmt.Sprintf("feed%d", i), caddyfile, f.admin); err != nil {
			return gws, err
		}
	}
	return gws, nil
}

// startNginx starts nginx: the closest equivalent.
func (s *servers) startNginx() (server, error) {
	conf, err := writeNginx(s.dir, keyCount, s.ports.backend, s.ports.nginxMiss, s.ports.nginxHit)
	if err != nil {
		return server{}, err
	}
	cmd, err := s.start("nginx", "-c", conf, "-p", s.dir)
	if err != nil {
		return server{}, err
	}
	return server{pid: cmd.Process.Pid}, nil
}

// upstreamPool sizes Caddy's idle upstream connections like nginx's
// `keepalive 64` (Caddy's default is 32 per host, fewer than wrk's 64
// connections, which would make both Caddy rows measure connection churn).
const upstreamPool = "transport http {\n\t\t\tkeepalive_idle_conns_per_host 128\n\t\t}"

// globalOptions is a bench server's global options block, with its admin
// address and storage directory as the first two verbs (%d, %s), then
// extra's.
//
// Every server runs the restgate app (`restgate`), as the default Caddyfile
// does: its load-time checks, and the pairing of the two rate limits into
// one Redis script a request.
func globalOptions(storage, extra string) string {
	return `{
	admin 127.0.0.1:%d
	persist_config off
	skip_install_trust
	storage file_system %s/` + storage + `
	auto_https disable_redirects
	restgate` + extra + `
}`
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
