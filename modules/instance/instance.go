// Package instance is the `restgate` app: what makes one running gateway
// safe to operate. It is configured by the `restgate` global option of the
// Caddyfile and
//
//   - owns its data directory: a second restgate on the same directory
//     refuses to start, naming the PID of the first (lock.go);
//   - refuses to start on an HTTP port another process already listens on
//     (Caddy's listeners share ports through SO_REUSEPORT, so the kernel
//     would otherwise split traffic between two configurations) (ports.go);
//   - refuses a reload adapted in a shell that lacks the RESTGATE_*
//     variables the gateway was started with, which would silently move it
//     to the Caddyfile's defaults (env.go);
//   - warns, when a configuration is loaded (`restgate validate` included),
//     about every route of an API site that can serve a request without
//     passing api_auth (routes.go), and refuses a configuration in which a
//     route outside the API sites can answer for an API host without
//     api_auth, such as a second site block for the API host with a path
//     (apihosts.go);
//   - refuses a configuration in which a route of an API site runs
//     restgate's handlers out of the order they depend on (api_errors
//     outermost, api_auth before what keys on the principal or can answer
//     from a cache, ...), naming the route and the fix (order.go);
//   - gives every reverse_proxy of an API site that has no response-header
//     timeout a default one (upstream.go).
//
// The checks that concern a running gateway (lock, ports) are made when a
// configuration is first loaded in a process and enforced when it starts,
// so `restgate validate` next to a running gateway still succeeds.
package instance

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
)

func init() {
	caddy.RegisterModule(App{})
	httpcaddyfile.RegisterGlobalOption("restgate", parseGlobalOption)
}

// App is the `restgate` app.
type App struct {
	// The gateway's data directory (keys, databases, certificates): one
	// running restgate per directory. Placeholders are expanded.
	DataDir string `json:"data_dir,omitempty"`

	// The names of the RESTGATE_* environment variables that were set where
	// this configuration was adapted from a Caddyfile (the Caddyfile option
	// records them; never their values). Absent for a configuration written
	// in JSON: then no reload is refused for its environment.
	AdaptedEnv []string `json:"adapted_env"`

	// The response-header timeout of every reverse_proxy of an API site (a
	// site whose routes hold api_errors or api_auth) that sets none: a
	// backend that accepts the connection and never answers is a 504
	// problem after it, instead of holding its clients. A reverse_proxy's
	// own `response_header_timeout` (as the Caddyfile's `import upstream`
	// sets) is kept. Default: 30s.
	UpstreamTimeout caddy.Duration `json:"upstream_timeout,omitempty"`

	logger *zap.Logger
	// what a first load found, returned by Start (not by Provision, so
	// that validating next to a running gateway succeeds)
	startErr error
	lock     *os.File
}

// process is what one restgate process holds across its configurations.
var process struct {
	sync.Mutex
	started bool                // a configuration has started: later loads are reloads
	locks   map[string]*os.File // data directories held, by path
}

// CaddyModule returns the Caddy module information.
func (App) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "restgate",
		New: func() caddy.Module { return new(App) },
	}
}

// Provision makes the load-time checks.
func (a *App) Provision(ctx caddy.Context) error {
	a.logger = ctx.Logger()
	process.Lock()
	reload := process.started
	process.Unlock()

	if reload {
		if err := checkReloadEnv(a.AdaptedEnv, os.Environ()); err != nil {
			return err
		}
	}

	// the http app is provisioned (if not yet) by this call; no handler
	// refers to this app, so there is no cycle
	httpApp, err := httpAppOf(ctx)
	if err != nil {
		return err
	}
	for _, f := range unprotectedRoutes(httpApp) {
		a.logger.Warn("this route can serve requests without api_auth: they will be refused at run time (api_errors require_auth) or served unprotected; move api_auth to the site's level, or declare the paths public in api_auth",
			zap.String("server", f.server), zap.String("route", f.where), zap.String("handler", f.handler))
	}
	if found := bypassRoutes(httpApp); len(found) > 0 {
		return bypassError(found)
	}
	if err := checkOrder(httpApp); err != nil {
		return err
	}
	if a.UpstreamTimeout < 0 {
		return fmt.Errorf("upstream_timeout must not be negative")
	}
	if a.UpstreamTimeout == 0 {
		a.UpstreamTimeout = caddy.Duration(defaultUpstreamTimeout)
	}
	if httpApp != nil {
		setUpstreamTimeouts(httpApp, time.Duration(a.UpstreamTimeout), a.logger)
		pairLimiters(httpApp, a.logger)
	}

	if a.DataDir != "" {
		dir := caddy.NewReplacer().ReplaceAll(a.DataDir, "")
		a.lock, err = lockDataDir(dir)
		if err != nil {
			a.startErr = err
		}
	}
	if !reload && a.startErr == nil && httpApp != nil {
		a.startErr = portsInUse(httpApp)
	}
	// Caddy starts its apps in map order: if the http app started first,
	// it would share a port with the other process (SO_REUSEPORT) or fail
	// with a bare "bind: address already in use" before Start could say
	// why. So `run` refuses here, before any app starts; `validate` (which
	// provisions too, next to a running gateway) is left to pass.
	if a.startErr != nil && isRun() {
		return a.startErr
	}
	return nil
}

// isRun reports whether this process is `restgate run` (what `start`
// and the systemd unit run), as opposed to validate or adapt.
func isRun() bool { return len(os.Args) > 1 && os.Args[1] == "run" }

func httpAppOf(ctx caddy.Context) (*caddyhttp.App, error) {
	v, err := ctx.AppIfConfigured("http")
	if errors.Is(err, caddy.ErrNotConfigured) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return v.(*caddyhttp.App), nil
}

// Start refuses to run what the first load found (a data directory or a
// port in use) and records this process's PID in the data directory.
func (a *App) Start() error {
	if a.startErr != nil {
		return a.startErr
	}
	if a.lock != nil {
		if err := writePID(a.lock); err != nil {
			return fmt.Errorf("recording the PID in the data directory: %v", err)
		}
	}
	process.Lock()
	process.started = true
	process.Unlock()
	return nil
}

// Stop keeps the data directory locked: the process still owns it until
// it exits (the kernel then releases the lock).
func (a *App) Stop() error { return nil }

// parseGlobalOption reads
//
//	restgate {
//		data_dir <path>
//		upstream_timeout <duration>
//	}
//
// and records which RESTGATE_* variables the adapting shell has.
func parseGlobalOption(d *caddyfile.Dispenser, _ any) (any, error) {
	a := App{AdaptedEnv: envNames(os.Environ())}
	d.Next() // the option's name
	if d.NextArg() {
		return nil, d.ArgErr()
	}
	seen := map[string]bool{}
	for d.NextBlock(0) {
		if seen[d.Val()] {
			return nil, d.Errf("duplicate restgate option %q: the later one would silently win", d.Val())
		}
		seen[d.Val()] = true
		switch d.Val() {
		case "data_dir":
			if !d.AllArgs(&a.DataDir) {
				return nil, d.ArgErr()
			}
		case "upstream_timeout":
			var v string
			if !d.AllArgs(&v) {
				return nil, d.ArgErr()
			}
			dur, err := caddy.ParseDuration(v)
			if err != nil || dur <= 0 {
				return nil, d.Errf("upstream_timeout: %q is not a positive duration", v)
			}
			a.UpstreamTimeout = caddy.Duration(dur)
		default:
			return nil, d.Errf("unrecognized restgate option %q (valid: data_dir, upstream_timeout)", d.Val())
		}
	}
	return httpcaddyfile.App{Name: "restgate", Value: caddyconfig.JSON(a, nil)}, nil
}

// Interface guards
var (
	_ caddy.App         = (*App)(nil)
	_ caddy.Provisioner = (*App)(nil)
)
