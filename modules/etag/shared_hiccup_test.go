package etag

import (
	"context"
	"errors"
	"syscall"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/restgate/restgate/internal/testredis"
	"github.com/restgate/restgate/modules/redisapp"
)

// frozenRedis starts a redis-server and returns functions that freeze
// (SIGSTOP) and resume (SIGCONT) it, and the app connected to it.
func frozenRedis(t *testing.T, prefix string) (app *redisapp.App, rs *testredis.Server, freeze, resume func()) {
	rs, err := testredis.Start()
	if err != nil {
		t.Fatal(err)
	}
	pid := rs.PID()
	signal := func(s syscall.Signal) func() {
		return func() {
			if err := syscall.Kill(pid, s); err != nil {
				t.Fatal(err)
			}
		}
	}
	t.Cleanup(func() { _ = syscall.Kill(pid, syscall.SIGCONT); rs.Stop() })
	app, err = redisapp.Connect(redisapp.App{Address: rs.Addr, KeyPrefix: prefix, Timeout: caddy.Duration(100 * time.Millisecond),
		CircuitOpen: caddy.Duration(100 * time.Millisecond)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = app.Cleanup() })
	return app, rs, signal(syscall.SIGSTOP), signal(syscall.SIGCONT)
}

// TestLockOrphanedSetNX: a SET NX sent to a frozen Redis times out, and
// Redis does it when it resumes; the token is released, so the resource
// is not locked for lock_ttl (30 s here).
func TestLockOrphanedSetNX(t *testing.T) {
	app, rs, freeze, resume := frozenRedis(t, "orphan:")
	l := &redisLocks{local: &keyedLocks{m: map[string]*lockEntry{}}, app: app, ttl: 30 * time.Second, logger: zap.NewNop()}
	// a pooled connection, so that the SET NX itself is what reaches the
	// frozen server (a new connection would wait for its handshake)
	unlock, err := l.lock(context.Background(), "/v1/warm", time.Second)
	if err != nil {
		t.Fatal(err)
	}
	unlock()
	freeze()
	if _, err := l.lock(context.Background(), "/v1/r", time.Second); !errors.Is(err, errLockUnavailable) {
		t.Fatalf("lock with Redis frozen: %v", err)
	}
	resume()
	rc := rs.Client()
	defer rc.Close()
	deadline := time.Now().Add(5 * time.Second)
	for {
		n, err := rc.Exists(context.Background(), "orphan:lock:/v1/r").Result()
		if err == nil && n == 0 && time.Now().After(deadline.Add(-4*time.Second)) {
			break // gone, and a second after the resume (the SET had its chance)
		}
		if time.Now().After(deadline) {
			t.Fatalf("the orphaned lock is still there 5 s after the resume (exists=%d, %v)", n, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	unlock, err = l.lock(context.Background(), "/v1/r", time.Second)
	if err != nil {
		t.Fatalf("lock after the resume: %v", err)
	}
	unlock()
}

// TestLockExtensionRetries: an extension that fails while Redis is frozen
// is retried before the lock's expiry, so the lock is still held (and not
// reported lost) well after its first lock_ttl.
func TestLockExtensionRetries(t *testing.T) {
	app, rs, freeze, resume := frozenRedis(t, "extend:")
	const ttl = 900 * time.Millisecond
	l := &redisLocks{local: &keyedLocks{m: map[string]*lockEntry{}}, app: app, ttl: ttl, logger: zap.NewNop()}
	unlock, lost, err := lockWithLoss(l, context.Background(), "/v1/r", time.Second)
	if err != nil {
		t.Fatal(err)
	}
	taken := time.Now()
	freeze()
	time.Sleep(ttl / 2) // the input: the freeze spans the first extension (at ttl/3)
	resume()
	rc := rs.Client()
	defer rc.Close()
	for time.Since(taken) < 3*ttl {
		n, err := rc.Exists(context.Background(), "extend:lock:/v1/r").Result()
		if err != nil || n != 1 || lost() {
			t.Fatalf("%v after taking it: the lock exists=%d (%v), lost=%v", time.Since(taken).Round(time.Millisecond), n, err, lost())
		}
		time.Sleep(20 * time.Millisecond)
	}
	unlock()
	if n, _ := rc.Exists(context.Background(), "extend:lock:/v1/r").Result(); n != 0 {
		t.Error("the lock is still there after unlock")
	}
}
