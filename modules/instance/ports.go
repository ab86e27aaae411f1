package instance

import (
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"strconv"
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
	if len(busy) == 0 {
		return nil
	}
	what := make([]string, len(busy))
	for i, hostport := range busy {
		what[i] = hostport + ": " + holderOf(hostport)
	}
	return fmt.Errorf("cannot listen on %s; choose other ports (RESTGATE_HTTPS_PORT, RESTGATE_HTTP_PORT), "+
		"preferably outside the ephemeral range that outgoing connections take their source ports from (Linux: %s)",
		strings.Join(what, "; "), ephemeralRange())
}

// holderOf says what holds a local TCP port, from /proc/net/tcp{,6} on
// Linux: a listener (another server) or only connections (an outgoing
// connection whose source port it is, released when it closes).
func holderOf(hostport string) string {
	_, portStr, _ := net.SplitHostPort(hostport)
	port, err := strconv.ParseUint(portStr, 10, 16)
	if err != nil {
		return "in use"
	}
	listening, states := false, map[string]bool{}
	for _, file := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		b, err := os.ReadFile(file)
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n")[1:] {
			f := strings.Fields(line)
			if len(f) < 4 {
				continue
			}
			_, local, _ := strings.Cut(f[1], ":")
			if p, err := strconv.ParseUint(local, 16, 16); err != nil || p != port {
				continue
			}
			if f[3] == "0A" {
				listening = true
			} else {
				states[tcpStates[f[3]]] = true
			}
		}
	}
	switch {
	case listening:
		return "another process listens on it (another restgate, with another data directory? stop it, or choose another port)"
	case len(states) > 0:
		return "no process listens on it, but a connection of this machine uses it as its local port (" +
			strings.Join(sortedKeys(states), ", ") + "), typically an outgoing connection's source port; it is free again once that connection closes"
	default:
		return "in use by another process"
	}
}

// tcpStates names the states of /proc/net/tcp (include/net/tcp_states.h).
var tcpStates = map[string]string{
	"01": "ESTABLISHED", "02": "SYN_SENT", "03": "SYN_RECV", "04": "FIN_WAIT1", "05": "FIN_WAIT2",
	"06": "TIME_WAIT", "07": "CLOSE", "08": "CLOSE_WAIT", "09": "LAST_ACK", "0B": "CLOSING",
}

func ephemeralRange() string {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return "usually 32768-60999"
	}
	return strings.Join(strings.Fields(string(b)), "-")
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
