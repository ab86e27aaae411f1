package main

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"
)

// feedTarget is a running gateway's collection: its URL, a client that
// reaches the gateway, and an API key with read and write scopes.
type feedTarget struct {
	URL    string // e.g. https://api.localhost:8443/v1/notes (a collection whose key is `name`)
	Client *http.Client
	Key    string
}

// feedsSection measures change feeds and returns BENCHMARKS.md's section:
// change-to-watcher latency (a create through the writer until the
// watcher reads its event) on one gateway (one.URL twice) and across two
// on PostgreSQL (across[0] writes, across[1] watches), and the resident
// memory of gateway pid with idle streams open on it (its collection must
// allow them: feed_max_streams and the rate limits above idle).
func feedsSection(one feedTarget, across [2]feedTarget, pid, writes, idle int) (string, error) {
	var b strings.Builder
	b.WriteString("## Change feeds\n\n| path | writes | p50 | p99 |\n|---|---|---|---|\n")
	for _, row := range []struct {
		name          string
		write, watchT feedTarget
	}{{"one gateway (SQLite)", one, one}, {"across two gateways (PostgreSQL)", across[0], across[1]}} {
		if row.write.URL == "" {
			continue
		}
		lat, err := feedLatency(row.write, row.watchT, writes)
		if err != nil {
			return "", fmt.Errorf("%s: %v", row.name, err)
		}
		fmt.Fprintf(&b, "| %s | %d | %v | %v |\n", row.name, writes, percentile(lat, 0.50), percentile(lat, 0.99))
	}
	before := rss(pid)
	closeAll, err := openIdle(one, idle)
	if err != nil {
		return "", err
	}
	after := rss(pid)
	closeAll()
	fmt.Fprintf(&b, "\nGateway RSS: %d MiB before, %d MiB with %d idle streams open (%.1f KiB a stream).\n",
		before>>20, after>>20, idle, float64(after-before)/1024/float64(max(idle, 1)))
	return b.String(), nil
}

// feedLatency creates n documents one at a time through w, each timed
// from before its POST until the watcher on r reads its event.
func feedLatency(w, r feedTarget, n int) ([]time.Duration, error) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	events, err := follow(ctx, r)
	if err != nil {
		return nil, err
	}
	run := time.Now().UnixNano()
	var out []time.Duration
	for i := range n {
		name := fmt.Sprintf("bench-%d-%d", run, i)
		start := time.Now()
		req, _ := http.NewRequest("POST", w.URL, strings.NewReader(`{"name": "`+name+`"}`))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Authorization", "Bearer "+w.Key)
		resp, err := w.Client.Do(req)
		if err != nil {
			return nil, err
		}
		resp.Body.Close()
		if resp.StatusCode != 201 {
			return nil, fmt.Errorf("create: %d", resp.StatusCode)
		}
		for got := false; !got; {
			select {
			case data, ok := <-events:
				if !ok {
					return nil, fmt.Errorf("the feed ended")
				}
				got = strings.Contains(data, `"name":"`+name+`"`)
			case <-time.After(30 * time.Second):
				return nil, fmt.Errorf("no event for %s within 30s", name)
			}
		}
		out = append(out, time.Since(start))
	}
	return out, nil
}

// follow opens t's feed and sends each event's data line.
func follow(ctx context.Context, t feedTarget) (<-chan string, error) {
	req, _ := http.NewRequestWithContext(ctx, "GET", t.URL, nil)
	req.Header.Set("Accept", "text/event-stream")
	req.Header.Set("Authorization", "Bearer "+t.Key)
	resp, err := t.Client.Do(req)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != 200 {
		resp.Body.Close()
		return nil, fmt.Errorf("feed: %d", resp.StatusCode)
	}
	out := make(chan string, 64)
	go func() {
		defer close(out)
		defer resp.Body.Close()
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			if line := sc.Text(); strings.HasPrefix(line, "data: ") {
				select {
				case out <- line[6:]:
				case <-ctx.Done():
					return
				}
			}
		}
	}()
	return out, nil
}

// openIdle opens n streams on t and waits until each has started.
func openIdle(t feedTarget, n int) (closeAll func(), err error) {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	errs := make(chan error, n)
	sem := make(chan struct{}, 64)
	for range n {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			req, _ := http.NewRequestWithContext(ctx, "GET", t.URL, nil)
			req.Header.Set("Accept", "text/event-stream")
			req.Header.Set("Authorization", "Bearer "+t.Key)
			resp, err := t.Client.Do(req)
			if err != nil {
				errs <- err
				return
			}
			if resp.StatusCode != 200 {
				resp.Body.Close()
				errs <- fmt.Errorf("idle stream: %d", resp.StatusCode)
				return
			}
			first := make([]byte, 1)
			if _, err := resp.Body.Read(first); err != nil {
				errs <- err
			}
			go func() { <-ctx.Done(); resp.Body.Close() }()
		}()
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		cancel()
		return nil, err
	}
	return cancel, nil
}

func percentile(xs []time.Duration, p float64) time.Duration {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	return s[min(int(float64(len(s))*p), len(s)-1)].Round(10 * time.Microsecond)
}

// runFeeds seeds the feed gateways and measures change feeds on them:
// latency on the one on SQLite and across the two on PostgreSQL, and the
// RSS of idle streams on one (fewer writes and streams in -smoke and
// -quick runs).
func runFeeds(o options, p ports, one server) (string, error) {
	var h2c http.Protocols
	h2c.SetUnencryptedHTTP2(true)
	client := &http.Client{Transport: &http.Transport{Protocols: &h2c}}
	writes, idle := 300, 10_000
	if o.smoke || o.quick {
		writes, idle = 20, 200
	}
	target := func(port int) feedTarget {
		return feedTarget{URL: fmt.Sprintf("http://127.0.0.1:%d/v1/events", port), Client: client, Key: benchKey}
	}
	for _, port := range []int{p.feedA, p.feedB, p.feedOne} {
		if err := seedEvent(target(port).URL, benchKey); err != nil {
			return "", err
		}
	}
	feeds, err := feedsSection(target(p.feedOne), [2]feedTarget{target(p.feedA), target(p.feedB)}, one.pid, writes, idle)
	if err != nil {
		return "", fmt.Errorf("change feeds: %w", err)
	}
	return feeds, nil
}
