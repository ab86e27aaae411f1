package redisapp

import (
	"encoding/json"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
)

// TestSlot: the slots are Redis's (the values CLUSTER KEYSLOT gives), and
// a hash tag decides alone.
func TestSlot(t *testing.T) {
	for key, want := range map[string]int{
		"123456789":                12739,
		"foo":                      12182,
		"somekey":                  11058,
		"foo{hash_tag}":            2515,
		"{hash_tag}other":          2515,
		"a{}b":                     Slot("a{}b"), // an empty tag is no tag: the whole key
		"prefix:rl:z:{key:alice}":  Slot("key:alice"),
		"{prefix}:rl:{key:alice}":  Slot("prefix"),
		"rl:{key:alice}:elsewhere": Slot("key:alice"),
	} {
		if got := Slot(key); got != want {
			t.Errorf("Slot(%q) = %d, want %d", key, got, want)
		}
	}
	if Slot("a{}b") == Slot("") {
		t.Error(`"a{}b" hashed as its empty tag`)
	}
}

// TestTag: a part becomes one tag, whatever it holds; different parts
// give different tags.
func TestTag(t *testing.T) {
	parts := []string{"key:alice", "10.0.0.1", "2001:db8::/64", "", "{", "}", "a}b", "{x}", "#1", "#"}
	seen := map[string]string{}
	for _, p := range parts {
		tag := Tag(p)
		if tag[0] != '{' || strings.IndexByte(tag, '}') != len(tag)-1 || len(tag) < 3 {
			t.Errorf("Tag(%q) = %q: not one non-empty tag", p, tag)
		}
		if Slot("x:"+tag+":y") != Slot(tag) {
			t.Errorf("Tag(%q) = %q does not decide the slot", p, tag)
		}
		if other, dup := seen[tag]; dup {
			t.Errorf("Tag(%q) = Tag(%q) = %q", p, other, tag)
		}
		seen[tag] = p
	}
	if Tag("key:alice") != "{key:alice}" {
		t.Errorf("Tag(key:alice) = %q, want it readable", Tag("key:alice"))
	}
}

// TestTopologyOptions: the Caddyfile's sentinels and cluster lines, the
// empty address line beside them, and what refuses to load.
func TestTopologyOptions(t *testing.T) {
	parse := func(in string) (App, error) {
		var a App
		v, err := parseGlobalOption(caddyfile.NewTestDispenser(in), nil)
		if err == nil {
			err = json.Unmarshal(v.(httpcaddyfile.App).Value, &a)
		}
		return a, err
	}
	a, err := parse(`redis {
		address
		sentinels 10.0.0.1:26379 10.0.0.2:26379
		master_name mymaster
		sentinel_username watcher
		sentinel_password {env.RESTGATE_REDIS_SENTINEL_PASSWORD}
		wait_replicas 1 40ms
	}`)
	if err != nil {
		t.Fatal(err)
	}
	if a.Disabled || a.Address != "" || !slices.Equal(a.Sentinels, []string{"10.0.0.1:26379", "10.0.0.2:26379"}) ||
		a.MasterName != "mymaster" || a.SentinelUsername != "watcher" || a.SentinelPassword != "{env.RESTGATE_REDIS_SENTINEL_PASSWORD}" ||
		a.WaitReplicas != 1 || time.Duration(a.WaitTimeout) != 40*time.Millisecond {
		t.Errorf("sentinels: parsed %+v", a)
	}
	if a, err = parse("redis {\n address \"\"\n cluster 10.0.0.1:6379 10.0.0.2:6379\n}"); err != nil || a.Disabled ||
		!slices.Equal(a.Cluster, []string{"10.0.0.1:6379", "10.0.0.2:6379"}) {
		t.Errorf("cluster: parsed %+v, %v", a, err)
	}
	for in, want := range map[string]string{
		"redis {\n sentinels\n}":               "wrong argument count",
		"redis {\n cluster\n}":                 "wrong argument count",
		"redis {\n wait_replicas one\n}":       "not a number of replicas",
		"redis {\n wait_replicas 1 soon\n}":    "not a duration",
		"redis {\n wait_replicas 1 2ms 3ms\n}": "wrong argument count",
	} {
		if _, err := parse(in); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: %v, want %q", in, err, want)
		}
	}
	// contradictions refuse to load (Provision), before any connection
	for _, tt := range []struct {
		give App
		want string
	}{
		{App{Address: "10.0.0.1:6379", Cluster: []string{"10.0.0.2:6379"}}, "address 10.0.0.1:6379 and cluster name two topologies"},
		{App{Address: "10.0.0.1:6379", Sentinels: []string{"10.0.0.2:26379"}, MasterName: "m"}, "address 10.0.0.1:6379 and sentinels name two topologies"},
		{App{Sentinels: []string{"10.0.0.2:26379"}}, "sentinels without master_name"},
		{App{MasterName: "m"}, "without sentinels"},
		{App{Cluster: []string{"10.0.0.2:6379"}, Sentinels: []string{"10.0.0.2:26379"}, MasterName: "m"}, "cluster and sentinels"},
		{App{Cluster: []string{"10.0.0.2:6379"}, DB: 2}, "db 2 with a cluster"},
		{App{Disabled: true, Cluster: []string{"10.0.0.2:6379"}}, "disabled, yet a server is named"},
		{App{Address: "10.0.0.1:6379", WaitReplicas: 1, WaitTimeout: caddy.Duration(300 * time.Millisecond)}, "must be shorter than timeout"},
	} {
		if _, err := Connect(tt.give); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%+v: %v, want %q", tt.give, err, tt.want)
		}
	}
}

// TestTaggedAllocatesOnce: a bucket key costs one allocation, as the
// untagged prefix + key did.
func TestTaggedAllocatesOnce(t *testing.T) {
	prefix, part := "restgate:rl:user:0a1b2c3d:", "key:alice"
	if n := testing.AllocsPerRun(100, func() { _ = Tagged(prefix, part) }); n > 1 {
		t.Errorf("Tagged: %v allocations, want 1", n)
	}
	if got := Tagged(prefix, part); got != prefix+Tag(part) {
		t.Errorf("Tagged = %q, want %q", got, prefix+Tag(part))
	}
}
