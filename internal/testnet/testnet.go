// Package testnet has what the test servers share: a free loopback port.
package testnet

import "net"

// FreePort returns a loopback TCP port that was free a moment ago (the
// caller retries if another process takes it before it binds).
func FreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
