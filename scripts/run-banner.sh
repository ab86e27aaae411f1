#!/usr/bin/env bash
# Printed by `make run` once the gateway's local CA exists: where to reach it
# and a curl that works.
data=${1:-./data}
port=${RESTGATE_HTTPS_PORT:-8443}
root="$data/caddy/pki/authorities/local/root.crt"
for _ in $(seq 1 300); do [ -s "$root" ] && break; sleep 0.1; done
sleep 0.5
cat >&2 <<MSG

  restgate is serving https://api.localhost:$port
  local CA root certificate: $root
  try:  curl --cacert $root https://api.localhost:$port/v1/health
        curl --cacert $root -H "Authorization: Bearer \$KEY" https://api.localhost:$port/v1/events
  (\$KEY: the development key printed when $data/api-keys.yaml was created;
   only its hash is stored. Make another: bin/restgate api-key --user you --out $data/api-keys.yaml)

MSG
