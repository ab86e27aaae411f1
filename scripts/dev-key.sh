#!/usr/bin/env bash
# `make run`'s first run: a development key in the key file (as a hash) and,
# for the README's examples, in dev.key (mode 0600). Does nothing if the key
# file exists.
set -euo pipefail
bin=$1 data=$2
[ -s "$data/api-keys.yaml" ] && exit 0
umask 077
mkdir -p "$data"
out=$("$bin" api-key --user dev --id dev --scopes read,write,admin --out "$data/api-keys.yaml" 2>&1)
printf '%s\n' "$out" >&2
grep -o 'rg_[A-Za-z0-9_-]*' <<<"$out" > "$data/dev.key"
