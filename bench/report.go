package main

import (
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"time"
)

// results are the samples of every configuration, in the order of
// configs: samples[i] are configs[i]'s rounds.
type results struct {
	configs []config
	samples [][]sample
}

// row is the samples of the configuration named name.
func (r results) row(name string) []sample {
	for i, c := range r.configs {
		if c.name == name {
			return r.samples[i]
		}
	}
	panic("no row " + name)
}

// rps is the median requests/s of the configuration named name.
func (r results) rps(name string) float64 { return median(rpsOf(r.row(name))) }

// p50 is the median p50 latency of the configuration named name.
func (r results) p50(name string) time.Duration { return time.Duration(median(p50Of(r.row(name)))) }

// p99 is the median p99 latency, in ns, of the configuration named name.
func (r results) p99(name string) float64 { return median(p99Of(r.row(name))) }

// paired is the ratio of num's req/s to den's within each round (the two
// runs are 10 s apart, so a drift of the machine's speed between rounds
// cancels): the median over rounds, and the lowest and highest.
func (r results) paired(num, den string) (mid, lo, hi float64) {
	a, d := r.row(num), r.row(den)
	var rs []float64
	for k := range min(len(a), len(d)) {
		rs = append(rs, a[k].rps/d[k].rps)
	}
	return median(rs), slices.Min(rs), slices.Max(rs)
}

// microReport is what the Go microbenchmarks add to the report: the
// benchstat summary, the chain handler by handler, and each handler alone.
type microReport struct{ stat, chain, handlers string }

// render writes the report: the run's setup, the default Caddyfile's
// chain, end to end, CPU per request, the targets, memory under attack
// and the microbenchmarks.
func render(o options, r results, attacks []attack, m microReport, chainNote string, added addedHeaders, redisRTT time.Duration) string {
	var b strings.Builder
	renderSetup(&b, o)
	renderDefaultChain(&b, o, r.row, chainNote, added)
	renderEndToEnd(&b, o, r)
	renderCPU(&b, r)
	renderTargets(&b, o, r, attacks, redisRTT)
	renderMemory(&b, attacks)
	renderMicro(&b, o, m)
	return b.String()
}

// renderSetup writes the title, the machine, the command and how the
// configurations run.
func renderSetup(b *strings.Builder, o options) {
	host, _ := os.Hostname()
	cpu := "unknown CPU"
	if info, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		if m := regexp.MustCompile(`model name\s*:\s*(.*)`).FindSubmatch(info); m != nil {
			cpu = string(m[1])
		}
	}
	kernel, _ := exec.Command("uname", "-r").Output()
	wrkVer, _ := exec.Command("wrk", "-v").CombinedOutput()
	nginxVer, _ := exec.Command("nginx", "-v").CombinedOutput()
	fmt.Fprintf(b, "# restgate benchmarks\n\n")
	if o.smoke {
		fmt.Fprintf(b, "**Smoke run** (one short round): these numbers prove the bench works, nothing more.\n\n")
	}
	fmt.Fprintf(b, "- Date: %s\n- Machine: %s, %d CPUs (%s), Linux %s, %s\n- wrk: %s\n- nginx: %s\n",
		time.Now().UTC().Format("2006-01-02 15:04 MST"), host, runtime.NumCPU(), cpu, strings.TrimSpace(string(kernel)),
		runtime.Version(), firstLine(wrkVer), strings.TrimSpace(strings.TrimPrefix(firstLine(nginxVer), "nginx version: ")))
	fmt.Fprintf(b, "- Command: `go run ./bench -rounds %d -duration %v -conns %d -attack %d` (`make bench`)\n", o.rounds, o.duration, o.conns, o.attack)
	fmt.Fprintf(b, "- Load: `wrk -t1 -c%d -d%v --latency [-H 'X-API-Key: …'] URL`, pinned to CPU 1 (`taskset -c 1`); every server pinned to CPU 0. Configurations run in turn, A/B/C/…, for %d rounds after a warm-up; a sample with any non-2xx response is an error.\n", o.conns, o.duration, o.rounds)
	fmt.Fprintf(b, "- Both Caddy configurations keep up to 128 idle upstream connections (`keepalive_idle_conns_per_host 128`), as nginx keeps 64 (`keepalive 64`); Caddy's default of 32 is below wrk's 64 connections.\n- Backend: a Go net/http server answering a fixed 1 KiB JSON document (`/doc`; `/cached` adds `Cache-Control: max-age=3600`).\n")
	fmt.Fprintf(b, "- restgate's default chain: read from the default Caddyfile (see the next section). restgate's reduced chain (the rows after it): `api_errors`, `api_rate_limit_ip` and `api_rate_limit` (limits that never refuse), `api_auth` with %d keys, `api_etag` (with `cache` for the hit rows), `reverse_proxy`; access logs off in those rows.\n\n", keyCount)
}

// renderEndToEnd writes every configuration's throughput and latency, and
// what each runs.
func renderEndToEnd(b *strings.Builder, o options, r results) {
	base := r.rps("caddy reverse_proxy")
	fmt.Fprintf(b, "## End to end\n\nAt %d connections unless the row says otherwise.\n\n| configuration | median req/s | spread (min–max) | p50 | p99 | vs caddy proxy |\n|---|---:|---:|---:|---:|---:|\n", o.conns)
	for i, c := range r.configs {
		rps := rpsOf(r.samples[i])
		fmt.Fprintf(b, "| %s | %.0f | %.0f–%.0f | %v | %v | %.2f |\n", c.name, median(rps), slices.Min(rps), slices.Max(rps),
			time.Duration(median(p50Of(r.samples[i]))).Round(time.Microsecond), time.Duration(median(p99Of(r.samples[i]))).Round(time.Microsecond), median(rps)/base)
	}
	fmt.Fprintf(b, "\nWhat each row runs: ")
	for i, c := range r.configs {
		if i > 0 {
			b.WriteString("; ")
		}
		fmt.Fprintf(b, "*%s*: %s", c.name, c.note)
	}
	b.WriteString(".\n\n")
}

// counterpart is what each restgate row's CPU per request is measured
// against.
var counterpart = map[string]string{
	rowDefaultMiss:                                    rowCaddyLogMiss,
	rowDefaultHit:                                     rowCaddyLogHit,
	"restgate, cache miss":                            "caddy reverse_proxy",
	"restgate, cache hit":                             "caddy respond (ceiling inside Caddy)",
	"restgate, cache miss, HTTPS":                     "caddy reverse_proxy, HTTPS",
	"restgate, cache miss, 1 connection":              "caddy reverse_proxy, 1 connection",
	"restgate, cache miss, Redis store":               "restgate, cache miss",
	"restgate, cache miss, Redis store, 1 connection": "restgate, cache miss, 1 connection",
	rowCluster:                                        "restgate, cache miss, Redis store",
}

// renderCPU writes what each server spends per request, in the same runs.
func renderCPU(b *strings.Builder, r results) {
	fmt.Fprintf(b, "## CPU per request\n\nCPU time (user + system) of the configuration's server process group and of the backend over each run, divided by the requests wrk completed; medians of the rounds. Servers and the backend share CPU 0, so throughput follows their sum. This machine's speed drifts between runs (the backend's own cost per request moves with it), so compare rows of one round or the ratios below.\n\n| configuration | server µs/request | backend µs/request | server + backend | server + backend, added to |\n|---|---:|---:|---:|---:|\n")
	total := func(s []sample) float64 { return median(cpuOf(s, false)) + median(cpuOf(s, true)) }
	for i, c := range r.configs {
		srv, be := median(cpuOf(r.samples[i], false)), median(cpuOf(r.samples[i], true))
		if strings.HasPrefix(c.name, "backend") {
			fmt.Fprintf(b, "| %s | – | %.1f | %.1f | |\n", c.name, be, be)
			continue
		}
		added := ""
		if base, ok := counterpart[c.name]; ok {
			added = fmt.Sprintf("%+.1f µs (%s)", srv+be-total(r.row(base)), base)
		}
		fmt.Fprintf(b, "| %s | %.1f | %.1f | %.1f | %s |\n", c.name, srv, be, srv+be, added)
	}
	b.WriteString("\n")
}

// renderTargets writes the throughput targets, then the other measures.
func renderTargets(b *strings.Builder, o options, r results, attacks []attack, redisRTT time.Duration) {
	// a throughput target is met when both estimates reach it: the ratio of
	// the medians, and the median of the per-round ratios
	ratioTarget := func(label, num, den string, target float64) {
		ofMedians := r.rps(num) / r.rps(den)
		mid, lo, hi := r.paired(num, den)
		fmt.Fprintf(b, "| %s | %.2f | %.2f (%.2f–%.2f) | %s |\n", label, ofMedians, mid, lo, hi, metOrMissed(ofMedians >= target && mid >= target))
	}
	fmt.Fprintf(b, "## Targets\n\nThroughput ratios twice: of the medians of all rounds, and the median (min–max) of the ratios within each round, where the two runs are seconds apart. A target is met when both reach it.\n\n| target | ratio of medians | per-round ratio | |\n|---|---:|---:|---|\n")
	ratioTarget("full chain, cache miss / caddy proxy ≥ 0.95 req/s", "restgate, cache miss", "caddy reverse_proxy", 0.95)
	ratioTarget("the same over HTTPS ≥ 0.95", "restgate, cache miss, HTTPS", "caddy reverse_proxy, HTTPS", 0.95)
	ratioTarget("cache hit / caddy `respond` (the ceiling inside Caddy) ≥ 0.8", "restgate, cache hit", "caddy respond (ceiling inside Caddy)", 0.8)
	ratioTarget("Redis store / local store ≥ 0.90 req/s", "restgate, cache miss, Redis store", "restgate, cache miss", 0.90)
	renderMeasures(b, o, r, attacks, redisRTT)
}

// renderMeasures writes the latency the chain adds, the other ratios, and
// the memory targets under attack.
func renderMeasures(b *strings.Builder, o options, r results, attacks []attack, redisRTT time.Duration) {
	addedP50 := r.p50("restgate, cache miss, 1 connection") - r.p50("caddy reverse_proxy, 1 connection")
	addedP50Redis := r.p50("restgate, cache miss, Redis store, 1 connection") - r.p50("restgate, cache miss, 1 connection")
	addedP99 := time.Duration(r.p99("restgate, cache miss, 1 connection") - r.p99("caddy reverse_proxy, 1 connection"))
	addedP99Saturated := time.Duration(r.p99("restgate, cache miss") - r.p99("caddy reverse_proxy"))
	fmt.Fprintf(b, "\n| other measures | measured | |\n|---|---:|---|\n")
	fmt.Fprintf(b, "| full chain, cache miss: added p50 ≤ 25 µs (1 connection) | %v | %s |\n", addedP50.Round(time.Microsecond), metOrMissed(addedP50 <= 25*time.Microsecond))
	fmt.Fprintf(b, "| full chain, cache miss: added p99 (1 connection) | %v | |\n", addedP99.Round(time.Microsecond))
	fmt.Fprintf(b, "| (added p99 at %d connections, where it is queueing: connections ÷ throughput) | %v | |\n", o.conns, addedP99Saturated.Round(time.Microsecond))
	fmt.Fprintf(b, "| cache hit / caddy proxy | %.2f | |\n", r.rps("restgate, cache hit")/r.rps("caddy reverse_proxy"))
	fmt.Fprintf(b, "| resources on PostgreSQL / on SQLite, full chain, GET | %.2f | |\n", r.rps("restgate → resources on PostgreSQL")/r.rps("restgate → resources on SQLite"))
	fmt.Fprintf(b, "| Redis store: added p50 at 1 connection ≈ one Redis round trip (PING p50 %v) | %v | |\n", redisRTT.Round(time.Microsecond), addedP50Redis.Round(time.Microsecond))
	fmt.Fprintf(b, "| Redis Cluster store (3 primaries) / one Redis server, req/s | %.2f | |\n", r.rps(rowCluster)/r.rps("restgate, cache miss, Redis store"))
	const perKey = 256 // bytes a remembered key may cost, from the Go benchmark of 1M keys
	bound := int64(100_000*perKey) + 64<<20
	for _, a := range attacks {
		growth := a.after - a.rssBefore
		fmt.Fprintf(b, "| RSS growth under %s ≤ max_keys × %d B + 64 MiB (%d MiB) | %d MiB | %s |\n", a.name, perKey, bound>>20, growth>>20, metOrMissed(growth <= bound))
	}
}

// renderMemory writes the gateway's RSS before and after each attack.
func renderMemory(b *strings.Builder, attacks []attack) {
	fmt.Fprintf(b, "\n## Memory under attack\n\n| attack | requests | RSS before | RSS after |\n|---|---:|---:|---:|\n")
	for _, a := range attacks {
		fmt.Fprintf(b, "| %s | %d | %d MiB | %d MiB |\n", a.name, a.requests, a.rssBefore>>20, a.after>>20)
	}
	b.WriteString("\nThe per-IP zone keeps at most `max_keys` (100,000) buckets; invalid keys are hashed and refused without being remembered.\n")
}

// renderMicro writes the microbenchmarks' sections, those that ran.
func renderMicro(b *strings.Builder, o options, m microReport) {
	if o.smoke {
		b.WriteString("\n## Go microbenchmarks\n\nNot run in a smoke run.\n")
	}
	if m.handlers != "" {
		b.WriteString("\n## Each handler alone, and the default chain, in process\n\n" + m.handlers)
	}
	if m.chain != "" {
		b.WriteString("\n## The chain in process, handler by handler\n\n" + m.chain)
		b.WriteString("\nWhat these numbers add up to, and what of the distance to the targets cannot be removed from restgate's side: [README, Benchmarks](README.md#benchmarks).\n")
	}
	if m.stat != "" {
		fmt.Fprintf(b, "\n## Go microbenchmarks\n\n`go test -run '^$' -bench . -benchmem -count %d ./modules/... ./backends/... ./internal/...`, summarised by `benchstat` (pinned in tools/go.mod) against the previous full run's raw numbers, committed as `bench/micro-baseline.txt` (this run's become the next baseline):\n\n```\n%s```\n", o.count, m.stat)
	}
}

// cpuOf is the server's (or, with backend, the backend's) CPU µs per
// request of each sample.
func cpuOf(s []sample, backend bool) []float64 {
	out := make([]float64, len(s))
	for i, x := range s {
		out[i] = x.serverCPU
		if backend {
			out[i] = x.backendCPU
		}
	}
	return out
}

func rpsOf(s []sample) []float64 {
	out := make([]float64, len(s))
	for i, x := range s {
		out[i] = x.rps
	}
	return out
}

func p50Of(s []sample) []float64 {
	out := make([]float64, len(s))
	for i, x := range s {
		out[i] = float64(x.p50)
	}
	return out
}

func p99Of(s []sample) []float64 {
	out := make([]float64, len(s))
	for i, x := range s {
		out[i] = float64(x.p99)
	}
	return out
}

func firstLine(b []byte) string {
	s, _, _ := strings.Cut(strings.TrimSpace(string(b)), "\n")
	return s
}

func median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}
