package redisapp

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/restgate/restgate/internal/testclock"
)

// TestCircuit: after a failure no call is let through for openFor; then
// exactly one probe is; its success closes the circuit. Opening and
// closing are logged once each, however many calls fail meanwhile.
func TestCircuit(t *testing.T) {
	core, logs := observer.New(zap.InfoLevel)
	clock := testclock.New(time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC), time.Millisecond)
	c := newCircuit(5*time.Second, zap.New(core), "127.0.0.1:6379", PurposeLock)
	c.now = clock.Now
	allow := func() bool { ok, _ := c.allow(); return ok }
	if !allow() {
		t.Fatal("a closed circuit refused a call")
	}
	for range 100 {
		c.failed(false, errors.New("connection refused"))
	}
	if allow() {
		t.Fatal("an open circuit let a call through")
	}
	if r := c.retryIn(); r <= 4*time.Second || r > 5*time.Second {
		t.Errorf("retryIn = %v, want just under 5s", r)
	}
	clock.Add(5 * time.Second)
	if ok, probe := c.allow(); !ok || !probe {
		t.Fatal("no probe after openFor")
	}
	if allow() {
		t.Fatal("a second call while the probe is out")
	}
	c.failed(true, errors.New("still down"))
	if allow() {
		t.Fatal("a failed probe did not reopen the circuit")
	}
	clock.Add(5 * time.Second)
	if ok, probe := c.allow(); !ok || !probe {
		t.Fatal("no second probe")
	}
	c.succeeded(true)
	for range 10 {
		if !allow() {
			t.Fatal("a closed circuit refused a call")
		}
	}
	if n := logs.FilterMessageSnippet("unavailable").Len(); n != 1 {
		t.Errorf("the outage was logged %d times, want once", n)
	}
	if n := logs.FilterMessageSnippet("reachable again").Len(); n != 1 {
		t.Errorf("the recovery was logged %d times, want once", n)
	}
}

// TestCircuitStragglersAndCancels: a call let through before the circuit
// opened cannot close it by succeeding late, nor push the retry out by
// failing late; a probe whose caller hung up counts for nothing (the
// circuit stays open and the next call probes).
func TestCircuitStragglersAndCancels(t *testing.T) {
	clock := testclock.New(time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC), time.Millisecond)
	c := newCircuit(5*time.Second, zap.NewNop(), "127.0.0.1:6379", PurposeRateLimit)
	c.now = clock.Now
	_, early := c.allow() // a call in flight when the circuit opens
	c.failed(false, errors.New("i/o timeout"))
	c.succeeded(early)
	if ok, _ := c.allow(); ok {
		t.Fatal("a call that began before the circuit opened closed it by succeeding")
	}
	clock.Add(3 * time.Second)
	c.failed(early, errors.New("i/o timeout"))
	if r := c.retryIn(); r > 2*time.Second {
		t.Errorf("a straggler's failure pushed the retry out to %v", r)
	}
	clock.Add(2 * time.Second)
	ok, probe := c.allow()
	if !ok || !probe {
		t.Fatal("no probe after openFor")
	}
	c.abandoned(probe) // the client hung up
	if ok, _ := c.allow(); !ok {
		t.Fatal("a cancelled probe blocked the next one")
	}
	if !c.isOpen.Load() {
		t.Fatal("a cancelled probe closed the circuit")
	}
}

// TestPurposesFailApart: a rate-limit timeout opens the rate-limit circuit
// only: locks and publishes are still let through, and background work
// has no circuit at all. A call cancelled by its caller opens nothing.
func TestPurposesFailApart(t *testing.T) {
	a, err := Connect(App{Address: "127.0.0.1:1", Timeout: caddy.Duration(50 * time.Millisecond)})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Cleanup()
	fail := func(ctx context.Context, _ redis.UniversalClient) error { return errors.New("i/o timeout") }
	_ = a.DoFor(context.Background(), PurposeRateLimit, fail)
	if !errors.Is(a.DoFor(context.Background(), PurposeRateLimit, nil), ErrUnavailable) {
		t.Fatal("the rate-limit circuit did not open")
	}
	for _, p := range []Purpose{PurposeLock, PurposePublish, PurposeRefund, PurposeDefault, PurposeBackground} {
		called := false
		_ = a.DoFor(context.Background(), p, func(context.Context, redis.UniversalClient) error { called = true; return nil })
		if !called {
			t.Errorf("%s: refused by the rate-limit circuit", p)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_ = a.DoFor(ctx, PurposeLock, func(ctx context.Context, _ redis.UniversalClient) error { return ctx.Err() })
	if a.RetryInFor(PurposeLock) != 0 {
		t.Error("a cancelled call opened the lock circuit")
	}
	for range 3 {
		_ = a.DoFor(context.Background(), PurposeBackground, fail)
	}
	if a.DoFor(context.Background(), PurposeBackground, func(context.Context, redis.UniversalClient) error { return nil }) != nil {
		t.Error("background calls were refused after failures")
	}
}

func TestGlobalOption(t *testing.T) {
	v, err := parseGlobalOption(caddyfile.NewTestDispenser(`redis {
		address 10.0.0.5:6380
		username gw
		password {env.RESTGATE_REDIS_PASSWORD}
		db 2
		tls redis.internal
		key_prefix prod:
		timeout 100ms
		circuit_open 2s
	}`), nil)
	if err != nil {
		t.Fatal(err)
	}
	var a App
	if err := json.Unmarshal(v.(httpcaddyfile.App).Value, &a); err != nil {
		t.Fatal(err)
	}
	if a.Address != "10.0.0.5:6380" || a.Password != "{env.RESTGATE_REDIS_PASSWORD}" || a.DB != 2 || !a.TLS ||
		a.TLSServerName != "redis.internal" || a.KeyPrefix != "prod:" || time.Duration(a.Timeout) != 100*time.Millisecond {
		t.Errorf("parsed %+v", a)
	}
	for in, want := range map[string]string{
		"redis {\n bogus 1\n}":        "unrecognized redis option",
		"redis {\n timeout soon\n}":   "not a duration",
		"redis {\n db two\n}":         "not a number",
		"redis {\n address a b\n}":    "wrong argument count",
		"redis 127.0.0.1:1 127.0.0.1": "wrong argument count",
	} {
		if _, err := parseGlobalOption(caddyfile.NewTestDispenser(in), nil); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: %v, want %q", in, err, want)
		}
	}
}
