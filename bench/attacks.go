package main

import (
	"context"
	"fmt"
	"io"
	"log"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// attack is one memory measurement.
type attack struct {
	name             string
	requests         int
	rssBefore, after int64
}

// runAttacks floods the gateway with distinct invalid keys, then with
// distinct client IPs (X-Forwarded-For from a trusted proxy), from a client
// pinned to CPU 1, and reads the gateway's RSS before and after each.
func runAttacks(o options, pid int, url, dir string) ([]attack, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	var out []attack
	for _, a := range []struct{ name, mode string }{
		{"distinct invalid API keys", "keys"},
		{"distinct client IPs (X-Forwarded-For, trusted proxy)", "ips"},
	} {
		before := rss(pid)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
		res, err := pinned(ctx, 1, self, "-attack-client", url, "-attack-mode", a.mode,
			"-attack", strconv.Itoa(o.attack), "-conns", strconv.Itoa(o.conns)).CombinedOutput()
		cancel()
		if err != nil {
			return nil, fmt.Errorf("attack %q: %v\n%s", a.name, err, res)
		}
		if !o.smoke {
			time.Sleep(time.Second) // let the last responses settle before reading RSS
		}
		after := rss(pid)
		out = append(out, attack{name: a.name, requests: o.attack, rssBefore: before, after: after})
		log.Printf("attack %-55s %d requests, RSS %d → %d MiB", a.name, o.attack, before>>20, after>>20)
	}
	return out, nil
}

// attackClient sends n requests, each with a distinct invalid API key or a
// distinct client address, over conns keep-alive connections. Every
// response must be a 401 (the invalid key, or no key): anything else means
// the attack did not exercise what it claims to.
func attackClient(url, mode string, n, conns int) error {
	tr := &http.Transport{MaxIdleConnsPerHost: conns, MaxConnsPerHost: conns}
	client := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	var next atomic.Int64
	errs := make(chan error, conns)
	var wg sync.WaitGroup
	for c := 0; c < conns; c++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1)
				if i > int64(n) {
					return
				}
				req, _ := http.NewRequest("GET", url, nil)
				if mode == "keys" {
					req.Header.Set("X-API-Key", "rg_invalid_"+strconv.FormatInt(i, 10))
				} else {
					req.Header.Set("X-Forwarded-For", fmt.Sprintf("10.%d.%d.%d", i>>16&255, i>>8&255, i&255))
				}
				resp, err := client.Do(req)
				if err != nil {
					errs <- err
					return
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusUnauthorized {
					errs <- fmt.Errorf("request %d: status %d, want 401", i, resp.StatusCode)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	return <-errs
}

// rss reads a process's resident set size, in bytes.
func rss(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "VmRSS:") {
			f := strings.Fields(line)
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			return kb << 10
		}
	}
	return 0
}
