package redisapp

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
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
	c := newCircuit(5*time.Second, zap.New(core), "127.0.0.1:6379")
	c.now = clock.Now
	if !c.allow() {
		t.Fatal("a closed circuit refused a call")
	}
	for range 100 {
		c.failed(errors.New("connection refused"))
	}
	if c.allow() {
		t.Fatal("an open circuit let a call through")
	}
	if r := c.retryIn(); r <= 4*time.Second || r > 5*time.Second {
		t.Errorf("retryIn = %v, want just under 5s", r)
	}
	clock.Add(5 * time.Second)
	if !c.allow() {
		t.Fatal("no probe after openFor")
	}
	if c.allow() {
		t.Fatal("a second call while the probe is out")
	}
	c.failed(errors.New("still down"))
	if c.allow() {
		t.Fatal("a failed probe did not reopen the circuit")
	}
	clock.Add(5 * time.Second)
	if !c.allow() {
		t.Fatal("no second probe")
	}
	c.succeeded()
	for range 10 {
		if !c.allow() {
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
