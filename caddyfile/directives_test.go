package caddyfile

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig"
	_ "github.com/caddyserver/caddy/v2/modules/standard"
)

var update = flag.Bool("update", false, "rewrite the golden files from the current adapter output")

// TestAdapt adapts every testdata/*.caddyfiletest (a Caddyfile, a line of
// dashes, the JSON it must adapt to) and the repository's default Caddyfile
// (against testdata/default.json), so that directive order and defaults
// cannot change unnoticed. Run `go test ./caddyfile -update` after an
// intended change, and read the diff.
func TestAdapt(t *testing.T) {
	// the defaults, whatever this shell has (the restgate option records
	// the names of the RESTGATE_* variables it was adapted with)
	for _, kv := range os.Environ() {
		k, v, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(k, "RESTGATE_") {
			os.Unsetenv(k)
			t.Cleanup(func() { os.Setenv(k, v) })
		}
	}
	files, err := filepath.Glob("testdata/*.caddyfiletest")
	if err != nil || len(files) == 0 {
		t.Fatalf("no golden files: %v", err)
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			raw, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			input, want, ok := strings.Cut(string(raw), "\n----------\n")
			if !ok {
				t.Fatalf("%s: no ---------- separator", f)
			}
			got := adapt(t, input)
			if *update {
				if err := os.WriteFile(f, []byte(input+"\n----------\n"+got), 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			if got != want {
				t.Errorf("%s adapts to:\n%s\nwant:\n%s", f, got, want)
			}
		})
	}
	t.Run("default Caddyfile", func(t *testing.T) {
		raw, err := os.ReadFile("../Caddyfile")
		if err != nil {
			t.Fatal(err)
		}
		got := adapt(t, string(raw))
		const golden = "testdata/default.json"
		if *update {
			if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
				t.Fatal(err)
			}
			return
		}
		want, err := os.ReadFile(golden)
		if err != nil {
			t.Fatal(err)
		}
		if got != string(want) {
			t.Errorf("the default Caddyfile adapts to:\n%s\nwant (%s):\n%s", got, golden, want)
		}
	})
}

func adapt(t *testing.T, input string) string {
	t.Helper()
	adapter := caddyconfig.GetAdapter("caddyfile")
	out, warnings, err := adapter.Adapt([]byte(input), map[string]any{"filename": "Caddyfile"})
	if err != nil {
		t.Fatalf("adapting: %v", err)
	}
	for _, w := range warnings {
		t.Logf("warning: %s", w.String())
	}
	var buf bytes.Buffer
	if err := json.Indent(&buf, out, "", "\t"); err != nil {
		t.Fatal(err)
	}
	return buf.String() + "\n"
}
