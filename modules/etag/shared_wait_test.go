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

// TestLockWaitsForReplica: with the redis app's wait_replicas 1, a lock
// is granted only once the replica has it (it is there the moment lock
// returns, so a failover to that replica keeps it); with the replica
// frozen, the grant is refused (errLockUnavailable, within the command
// timeout) and its key released, so nothing is left locked.
func TestLockWaitsForReplica(t *testing.T) {
	primary, err := testredis.Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(primary.Stop)
	replica, err := testredis.StartReplica(primary)
	if err != nil {
		t.Fatal(err)
	}
	pid := replica.PID()
	t.Cleanup(func() { _ = syscall.Kill(pid, syscall.SIGCONT); replica.Stop() })
	app, err := redisapp.Connect(redisapp.App{Address: primary.Addr, KeyPrefix: "wait:", Timeout: caddy.Duration(300 * time.Millisecond),
		WaitReplicas: 1, WaitTimeout: caddy.Duration(100 * time.Millisecond)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = app.Cleanup() })
	l := &redisLocks{local: &keyedLocks{m: map[string]*lockEntry{}}, app: app, ttl: 30 * time.Second, logger: zap.NewNop()}
	rc, pc := replica.Client(), primary.Client()
	defer rc.Close()
	defer pc.Close()
	ctx := context.Background()

	for i := range 20 {
		unlock, err := l.lock(ctx, "/v1/r", time.Second)
		if err != nil {
			t.Fatalf("lock %d with the replica in sync: %v", i, err)
		}
		if n, err := rc.Exists(ctx, "wait:lock:/v1/r").Result(); err != nil || n != 1 {
			t.Fatalf("lock %d granted, yet the replica does not have it (exists=%d, %v)", i, n, err)
		}
		unlock()
	}

	// what waiting costs: lock + unlock with and without WAIT
	plain, err := redisapp.Connect(redisapp.App{Address: primary.Addr, KeyPrefix: "nowait:", Timeout: caddy.Duration(300 * time.Millisecond)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = plain.Cleanup() })
	pl := &redisLocks{local: &keyedLocks{m: map[string]*lockEntry{}}, app: plain, ttl: 30 * time.Second, logger: zap.NewNop()}
	per := func(l *redisLocks) time.Duration {
		const n = 200
		start := time.Now()
		for range n {
			unlock, err := l.lock(ctx, "/v1/timed", time.Second)
			if err != nil {
				t.Fatal(err)
			}
			unlock()
		}
		return time.Since(start) / n
	}
	t.Logf("lock + unlock on loopback: %v with wait_replicas 1, %v without", per(l).Round(time.Microsecond), per(pl).Round(time.Microsecond))

	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if _, err := l.lock(ctx, "/v1/r", time.Second); !errors.Is(err, errLockUnavailable) {
		t.Fatalf("lock with the replica frozen: %v, want errLockUnavailable", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("the refusal took %v", d)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		n, err := pc.Exists(ctx, "wait:lock:/v1/r").Result()
		if err == nil && n == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the unreplicated grant is still on the primary 5 s later (exists=%d, %v)", n, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
