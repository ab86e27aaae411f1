package tests

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestBenchSmoke runs `make bench`'s driver for one short round, so the
// bench cannot rot: every configuration must answer 200s under wrk, the
// attacks must run, and the report must have every row.
func TestBenchSmoke(t *testing.T) {
	for _, tool := range []string{"wrk", "nginx", "taskset"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is not installed; .ci/run installs it (apt-get install wrk nginx-light)", tool)
		}
	}
	out := filepath.Join(t.TempDir(), "BENCHMARKS.md")
	cmd := exec.Command("go", "run", "./bench", "-smoke", "-bin", binary, "-out", out)
	cmd.Dir = ".."
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("bench -smoke: %v\n%s", err, b)
	}
	report, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	for _, row := range []string{
		"| backend (ceiling) |", "| caddy reverse_proxy |", "| restgate, cache miss |", "| restgate, cache miss, 1 connection |", "| restgate, cache hit |",
		"| nginx, miss |", "| nginx, hit |", "| caddy reverse_proxy, HTTPS |", "| restgate, cache miss, HTTPS |",
		"distinct invalid API keys", "distinct client IPs", "## Go microbenchmarks", "## Targets",
	} {
		if !strings.Contains(string(report), row) {
			t.Errorf("the report lacks %q:\n%s", row, report)
		}
	}
}
