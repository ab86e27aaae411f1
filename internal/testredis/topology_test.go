package testredis

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// TestCluster: the three nodes serve every slot, and a cluster client
// writes and reads keys on each.
func TestCluster(t *testing.T) {
	c, err := StartCluster()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Stop()
	cc := c.Client()
	defer cc.Close()
	ctx := context.Background()
	info, err := cc.ClusterInfo(ctx).Result()
	if err != nil {
		t.Fatal(err)
	}
	t.Log(info)
	for _, k := range []string{"a", "b", "c", "d", "e", "f"} {
		if err := cc.Set(ctx, k, k, time.Minute).Err(); err != nil {
			t.Fatal(err)
		}
	}
	var masters atomic.Int32 // ForEachMaster calls concurrently
	_ = cc.ForEachMaster(ctx, func(ctx context.Context, m *redis.Client) error { masters.Add(1); return nil })
	if n := masters.Load(); n != 3 {
		t.Errorf("%d primaries, want 3", n)
	}
}

// TestSentinel: killing the primary makes the sentinels promote the
// replica, and a failover client writes to it.
func TestSentinel(t *testing.T) {
	s, err := StartSentinel()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Stop()
	ctx := context.Background()
	rc := s.Client()
	defer rc.Close()
	if err := rc.Set(ctx, "k", "1", 0).Err(); err != nil {
		t.Fatal(err)
	}
	s.Primary.Kill()
	start := time.Now()
	deadline := start.Add(60 * time.Second)
	for {
		addr, err := s.MasterAddr(ctx)
		if err == nil && addr == s.Replica.Addr {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no promotion within 60s: %v %v", addr, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("promoted after %v", time.Since(start))
	for time.Now().Before(deadline) {
		if err = rc.Set(ctx, "k", "2", 0).Err(); err == nil {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
}
