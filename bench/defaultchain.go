package main

import (
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

// renderDefaultChain writes the default Caddyfile's chain against bare
// Caddy with the same access log and HSTS: throughput, CPU and allocations
// per request, and the targets; then where the added cost lives:
// in Caddy's work on the fields the chain adds (bare Caddy setting them
// statically) or in restgate's handlers. row returns a configuration's
// samples.
func renderDefaultChain(b *strings.Builder, o options, row func(string) []sample, chainNote string, added addedHeaders) {
	fmt.Fprintf(b, "## The default Caddyfile's chain\n\n%s, against bare Caddy with the same access log (to a file, through `api_redact`, `log_append request_id`) and the same HSTS header, in the same interleaved rounds, at %d connections, keyed (`X-API-Key`, 10,000 keys). Each server is its own process (one logged site each). CPU: user + system of the server's process group and of the backend, per request; allocations: the server process's heap allocations per request (`memstats.Mallocs` from its admin `/debug/vars`), whole process.\n\n", chainNote, o.conns)
	b.WriteString("| path | restgate req/s | bare Caddy req/s | ratio of medians | per-round ratio (min–max) | CPU µs/req restgate | bare Caddy | added | allocs/req restgate | bare Caddy | added |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	type pair struct {
		what, rg, ref  string
		ratio, addedUS float64 // targets
	}
	pairs := []pair{
		{"cache miss (proxied) vs `reverse_proxy`", rowDefaultMiss, rowCaddyLogMiss, 0.95, 8},
		{"cache hit vs `respond` of the same body", rowDefaultHit, rowCaddyLogHit, 0.90, 5},
	}
	var targets strings.Builder
	for _, p := range pairs {
		rg, ref := row(p.rg), row(p.ref)
		ratio := median(rpsOf(rg)) / median(rpsOf(ref))
		var rs []float64
		for k := range min(len(rg), len(ref)) {
			rs = append(rs, rg[k].rps/ref[k].rps)
		}
		cpu := func(s []sample) float64 { return median(cpuOf(s, false)) + median(cpuOf(s, true)) }
		added := cpu(rg) - cpu(ref)
		allocs := func(s []sample) float64 { return median(allocsOf(s)) }
		fmt.Fprintf(b, "| %s | %.0f | %.0f | %.3f | %.3f (%.2f–%.2f) | %.1f | %.1f | %+.1f | %.0f | %.0f | %+.0f |\n",
			p.what, median(rpsOf(rg)), median(rpsOf(ref)), ratio, median(rs), slices.Min(rs), slices.Max(rs),
			cpu(rg), cpu(ref), added, allocs(rg), allocs(ref), allocs(rg)-allocs(ref))
		fmt.Fprintf(&targets, "| %s: ≥ %.2f× and ≤ %.0f µs CPU added | %.3f (per round %.3f) | %+.1f µs | %s |\n",
			p.what, p.ratio, p.addedUS, ratio, median(rs), added, metOrMissed(ratio >= p.ratio && median(rs) >= p.ratio && added <= p.addedUS))
	}
	b.WriteString("\n| target (default chain, end to end) | ratio | CPU added | |\n|---|---:|---:|---|\n")
	b.WriteString(targets.String())
	renderWhereItLives(b, row, added)
	b.WriteString("\nThe rows below these (End to end, CPU per request, Targets) are the earlier, reduced chain (no access log, no HSTS, no `require_auth`, `api_cors` or `api_idempotency`): a second view, comparable with earlier reports.\n\n")
}

// renderWhereItLives splits the default chain's added CPU per request in
// two, by the rows of bare Caddy setting the chain's fields statically:
// Caddy's work on those fields, and restgate's handlers' own.
func renderWhereItLives(b *strings.Builder, row func(string) []sample, added addedHeaders) {
	fmt.Fprintf(b, "\nWhere the added CPU lives. The fields the chain adds, read from a running copy of it before the rounds: %s. Bare Caddy sets the same fields with the same values statically (`header`, `request_header`), in its own rows of the same rounds: what that adds to bare Caddy is Caddy's own work on those fields (setting, writing and logging them), which any handler adding them would cost; what the chain adds over that is restgate's handlers' work.\n\n", added.names())
	b.WriteString("| path | bare Caddy | + the chain's fields, set statically | restgate's chain | Caddy's work on the fields | restgate's handlers | req/s: chain / Caddy with the fields |\n|---|---:|---:|---:|---:|---:|---:|\n")
	cpu := func(s []sample) float64 { return median(cpuOf(s, false)) + median(cpuOf(s, true)) }
	for _, p := range [][4]string{
		{"cache miss (proxied)", rowCaddyLogMiss, rowCaddyHdrMiss, rowDefaultMiss},
		{"cache hit", rowCaddyLogHit, rowCaddyHdrHit, rowDefaultHit},
	} {
		bare, fields, chain := row(p[1]), row(p[2]), row(p[3])
		var rs []float64
		for k := range min(len(chain), len(fields)) {
			rs = append(rs, chain[k].rps/fields[k].rps)
		}
		fmt.Fprintf(b, "| %s | %.1f µs | %.1f µs | %.1f µs | %+.1f µs | %+.1f µs | %.3f |\n", p[0], cpu(bare), cpu(fields), cpu(chain),
			cpu(fields)-cpu(bare), cpu(chain)-cpu(fields), median(rs))
	}
}

func metOrMissed(ok bool) string {
	if ok {
		return "met"
	}
	return "**missed**"
}

func allocsOf(s []sample) []float64 {
	out := make([]float64, len(s))
	for i, x := range s {
		out[i] = x.allocs
	}
	return out
}

// handlerTable summarises BenchmarkHandler (every restgate handler of the
// default Caddyfile alone, as shipped, in front of `respond`) and the
// default-chain rows of BenchmarkChain, with the allocation targets.
func handlerTable(raw []byte) string {
	rows := benchRows(raw, `(?:Handler|Chain)/(\w+)`)
	base := rows["Handler/respond"]
	if base == nil {
		return ""
	}
	var b strings.Builder
	b.WriteString("`BenchmarkHandler` (internal/chainbench): each restgate handler of the default Caddyfile alone, configured as shipped (`api_errors` without `require_auth`, which needs `api_auth` behind it), in front of Caddy's `respond` of the 1 KiB document, `ServeHTTP` called directly (no network): what the handler adds to `respond`. Medians of the runs.\n\n| handler | ns/op | added | B/op | allocs/op | added |\n|---|---:|---:|---:|---:|---:|\n")
	names := make([]string, 0, len(rows))
	for n := range rows {
		if strings.HasPrefix(n, "Handler/") {
			names = append(names, n)
		}
	}
	slices.Sort(names)
	for _, n := range names {
		st := rows[n]
		added, addedAllocs := "", ""
		if n != "Handler/respond" {
			added = fmt.Sprintf("%+.0f", median(st.ns)-median(base.ns))
			addedAllocs = fmt.Sprintf("%+.0f", median(st.allocs)-median(base.allocs))
		}
		fmt.Fprintf(&b, "| `%s` | %.0f | %s | %.0f | %.0f | %s |\n", strings.TrimPrefix(n, "Handler/"), median(st.ns), added, median(st.bytes), median(st.allocs), addedAllocs)
	}
	b.WriteString("\n`BenchmarkChain`'s default-chain rows: the whole chain as shipped (read from the Caddyfile) against bare Caddy with the same access log and HSTS, in process.\n\n| row | ns/op | B/op | allocs/op | chain − bare Caddy: ns | allocs |\n|---|---:|---:|---:|---:|---:|\n")
	for _, p := range [][2]string{{"default_miss", "default_caddy_miss"}, {"default_hit", "default_caddy_hit"}} {
		rg, ref := rows["Chain/"+p[0]], rows["Chain/"+p[1]]
		if rg == nil || ref == nil {
			continue
		}
		fmt.Fprintf(&b, "| `%s` | %.0f | %.0f | %.0f | | |\n", p[1], median(ref.ns), median(ref.bytes), median(ref.allocs))
		fmt.Fprintf(&b, "| `%s` | %.0f | %.0f | %.0f | %+.0f | %+.0f |\n", p[0], median(rg.ns), median(rg.bytes), median(rg.allocs), median(rg.ns)-median(ref.ns), median(rg.allocs)-median(ref.allocs))
	}
	b.WriteString("\nThe difference holds restgate's handlers and what Caddy's access log spends on the fields they add; the handlers' own share is in BENCHMARKS.md's profile section.\n")
	return b.String()
}

type benchStats struct{ ns, bytes, allocs []float64 }

// benchRows collects a benchmark's -count runs by name (the part of
// pattern's first group, prefixed with Handler/ or Chain/).
func benchRows(raw []byte, pattern string) map[string]*benchStats {
	rows := map[string]*benchStats{}
	re := regexp.MustCompile(`^Benchmark` + pattern + `(?:-\d+)?\s+\d+\s+([0-9.]+) ns/op\s+([0-9.]+) B/op\s+([0-9.]+) allocs/op`)
	for _, line := range strings.Split(string(raw), "\n") {
		m := re.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		kind, _, _ := strings.Cut(strings.TrimPrefix(line, "Benchmark"), "/")
		name := kind + "/" + m[1]
		st := rows[name]
		if st == nil {
			st = new(benchStats)
			rows[name] = st
		}
		ns, _ := strconv.ParseFloat(m[2], 64)
		by, _ := strconv.ParseFloat(m[3], 64)
		al, _ := strconv.ParseFloat(m[4], 64)
		st.ns, st.bytes, st.allocs = append(st.ns, ns), append(st.bytes, by), append(st.allocs, al)
	}
	return rows
}
