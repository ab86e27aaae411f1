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

// readmeBlock returns the README's first fenced block in lang that
// contains marker.
func readmeBlock(t *testing.T, lang, marker string) string {
	t.Helper()
	blocks := regexp.MustCompile("(?s)```"+lang+"\n(.*?)```").FindAllStringSubmatch(repoFile(t, "README.md"), -1)
	for _, b := range blocks {
		if strings.Contains(b[1], marker) {
			return b[1]
		}
	}
	t.Fatalf("README: no %s block with %q", lang, marker)
	return ""
}

// TestReadmeQuickStart runs the README's commands as pasted, in a
// directory laid out as `make run` leaves it (the development key made by
// the same script), against a gateway on the default Caddyfile; only the
// port differs: the quick-start curls (each `# {...}` line under a curl is
// what it must print) and the Python and Node clients of "From Python,
// Node and Go".
func TestReadmeQuickStart(t *testing.T) {
	block := readmeBlock(t, "sh", "KEY=$(cat data/dev.key)")

	dir := t.TempDir()
	data := filepath.Join(dir, "data")
	mk := exec.Command("bash", filepath.Join(repoDir(t), "scripts", "dev-key.sh"), binary, data)
	if out, err := mk.CombinedOutput(); err != nil {
		t.Fatalf("dev-key.sh: %v\n%s", err, out)
	}
	g := StartGateway(t, repoFile(t, "Caddyfile"), Options{Dir: data})

	port := strconv.Itoa(g.HTTPS)
	run := func(interpreter []string, block string) string {
		t.Helper()
		if _, err := exec.LookPath(interpreter[0]); err != nil {
			t.Fatalf("%s not found: install it (Debian: apt-get install %s)", interpreter[0], map[string]string{"python3": "python3", "node": "nodejs", "bash": "bash"}[interpreter[0]])
		}
		script := strings.ReplaceAll(strings.ReplaceAll(block, ":8443", ":"+port), ", 8443)", ", "+port+")")
		cmd := exec.Command(interpreter[0], append(interpreter[1:], script)...)
		cmd.Dir = dir
		cmd.Env = append(os.Environ(), "HOME="+dir)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("the README's %s block failed: %v\n%s\n--- block:\n%s", interpreter[0], err, out, script)
		}
		return string(out)
	}
	out := run([]string{"bash", "-euo", "pipefail", "-c"}, block)
	const events = `{"items":[],"pagination":{"max_page":1,"total_count":0}}`
	if py := run([]string{"python3", "-c"}, readmeBlock(t, "python", "server_hostname")); !strings.Contains(py, events) {
		t.Errorf("the Python client printed %q", py)
	}
	if js := run([]string{"node", "-e"}, readmeBlock(t, "js", "lookup:")); !strings.Contains(js, events) {
		t.Errorf("the Node client printed %q", js)
	}
	for _, line := range strings.Split(block, "\n") {
		if want, ok := strings.CutPrefix(line, "# "); ok && strings.HasPrefix(want, "{") {
			if !strings.Contains(string(out), want) {
				t.Errorf("the README promises %s; the block printed:\n%s", want, out)
			}
		}
	}
}

// repoDir is the repository's root.
func repoDir(t testing.TB) string {
	t.Helper()
	abs, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	return abs
}
