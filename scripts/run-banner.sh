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
  try:  CA=$root KEY=\$(cat $data/dev.key)
        curl --cacert \$CA https://api.localhost:$port/v1/health
        curl --cacert \$CA -H "Authorization: Bearer \$KEY" https://api.localhost:$port/v1/events
  (dev.key holds the development key for these examples; api-keys.yaml only its hash.
   Another key: bin/restgate api-key --user you --out $data/api-keys.yaml)
  metrics: http://${RESTGATE_ADMIN:-localhost:2019}/metrics

MSG
