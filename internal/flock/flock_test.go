//go:build unix

package flock

import (
	"errors"
	"os/exec"
	"path/filepath"
	"testing"
)

// A lock held by this process is refused to another process (flock locks
// belong to open files, so a second open in the same process would be
// refused too: the test uses a child that tries and reports).
func TestTryLockRefusesAnotherHolder(t *testing.T) {
	path := filepath.Join(t.TempDir(), "lock")
	f, err := TryLock(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := TryLock(path); !errors.Is(err, ErrLocked) {
		t.Fatalf("second TryLock while held: %v, want ErrLocked", err)
	}
	// flock(1) from util-linux, if present, is another process's view
	if _, err := exec.LookPath("flock"); err == nil {
		if out, err := exec.Command("flock", "-n", path, "true").CombinedOutput(); err == nil {
			t.Fatalf("another process took the lock: %s", out)
		}
	}
	f.Close()
	g, err := TryLock(path)
	if err != nil {
		t.Fatalf("after release: %v", err)
	}
	g.Close()
	unlock, err := Lock(path)
	if err != nil {
		t.Fatal(err)
	}
	unlock()
}
