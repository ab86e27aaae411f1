package main

import (
	"bytes"
	"fmt"
	"log"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
)

// microSections runs the Go microbenchmarks, when o.micro, and returns
// the report's sections of them.
func microSections(o options) (microReport, error) {
	if !o.micro {
		return microReport{}, nil
	}
	stat, raw, err := runMicro(o)
	if err != nil {
		return microReport{}, err
	}
	return microReport{stat: stat, chain: chainTable(raw), handlers: handlerTable(raw)}, nil
}

// runMicro runs the Go microbenchmarks and summarises them with benchstat.
func runMicro(o options) (stat string, raw []byte, err error) {
	args := []string{"test", "-run", "^$", "-bench", ".", "-benchmem", "-count", strconv.Itoa(o.count)}
	if o.smoke {
		args = append(args, "-benchtime", "100x")
	}
	if o.quick {
		args = append(args, "./internal/chainbench")
	} else {
		args = append(args, "./modules/...", "./backends/...", "./internal/...")
	}
	log.Printf("go %s", strings.Join(args, " "))
	// benchmark lines from stdout only: a module's log line on stderr
	// would otherwise split a result line in two
	var stderr bytes.Buffer
	cmd := exec.Command("go", args...)
	cmd.Stderr = &stderr
	raw, err = cmd.Output()
	if err != nil {
		return "", nil, fmt.Errorf("microbenchmarks: %v\n%s\n%s", err, raw, stderr.Bytes())
	}
	raw = joinSplitResults(raw)
	f, err := os.CreateTemp("", "micro-*.txt")
	if err != nil {
		return "", nil, err
	}
	defer os.Remove(f.Name())
	f.Write(raw)
	f.Close()
	// against the committed numbers when there are some, so a regression
	// of a hot path shows as a delta; then this run becomes the baseline
	args = []string{"tool", "-modfile=tools/go.mod", "benchstat"}
	if _, err := os.Stat(microBaseline); err == nil && !o.smoke && !o.quick {
		args = append(args, "committed="+microBaseline, "now="+f.Name())
	} else {
		args = append(args, f.Name())
	}
	out, err := exec.Command("go", args...).CombinedOutput()
	if err != nil {
		return "", nil, fmt.Errorf("benchstat: %v\n%s", err, out)
	}
	if !o.smoke && !o.quick {
		if err := os.WriteFile(microBaseline, raw, 0o644); err != nil {
			return "", nil, err
		}
	}
	return string(out), raw, nil
}

// chainTable summarises BenchmarkChain (internal/chainbench): one Caddy
// server in process, the upstream answered from memory, each row adding one
// handler of the default chain. Medians of the -count runs.
func chainTable(raw []byte) string {
	rows := benchRows(raw, `Chain/(\w+)`)
	order := []struct{ name, what string }{
		{"bare", "`reverse_proxy` alone"},
		{"errors", "+ `api_errors`"},
		{"ip_limit", "+ `api_rate_limit_ip`"},
		{"auth", "+ `api_auth` (10,000 keys)"},
		{"user_limit", "+ `api_rate_limit`"},
		{"full", "+ `api_etag`: the default chain, cache miss"},
		{"cache_hit", "the same chain, `api_etag { cache }`, a hit"},
		{"respond", "Caddy's `respond` of the same 1 KiB"},
	}
	var b strings.Builder
	b.WriteString("`BenchmarkChain` (internal/chainbench): one Caddy server in process with a site per row, the upstream answered from memory, `ServeHTTP` called directly: what each handler adds in CPU and allocations, without the kernel's and the backend's share. Medians of the runs; on these shared vCPUs a few hundred ns/op is noise, the allocation counts are exact.\n\n| site | ns/op | added | B/op | allocs/op | added |\n|---|---:|---:|---:|---:|---:|\n")
	var prev *benchStats
	for _, o := range order {
		st := rows["Chain/"+o.name]
		if st == nil {
			return ""
		}
		added, addedAllocs := "", ""
		switch {
		case o.name == "cache_hit":
			prev = nil
		case o.name == "respond":
			if hit := rows["Chain/cache_hit"]; hit != nil {
				added = fmt.Sprintf("hit − this: %+.0f", median(hit.ns)-median(st.ns))
				addedAllocs = fmt.Sprintf("hit − this: %+.0f", median(hit.allocs)-median(st.allocs))
			}
		case prev != nil:
			added = fmt.Sprintf("%+.0f", median(st.ns)-median(prev.ns))
			addedAllocs = fmt.Sprintf("%+.0f", median(st.allocs)-median(prev.allocs))
		}
		fmt.Fprintf(&b, "| %s | %.0f | %s | %.0f | %.0f | %s |\n", o.what, median(st.ns), added, median(st.bytes), median(st.allocs), addedAllocs)
		if o.name != "cache_hit" {
			prev = st
		}
	}
	if bare, full := rows["Chain/bare"], rows["Chain/full"]; bare != nil && full != nil {
		fmt.Fprintf(&b, "\nThe default chain adds %.1f µs and %.0f allocations to Caddy's %.1f µs per proxied request here (%.0f%%); the end-to-end rows add the kernel's and the backend's work to both.\n",
			(median(full.ns)-median(bare.ns))/1000, median(full.allocs)-median(bare.allocs), median(bare.ns)/1000, 100*(median(full.ns)-median(bare.ns))/median(bare.ns))
	}
	return b.String()
}

// joinSplitResults mends benchmark result lines that a package's own
// output on stdout (a debug log line of a module under test) split between
// the name and the numbers, and drops such lines: benchstat reads only
// whole result lines.
func joinSplitResults(raw []byte) []byte {
	var out bytes.Buffer
	pending := ""
	for _, line := range strings.Split(string(raw), "\n") {
		switch {
		case strings.HasPrefix(line, "Benchmark") && !strings.Contains(line, "ns/op"):
			pending = strings.Fields(line)[0] // the name; a log line may follow it
		case pending != "" && reResultTail.MatchString(line):
			out.WriteString(pending + "\t" + strings.TrimLeft(line, " \t") + "\n")
			pending = ""
		case strings.HasPrefix(line, "Benchmark"), strings.HasPrefix(line, "goos:"), strings.HasPrefix(line, "goarch:"),
			strings.HasPrefix(line, "pkg:"), strings.HasPrefix(line, "cpu:"), strings.HasPrefix(line, "PASS"), strings.HasPrefix(line, "ok "):
			out.WriteString(line + "\n")
		}
	}
	return out.Bytes()
}

// reResultTail is the numbers of a result line: iterations, then ns/op.
var reResultTail = regexp.MustCompile(`^\s*\d+\s+[0-9.]+ ns/op`)

// microBaseline holds the raw microbenchmark output of the last full
// `make bench`, committed with BENCHMARKS.md: the next run compares with it.
const microBaseline = "bench/micro-baseline.txt"
