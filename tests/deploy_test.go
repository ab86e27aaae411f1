package tests

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestSystemdUnit: deploy/restgate.service passes `systemd-analyze verify`
// without a single warning (an unknown key or a bad value is only a
// warning to systemd, and an ignored hardening line is a silent hole).
func TestSystemdUnit(t *testing.T) {
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Fatal("systemd-analyze not found: install it with `apt-get install systemd`")
	}
	unit := strings.ReplaceAll(repoFile(t, "deploy/restgate.service"), "/usr/local/bin/restgate", binary)
	if !strings.Contains(unit, binary+" run --environ --config ") || !strings.Contains(unit, binary+" reload ") {
		t.Fatal("the unit no longer runs and reloads /usr/local/bin/restgate")
	}
	path := filepath.Join(t.TempDir(), "restgate.service")
	if err := os.WriteFile(path, []byte(unit), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(analyze, "verify", path).CombinedOutput()
	if err != nil || len(out) > 0 {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
	}
}
