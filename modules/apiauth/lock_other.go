//go:build !unix

package apiauth

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"time"
)

// lockFile takes path+".lock" by creating it exclusively, waiting up to
// ten seconds for another run to finish with it.
func lockFile(path string) (unlock func(), err error) {
	lock := path + ".lock"
	deadline := time.Now().Add(10 * time.Second)
	for {
		f, err := os.OpenFile(lock, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
		if err == nil {
			f.Close()
			return func() { os.Remove(lock) }, nil
		}
		if !errors.Is(err, fs.ErrExist) || time.Now().After(deadline) {
			return nil, fmt.Errorf("locking %s: %v", path, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
