package redisapp

import (
	"context"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/restgate/restgate/internal/testredis"
)

// TestBusThroughFreeze: Redis is frozen (SIGSTOP) for 2 s. An event that
// gateway A could not publish during the freeze (the first timed out, the
// second was refused by the open publish circuit) reaches gateway B once
// Redis answers again, and B, whose subscription went silent, resyncs.
func TestBusThroughFreeze(t *testing.T) {
	rs, err := testredis.Start()
	if err != nil {
		t.Fatal(err)
	}
	pid := rs.PID()
	defer rs.Stop()
	defer syscall.Kill(pid, syscall.SIGCONT)

	// two gateways: distinct settings make distinct connections
	a, err := Connect(App{Address: rs.Addr, Timeout: caddy.Duration(100 * time.Millisecond), PoolSize: 3})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Cleanup()
	b, err := Connect(App{Address: rs.Addr, Timeout: caddy.Duration(100 * time.Millisecond), PoolSize: 4})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Cleanup()
	var mu sync.Mutex
	got := map[string]bool{}
	resyncs := 0
	cancel := b.Subscribe("t", func(p string) {
		mu.Lock()
		got[p] = true
		mu.Unlock()
	}, func() {
		mu.Lock()
		resyncs++
		mu.Unlock()
	})
	defer cancel()
	wait := func(what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for {
			mu.Lock()
			ok := cond()
			mu.Unlock()
			if ok {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting for %s", what)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	// the subscription is up once an event gets through
	for i := 0; ; i++ {
		_ = a.Publish(context.Background(), "t", "warm")
		mu.Lock()
		ok := got["warm"]
		mu.Unlock()
		if ok {
			break
		}
		if i > 500 {
			t.Fatal("the subscription never delivered")
		}
		time.Sleep(10 * time.Millisecond)
	}

	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	if err := a.Publish(context.Background(), "t", "one"); err == nil {
		t.Fatal("a publish to a frozen Redis succeeded")
	}
	if err := a.Publish(context.Background(), "t", "two"); err == nil {
		t.Fatal("a publish with the circuit open succeeded")
	}
	time.Sleep(2 * time.Second) // the input: how long Redis is frozen
	if err := syscall.Kill(pid, syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	resumed := time.Now()
	mu.Lock()
	resyncsAtResume := resyncs
	mu.Unlock()
	// A sends both events late, once Redis answers; B either receives them
	// or was not subscribed yet when they went, and then drops everything
	// when its new subscription is confirmed, after the resume. Which one
	// happens is a race between A's resend and B's resubscription: both
	// leave B with nothing stale.
	wait("both events at B, or B's resync after the resume", func() bool {
		return got["one"] && got["two"] || resyncs > resyncsAtResume
	})
	wait("B to resync after its subscription went silent", func() bool { return resyncs > 0 })
	// and the subscription works again
	wait("a new event at B", func() bool {
		if !got["three"] {
			_ = a.Publish(context.Background(), "t", "three") // returns once Redis has it, not on delivery
		}
		return got["three"]
	})
	mu.Lock()
	defer mu.Unlock()
	t.Logf("events (one %v, two %v) and resync at B %v after the resume", got["one"], got["two"], time.Since(resumed).Round(time.Millisecond))
}
