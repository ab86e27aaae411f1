#!/usr/bin/env bash
# `make deps` (run first by `make test`): the programs the tests start for
# real, beyond Go and make. Missing ones are installed from Debian packages
# when this shell can (root, or sudo without a password); otherwise one line
# names the exact command, before any test runs.
set -euo pipefail

# command → Debian package
declare -A pkg=(
	[curl]=curl                 # the README's quick-start curls
	[wrk]=wrk                   # the smoke of `make bench`
	[nginx]=nginx-light         # …and its nginx row
	[chromium]=chromium         # the browser tests (CORS, /docs, change feeds)
	[certutil]=libnss3-tools    # …trusting the gateway's local CA in Chromium's profile
	[systemd-analyze]=systemd   # deploy/'s units are verified
	[python3]=python3           # the README's Python client
	[node]=nodejs               # the README's Node client
	[npm]=npm                   # Spectral (pinned in tools/spectral) lints the merged OpenAPI document
	[redis-server]=redis-server # the Redis, Sentinel and Cluster tests start their own
	[redis-cli]=redis-tools     # …and create the Cluster with it
)
need=()
for cmd in "${!pkg[@]}"; do
	command -v "$cmd" >/dev/null 2>&1 || need+=("${pkg[$cmd]}")
done
# PostgreSQL as internal/testpg runs it: initdb, pg_ctl and pg_basebackup in
# one directory (on PATH, or Debian's /usr/lib/postgresql/<version>/bin, which
# the package does not put on PATH), and, for a root shell, the postgres user
# the servers run as (the package creates it)
postgres_ok() {
	local dirs=() d
	command -v initdb >/dev/null 2>&1 && dirs+=("$(dirname "$(readlink -f "$(command -v initdb)")")")
	dirs+=(/usr/lib/postgresql/*/bin)
	if [ "$(id -u)" -eq 0 ] && ! id postgres >/dev/null 2>&1; then
		return 1
	fi
	for d in "${dirs[@]}"; do
		[ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ] && [ -x "$d/pg_basebackup" ] && return 0
	done
	return 1
}
postgres_ok || need+=(postgresql)
[ ${#need[@]} -eq 0 ] && exit 0

mapfile -t need < <(printf '%s\n' "${need[@]}" | sort -u)
install="apt-get install -y ${need[*]}"
if command -v apt-get >/dev/null 2>&1; then
	as=()
	if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
		as=(sudo)
	fi
	if [ "$(id -u)" -eq 0 ] || [ ${#as[@]} -gt 0 ]; then
		echo "make deps: installing ${need[*]}" >&2
		"${as[@]}" apt-get update -qq
		"${as[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
		# an install that left a program missing fails here, not in a test
		missing=()
		for cmd in "${!pkg[@]}"; do
			command -v "$cmd" >/dev/null 2>&1 || missing+=("$cmd")
		done
		postgres_ok || missing+=("PostgreSQL (initdb, pg_ctl, pg_basebackup; the postgres user when root)")
		if [ ${#missing[@]} -gt 0 ]; then
			echo "make deps: still missing after apt-get install: ${missing[*]}" >&2
			exit 1
		fi
		exit 0
	fi
	echo "make test needs ${need[*]}: install them with  sudo apt-get update && sudo $install  (then run make test again)" >&2
else
	echo "make test needs these programs (Debian package names): ${need[*]}; install them with your system's package manager, then run make test again" >&2
fi
exit 1
