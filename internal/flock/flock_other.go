//go:build !unix

package flock

import "os"

// Elsewhere the lock is the open file itself: restgate's supported
// platforms are unix; this keeps the module building.
func lock(*os.File, bool) error { return nil }

func unlockFile(*os.File) {}
