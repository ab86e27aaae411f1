// Package flock takes advisory locks on files: blocking, for commands that
// take turns on a file, and non-blocking, for a process that must be the
// only one using a directory. The kernel releases them when the process
// ends, however it ends.
package flock

import (
	"errors"
	"os"
)

// ErrLocked is returned by TryLock when another process holds the lock.
var ErrLocked = errors.New("locked by another process")

// Lock takes an exclusive lock on path (created 0600 if need be), waiting
// for another holder to let go.
func Lock(path string) (unlock func(), err error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, err
	}
	if err := lock(f, true); err != nil {
		f.Close()
		return nil, err
	}
	return func() { unlockFile(f); f.Close() }, nil
}

// TryLock takes an exclusive lock on path without waiting: ErrLocked if
// another process holds it. The file stays open (and locked) until the
// caller closes it.
func TryLock(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, err
	}
	if err := lock(f, false); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}
