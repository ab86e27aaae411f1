package redisapp

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/redis/go-redis/v9"

	"github.com/restgate/restgate/internal/testnet"
	"github.com/restgate/restgate/internal/testredis"
)

var (
	incrScript = redis.NewScript(`return redis.call('INCR', KEYS[1])`)
	// busyScript keeps Redis (single-threaded) busy for ARGV[1] ms
	busyScript = redis.NewScript(`
local t = redis.call('TIME')
local stop = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000 + tonumber(ARGV[1])
repeat t = redis.call('TIME') until tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000 >= stop
return 1`)
	failScript = redis.NewScript(`return redis.error_reply('ERR refused by the script')`)
)

// testRedis is the package's one redis-server (TestMain).
var testRedis *testredis.Server

func TestMain(m *testing.M) {
	var err error
	if testRedis, err = testredis.Start(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := m.Run()
	testRedis.Stop()
	os.Exit(code)
}

// connect gives a test its own app (and key prefix) on the package's Redis.
func connect(t *testing.T, addr string) *App {
	t.Helper()
	a, err := Connect(App{Address: addr, KeyPrefix: t.Name() + ":", Timeout: caddy.Duration(5 * time.Second)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Cleanup() })
	return a
}

// TestRunScriptBatches: calls that queue while Redis is busy go out
// together, and every one gets its own reply: 200 increments by 200
// goroutines give exactly the values 1..200, each once.
func TestRunScriptBatches(t *testing.T) {
	a := connect(t, testRedis.Addr)
	ctx := context.Background()
	var wg sync.WaitGroup
	for range batchWorkers { // occupy the workers while the rest queue
		wg.Go(func() {
			if _, err := a.RunScript(ctx, busyScript, []string{a.Key("busy")}, 100); err != nil {
				t.Error(err)
			}
		})
	}
	const n = 200
	got := make([]int64, n)
	for i := range n {
		wg.Go(func() {
			v, err := a.RunScript(ctx, incrScript, []string{a.Key("counter")})
			if err != nil {
				t.Error(err)
				return
			}
			got[i], _ = v.(int64)
		})
	}
	wg.Wait()
	slices.Sort(got)
	for i, v := range got {
		if v != int64(i+1) {
			t.Fatalf("sorted replies[%d] = %d, want %d: a reply went to the wrong call or got lost", i, v, i+1)
		}
	}
	batches, calls := a.conn.batch.batches.Load(), a.conn.batch.batched.Load()
	if calls != n+batchWorkers {
		t.Errorf("%d calls sent, want %d", calls, n+batchWorkers)
	}
	if batches >= calls {
		t.Errorf("%d pipelines for %d calls: nothing was batched", batches, calls)
	}
	t.Logf("%d calls in %d pipelines", calls, batches)
}

// TestRunScriptErrorIsTheCallers: a script that fails (an error reply) or
// that Redis cannot compile fails its own calls, not the others of its
// pipeline, and does not open the circuit.
func TestRunScriptErrorIsTheCallers(t *testing.T) {
	for n, bad := range []*redis.Script{failScript, redis.NewScript(`return (`)} {
		counter := "mixed" + strconv.Itoa(n)
		a := connect(t, testRedis.Addr)
		ctx := context.Background()
		var wg sync.WaitGroup
		// Redis busy meanwhile: the calls below queue and share pipelines
		wg.Go(func() { a.RunScript(ctx, busyScript, []string{a.Key("busy")}, 50) })
		errs := make([]error, 20)
		for i := range errs {
			wg.Go(func() {
				s := incrScript
				if i%2 == 0 {
					s = bad
				}
				_, errs[i] = a.RunScript(ctx, s, []string{a.Key(counter)})
			})
		}
		wg.Wait()
		for i, err := range errs {
			switch {
			case i%2 == 0 && (err == nil || errors.Is(err, ErrUnavailable)):
				t.Errorf("%q call %d: error %v, want the script's own", bad.Hash(), i, err)
			case i%2 == 1 && err != nil:
				t.Errorf("%q call %d: %v, want its increment", bad.Hash(), i, err)
			}
		}
		if v, err := a.Client().Get(ctx, a.Key(counter)).Int(); err != nil || v != 10 {
			t.Errorf("counter = %d (%v), want 10", v, err)
		}
		if a.RetryIn() != 0 {
			t.Error("a failing script opened the circuit")
		}
	}
}

// TestRunScriptReloadsFlushedScripts: Redis forgets its scripts on a
// restart or SCRIPT FLUSH; the calls answered NOSCRIPT are sent again.
func TestRunScriptReloadsFlushedScripts(t *testing.T) {
	a := connect(t, testRedis.Addr)
	ctx := context.Background()
	for want := int64(1); want <= 3; want++ {
		if err := a.Client().ScriptFlush(ctx).Err(); err != nil {
			t.Fatal(err)
		}
		v, err := a.RunScript(ctx, incrScript, []string{a.Key("flushed")})
		if err != nil || v != want {
			t.Fatalf("after SCRIPT FLUSH: %v, %v; want %d", v, err, want)
		}
	}
}

// TestRunScriptOutage: with Redis gone every queued call fails promptly
// with ErrUnavailable (the circuit opens), and none waits for another's
// timeout.
func TestRunScriptOutage(t *testing.T) {
	port, err := testnet.FreePort() // nothing listens there
	if err != nil {
		t.Fatal(err)
	}
	a := connect(t, net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
	ctx := context.Background()
	start := time.Now()
	var wg sync.WaitGroup
	for range 50 {
		wg.Go(func() {
			if _, err := a.RunScript(ctx, incrScript, []string{a.Key("gone")}); !errors.Is(err, ErrUnavailable) {
				t.Errorf("with Redis down: %v, want ErrUnavailable", err)
			}
		})
	}
	wg.Wait()
	// a refused connection fails at once; each call waiting for the 5s
	// command timeout of the one before it would take far longer
	if d := time.Since(start); d > 4*time.Second {
		t.Errorf("50 calls took %v to fail", d)
	}
}
