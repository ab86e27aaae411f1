//go:build unix

package apiauth

import (
	"os"
	"syscall"
)

// lockFile takes an exclusive lock on path+".lock" (created 0600 if need
// be), so that concurrent `restgate api-key --out` runs on one key file
// take turns and none loses another's entry.
func lockFile(path string) (unlock func(), err error) {
	f, err := os.OpenFile(path+".lock", os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		return nil, err
	}
	return func() {
		_ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
		f.Close()
	}, nil
}
