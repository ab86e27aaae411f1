#!/usr/bin/env bash
# Reads `go test -v` output and fails on any failed or skipped test (a
# skipped integration test is a failure here), then prints the counts per
# package and the closing line.
set -euo pipefail
log=${1:?usage: test-summary.sh LOG}
awk '
	/^[[:space:]]*--- PASS/ { pass++ }
	/^[[:space:]]*--- FAIL/ { fail++; tfail++ }
	/^[[:space:]]*--- SKIP/ { skip++; tskip++; print "skipped (a failure here): " $0 }
	/^(ok|FAIL)[[:space:]]+github.com/ {
		printf "%-4s %-50s %4d passed\n", $1, $2, pass; tpass += pass; pass = 0
		if ($1 == "FAIL") pkgfail++
	}
	/^panic:/ { pkgfail++ }
	END {
		failed = tfail + (tfail == 0 ? pkgfail : 0)
		printf "%d passed, %d failed, %d skipped\n", tpass, failed, tskip
		exit (failed > 0 || tskip > 0 || tpass == 0) ? 1 : 0
	}
' "$log"
