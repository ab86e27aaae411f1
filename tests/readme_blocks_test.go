package tests

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// readmeFence is one fenced block of the README.
type readmeFence struct {
	line int    // 1-based line of the opening fence
	lang string // the info string: caddyfile, sh, …
	text string // the block, with its final newline
}

// readmeFences returns every fenced block of the README, in order.
func readmeFences(t *testing.T) []readmeFence {
	t.Helper()
	var fences []readmeFence
	lines := strings.Split(repoFile(t, "README.md"), "\n")
	for i := 0; i < len(lines); i++ {
		lang, ok := strings.CutPrefix(lines[i], "```")
		if !ok {
			continue
		}
		start := i
		var b strings.Builder
		for i++; i < len(lines) && !strings.HasPrefix(lines[i], "```"); i++ {
			b.WriteString(lines[i])
			b.WriteByte('\n')
		}
		if i == len(lines) {
			t.Fatalf("README.md:%d: a fence that never closes", start+1)
		}
		fences = append(fences, readmeFence{line: start + 1, lang: strings.TrimSpace(lang), text: b.String()})
	}
	return fences
}

// TestReadmeCaddyfileBlocks: every ```caddyfile block of the README is
// what `restgate fmt` would write (Caddy warns "Caddyfile input is not
// formatted" otherwise: column-aligned comments are the usual cause), and
// adapts, alone or in the context it names: a global option block, a site,
// or directives that go inside a site. So no example can drift from what
// the binary accepts.
func TestReadmeCaddyfileBlocks(t *testing.T) {
	dir := t.TempDir()
	n := 0
	for _, f := range readmeFences(t) {
		if f.lang == "" && looksLikeCaddyfile(f.text) {
			t.Errorf("README.md:%d: a Caddyfile block without the `caddyfile` info string (so this test cannot check it):\n%s", f.line, f.text)
		}
		if f.lang != "caddyfile" {
			continue
		}
		n++
		fmtd, err := runBinary(dir, f.text, "fmt", "-")
		if err != nil {
			t.Errorf("README.md:%d: restgate fmt: %v\n%s", f.line, err, fmtd)
			continue
		}
		if fmtd != f.text {
			t.Errorf("README.md:%d: the block is not formatted as `restgate fmt` writes it (Caddy warns on it); formatted:\n%s", f.line, fmtd)
		}
		if err := adaptFragment(t, dir, f.text); err != nil {
			t.Errorf("README.md:%d: the block does not adapt: %v\n%s", f.line, err, f.text)
		}
	}
	if n < 10 {
		t.Fatalf("found only %d caddyfile blocks in the README; the fence parser is broken", n)
	}
}

// looksLikeCaddyfile reports whether an untagged block reads like a
// Caddyfile: a line that opens a block of one of restgate's directives or
// a site.
func looksLikeCaddyfile(text string) bool {
	return regexp.MustCompile(`(?m)^\s*(api_\w+|resources|handle\S*|reverse_proxy|redis|restgate|https?://\S+)\s.*\{\s*(#.*)?$`).MatchString(text)
}

// adaptFragment adapts a README block as a whole Caddyfile if it is one
// (it starts with a global options block or a site address), else inside
// a site, else as global options.
func adaptFragment(t *testing.T, dir, text string) error {
	first := ""
	for _, l := range strings.Split(text, "\n") {
		if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "#") {
			first = l
			break
		}
	}
	var tries []string
	switch {
	case strings.HasPrefix(first, "("):
		// a snippet: defined, then imported by a site
		name := strings.Trim(strings.Fields(first)[0], "()")
		tries = []string{text + "\nhttps://api.example.com {\n\timport " + name + "\n\trespond ok\n}\n"}
	case first == "{" || regexp.MustCompile(`^(https?://|:\d|[a-z0-9.-]+\.[a-z]+[:\s{])`).MatchString(first):
		tries = []string{text}
	default:
		// the default Caddyfile's snippets (`import upstream`), which
		// the README's recipes for its site block use
		snippets := strings.Join(regexp.MustCompile(`(?ms)^\(\w+\) \{$.*?^\}$`).FindAllString(repoFile(t, "Caddyfile"), -1), "\n") + "\n"
		tries = []string{
			snippets + "https://api.example.com {\n" + indent(text) + "}\n",
			"{\n" + indent(text) + "}\n\nhttps://api.example.com {\n\trespond ok\n}\n",
		}
	}
	var firstErr error
	for _, cf := range tries {
		path := filepath.Join(dir, "Caddyfile")
		if err := os.WriteFile(path, []byte(cf), 0o600); err != nil {
			t.Fatal(err)
		}
		out, err := runBinary(dir, "", "adapt", "--config", path, "--adapter", "caddyfile")
		if err == nil {
			return nil
		}
		if firstErr == nil {
			firstErr = &adaptError{err, out}
		}
	}
	return firstErr
}

type adaptError struct {
	err error
	out string
}

func (e *adaptError) Error() string { return e.err.Error() + ": " + strings.TrimSpace(e.out) }

func indent(text string) string {
	var b strings.Builder
	for _, l := range strings.SplitAfter(text, "\n") {
		if strings.TrimSpace(l) != "" {
			b.WriteByte('\t')
		}
		b.WriteString(l)
	}
	return b.String()
}

// runBinary runs restgate with stdin, in a bare environment (so the
// README's {$VAR:default} placeholders take their defaults), and returns
// its standard output (standard error too when it fails).
func runBinary(dir, stdin string, args ...string) (string, error) {
	cmd := exec.Command(binary, args...)
	cmd.Dir = dir
	cmd.Env = []string{"HOME=" + dir, "PATH=" + os.Getenv("PATH")}
	cmd.Stdin = strings.NewReader(stdin)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String() + stderr.String(), err
	}
	return stdout.String(), nil
}

// readmeShellNotRun names the README's sh blocks that cannot run here, by
// a line they contain, with the reason; every other sh block runs.
var readmeShellNotRun = map[string]string{
	"make test    #":                                    "the first screen's make targets: `make test` is this run",
	"RESTGATE_REDIS=10.0.0.5:6379":                      "a recipe for other machines (tests/scaleout_test.go runs the switch)",
	"xcaddy build --with":                               "`make xcaddy-check` builds it (in .ci/run)",
	"-args -caddyfile /path/to/Caddyfile":               "a Go benchmark of the reader's own Caddyfile, run from the repository (make bench runs it on the default one)",
	"OTEL_EXPORTER_OTLP_ENDPOINT=http://localhost:4318": "starts a gateway in the foreground for a collector (TestTraces runs the same recipe with its own OTLP receiver)",
	"sed -f deploy/gateways.sed Caddyfile":              "the deploy/ recipe needs root and systemd (TestDeployGateways runs it as written)",
	"KEY=$(cat data/dev.key)":                           "TestReadmeQuickStart runs it",
	"ALTER SYSTEM SET default_transaction_read_only":    "a switchover on the reader's PostgreSQL hosts (TestPostgresSwitchover sends the same three statements on loopback)",
}

// TestReadmeShellBlocks runs every other ```sh block of the README as
// pasted, in README order, in a directory laid out as `make run` leaves it
// (bin/restgate, data/ with the development key) against a gateway on the
// default Caddyfile, with the quick start's CA and KEY set; only the port
// differs. Under a command, a `# {…}` line is JSON it must print, where `…`
// stands for any text.
func TestReadmeShellBlocks(t *testing.T) {
	dir := t.TempDir()
	data := filepath.Join(dir, "data")
	if out, err := exec.Command("bash", filepath.Join(repoDir(t), "scripts", "dev-key.sh"), binary, data).CombinedOutput(); err != nil {
		t.Fatalf("dev-key.sh: %v\n%s", err, out)
	}
	if err := os.MkdirAll(filepath.Join(dir, "bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(binary, filepath.Join(dir, "bin", "restgate")); err != nil {
		t.Fatal(err)
	}
	g := StartGateway(t, repoFile(t, "Caddyfile"), Options{Dir: data})
	port := strconv.Itoa(g.HTTPS)
	prelude := "CA=data/caddy/pki/authorities/local/root.crt\nKEY=$(cat data/dev.key)\n"

	ran := 0
	for _, f := range readmeFences(t) {
		if f.lang != "sh" {
			continue
		}
		if reason := notRun(f.text); reason != "" {
			t.Logf("README.md:%d: not run: %s", f.line, reason)
			continue
		}
		ran++
		script := strings.ReplaceAll(f.text, ":8443", ":"+port)
		cmd := exec.Command("bash", "-euo", "pipefail", "-c", prelude+script)
		cmd.Dir = dir
		cmd.Env = append(os.Environ(), "HOME="+dir)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Errorf("README.md:%d: the block failed: %v\n%s\n--- block:\n%s", f.line, err, out, f.text)
			continue
		}
		for _, line := range strings.Split(f.text, "\n") {
			want, ok := strings.CutPrefix(line, "# ")
			if !ok || !strings.HasPrefix(want, "{") {
				continue
			}
			pattern := strings.ReplaceAll(regexp.QuoteMeta(want), "…", ".*?")
			if !regexp.MustCompile(pattern).Match(out) {
				t.Errorf("README.md:%d: the README promises %s; the block printed:\n%s", f.line, want, out)
			}
		}
	}
	if ran < 3 {
		t.Fatalf("ran only %d sh blocks of the README; the classification is broken", ran)
	}
}

func notRun(text string) string {
	for marker, reason := range readmeShellNotRun {
		if strings.Contains(text, marker) {
			return reason
		}
	}
	return ""
}
