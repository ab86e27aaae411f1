package instance

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/restgate/restgate/internal/flock"
)

// lockName is the lock (and PID) file in the data directory.
const lockName = "restgate.pid"

// lockDataDir locks dir for this process (once per process and directory)
// or says which process has it.
func lockDataDir(dir string) (*os.File, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	process.Lock()
	defer process.Unlock()
	if f, ok := process.locks[abs]; ok {
		return f, nil
	}
	if err := os.MkdirAll(abs, 0o700); err != nil {
		return nil, fmt.Errorf("data directory: %v", err)
	}
	path := filepath.Join(abs, lockName)
	f, err := flock.TryLock(path)
	if errors.Is(err, flock.ErrLocked) {
		holder := "another process"
		if b, err := os.ReadFile(path); err == nil {
			if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil {
				holder = fmt.Sprintf("restgate PID %d", pid)
			}
		}
		return nil, fmt.Errorf("data directory %s is in use by %s: stop it first, or give this gateway its own data directory (RESTGATE_DATA)", abs, holder)
	}
	if err != nil {
		return nil, fmt.Errorf("locking the data directory: %v", err)
	}
	if process.locks == nil {
		process.locks = map[string]*os.File{}
	}
	process.locks[abs] = f
	return f, nil
}

// writePID replaces the lock file's content with this process's PID.
func writePID(f *os.File) error {
	if err := f.Truncate(0); err != nil {
		return err
	}
	_, err := f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	return err
}
