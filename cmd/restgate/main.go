// Command restgate is Caddy with the restgate modules linked in: the same
// main that `xcaddy build --with github.com/restgate/restgate` generates,
// plus restgate's own version in `restgate version`.
package main

import (
	"runtime/debug"
	_ "time/tzdata"

	"github.com/caddyserver/caddy/v2"
	caddycmd "github.com/caddyserver/caddy/v2/cmd"

	// plug in Caddy modules here
	_ "github.com/caddyserver/caddy/v2/modules/standard"
	_ "github.com/restgate/restgate"
)

// version is restgate's version; `make build` sets it from git
// (-ldflags '-X main.version=…'). Without it, the build's VCS revision is used.
var version string

func main() {
	caddy.CustomVersion = versionString(version)
	caddycmd.Main()
}

// versionString is Caddy's version followed by restgate's, as `restgate
// version` prints it: `v2.11.9 restgate v0.3.0-12-gabc1234`.
func versionString(v string) string {
	caddyVersion := "v2"
	info, ok := debug.ReadBuildInfo()
	if ok {
		for _, dep := range info.Deps {
			if dep.Path == "github.com/caddyserver/caddy/v2" {
				caddyVersion = dep.Version
			}
		}
		if v == "" && info.Main.Version != "" && info.Main.Version != "(devel)" {
			v = info.Main.Version
		}
		if v == "" {
			rev, dirty := "", false
			for _, s := range info.Settings {
				switch s.Key {
				case "vcs.revision":
					rev = s.Value
				case "vcs.modified":
					dirty = s.Value == "true"
				}
			}
			if len(rev) > 12 {
				rev = rev[:12]
			}
			if rev != "" {
				v = "devel-" + rev
				if dirty {
					v += "-dirty"
				}
			}
		}
	}
	if v == "" {
		v = "devel"
	}
	return caddyVersion + " restgate " + v
}
