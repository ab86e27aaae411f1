#!/usr/bin/env bash
# `make reload`: reload the gateway `make run` started, through its admin
# API. Says which address it tried (RESTGATE_ADMIN) when nothing answers
# there, instead of Caddy's bare "connection refused".
set -euo pipefail
bin=$1
admin=${RESTGATE_ADMIN:-localhost:2019}
host=${admin%:*} port=${admin##*:}
case $admin in
unix/*) ;; # a socket: let Caddy report what it finds
*)
	if ! timeout 2 bash -c "exec 3<>/dev/tcp/${host:-localhost}/$port" 2>/dev/null; then
		echo "make reload: no gateway answers on its admin address $admin (RESTGATE_ADMIN). Is \`make run\` running? If it was started with another RESTGATE_ADMIN, set the same value here." >&2
		exit 1
	fi
	;;
esac
exec "$bin" reload --config Caddyfile --adapter caddyfile --force --address "$admin"
