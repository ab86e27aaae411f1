package tests

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestDeployGateways: deploy/'s recipe for several gateways behind one name
// (restgate@.service with gateways.env and gateway-N.env, the Caddyfile
// through gateways.sed, restgate-balancer.service with balancer.caddyfile),
// started as written: the units' Environment=, EnvironmentFile=,
// StateDirectory=, ExecStartPre= and ExecStart= lines are read and run,
// with only the ports (free loopback ones), the paths (a temp root), the
// listen address (loopback), Redis and PostgreSQL (the test's own)
// substituted, and added: the rate limits, a Redis command timeout for a
// loaded machine and a counters collection for increment to write.
// Three gateways and the balancer then give:
// one CA (every gateway and the balancer present a certificate that chains
// to the one root in the shared storage; nothing of a gateway's data
// directory is shared, and the root survives a restart of all of them),
// one per-user limit (the 11th request of a 10/h quota, through the
// balancer or straight to any gateway, is a 429) and 50 × 20 If-Match
// increments through the balancer, spread over the three gateways, that end
// at exactly 1,000.
func TestDeployGateways(t *testing.T) {
	for _, u := range []string{"restgate@.service", "restgate-balancer.service"} {
		verifyUnit(t, u)
	}
	rs := sharedRedis(t)
	r := layRecipe(t, rs.Addr, newPGDatabase(t))

	// a quota small enough to count exactly, then none in the way of the
	// increments
	f := r.start(t, map[string]string{"RESTGATE_RATE_PER_USER": "10/1h", "RESTGATE_RATE_PER_IP": "1000000/1s"})
	root := f.root

	t.Run("one CA", func(t *testing.T) {
		for i, port := range append(append([]int{}, f.gwPorts...), f.lbPort) {
			c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", fmt.Sprintf("127.0.0.1:%d", port),
				&tls.Config{ServerName: "api.localhost", RootCAs: f.pool})
			if err != nil {
				t.Fatalf("port %d (%s): %v", port, f.names[i], err)
			}
			chain := c.ConnectionState().VerifiedChains[0]
			c.Close()
			if !chain[len(chain)-1].Equal(root) {
				t.Errorf("%s's certificate chains to %s, not to the shared root", f.names[i], chain[len(chain)-1].Subject)
			}
		}
		// the shared storage holds certificates and the CA, nothing of a
		// gateway's own; each data directory holds its own pid lock and no CA
		for _, name := range []string{"restgate.pid", "api-keys.yaml", "resources.db"} {
			if _, err := os.Stat(filepath.Join(f.storage, name)); err == nil {
				t.Errorf("the shared storage holds %s", name)
			}
		}
		for i, dir := range f.dataDirs {
			if _, err := os.Stat(filepath.Join(dir, "restgate.pid")); err != nil {
				t.Errorf("gateway %d's data directory has no pid lock: %v", i+1, err)
			}
			for _, name := range []string{"caddy", "resources.db"} {
				if _, err := os.Stat(filepath.Join(dir, name)); err == nil {
					t.Errorf("gateway %d's data directory holds %s", i+1, name)
				}
			}
		}
	})

	t.Run("one per-user limit", func(t *testing.T) {
		c := f.client()
		for i := range perUserQuota {
			if resp := Do(t, c, "GET", f.url("/v1/events"), "", bearer("bob")...); resp.StatusCode != 200 {
				t.Fatalf("request %d through the balancer: %d %s", i+1, resp.StatusCode, resp.Body)
			}
		}
		over := []*http.Client{c, c, c}
		for _, port := range f.gwPorts {
			over = append(over, f.direct(port))
		}
		for i, oc := range over {
			m := AssertProblem(t, Do(t, oc, "GET", f.url("/v1/events"), "", bearer("bob")...), 429)
			if vp, _ := m["violated-policies"].([]any); len(vp) != 1 || vp[0] != "per-user" {
				t.Errorf("request %d over the quota: the 429 names %v, want the per-user zone", perUserQuota+i+1, m["violated-policies"])
			}
		}
		f.eachServed(t, `"uri":"/v1/events"`, `"status":200`)
	})

	f.stop()
	f = r.start(t, map[string]string{"RESTGATE_RATE_PER_USER": "1000000/1s", "RESTGATE_RATE_PER_IP": "1000000/1s"})
	if !f.root.Equal(root) {
		t.Fatal("the gateways made a new local CA when they were restarted")
	}

	t.Run("If-Match increments across the gateways", func(t *testing.T) {
		c := f.client()
		if resp := Do(t, c, "POST", f.url("/v1/counters"), `{"name": "c", "n": 0}`, bearer("tester")...); resp.StatusCode != 201 {
			t.Fatalf("creating the counter: %d %s", resp.StatusCode, resp.Body)
		}
		count := func() int {
			n, _ := Do(t, c, "GET", f.url("/v1/counters/c"), "", bearer("tester")...).JSON(t)["n"].(float64)
			return int(n)
		}
		// each client connects (one TLS handshake each) before the run,
		// one at a time, so that the run starts with no handshake storm
		clients := make([]*http.Client, 50)
		for i := range clients {
			clients[i] = f.client()
			if resp := Do(t, clients[i], "GET", f.url("/v1/counters/c"), "", bearer("tester")...); resp.StatusCode != 200 {
				t.Fatalf("client %d's first GET: %d %s", i, resp.StatusCode, resp.Body)
			}
		}
		exactIncrements(t, count, func(i int) (*http.Client, []string) {
			return clients[i], []string{f.url("/v1/counters/c")}
		})
		f.eachServed(t, `"method":"PUT"`, `"uri":"/v1/counters/c"`)
	})
}

// verifyUnit: a unit file of deploy/ passes `systemd-analyze verify`
// without a warning, with the binary's path substituted (a template as
// its instance 1).
func verifyUnit(t *testing.T, name string) {
	t.Helper()
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Fatal("systemd-analyze not found: install it with `apt-get install systemd`")
	}
	unit := strings.ReplaceAll(repoFile(t, "deploy/"+name), "/usr/local/bin/restgate", binary)
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, name), []byte(unit), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(analyze, "verify", filepath.Join(dir, strings.Replace(name, "@.", "@1.", 1))).CombinedOutput()
	if err != nil || len(out) > 0 {
		t.Fatalf("systemd-analyze verify %s: %v\n%s", name, err, out)
	}
}

// recipe is deploy/'s several-gateways recipe laid out under a temp root:
// /etc/restgate and /var/lib/restgate are directories of it, and every
// port the recipe names maps to one free loopback port.
type recipe struct {
	paths *strings.Replacer
	ports map[string]string
	redis string
	db    string
}

// layRecipe installs what the units' headers install: the Caddyfile
// through gateways.sed (run with sed, as written), the env files, the
// balancer's Caddyfile and a key file for every gateway.
func layRecipe(t *testing.T, redisAddr, db string) *recipe {
	t.Helper()
	root := t.TempDir()
	etc := filepath.Join(root, "etc", "restgate")
	if err := os.MkdirAll(etc, 0o750); err != nil {
		t.Fatal(err)
	}
	r := &recipe{
		paths: strings.NewReplacer("/usr/local/bin/restgate", binary,
			"/etc/restgate", etc, "/var/lib/restgate", filepath.Join(root, "var", "lib", "restgate")),
		ports: map[string]string{},
		redis: redisAddr,
		db:    db,
	}
	script := filepath.Join(root, "gateways.sed")
	if err := os.WriteFile(script, []byte(repoFile(t, "deploy/gateways.sed")), 0o644); err != nil {
		t.Fatal(err)
	}
	sed := exec.Command("sed", "-f", script)
	sed.Stdin = strings.NewReader(repoFile(t, "Caddyfile"))
	out, err := sed.Output()
	if err != nil {
		t.Fatalf("sed -f deploy/gateways.sed Caddyfile: %v", err)
	}
	for _, want := range []string{
		"\tstorage file_system {$RESTGATE_STORAGE}\n",
		"\t\t\tdatabase {$RESTGATE_DATABASE}\n",
		"\t\ttrusted_proxies static {$RESTGATE_TRUSTED_PROXIES}\n",
	} {
		if n := strings.Count(string(out), want); n != 1 {
			t.Fatalf("deploy/gateways.sed no longer fits the default Caddyfile: %d lines %q, want 1", n, want)
		}
	}
	// The test's own additions to the gateways' Caddyfile: a collection,
	// as an operator adds theirs, with a counter that increment can read
	// and write; and a Redis command timeout for a loaded two-core machine
	// under -race, which stalls a process past the 250 ms default (a lock
	// call that times out refuses the write: 503 lock_unavailable).
	gateways := string(out)
	for _, add := range []struct{ after, text string }{
		{"\t\tpassword {env.RESTGATE_REDIS_PASSWORD}\n", "\t\ttimeout 2s\n"},
		{"\thandle /v1/* {\n\t\tresources {\n", "\t\t\tcollection counters {\n\t\t\t\tkey name\n\t\t\t\tfield name string\n\t\t\t\tfield n number\n\t\t\t}\n"},
	} {
		if strings.Count(gateways, add.after) != 1 {
			t.Fatalf("the default Caddyfile changed: no one place for %q", add.text)
		}
		gateways = strings.Replace(gateways, add.after, add.after+add.text, 1)
	}
	files := map[string]string{"gateways.caddyfile": gateways, "balancer.caddyfile": repoFile(t, "deploy/balancer.caddyfile")}
	for _, name := range []string{"gateways.env", "gateway-1.env", "gateway-2.env", "gateway-3.env", "balancer.env"} {
		files[name] = repoFile(t, "deploy/"+name)
	}
	var recipePorts []string
	for name, text := range files {
		if err := os.WriteFile(filepath.Join(etc, name), []byte(text), 0o640); err != nil {
			t.Fatal(err)
		}
		if strings.HasSuffix(name, ".env") {
			for _, kv := range parseEnvFile(text) {
				k, v, _ := strings.Cut(kv, "=")
				if k != "RESTGATE_REDIS" && k != "RESTGATE_DATABASE" {
					for _, m := range portRE.FindAllStringSubmatch(v, -1) {
						recipePorts = append(recipePorts, m[2])
					}
				}
			}
		}
	}
	free := freePorts(t, len(recipePorts))
	for i, p := range recipePorts {
		if _, ok := r.ports[p]; !ok {
			r.ports[p] = strconv.Itoa(free[i])
		}
	}
	keys := r.paths.Replace(envValue(parseEnvFile(files["gateways.env"]), "RESTGATE_API_KEYS_FILE"))
	if !strings.HasPrefix(keys, etc) {
		t.Fatalf("gateways.env's RESTGATE_API_KEYS_FILE %q is not under /etc/restgate", keys)
	}
	if err := os.MkdirAll(filepath.Dir(keys), 0o750); err != nil {
		t.Fatal(err)
	}
	if err := writeTestKeys(keys); err != nil {
		t.Fatal(err)
	}
	return r
}

// portRE finds the ports in a value: a number alone, or after a colon.
var portRE = regexp.MustCompile(`(^|[\s:])(\d{2,5})(\s|$)`)

// parseEnvFile reads systemd's EnvironmentFile= format: VAR=value lines,
// comments, optional quotes.
func parseEnvFile(text string) []string {
	var env []string
	for _, line := range strings.Split(text, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || line[0] == '#' || line[0] == ';' {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			continue
		}
		if len(v) >= 2 && (v[0] == '"' || v[0] == '\'') && v[len(v)-1] == v[0] {
			v = v[1 : len(v)-1]
		}
		env = append(env, k+"="+v)
	}
	return env
}

// unitProcess is what systemd would run for a unit: its environment
// (Environment=, then EnvironmentFile=, which wins) and commands, with the
// recipe's substitutions; StateDirectory= is created.
func (r *recipe) unitProcess(t *testing.T, name, instance string, extra map[string]string) (env, pre, start []string) {
	t.Helper()
	var files []string
	for _, line := range strings.Split(repoFile(t, "deploy/"+name), "\n") {
		k, v, ok := strings.Cut(strings.TrimSpace(strings.ReplaceAll(line, "%i", instance)), "=")
		if !ok || strings.HasPrefix(k, "#") {
			continue
		}
		v = r.paths.Replace(v)
		switch k {
		case "Environment":
			env = append(env, v)
		case "EnvironmentFile":
			files = append(files, strings.TrimPrefix(v, "-"))
		case "StateDirectory":
			for _, d := range strings.Fields(v) {
				if err := os.MkdirAll(r.paths.Replace(filepath.Join("/var/lib", d)), 0o750); err != nil {
					t.Fatal(err)
				}
			}
		case "ExecStartPre":
			pre = strings.Fields(v)
		case "ExecStart":
			start = strings.Fields(v)
		}
	}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		env = append(env, parseEnvFile(string(b))...)
	}
	for i, kv := range env {
		k, v, _ := strings.Cut(kv, "=")
		switch k {
		case "RESTGATE_REDIS":
			v = r.redis
		case "RESTGATE_DATABASE":
			v = r.db
		case "RESTGATE_BIND":
			v = "127.0.0.1"
		default:
			v = portRE.ReplaceAllStringFunc(r.paths.Replace(v), func(m string) string {
				p := portRE.FindStringSubmatch(m)
				return p[1] + r.ports[p[2]] + p[3]
			})
		}
		env[i] = k + "=" + v
	}
	for k, v := range extra {
		env = append(env, k+"="+v)
	}
	env = append(env, "PATH="+os.Getenv("PATH"))
	if len(start) == 0 {
		t.Fatalf("%s has no ExecStart", name)
	}
	return env, pre, start
}

// envValue is the value of k in env, the last one winning (as in exec).
func envValue(env []string, k string) string {
	v := ""
	for _, kv := range env {
		if name, val, _ := strings.Cut(kv, "="); name == k {
			v = val
		}
	}
	return v
}

// fleet is the recipe running: three gateways and the balancer.
type fleet struct {
	procs    []*Gateway // gateways 1..3, then the balancer (harness processes)
	names    []string
	gwPorts  []int
	lbPort   int
	dataDirs []string
	storage  string
	root     *x509.Certificate
	pool     *x509.CertPool
}

// start starts the recipe in the order the units' headers give: gateway 1
// alone (it creates the local CA), then 2 and 3, then the balancer; each
// once it answers a verified TLS handshake (systemd's Type=notify).
func (r *recipe) start(t *testing.T, extra map[string]string) *fleet {
	t.Helper()
	f := &fleet{}
	for i := 1; i <= 3; i++ {
		inst := strconv.Itoa(i)
		env, pre, start := r.unitProcess(t, "restgate@.service", inst, extra)
		port, _ := strconv.Atoi(envValue(env, "RESTGATE_HTTPS_PORT"))
		f.storage = envValue(env, "RESTGATE_STORAGE")
		f.gwPorts = append(f.gwPorts, port)
		f.dataDirs = append(f.dataDirs, envValue(env, "RESTGATE_DATA"))
		f.names = append(f.names, "gateway "+inst)
		f.procs = append(f.procs, f.run(t, "gateway "+inst, env, pre, start, port))
	}
	env, pre, start := r.unitProcess(t, "restgate-balancer.service", "", extra)
	if s := envValue(env, "RESTGATE_STORAGE"); s != f.storage {
		t.Fatalf("the balancer's storage %s is not the gateways' %s", s, f.storage)
	}
	f.lbPort, _ = strconv.Atoi(envValue(env, "RESTGATE_HTTPS_PORT"))
	f.names = append(f.names, "the balancer")
	f.procs = append(f.procs, f.run(t, "balancer", env, pre, start, f.lbPort))
	t.Cleanup(f.stop)
	c := f.client()
	waitFor(t, 30*time.Second, "the balancer to reach a gateway", func() bool {
		resp, err := Send(c, "GET", f.url("/v1/health"), "")
		return err == nil && resp.StatusCode == 200
	})
	return f
}

// run runs a unit's ExecStartPre (it must succeed) and ExecStart, and
// waits until the port answers a handshake verified against the shared root.
func (f *fleet) run(t *testing.T, name string, env, pre, start []string, port int) *Gateway {
	t.Helper()
	if len(pre) > 0 {
		cmd := exec.Command(pre[0], pre[1:]...)
		cmd.Env = env
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("%s's ExecStartPre: %v\n%s", name, err, out)
		}
	}
	p := &Gateway{t: t, HTTPS: port, Env: env, logs: new(syncBuffer), done: make(chan struct{})}
	p.cmd = exec.Command(start[0], start[1:]...)
	p.cmd.Env = env
	p.cmd.Stdout, p.cmd.Stderr = p.logs, p.logs
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		p.Stop()
		if t.Failed() {
			t.Logf("%s's output:\n%s", name, p.Logs())
		}
	})
	waitFor(t, 60*time.Second, name+" to answer a verified TLS handshake", func() bool {
		select {
		case <-p.done:
			t.Fatalf("%s exited: %v\n%s", name, p.cmd.ProcessState, p.Logs())
		default:
		}
		if f.root == nil && f.loadRoot() != nil {
			return false
		}
		c, err := tls.DialWithDialer(&net.Dialer{Timeout: time.Second}, "tcp", fmt.Sprintf("127.0.0.1:%d", port),
			&tls.Config{ServerName: "api.localhost", RootCAs: f.pool})
		if err != nil {
			return false
		}
		c.Close()
		return true
	})
	return p
}

func (f *fleet) loadRoot() error {
	b, err := os.ReadFile(filepath.Join(f.storage, "pki", "authorities", "local", "root.crt"))
	if err != nil {
		return err
	}
	block, _ := pem.Decode(b)
	if block == nil {
		return fmt.Errorf("no PEM in the root certificate")
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return err
	}
	f.root, f.pool = cert, x509.NewCertPool()
	f.pool.AddCert(cert)
	return nil
}

// url is the API's one name on the balancer's port.
func (f *fleet) url(path string) string {
	return fmt.Sprintf("https://api.localhost:%d%s", f.lbPort, path)
}

// client is a client of the balancer (a new connection pool each call),
// trusting only the shared root.
func (f *fleet) client() *http.Client { return f.direct(f.lbPort) }

// direct is a client whose every connection goes to port, whatever the URL.
func (f *fleet) direct(port int) *http.Client {
	g := &Gateway{HTTPS: port, ca: f.pool}
	return behindBalancer(g)
}

// eachServed fails unless every gateway's access log has a line with all
// of the fragments: the balancer spread the requests over all three.
func (f *fleet) eachServed(t *testing.T, fragments ...string) {
	t.Helper()
	for i, p := range f.procs[:len(f.gwPorts)] {
		n := 0
		for _, line := range strings.Split(p.Logs(), "\n") {
			all := true
			for _, fr := range fragments {
				all = all && strings.Contains(line, fr)
			}
			if all {
				n++
			}
		}
		if n == 0 {
			t.Errorf("gateway %d served no request with %v: the balancer did not spread them", i+1, fragments)
		}
	}
}

func (f *fleet) stop() {
	for i := len(f.procs) - 1; i >= 0; i-- {
		f.procs[i].Stop()
	}
}
