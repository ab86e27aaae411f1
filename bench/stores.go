package main

import (
	"context"
	"fmt"
	"time"

	"github.com/restgate/restgate/internal/testpg"
	"github.com/restgate/restgate/internal/testredis"
)

// stores are the data stores the gateways share.
type stores struct {
	// the Redis the redis-store rows share their buckets through, and
	// what one round trip to it costs
	redis *testredis.Server
	rtt   time.Duration
	// the Redis Cluster (3 primaries) of the Cluster row
	cluster *testredis.Cluster
	// the PostgreSQL the resources row on PostgreSQL uses, and its
	// database
	pg    *testpg.Server
	pgURL string
}

// startStores starts every store; stop stops them.
func startStores() (*stores, error) {
	st := new(stores)
	if err := st.start(); err != nil {
		st.stop()
		return nil, err
	}
	return st, nil
}

func (st *stores) start() (err error) {
	if st.redis, err = testredis.Start(); err != nil {
		return err
	}
	if st.rtt, err = redisRTT(st.redis); err != nil {
		return err
	}
	if st.cluster, err = testredis.StartCluster(); err != nil {
		return fmt.Errorf("redis cluster: %w", err)
	}
	if st.pg, err = testpg.Start(); err != nil {
		return err
	}
	st.pgURL, err = st.pg.NewDatabase("bench")
	return err
}

// stop stops the stores that started, the last started first.
func (st *stores) stop() {
	if st.pg != nil {
		st.pg.Stop()
	}
	if st.cluster != nil {
		st.cluster.Stop()
	}
	if st.redis != nil {
		st.redis.Stop()
	}
}

// redisRTT is the median of 200 PINGs to the bench's Redis: what one
// round trip costs on this machine.
func redisRTT(rs *testredis.Server) (time.Duration, error) {
	c := rs.Client()
	defer c.Close()
	var ds []float64
	for range 200 {
		t := time.Now()
		if err := c.Ping(context.Background()).Err(); err != nil {
			return 0, err
		}
		ds = append(ds, float64(time.Since(t)))
	}
	return time.Duration(median(ds)), nil
}
