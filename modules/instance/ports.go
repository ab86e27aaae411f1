package instance

import (
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"syscall"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// portsInUse reports an HTTP server address another process already
// listens on. It runs before anything of this process listens (the first
// load): Caddy would share such a port with it through SO_REUSEPORT, and
// the kernel would split connections between two configurations. The probe
// binds without SO_REUSEPORT, so any listener on the port refuses it.
func portsInUse(app *caddyhttp.App) error {
	var busy []string
	for _, name := range sortedKeys(app.Servers) {
		for _, addr := range app.Servers[name].Listen {
			na, err := caddy.ParseNetworkAddress(addr)
			if err != nil || !strings.HasPrefix(na.Network, "tcp") {
				continue
			}
			for p := uint(0); p < na.PortRangeSize(); p++ {
				hostport := na.JoinHostPort(p)
				ln, err := net.Listen(na.Network, hostport)
				if err != nil {
					if errors.Is(err, syscall.EADDRINUSE) {
						busy = append(busy, hostport)
					}
					continue
				}
				ln.Close()
			}
		}
	}
	if len(busy) > 0 {
		return fmt.Errorf("%s already in use by another process (another restgate, with another data directory?): "+
			"stop it, or choose other ports (RESTGATE_HTTPS_PORT, RESTGATE_HTTP_PORT)", strings.Join(busy, ", "))
	}
	return nil
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
