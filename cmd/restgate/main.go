// Command restgate is Caddy with the restgate modules linked in: the same
// main that `xcaddy build --with github.com/restgate/restgate` generates.
package main

import (
	_ "time/tzdata"

	caddycmd "github.com/caddyserver/caddy/v2/cmd"

	// plug in Caddy modules here
	_ "github.com/caddyserver/caddy/v2/modules/standard"
	_ "github.com/restgate/restgate"
)

func main() {
	caddycmd.Main()
}
