package etag

import (
	"context"
	"errors"
	"net/http"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/restgate/restgate/modules/problem"
)

// TestLockLostWriteNotForwarded: a conditional write whose shared lock is
// lost while the gateway reads the resource to check the precondition
// (Redis says its token is gone: it expired, or a failover dropped it) is
// answered 503 lock_lost, and the write never reaches the backend: another
// gateway may hold the lock by now.
func TestLockLostWriteNotForwarded(t *testing.T) {
	app, rs, _, _ := frozenRedis(t, "lost:")
	h, _ := newETag(t, "api_etag")
	core, logs := observer.New(zapcore.ErrorLevel)
	const ttl = 600 * time.Millisecond
	h.redis = app
	h.locks = &redisLocks{local: &keyedLocks{m: map[string]*lockEntry{}}, app: app, ttl: ttl, logger: zap.New(core)}
	rc := rs.Client()
	defer rc.Close()

	o := &scripted{script: func(n int, r *http.Request) (int, http.Header, string) {
		if r.Method != http.MethodGet {
			return 200, nil, "written"
		}
		// the probe, under the lock: the lock goes away in Redis, and the
		// holder learns it at its next extension (every ttl/3)
		if err := rc.Del(context.Background(), "lost:lock:/v1/r").Err(); err != nil {
			t.Errorf("deleting the lock: %v", err)
		}
		deadline := time.Now().Add(10 * time.Second)
		for logs.FilterMessageSnippet("outlived its shared lock").Len() == 0 {
			if time.Now().After(deadline) {
				t.Error("the holder did not notice its lost lock within 10s")
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
		return 200, http.Header{"Etag": {`"v1"`}}, "doc"
	}}
	w, err := call(h, o, "PUT", "/v1/r", "", `{"n":2}`, "If-Match", `"v1"`)
	if got := statusOf(w, err); got != http.StatusServiceUnavailable {
		t.Fatalf("PUT with its lock lost: %d, want 503", got)
	}
	var p *problem.Problem
	if !errors.As(err, &p) || p.Code != "lock_lost" {
		t.Errorf("error %v, want the lock_lost problem", err)
	}
	for _, r := range o.seen {
		if r.Method == http.MethodPut {
			t.Fatal("the write reached the backend after its lock was lost")
		}
	}
}
