package testredis

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/restgate/restgate/internal/testnet"
)

// Cluster is a Redis Cluster of three primaries (no replicas) on loopback,
// created with `redis-cli --cluster create`. It is a normal package's type
// so that tools (the bench) can start one too.
type Cluster struct {
	Nodes []*Server
}

// StartCluster starts three cluster-enabled redis-servers, joins them into
// one cluster and waits (at most 60 s) until every node says
// cluster_state:ok.
func StartCluster() (*Cluster, error) {
	cli, err := exec.LookPath("redis-cli")
	if err != nil {
		return nil, errors.New("redis-cli not found: install it with `apt-get install redis-tools` (.ci/run does)")
	}
	c := &Cluster{}
	for range 3 {
		n, err := start("restgate-redis-cluster-", func(dir string, port int) ([]string, error) {
			bus, err := testnet.FreePort() // the cluster bus: not port+10000, which may be taken
			if err != nil {
				return nil, err
			}
			return append(serverArgs(dir, port), "--cluster-enabled", "yes", "--cluster-port", strconv.Itoa(bus),
				"--cluster-config-file", filepath.Join(dir, "nodes.conf"), "--cluster-node-timeout", "2000"), nil
		})
		if err != nil {
			c.Stop()
			return nil, err
		}
		c.Nodes = append(c.Nodes, n)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	args := append([]string{"--cluster", "create"}, c.Addrs()...)
	out, err := exec.CommandContext(ctx, cli, append(args, "--cluster-replicas", "0", "--cluster-yes")...).CombinedOutput()
	if err != nil {
		c.Stop()
		return nil, fmt.Errorf("redis-cli --cluster create: %v: %s", err, out)
	}
	for _, n := range c.Nodes {
		rc := n.Client()
		err := waitUntil(ctx, func(ctx context.Context) (bool, error) {
			info, err := rc.ClusterInfo(ctx).Result()
			return strings.Contains(info, "cluster_state:ok"), err
		})
		rc.Close()
		if err != nil {
			c.Stop()
			return nil, fmt.Errorf("cluster node %s never said cluster_state:ok within 60s: %v", n.Addr, err)
		}
	}
	// every node must know every other's slots before a client's first
	// command (a node that says ok may still answer CLUSTERDOWN briefly):
	// a cluster client writes keys spread over all the slots
	cc := c.Client()
	defer cc.Close()
	err = waitUntil(ctx, func(ctx context.Context) (bool, error) {
		for i := range 64 {
			if err := cc.Set(ctx, fmt.Sprintf("testredis:probe:%d", i), "1", time.Second).Err(); err != nil {
				return false, err
			}
		}
		return true, nil
	})
	if err != nil {
		c.Stop()
		return nil, fmt.Errorf("cluster never took writes within 60s: %v", err)
	}
	return c, nil
}

// Addrs are the nodes' addresses (the seeds a client needs).
func (c *Cluster) Addrs() []string {
	addrs := make([]string, len(c.Nodes))
	for i, n := range c.Nodes {
		addrs[i] = n.Addr
	}
	return addrs
}

// Client returns a cluster client (the caller closes it).
func (c *Cluster) Client() *redis.ClusterClient {
	return redis.NewClusterClient(&redis.ClusterOptions{Addrs: c.Addrs()})
}

// Stop ends every node and removes their directories.
func (c *Cluster) Stop() {
	for _, n := range c.Nodes {
		n.Stop()
	}
}

// Sentinel is a Sentinel-managed primary on loopback: one primary, one
// replica, three sentinels (quorum 2) that watch MasterName and fail over
// quickly (down-after-milliseconds 1000, failover-timeout 3000).
type Sentinel struct {
	MasterName string
	Primary    *Server // as started: after a failover the primary is Replica
	Replica    *Server
	Sentinels  []*Server
}

// StartSentinel starts the primary, the replica and the sentinels, and
// waits (at most 60 s) until the replica is in sync and every sentinel
// knows the replica and the two other sentinels, so that a failover can
// happen.
func StartSentinel() (*Sentinel, error) {
	s := &Sentinel{MasterName: "restgate"}
	var err error
	if s.Primary, err = Start(); err != nil {
		return nil, err
	}
	if s.Replica, err = StartReplica(s.Primary); err != nil {
		s.Stop()
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for range 3 {
		sn, err := start("restgate-redis-sentinel-", func(dir string, port int) ([]string, error) {
			host, pport, _ := strings.Cut(s.Primary.Addr, ":")
			conf := filepath.Join(dir, "sentinel.conf") // sentinel rewrites it
			err := os.WriteFile(conf, []byte(fmt.Sprintf(`port %d
bind 127.0.0.1
dir %s
logfile %s
sentinel monitor %s %s %s 2
sentinel down-after-milliseconds %[4]s 1000
sentinel failover-timeout %[4]s 3000
sentinel parallel-syncs %[4]s 1
`, port, dir, filepath.Join(dir, "sentinel.log"), s.MasterName, host, pport)), 0o600)
			return []string{conf, "--sentinel"}, err
		})
		if err != nil {
			s.Stop()
			return nil, err
		}
		s.Sentinels = append(s.Sentinels, sn)
	}
	for _, sn := range s.Sentinels {
		sc := redis.NewSentinelClient(&redis.Options{Addr: sn.Addr, MaxRetries: -1})
		err := waitUntil(ctx, func(ctx context.Context) (bool, error) {
			m, err := sc.Master(ctx, s.MasterName).Result()
			if err != nil {
				return false, err
			}
			replicas, err := sc.Replicas(ctx, s.MasterName).Result()
			return m["num-other-sentinels"] == "2" && len(replicas) == 1, err
		})
		sc.Close()
		if err != nil {
			s.Stop()
			return nil, fmt.Errorf("sentinel %s never saw the replica and the other two sentinels within 60s: %v", sn.Addr, err)
		}
	}
	return s, nil
}

// StartReplica starts a replica of primary and waits (at most 60 s) until
// it is in sync.
func StartReplica(primary *Server) (*Server, error) {
	r, err := start("restgate-redis-replica-", func(dir string, port int) ([]string, error) {
		host, pport, _ := strings.Cut(primary.Addr, ":")
		return append(serverArgs(dir, port), "--replicaof", host, pport), nil
	})
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	rc := r.Client()
	defer rc.Close()
	err = waitUntil(ctx, func(ctx context.Context) (bool, error) {
		info, err := rc.Info(ctx, "replication").Result()
		return strings.Contains(info, "master_link_status:up"), err
	})
	if err != nil {
		r.Stop()
		return nil, fmt.Errorf("the replica never synced with the primary within 60s: %v", err)
	}
	return r, nil
}

// SentinelAddrs are the sentinels' addresses.
func (s *Sentinel) SentinelAddrs() []string {
	addrs := make([]string, len(s.Sentinels))
	for i, sn := range s.Sentinels {
		addrs[i] = sn.Addr
	}
	return addrs
}

// MasterAddr is the primary's address as the first sentinel that answers
// names it.
func (s *Sentinel) MasterAddr(ctx context.Context) (string, error) {
	var lastErr error
	for _, sn := range s.Sentinels {
		sc := redis.NewSentinelClient(&redis.Options{Addr: sn.Addr, MaxRetries: -1})
		addr, err := sc.GetMasterAddrByName(ctx, s.MasterName).Result()
		sc.Close()
		if err == nil {
			return addr[0] + ":" + addr[1], nil
		}
		lastErr = err
	}
	return "", lastErr
}

// Client returns a client of the primary that follows failovers (the
// caller closes it).
func (s *Sentinel) Client() *redis.Client {
	return redis.NewFailoverClient(&redis.FailoverOptions{MasterName: s.MasterName, SentinelAddrs: s.SentinelAddrs(), MaxRetries: -1})
}

// Stop ends every process and removes their directories.
func (s *Sentinel) Stop() {
	for _, sn := range s.Sentinels {
		sn.Stop()
	}
	for _, n := range []*Server{s.Replica, s.Primary} {
		if n != nil {
			n.Stop()
		}
	}
}

// waitUntil polls cond every 50 ms until it is true or ctx ends (then the
// last error, or ctx's).
func waitUntil(ctx context.Context, cond func(ctx context.Context) (bool, error)) error {
	var lastErr error
	for {
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		ok, err := cond(cctx)
		cancel()
		if ok {
			return nil
		}
		if err != nil {
			lastErr = err
		}
		select {
		case <-ctx.Done():
			if lastErr != nil {
				return lastErr
			}
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}
