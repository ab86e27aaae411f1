package instance

import (
	"fmt"
	"slices"
	"strings"
)

// envPrefix names the variables the default Caddyfile reads.
const envPrefix = "RESTGATE_"

// envNames returns the names of the RESTGATE_* variables in environ, sorted.
func envNames(environ []string) []string {
	names := []string{}
	for _, kv := range environ {
		name, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(name, envPrefix) {
			names = append(names, name)
		}
	}
	slices.Sort(names)
	return names
}

// checkReloadEnv refuses a reload whose configuration was adapted without
// a RESTGATE_* variable that the running gateway is running with: its
// {$VAR:default} placeholders took the Caddyfile's defaults, which would
// move the gateway (ports, admin address, data directory) without a word.
// A variable with another value is an intended change and is accepted; so
// is a configuration not adapted from a Caddyfile (adapted is nil).
func checkReloadEnv(adapted []string, running []string) error {
	if adapted == nil {
		return nil
	}
	var missing []string
	for _, name := range envNames(running) {
		if _, found := slices.BinarySearch(adapted, name); !found {
			missing = append(missing, name)
		}
	}
	if len(missing) == 0 {
		return nil
	}
	return fmt.Errorf("reload refused: this shell has no %s, which the running gateway is running with, "+
		"so the configuration would fall back to the Caddyfile's defaults; reload from the environment the gateway runs in "+
		"(`make reload` from the shell that ran `make run`, or `systemctl reload restgate`). "+
		"To drop a variable on purpose, set it to the value you want (its default in the Caddyfile's {$VAR:default}) for this reload, "+
		"or restart the gateway without it", strings.Join(missing, ", "))
}
