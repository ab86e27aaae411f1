// Package testredis runs a real redis-server for tests: on a free loopback
// port, in a temporary directory, without persistence. A missing
// redis-server fails the test run with the command that installs it: tests
// never skip for it.
package testredis

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/restgate/restgate/internal/testnet"
)

// Server is one redis-server process.
type Server struct {
	Addr string
	dir  string
	args []string // the command line after the program
	cmd  *exec.Cmd
	done chan struct{}
}

// Start runs a redis-server on a free loopback port.
func Start() (*Server, error) {
	return start("restgate-redis-", func(dir string, port int) ([]string, error) {
		return serverArgs(dir, port), nil
	})
}

// serverArgs is a plain redis-server's command line.
func serverArgs(dir string, port int) []string {
	return []string{"--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--dir", dir,
		"--save", "", "--appendonly", "no", "--daemonize", "no", "--loglevel", "warning",
		"--logfile", filepath.Join(dir, "redis.log")}
}

// start runs redis-server with the command line that args gives for a
// temporary directory and a free loopback port, until it answers PING.
func start(pattern string, args func(dir string, port int) ([]string, error)) (*Server, error) {
	path, err := serverPath()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", pattern)
	if err != nil {
		return nil, err
	}
	s := &Server{dir: dir}
	var lastErr error
	for range 3 { // a free port can be taken between pick and bind
		port, err := testnet.FreePort()
		if err != nil {
			return nil, err
		}
		s.Addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
		if s.args, lastErr = args(dir, port); lastErr != nil {
			break
		}
		if lastErr = s.run(path); lastErr == nil {
			return s, nil
		}
	}
	os.RemoveAll(dir)
	return nil, lastErr
}

func serverPath() (string, error) {
	path, err := exec.LookPath("redis-server")
	if err != nil {
		return "", errors.New("redis-server not found: install it with `apt-get install redis-server` (.ci/run does)")
	}
	return path, nil
}

func (s *Server) run(path string) error {
	s.cmd = exec.Command(path, s.args...)
	cmd := s.cmd
	if err := cmd.Start(); err != nil {
		return err
	}
	done := make(chan struct{})
	s.done = done
	go func() { _ = cmd.Wait(); close(done) }()
	c := redis.NewClient(&redis.Options{Addr: s.Addr, MaxRetries: -1})
	defer c.Close()
	deadline := time.Now().Add(15 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		err := c.Ping(ctx).Err()
		cancel()
		if err == nil {
			return nil
		}
		select {
		case <-s.done:
			return fmt.Errorf("redis-server on %s exited: %v", s.Addr, s.cmd.ProcessState)
		default:
		}
		if time.Now().After(deadline) {
			s.Kill()
			return fmt.Errorf("redis-server on %s did not answer PING within 15s: %v", s.Addr, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// PID is the server's process id (to freeze it with SIGSTOP, say); 0 when
// it is not running.
func (s *Server) PID() int {
	if s.cmd == nil || s.cmd.Process == nil {
		return 0
	}
	return s.cmd.Process.Pid
}

// Kill ends the server with SIGKILL, as a crash would.
func (s *Server) Kill() {
	if s.cmd != nil && s.cmd.Process != nil {
		_ = s.cmd.Process.Kill()
		<-s.done
	}
}

// Restart starts the server again on the same address (empty: no
// persistence), unless it is running. A client that was connected must
// reconnect.
func (s *Server) Restart() error {
	if s.Running() {
		return nil
	}
	path, err := serverPath()
	if err != nil {
		return err
	}
	return s.run(path)
}

// Running reports whether the server process is alive.
func (s *Server) Running() bool {
	if s.done == nil {
		return false
	}
	select {
	case <-s.done:
		return false
	default:
		return true
	}
}

// Stop ends the server and removes its directory.
func (s *Server) Stop() {
	if s.cmd != nil && s.cmd.Process != nil {
		_ = s.cmd.Process.Signal(os.Interrupt)
		select {
		case <-s.done:
		case <-time.After(10 * time.Second):
			s.Kill()
		}
	}
	os.RemoveAll(s.dir)
}

// Client returns a client for the server (the caller closes it).
func (s *Server) Client() *redis.Client {
	return redis.NewClient(&redis.Options{Addr: s.Addr, MaxRetries: -1})
}
