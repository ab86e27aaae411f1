// Package redisapp is the `redis` app: one Redis client per process, shared
// by every restgate module that coordinates several gateways through Redis
// (api_rate_limit's `store redis`, api_etag's `redis`). It is configured
// once, by the `redis` global option:
//
//	redis {
//		address 127.0.0.1:6379
//		username restgate
//		password {env.RESTGATE_REDIS_PASSWORD}
//		db 0
//		tls [<server name>]
//		key_prefix restgate:
//		dial_timeout 1s
//		timeout 250ms
//		circuit_open 5s
//	}
//
// An address line whose value is empty (`address {$RESTGATE_REDIS}` with
// the variable unset, or `address ""`) turns the app off: no connection is
// made, modules that follow it (`store auto`, `redis auto`) stay local, and
// modules that name Redis explicitly (`store redis`, `redis`) refuse to
// load. A block without an address line connects to 127.0.0.1:6379.
//
// Instead of one address, a Sentinel-managed primary or a Redis Cluster:
//
//	redis {
//		sentinels 10.0.0.1:26379 10.0.0.2:26379 10.0.0.3:26379
//		master_name mymaster
//		sentinel_password {env.RESTGATE_REDIS_SENTINEL_PASSWORD}
//	}
//
//	redis {
//		cluster 10.0.0.1:6379 10.0.0.2:6379 10.0.0.3:6379
//	}
//
// go-redis's own clients follow a promotion (they ask the sentinels for the
// primary on every new connection) and the cluster's slots. With either, an
// empty address line is ignored (a Caddyfile may keep `address
// {$RESTGATE_REDIS}`); a non-empty one, sentinels without master_name, a
// cluster with sentinels or with a db other than 0 refuse to load.
//
// The password is read from the environment (or a file, `{file./path}`)
// when the configuration is loaded, so it is never part of the JSON config
// that the admin API shows, and never logged.
//
// A dead Redis is not called on every request: after a failure the circuit
// opens for circuit_open, during which calls fail at once (and each module
// applies its on_error policy); then one call is let through to try again.
// Opening and closing are logged once each. Each purpose (Purpose) has its
// own circuit, so that rate-limit timeouts never stop a lock from being
// taken or an invalidation from being published, and the background work
// that must reach Redis eventually (releasing and extending locks,
// re-sending failed publishes) has none: it retries on its own schedule.
package redisapp

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"strconv"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
)

func init() {
	caddy.RegisterModule(App{})
	httpcaddyfile.RegisterGlobalOption("redis", parseGlobalOption)
	redis.SetLogger(goRedisLog{})
}

// App is the `redis` app.
type App struct {
	// host:port of the Redis (or Valkey) server. Default: 127.0.0.1:6379,
	// unless Sentinels or Cluster is set (then it must be empty).
	Address string `json:"address,omitempty"`
	// host:port of each Redis Sentinel that watches the primary named
	// MasterName: the client asks them for the primary on every new
	// connection, and so follows a failover without a restart.
	Sentinels  []string `json:"sentinels,omitempty"`
	MasterName string   `json:"master_name,omitempty"`
	// The sentinels' own ACL user and password, if they need one (the
	// password may be a placeholder, expanded at load like Password).
	SentinelUsername string `json:"sentinel_username,omitempty"`
	SentinelPassword string `json:"sentinel_password,omitempty"`
	// host:port of some nodes of a Redis Cluster (seeds: the client learns
	// the others and the slots from them).
	Cluster []string `json:"cluster,omitempty"`
	// Writes that should survive a failover (taking a shared lock) wait,
	// on the connection that made them, until WaitReplicas replicas have
	// them (WAIT), at most WaitTimeout (default: half of Timeout); with
	// fewer, the write counts as failed. Default: 0, no waiting.
	WaitReplicas int            `json:"wait_replicas,omitempty"`
	WaitTimeout  caddy.Duration `json:"wait_timeout,omitempty"`
	// No server: nothing connects, modules that follow the app (Enabled)
	// stay local and those that require it (Get) refuse to load. The
	// Caddyfile sets it for an address line whose value is empty.
	Disabled bool `json:"disabled,omitempty"`
	// ACL user and password; placeholders such as {env.X} and {file.X}
	// are expanded when the configuration is loaded.
	Username string `json:"username,omitempty"`
	Password string `json:"password,omitempty"`
	// The logical database.
	DB int `json:"db,omitempty"`
	// Connect over TLS (verified against the system roots, or TLSCA).
	TLS           bool   `json:"tls,omitempty"`
	TLSServerName string `json:"tls_server_name,omitempty"`
	TLSCA         string `json:"tls_ca,omitempty"` // a PEM file
	// Every key restgate writes starts with it. Default: "restgate:".
	KeyPrefix string `json:"key_prefix,omitempty"`
	// Connecting may take DialTimeout (default 1s); each command Timeout
	// (default 250ms): a slow Redis is a failed call, never a slow gateway.
	DialTimeout caddy.Duration `json:"dial_timeout,omitempty"`
	Timeout     caddy.Duration `json:"timeout,omitempty"`
	// How long the circuit stays open after a failure. Default: 5s.
	CircuitOpen caddy.Duration `json:"circuit_open,omitempty"`
	// Connections in the pool. Default: go-redis's (10 per CPU).
	PoolSize int `json:"pool_size,omitempty"`

	conn    *conn
	poolKey string
	logger  *zap.Logger
}

// conn is what a configuration's modules use; it outlives reloads that do
// not change the connection settings (a UsagePool entry).
type conn struct {
	client   redis.UniversalClient
	cluster  bool
	prefix   string
	timeout  time.Duration
	replicas int           // wait_replicas
	wait     time.Duration // wait_timeout
	circuits map[Purpose]*circuit
	bus      *bus
	batch    *batcher
}

func (c *conn) Destruct() error {
	c.batch.close()
	c.bus.close()
	return c.client.Close()
}

var pool = caddy.NewUsagePool()

// CaddyModule returns the Caddy module information.
func (App) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: "redis", New: func() caddy.Module { return new(App) }}
}

// Provision connects (lazily: go-redis dials on first use) and shares the
// client with every later configuration that has the same settings.
func (a *App) Provision(ctx caddy.Context) error {
	a.logger = ctx.Logger()
	if a.Disabled {
		if a.Address != "" || len(a.Sentinels) > 0 || len(a.Cluster) > 0 {
			return fmt.Errorf("redis: disabled, yet a server is named (address %q, sentinels %q, cluster %q)", a.Address, a.Sentinels, a.Cluster)
		}
		a.logger.Info("redis: no address: shared stores stay local, no connection is made")
		return nil
	}
	if err := a.checkTopology(); err != nil {
		return err
	}
	if a.Address == "" && len(a.Sentinels) == 0 && len(a.Cluster) == 0 {
		a.Address = "127.0.0.1:6379"
	}
	if a.KeyPrefix == "" {
		a.KeyPrefix = "restgate:"
	}
	if a.DialTimeout == 0 {
		a.DialTimeout = caddy.Duration(time.Second)
	}
	if a.Timeout == 0 {
		a.Timeout = caddy.Duration(250 * time.Millisecond)
	}
	if a.CircuitOpen == 0 {
		a.CircuitOpen = caddy.Duration(5 * time.Second)
	}
	if a.WaitTimeout == 0 {
		a.WaitTimeout = a.Timeout / 2
	}
	if a.DB < 0 || a.PoolSize < 0 || a.WaitReplicas < 0 || a.Timeout < 0 || a.DialTimeout < 0 || a.CircuitOpen < 0 || a.WaitTimeout < 0 {
		return errors.New("redis: db, pool_size, wait_replicas and durations must not be negative")
	}
	if a.WaitReplicas > 0 && a.WaitTimeout >= a.Timeout {
		return fmt.Errorf("redis: wait_timeout %v must be shorter than timeout %v (a WAIT is one command)", time.Duration(a.WaitTimeout), time.Duration(a.Timeout))
	}
	repl := caddy.NewReplacer()
	password := repl.ReplaceAll(a.Password, "")
	username := repl.ReplaceAll(a.Username, "")
	sentinelPassword := repl.ReplaceAll(a.SentinelPassword, "")
	sentinelUsername := repl.ReplaceAll(a.SentinelUsername, "")
	var tlsConf *tls.Config
	if a.TLS {
		tlsConf = &tls.Config{ServerName: a.TLSServerName, MinVersion: tls.VersionTLS12}
		if a.TLSCA != "" {
			pem, err := os.ReadFile(a.TLSCA)
			if err != nil {
				return fmt.Errorf("redis: tls_ca: %v", err)
			}
			tlsConf.RootCAs = x509.NewCertPool()
			if !tlsConf.RootCAs.AppendCertsFromPEM(pem) {
				return fmt.Errorf("redis: tls_ca %s holds no PEM certificate", a.TLSCA)
			}
		}
	}
	// the pool key covers every setting (the password by its presence
	// and length only would be wrong: a changed password must reconnect)
	a.poolKey = fmt.Sprint(a.Address, "\x00", a.Sentinels, a.MasterName, sentinelUsername, "\x00", sentinelPassword, "\x00", a.Cluster,
		"\x00", username, "\x00", password, "\x00", a.DB, "\x00", a.TLS, a.TLSServerName, a.TLSCA,
		"\x00", a.KeyPrefix, "\x00", a.DialTimeout, a.Timeout, a.CircuitOpen, a.PoolSize, a.WaitReplicas, a.WaitTimeout)
	logger := a.logger
	val, _, err := pool.LoadOrNew(a.poolKey, func() (caddy.Destructor, error) {
		opts := &redis.UniversalOptions{
			Username:     username,
			Password:     password,
			DB:           a.DB,
			TLSConfig:    tlsConf,
			DialTimeout:  time.Duration(a.DialTimeout),
			ReadTimeout:  time.Duration(a.Timeout),
			WriteTimeout: time.Duration(a.Timeout),
			PoolSize:     a.PoolSize,
			// a refused call is retried by the caller's policy, not here:
			// a request must not wait through retries of a dead server
			MaxRetries:            -1,
			ContextTimeoutEnabled: true,
		}
		var client redis.UniversalClient
		where := a.Address
		switch {
		case len(a.Cluster) > 0:
			opts.Addrs = a.Cluster
			client = redis.NewClusterClient(opts.Cluster())
			where = fmt.Sprintf("cluster %v", a.Cluster)
		case len(a.Sentinels) > 0:
			opts.Addrs, opts.MasterName = a.Sentinels, a.MasterName
			opts.SentinelUsername, opts.SentinelPassword = sentinelUsername, sentinelPassword
			client = redis.NewFailoverClient(opts.Failover())
			where = fmt.Sprintf("sentinel primary %q via %v", a.MasterName, a.Sentinels)
		default:
			opts.Addrs = []string{a.Address}
			client = redis.NewClient(opts.Simple())
		}
		c := &conn{
			client:   client,
			cluster:  len(a.Cluster) > 0,
			prefix:   a.KeyPrefix,
			timeout:  time.Duration(a.Timeout),
			replicas: a.WaitReplicas,
			wait:     time.Duration(a.WaitTimeout),
			circuits: map[Purpose]*circuit{},
		}
		for _, p := range []Purpose{PurposeDefault, PurposeRateLimit, PurposeLock, PurposePublish, PurposeRefund, PurposeIdempotency} {
			c.circuits[p] = newCircuit(time.Duration(a.CircuitOpen), logger.Named("circuit"), where, p)
		}
		c.bus = newBus(c, a.KeyPrefix+"events", logger.Named("bus"))
		c.batch = newBatcher(c)
		return c, nil
	})
	if err != nil {
		return err
	}
	a.conn = val.(*conn)
	return nil
}

// checkTopology refuses settings that name two topologies, or one by
// halves.
func (a *App) checkTopology() error {
	sentinel := len(a.Sentinels) > 0 || a.MasterName != "" || a.SentinelUsername != "" || a.SentinelPassword != ""
	cluster := len(a.Cluster) > 0
	switch {
	case cluster && sentinel:
		return errors.New("redis: cluster and sentinels name two topologies: keep one")
	case a.Address != "" && (cluster || sentinel):
		return fmt.Errorf("redis: address %s and %s name two topologies: drop the address line (or leave its value empty)", a.Address, map[bool]string{true: "cluster", false: "sentinels"}[cluster])
	case sentinel && len(a.Sentinels) == 0:
		return errors.New("redis: master_name or a sentinel credential without sentinels: list the sentinels' addresses")
	case sentinel && a.MasterName == "":
		return errors.New("redis: sentinels without master_name: name the primary the sentinels watch (their `sentinel monitor <name> …`)")
	case cluster && a.DB != 0:
		return fmt.Errorf("redis: db %d with a cluster: Redis Cluster has only database 0", a.DB)
	}
	return nil
}

// Start and Stop: the connection lives as long as a configuration uses it.
func (a *App) Start() error { return nil }
func (a *App) Stop() error  { return nil }

// Cleanup lets go of this configuration's use of the connection.
func (a *App) Cleanup() error {
	if a.conn == nil {
		return nil
	}
	_, err := pool.Delete(a.poolKey)
	return err
}

// Get returns the configuration's redis app, or an error telling the
// operator to configure it.
func Get(ctx caddy.Context) (*App, error) {
	v, err := ctx.AppIfConfigured("redis")
	if errors.Is(err, caddy.ErrNotConfigured) {
		return nil, errors.New("redis is not configured: add a `redis { address host:port }` block to the global options")
	}
	if err != nil {
		return nil, err
	}
	a := v.(*App)
	if a.Disabled {
		return nil, errors.New("redis has no address (its `address` line is empty: is RESTGATE_REDIS unset?): set the address, or use `store auto` / `redis auto`, which stay local without one")
	}
	return a, nil
}

// Enabled returns the configuration's redis app when it is configured with
// a server, and nil (no error) when it is not configured or disabled: for
// modules whose shared store follows the app (`store auto`).
func Enabled(ctx caddy.Context) (*App, error) {
	v, err := ctx.AppIfConfigured("redis")
	if errors.Is(err, caddy.ErrNotConfigured) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	if a := v.(*App); !a.Disabled {
		return a, nil
	}
	return nil, nil
}

// Client is the shared go-redis client.
func (a *App) Client() redis.UniversalClient { return a.conn.client }

// Key is the prefixed name of a key.
func (a *App) Key(name string) string { return a.conn.prefix + name }

// IsCluster reports whether the app talks to a Redis Cluster, where the keys
// of one command or script must share a slot (see Slot).
func (a *App) IsCluster() bool { return a.conn.cluster }

// Purpose names what a call is for; each purpose has its own circuit.
type Purpose string

const (
	PurposeDefault   Purpose = "default"    // Do
	PurposeRateLimit Purpose = "rate_limit" // RunScript
	PurposeLock      Purpose = "lock"       // taking a shared lock
	PurposePublish   Purpose = "publish"    // Publish
	PurposeRefund    Purpose = "refund"     // giving a rate-limit token back
	// PurposeIdempotency is taking an Idempotency-Key claim.
	PurposeIdempotency Purpose = "idempotency"
	// PurposeBackground is work that must reach Redis eventually and
	// retries on its own (releasing and extending locks): no circuit.
	PurposeBackground Purpose = "background"
)

// Do runs fn with the command timeout, unless the default circuit is open
// (then it returns ErrUnavailable at once). See DoFor.
func (a *App) Do(ctx context.Context, fn func(ctx context.Context, c redis.UniversalClient) error) error {
	return a.conn.do(ctx, PurposeDefault, fn)
}

// DoFor runs fn with the command timeout, unless purpose's circuit is open
// (then it returns ErrUnavailable at once). A call that Redis did not
// answer opens that circuit; an error reply (redis.Nil, a script error) is
// an answer; a call whose ctx was cancelled counts for nothing.
func (a *App) DoFor(ctx context.Context, purpose Purpose, fn func(ctx context.Context, c redis.UniversalClient) error) error {
	return a.conn.do(ctx, purpose, fn)
}

func (c *conn) do(ctx context.Context, purpose Purpose, fn func(ctx context.Context, c redis.UniversalClient) error) error {
	cb := c.circuits[purpose] // nil: no circuit (PurposeBackground)
	probe := false
	if cb != nil {
		var ok bool
		if ok, probe = cb.allow(); !ok {
			return ErrUnavailable
		}
	}
	cctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	err := fn(cctx, c.client)
	switch {
	case err == nil || errors.Is(err, redis.Nil) || isReply(err):
		if cb != nil {
			cb.succeeded(probe)
		}
		return err
	case ctx.Err() == context.Canceled:
		if cb != nil {
			cb.abandoned(probe)
		}
		return fmt.Errorf("%w: %v", ErrUnavailable, err)
	default:
		if cb != nil {
			cb.failed(probe, err)
		}
		return fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
}

// RunScript runs a script as Do would (circuit, timeout), in a pipeline
// shared with the scripts of concurrent calls (see batch.go): one round
// trip for all that queued meanwhile. Its reply is the script's; a script
// error is this call's alone.
func (a *App) RunScript(ctx context.Context, s *redis.Script, keys []string, args ...any) (any, error) {
	return a.conn.batch.run(ctx, s, keys, args)
}

// RetryIn is how long until the rate-limit circuit (RunScript's) lets a
// call through again (zero when closed): a Retry-After for those who fail
// closed.
func (a *App) RetryIn() time.Duration { return a.RetryInFor(PurposeRateLimit) }

// RetryInFor is RetryIn for purpose's circuit.
func (a *App) RetryInFor(purpose Purpose) time.Duration {
	if cb := a.conn.circuits[purpose]; cb != nil {
		return cb.retryIn()
	}
	return 0
}

// Publish sends an event to every gateway's subscribers (this one's too).
// An event that could not be sent is sent again in the background until
// Redis takes it (see bus), so it reaches the other gateways late rather
// than never; the error says that it was late.
func (a *App) Publish(ctx context.Context, topic, payload string) error {
	return a.conn.bus.publish(ctx, topic, payload)
}

// Subscribe calls onEvent for each event on topic from another gateway,
// and onResync whenever the subscription was (re)established after a
// break, when events may have been missed. It returns the function that
// ends the subscription.
func (a *App) Subscribe(topic string, onEvent func(payload string), onResync func()) (cancel func()) {
	return a.conn.bus.subscribe(topic, onEvent, onResync)
}

// PoolStats are the client's connection counts (for metrics and tests).
func (a *App) PoolStats() *redis.PoolStats { return a.conn.client.PoolStats() }

// ErrUnavailable wraps every failure to reach Redis.
var ErrUnavailable = errors.New("redis unavailable")

func parseGlobalOption(d *caddyfile.Dispenser, _ any) (any, error) {
	var a App
	d.Next()
	if d.NextArg() {
		a.Address = d.Val()
		if d.NextArg() {
			return nil, d.ArgErr()
		}
	}
	for d.NextBlock(0) {
		var err error
		switch d.Val() {
		case "address":
			// an empty value (an unset {$VAR}, or "") means no server
			args := d.RemainingArgs()
			switch {
			case len(args) > 1:
				err = d.ArgErr()
			case len(args) == 0 || args[0] == "":
				a.Address, a.Disabled = "", true
			default:
				a.Address, a.Disabled = args[0], false
			}
		case "sentinels":
			if a.Sentinels = d.RemainingArgs(); len(a.Sentinels) == 0 {
				err = d.ArgErr()
			}
		case "master_name":
			err = oneArg(d, &a.MasterName)
		case "sentinel_username":
			err = oneArg(d, &a.SentinelUsername)
		case "sentinel_password":
			err = oneArg(d, &a.SentinelPassword)
		case "cluster":
			if a.Cluster = d.RemainingArgs(); len(a.Cluster) == 0 {
				err = d.ArgErr()
			}
		case "wait_replicas":
			args := d.RemainingArgs()
			if len(args) == 0 || len(args) > 2 {
				err = d.ArgErr()
				break
			}
			if a.WaitReplicas, err = strconv.Atoi(args[0]); err != nil || a.WaitReplicas < 0 {
				err = d.Errf("wait_replicas: %q is not a number of replicas", args[0])
				break
			}
			if len(args) == 2 {
				v, perr := caddy.ParseDuration(args[1])
				if perr != nil || v <= 0 {
					err = d.Errf("wait_replicas: %q is not a duration (use e.g. 50ms)", args[1])
				}
				a.WaitTimeout = caddy.Duration(v)
			}
		case "username":
			err = oneArg(d, &a.Username)
		case "password":
			err = oneArg(d, &a.Password)
		case "db":
			var s string
			if err = oneArg(d, &s); err == nil {
				if a.DB, err = strconv.Atoi(s); err != nil {
					err = d.Errf("db: %q is not a number", s)
				}
			}
		case "pool_size":
			var s string
			if err = oneArg(d, &s); err == nil {
				if a.PoolSize, err = strconv.Atoi(s); err != nil {
					err = d.Errf("pool_size: %q is not a number", s)
				}
			}
		case "tls":
			a.TLS = true
			if d.NextArg() {
				a.TLSServerName = d.Val()
			}
		case "tls_ca":
			a.TLS = true
			err = oneArg(d, &a.TLSCA)
		case "key_prefix":
			err = oneArg(d, &a.KeyPrefix)
		case "dial_timeout":
			err = durationArg(d, &a.DialTimeout)
		case "timeout":
			err = durationArg(d, &a.Timeout)
		case "circuit_open":
			err = durationArg(d, &a.CircuitOpen)
		default:
			return nil, d.Errf("unrecognized redis option %q (valid: address, sentinels, master_name, sentinel_username, sentinel_password, cluster, username, password, db, tls, tls_ca, key_prefix, dial_timeout, timeout, circuit_open, pool_size, wait_replicas)", d.Val())
		}
		if err != nil {
			return nil, err
		}
	}
	if a.Disabled && (len(a.Sentinels) > 0 || len(a.Cluster) > 0) {
		// `address {$RESTGATE_REDIS}` unset next to sentinels or a
		// cluster: the block names its servers another way
		a.Disabled = false
	}
	return httpcaddyfile.App{Name: "redis", Value: caddyconfig.JSON(a, nil)}, nil
}

func oneArg(d *caddyfile.Dispenser, dst *string) error {
	if !d.AllArgs(dst) {
		return d.ArgErr()
	}
	return nil
}

func durationArg(d *caddyfile.Dispenser, dst *caddy.Duration) error {
	var s string
	if err := oneArg(d, &s); err != nil {
		return err
	}
	v, err := caddy.ParseDuration(s)
	if err != nil || v < 0 {
		return d.Errf("%s: %q is not a duration (use e.g. 250ms, 1s)", d.Val(), s)
	}
	*dst = caddy.Duration(v)
	return nil
}

// Interface guards
var (
	_ caddy.App          = (*App)(nil)
	_ caddy.Provisioner  = (*App)(nil)
	_ caddy.CleanerUpper = (*App)(nil)
)

// Connect provisions an App outside a Caddy configuration (tests and
// tools); Cleanup releases it.
func Connect(a App) (*App, error) {
	ctx, _ := caddy.NewContext(caddy.Context{Context: context.Background()})
	if err := a.Provision(ctx); err != nil {
		return nil, err
	}
	return &a, nil
}

// goRedisLog sends go-redis's own messages (a dropped pub/sub connection
// being re-established, say) to Caddy's log at debug level instead of the
// standard logger: the circuit already logs an outage once.
type goRedisLog struct{}

func (goRedisLog) Printf(_ context.Context, format string, v ...any) {
	caddy.Log().Named("redis").Debug(fmt.Sprintf(format, v...))
}
