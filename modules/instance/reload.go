package instance

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"

	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// Caddy moves its admin endpoint to a new configuration's address before
// it provisions the new configuration's apps, and keeps it there when the
// load then fails. So a reload adapted in a bare shell would move the
// admin API to the Caddyfile's default even though App.Provision refuses
// the configuration: `restgate reload` therefore asks the running gateway
// first, before anything is sent (cobra runs OnInitialize hooks before
// every command; this one acts on `reload` only).
func init() {
	cobra.OnInitialize(func() {
		if len(os.Args) < 2 || os.Args[1] != "reload" {
			return
		}
		if err := checkReload(os.Args[2:], os.Environ()); err != nil {
			fmt.Fprintln(os.Stderr, "restgate:", err)
			os.Exit(1)
		}
	})
}

// checkReload compares the RESTGATE_* variables of this shell with those
// the running gateway's configuration was adapted with (its restgate app's
// adapted_env). A gateway that cannot be asked, or has no restgate app, is
// left to Caddy's reload to report.
func checkReload(args, environ []string) error {
	fs := pflag.NewFlagSet("reload", pflag.ContinueOnError)
	fs.ParseErrorsAllowlist.UnknownFlags = true
	fs.SetOutput(io.Discard)
	configFlag := fs.StringP("config", "c", "", "")
	adapterFlag := fs.StringP("adapter", "a", "", "")
	addressFlag := fs.String("address", "", "")
	fs.BoolP("force", "f", false, "")
	if err := fs.Parse(args); err != nil {
		return nil
	}
	config, configFile, _, err := caddycmd.LoadConfig(*configFlag, *adapterFlag)
	if err != nil {
		return nil
	}
	addr, err := caddycmd.DetermineAdminAPIAddress(*addressFlag, config, configFile, *adapterFlag)
	if err != nil {
		return nil
	}
	resp, err := caddycmd.AdminAPIRequest(addr, http.MethodGet, "/config/apps/restgate/adapted_env", nil, nil)
	if err != nil {
		return nil
	}
	defer resp.Body.Close()
	var running []string
	if resp.StatusCode != http.StatusOK || json.NewDecoder(io.LimitReader(resp.Body, 1<<16)).Decode(&running) != nil || running == nil {
		return nil
	}
	env := make([]string, len(running))
	for i, name := range running {
		env[i] = name + "="
	}
	return checkReloadEnv(envNames(environ), env)
}
