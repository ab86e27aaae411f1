package testpg

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
)

// standbyName is the standby's cluster_name, which its WAL receiver
// gives as application_name, and which the primary's
// synchronous_standby_names names.
const standbyName = "standby"

// Replicated is a primary with one synchronous streaming standby, each
// on its own free loopback port: a commit on the primary is acknowledged
// only once the standby has flushed it, so a promoted standby holds every
// acknowledged write.
type Replicated struct {
	Primary, Standby *Server
}

// StartReplicated initialises a primary (wal_level=replica, the standby
// named in synchronous_standby_names on its command line, so that the
// standby's copy of the configuration does not carry it and its promotion
// leaves a primary that waits for nobody), copies it with pg_basebackup -R
// into the standby, starts the standby and waits until the primary
// reports it in pg_stat_replication as sync.
func StartReplicated() (*Replicated, error) {
	p, err := Start()
	if err != nil {
		return nil, err
	}
	// synchronous_standby_names takes effect on a reload, but only the
	// command line keeps it out of the files pg_basebackup copies
	p.opts = "-c wal_level=replica -c max_wal_senders=4 -c synchronous_standby_names=" + standbyName
	if err := p.restartWith(); err != nil {
		p.Stop()
		return nil, err
	}
	s, err := newServer()
	if err != nil {
		p.Stop()
		return nil, err
	}
	r := &Replicated{Primary: p, Standby: s}
	if out, err := s.run("pg_basebackup", "-D", s.data(), "-h", "127.0.0.1", "-p", strconv.Itoa(p.Port), "-U", "postgres",
		"-R", "-X", "stream", "-c", "fast", "--no-sync"); err != nil {
		r.Stop()
		return nil, fmt.Errorf("pg_basebackup: %v\n%s", err, out)
	}
	s.opts = "-c cluster_name=" + standbyName + " -c hot_standby=on"
	if err := s.listen(); err != nil {
		r.Stop()
		return nil, err
	}
	if err := r.waitSync(time.Minute); err != nil {
		r.Stop()
		return nil, err
	}
	return r, nil
}

// restartWith restarts a running server (on its port) with its opts.
func (s *Server) restartWith() error {
	if out, err := s.run("pg_ctl", "-D", s.data(), "-m", "fast", "-w", "stop"); err != nil {
		return fmt.Errorf("pg_ctl stop: %v\n%s", err, out)
	}
	return s.start()
}

// waitSync waits until the primary streams to the standby synchronously.
func (r *Replicated) waitSync(timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	c, err := pgx.Connect(ctx, r.Primary.URL("postgres"))
	if err != nil {
		return err
	}
	defer c.Close(context.Background())
	for {
		var state string
		err := c.QueryRow(ctx, `SELECT sync_state FROM pg_stat_replication WHERE application_name = $1`, standbyName).Scan(&state)
		if err == nil && state == "sync" {
			return nil
		}
		if !errors.Is(err, pgx.ErrNoRows) && err != nil && ctx.Err() == nil {
			return err
		}
		select {
		case <-ctx.Done():
			log, _ := os.ReadFile(filepath.Join(r.Standby.dir, "log"))
			return fmt.Errorf("the standby did not become a synchronous standby within %v (sync_state %q, %v); its log:\n%s", timeout, state, err, log)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// URL is the multi-host URL of database db, primary first, for a client
// that follows the primary (target_session_attrs=read-write).
func (r *Replicated) URL(db string) string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d,127.0.0.1:%d/%s?sslmode=disable&target_session_attrs=read-write",
		r.Primary.Port, r.Standby.Port, db)
}

// NewDatabase creates an empty database on the primary (and so on the
// standby) and returns its name.
func (r *Replicated) NewDatabase(prefix string) (string, error) {
	url, err := r.Primary.NewDatabase(prefix)
	if err != nil {
		return "", err
	}
	i := strings.LastIndexByte(url, '/')
	return strings.TrimSuffix(url[i+1:], "?sslmode=disable"), nil
}

// Promote makes the standby a primary (pg_ctl promote, waiting until it
// accepts writes).
func (r *Replicated) Promote() error {
	out, err := r.Standby.run("pg_ctl", "-D", r.Standby.data(), "-w", "-t", "60", "promote")
	if err != nil {
		return fmt.Errorf("pg_ctl promote: %v\n%s", err, out)
	}
	return nil
}

// Stop stops both servers and removes their directories.
func (r *Replicated) Stop() {
	r.Primary.Stop()
	r.Standby.Stop()
}

// Kill ends the server as a power cut does: SIGKILL to the postmaster's
// process group (pg_ctl starts it as the leader of its own session, so
// the group is the postmaster and every backend), by the PID in
// postmaster.pid; the kernel closes its sockets. It waits until the
// postmaster is gone.
func (s *Server) Kill() error {
	b, err := os.ReadFile(filepath.Join(s.data(), "postmaster.pid"))
	if err != nil {
		return err
	}
	pid, err := strconv.Atoi(strings.SplitN(string(b), "\n", 2)[0])
	if err != nil {
		return fmt.Errorf("postmaster.pid: %v", err)
	}
	if pgid, err := syscall.Getpgid(pid); err != nil || pgid != pid {
		return fmt.Errorf("the postmaster %d does not lead its process group (%d, %v)", pid, pgid, err)
	}
	if err := syscall.Kill(-pid, syscall.SIGKILL); err != nil {
		return err
	}
	for deadline := time.Now().Add(30 * time.Second); alive(pid); {
		if time.Now().After(deadline) {
			return fmt.Errorf("the postmaster %d outlived SIGKILL by 30 s", pid)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return nil
}

// alive tells whether process pid runs (a zombie, which a parent that
// does not reap leaves, does not).
func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return syscall.Kill(pid, 0) == nil // no /proc
	}
	// pid (comm) state …: comm may hold spaces and parentheses
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
	return len(f) > 0 && f[0] != "Z"
}
