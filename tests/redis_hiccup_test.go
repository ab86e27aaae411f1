package tests

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/restgate/restgate/internal/testredis"
)

// hiccupLockTimeout is api_etag's lock_timeout in these tests; lock_ttl is
// six times as long, so a lock left behind shows as writes refused for
// longer than lock_timeout.
const hiccupLockTimeout = 5 * time.Second

// TestRedisHiccup: Redis is frozen (SIGSTOP: it accepts connections and
// never answers) for 300 ms and for 3 s, then resumed (SIGCONT), in the
// middle of a 50 × 20 If-Match increment run over three gateways that
// share it (a cache with a 60 s lifetime on each, and a shared rate limit
// that admits everything and whose timeouts must not stop the rest), while
// a reader on each gateway keeps reading. Afterwards:
//   - the counter is exactly 1,000;
//   - no read that began 2 s or more after Redis answered again returned a
//     value older than one acknowledged more than 1 s before it began (the
//     1 s is the ordinary invalidation delay on a loaded machine);
//   - a write succeeded within lock_timeout of the resume (no lock was left
//     behind by a release or a SET NX whose reply was lost), and no lock
//     key is left in Redis once the run is over.
func TestRedisHiccup(t *testing.T) {
	for _, freeze := range []time.Duration{300 * time.Millisecond, 3 * time.Second} {
		t.Run(freeze.String(), func(t *testing.T) { redisHiccup(t, freeze) })
	}
}

func redisHiccup(t *testing.T, freeze time.Duration) {
	rs, err := testredis.Start()
	if err != nil {
		t.Fatal(err)
	}
	pid := rs.PID()
	t.Cleanup(func() {
		_ = syscall.Kill(pid, syscall.SIGCONT)
		rs.Stop()
	})
	backend, port := startPlainBackend(t)
	cfg := testGlobals(fmt.Sprintf(`redis {
		address %s
		key_prefix hiccup:
		circuit_open 1s
	}`, rs.Addr)) + fmt.Sprintf(`https://api.localhost:{$RESTGATE_HTTPS_PORT} {
	tls internal
	api_errors
	api_auth {
		keys_file {$RESTGATE_DATA}/api-keys.yaml
	}
	api_rate_limit {
		store redis
		on_error allow
		zone everyone 100000/1s
	}
	api_etag {
		cache {
			default_ttl 60s
		}
		redis
		lock_timeout %v
		lock_ttl %v
	}
	reverse_proxy 127.0.0.1:%d
}
`, hiccupLockTimeout, 6*hiccupLockTimeout, port)
	gs := startGateways(t, 3, cfg)
	url := gs[0].URL("/v1/counter")

	var acks ackLog
	var resumed atomic.Int64 // unix nanoseconds; zero until SIGCONT
	var firstAfter atomic.Int64

	// the freeze, once 300 of the 1,000 increments are done
	frozen := make(chan error, 1)
	go func() {
		deadline := time.Now().Add(3 * time.Minute)
		for backend.count() < 300 {
			if time.Now().After(deadline) {
				frozen <- fmt.Errorf("only %d increments after 3 minutes: never froze", backend.count())
				return
			}
			time.Sleep(5 * time.Millisecond)
		}
		if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
			frozen <- err
			return
		}
		time.Sleep(freeze) // the input: how long Redis is frozen
		err := syscall.Kill(pid, syscall.SIGCONT)
		resumed.Store(time.Now().UnixNano())
		frozen <- err
	}()

	// a reader per gateway: every read's start, value and the newest
	// acknowledgement it should have seen
	type staleRead struct {
		gateway int
		at      time.Time
		got     int
		age     time.Duration // since the first acknowledged newer value
	}
	var mu sync.Mutex
	var stale []staleRead
	var reads atomic.Int64
	readers := make([]*http.Client, len(gs))
	for i, g := range gs {
		readers[i] = behindBalancer(g)
	}
	stopReaders := load(len(gs), func(w, _ int) bool {
		c := readers[w]
		start := time.Now()
		r, err := Send(c, "GET", url, "", bearer("tester")...)
		if err != nil || r.StatusCode != 200 {
			return true
		}
		var v struct{ N int }
		if json.Unmarshal(r.Body, &v) != nil {
			return true
		}
		reads.Add(1)
		if at, ok := acks.firstAbove(v.N); ok && at.Before(start) {
			mu.Lock()
			stale = append(stale, staleRead{w, start, v.N, start.Sub(at)})
			mu.Unlock()
		}
		return true
	})

	const clients, each = 50, 20
	start := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, clients)
	for i := range clients {
		c := behindBalancer(gs[i%len(gs)])
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- incrementThroughHiccup(c, url, each, &acks, func(at time.Time) {
				if r := resumed.Load(); r != 0 && at.UnixNano() > r {
					firstAfter.CompareAndSwap(0, at.UnixNano())
				}
			})
		}()
	}
	wg.Wait()
	stopReaders()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if err := <-frozen; err != nil {
		t.Fatal(err)
	}
	resume := time.Unix(0, resumed.Load())
	t.Logf("Redis frozen %v at 300 of %d increments; run took %v; %d reads",
		freeze, clients*each, time.Since(start).Round(time.Millisecond), reads.Load())

	if n := backend.count(); n != clients*each {
		t.Errorf("counter = %d after %d acknowledged increments through a %v freeze", n, clients*each, freeze)
	}
	var worstAfter time.Duration // the latest stale read after the resume, from the resume
	for _, s := range stale {
		if s.age > time.Second && s.at.After(resume.Add(2*time.Second)) {
			t.Errorf("gateway %d served n=%d %v after Redis answered again, %v after a newer value was acknowledged",
				s.gateway, s.got, s.at.Sub(resume).Round(time.Millisecond), s.age.Round(time.Millisecond))
		}
		if s.age > 100*time.Millisecond && s.at.Sub(resume) > worstAfter {
			worstAfter = s.at.Sub(resume)
		}
	}
	t.Logf("%d stale reads in all; the last one older than 100 ms began %v after Redis answered again", len(stale), worstAfter.Round(time.Millisecond))
	if f := firstAfter.Load(); f == 0 {
		t.Error("no write succeeded after Redis answered again")
	} else if d := time.Unix(0, f).Sub(resume); d > hiccupLockTimeout {
		t.Errorf("the first write after the freeze succeeded %v after Redis answered again, want within lock_timeout %v (a lock was left behind)", d, hiccupLockTimeout)
	} else {
		t.Logf("the first write after the freeze succeeded %v after Redis answered again", d.Round(time.Millisecond))
	}
	rc := rs.Client()
	defer rc.Close()
	waitFor(t, 5*time.Second, "every lock key to be gone from Redis once the run is over", func() bool {
		keys, err := rc.Keys(context.Background(), "hiccup:lock:*").Result()
		return err == nil && len(keys) == 0
	})
}

// ackLog records when each counter value was acknowledged to a client.
type ackLog struct {
	mu sync.Mutex
	at []time.Time // at[n-1]: when n was acknowledged
}

func (a *ackLog) add(n int, at time.Time) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for len(a.at) < n {
		a.at = append(a.at, time.Time{})
	}
	a.at[n-1] = at
}

// firstAbove is the earliest acknowledgement of a value above n.
func (a *ackLog) firstAbove(n int) (time.Time, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	var first time.Time
	for _, at := range a.at[min(n, len(a.at)):] {
		if !at.IsZero() && (first.IsZero() || at.Before(first)) {
			first = at
		}
	}
	return first, !first.IsZero()
}

// incrementThroughHiccup is increment for a run through a Redis freeze:
// a 503 that says nothing was changed (the lock busy, unavailable or lost)
// is retried like a 412; anything else fails. Each acknowledged value is
// logged with its time, and acked is told of it.
func incrementThroughHiccup(c *http.Client, url string, n int, log *ackLog, acked func(time.Time)) error {
	deadline := time.Now().Add(5 * time.Minute)
	losses := 0
	for done := 0; done < n; {
		if time.Now().After(deadline) {
			return fmt.Errorf("%d of %d increments done after five minutes", done, n)
		}
		g, err := Send(c, "GET", url, "", bearer("tester")...)
		if err != nil {
			return err
		}
		var v struct{ N int }
		if err := json.Unmarshal(g.Body, &v); err != nil {
			return fmt.Errorf("GET: %v: %s", err, g.Body)
		}
		p, err := Send(c, "PUT", url, fmt.Sprintf(`{"n": %d}`, v.N+1),
			append(bearer("tester"), "If-Match", g.Header.Get("ETag"))...)
		if err != nil {
			return err
		}
		body := string(p.Body)
		switch {
		case p.StatusCode == 200:
			now := time.Now()
			log.add(v.N+1, now)
			acked(now)
			done, losses = done+1, 0
		case p.StatusCode == 412, p.StatusCode == 503 && (strings.Contains(body, "resource_busy") ||
			strings.Contains(body, "lock_unavailable") || strings.Contains(body, "lock_lost")):
			losses++
			wait := time.Duration(rand.IntN(1<<min(losses, 6)+1)) * time.Millisecond
			if p.StatusCode == 503 {
				wait += 20 * time.Millisecond // Redis is out: do not spin
			}
			time.Sleep(wait)
		default:
			return fmt.Errorf("PUT: %d %s", p.StatusCode, p.Body)
		}
	}
	return nil
}
