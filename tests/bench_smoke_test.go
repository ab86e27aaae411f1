package tests

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// TestBenchSmoke runs `make bench`'s driver for one short round, so the
// bench cannot rot: every configuration must answer 200s under wrk, the
// attacks must run, the report must have every row, and no process the
// bench started (nginx's workers included) may outlive it.
func TestBenchSmoke(t *testing.T) {
	for _, tool := range []string{"wrk", "nginx", "taskset", "redis-server"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is not installed; .ci/run installs it (apt-get install wrk nginx-light redis-server postgresql)", tool)
		}
	}
	out := filepath.Join(t.TempDir(), "BENCHMARKS.md")
	cmd := exec.Command("go", "run", "./bench", "-smoke", "-bin", binary, "-out", out)
	cmd.Dir = ".."
	b, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("bench -smoke: %v\n%s", err, b)
	}
	groups := regexp.MustCompile(`bench: process group (\d+)`).FindAllSubmatch(b, -1)
	if len(groups) < 4 {
		t.Fatalf("the bench named %d process groups, want one per server:\n%s", len(groups), b)
	}
	for _, g := range groups {
		pgid, _ := strconv.Atoi(string(g[1]))
		if left := processesInGroup(t, pgid); len(left) > 0 {
			t.Errorf("processes of group %d outlived the bench: %v", pgid, left)
		}
	}
	report, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	for _, row := range []string{
		"| backend (ceiling) |", "| caddy reverse_proxy |", "| restgate, cache miss |", "| restgate, cache miss, 1 connection |", "| restgate, cache hit |",
		"| nginx, miss |", "| nginx, hit |", "| caddy reverse_proxy, HTTPS |", "| restgate, cache miss, HTTPS |",
		"| caddy respond (ceiling inside Caddy) |", "| restgate, cache miss, Redis store |", "| restgate, cache miss, Redis store, 1 connection |",
		"Redis store / local store", "ceiling inside Caddy) ≥ 0.8",
		"| restgate → resources on SQLite |", "| restgate → resources on PostgreSQL |",
		"distinct invalid API keys", "distinct client IPs", "## Go microbenchmarks", "## Targets",
	} {
		if !strings.Contains(string(report), row) {
			t.Errorf("the report lacks %q:\n%s", row, report)
		}
	}
}

// processesInGroup lists the running processes of a process group (nginx
// renames its workers, so their command lines cannot be matched).
func processesInGroup(t *testing.T, pgid int) []string {
	t.Helper()
	stats, err := filepath.Glob("/proc/[0-9]*/stat")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, f := range stats {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		// pid (comm) state ppid pgrp ...: comm may hold spaces, so split after ')'
		i := strings.LastIndexByte(string(b), ')')
		fields := strings.Fields(string(b[i+1:]))
		if len(fields) > 2 && fields[2] == strconv.Itoa(pgid) {
			out = append(out, string(b[:i+1]))
		}
	}
	return out
}
