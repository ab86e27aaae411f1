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

// versionString is restgate's version as `restgate version` shows it,
// before Caddy's own (its module version and checksum, which Caddy appends):
// `restgate v0.3.0-12-gabc1234 v2.11.9 h1:…`. Without a version from
// -ldflags, the build's module version or VCS revision is used.
func versionString(v string) string {
	if info, ok := debug.ReadBuildInfo(); ok && v == "" {
		if info.Main.Version != "" && info.Main.Version != "(devel)" {
			v = info.Main.Version
		} else {
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
	return "restgate " + v
}
