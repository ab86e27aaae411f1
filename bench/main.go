// Command bench measures what restgate costs per request, side by side with
// bare Caddy and nginx on the same machine in one run, and writes a
// Markdown report (BENCHMARKS.md):
//
//  1. Go microbenchmarks of every module's hot path, summarised by benchstat;
//  2. end to end over loopback with wrk, every configuration against the
//     same 1 KiB JSON backend, interleaved over several rounds: median
//     requests/s, p50 and p99 latency, and the ratio to bare Caddy;
//  3. the gateway's RSS after floods of distinct invalid API keys and of
//     distinct client IPs.
//
// Servers are pinned to CPU 0 and wrk to CPU 1 where the machine has two.
// All traffic stays on 127.0.0.1 and every run is bounded in time.
//
// run reads as the table of contents: servers.go starts every server
// configuration (stores.go the Redis, Redis Cluster and PostgreSQL they
// share, nginx.go writes nginx's), configs.go lists the rows, rounds.go
// measures them, attacks.go, feeds.go and micro.go measure the other
// sections, and report.go (with defaultchain.go) writes the report.
//
//	go run ./bench [-smoke] [-rounds 5] [-duration 10s] [-out BENCHMARKS.md]
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"time"

	"github.com/restgate/restgate/internal/chainbench"
)

type options struct {
	bin      string
	out      string
	rounds   int
	duration time.Duration
	conns    int
	attack   int
	micro    bool
	count    int
	smoke    bool
	quick    bool
	// caddyfile is the default Caddyfile whose chain the default-chain
	// rows run as shipped
	caddyfile string
}

func main() {
	var o options
	backendAddr := flag.String("serve-backend", "", "internal: serve the 1 KiB JSON backend on this address")
	attackURL := flag.String("attack-client", "", "internal: send -attack requests to this URL, each with a distinct -attack-mode value")
	attackMode := flag.String("attack-mode", "keys", "internal: keys (distinct X-API-Key) or ips (distinct X-Forwarded-For)")
	flag.StringVar(&o.bin, "bin", "bin/restgate", "the restgate binary")
	flag.StringVar(&o.out, "out", "BENCHMARKS.md", "where to write the report")
	flag.IntVar(&o.rounds, "rounds", 5, "interleaved rounds of every configuration")
	flag.DurationVar(&o.duration, "duration", 10*time.Second, "wrk duration per configuration and round")
	flag.IntVar(&o.conns, "conns", 64, "wrk connections")
	flag.IntVar(&o.attack, "attack", 1_000_000, "requests per memory attack")
	flag.BoolVar(&o.micro, "micro", true, "run the Go microbenchmarks")
	flag.IntVar(&o.count, "count", 5, "go test -count for the microbenchmarks")
	flag.BoolVar(&o.smoke, "smoke", false, "one short round of everything: proves the bench still works")
	flag.BoolVar(&o.quick, "quick", false, "3 rounds of 5 s, small attacks, the chain's Go benchmarks only (-count 3): about 8 minutes, for a developer's before/after")
	flag.StringVar(&o.caddyfile, "caddyfile", "Caddyfile", "the default Caddyfile, whose API site's chain the default-chain rows run as shipped")
	chainFrom := flag.String("chain-table", "", "print the per-handler table of BenchmarkChain from this raw microbenchmark output (bench/micro-baseline.txt) and exit")
	flag.Parse()
	if *chainFrom != "" {
		raw, err := os.ReadFile(*chainFrom)
		if err != nil {
			log.Fatal(err)
		}
		fmt.Print(chainTable(raw))
		return
	}
	if *backendAddr != "" {
		serveBackend(*backendAddr)
		return
	}
	if *attackURL != "" {
		if err := attackClient(*attackURL, *attackMode, o.attack, o.conns); err != nil {
			log.Fatal(err)
		}
		return
	}
	if o.smoke {
		// a few seconds in all: every configuration once (wrk's shortest
		// run), small attacks, no microbenchmarks (make test runs their
		// packages' tests already)
		o.rounds, o.duration, o.attack, o.count, o.micro = 1, time.Second, 2_000, 1, false
	}
	if o.quick {
		o.rounds, o.duration, o.attack, o.count = 3, 5*time.Second, 20_000, 3
	}
	log.SetFlags(0)
	log.SetPrefix("bench: ")
	if err := run(o); err != nil {
		log.Fatal(err)
	}
}

// doc is the backend's fixed 1 KiB JSON document.
var doc = chainbench.Doc

// serveBackend is the small JSON service every configuration proxies to:
// /doc has no caching headers; /cached may be cached for an hour.
func serveBackend(addr string) {
	mux := http.NewServeMux()
	mux.HandleFunc("/doc", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Write(doc)
	})
	mux.HandleFunc("/cached", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "max-age=3600")
		w.Write(doc)
	})
	// the request's fields as received: what a gateway adds and removes
	mux.HandleFunc("/headers", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(r.Header)
	})
	srv := &http.Server{Addr: addr, Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	log.Fatal(srv.ListenAndServe())
}

// run starts every server, measures every configuration in interleaved
// rounds, attacks the gateway's memory, measures the change feeds and
// the Go microbenchmarks, and writes the report.
func run(o options) error {
	for _, tool := range []string{"wrk", "nginx"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("%s is not installed (apt-get install wrk nginx-light): %v", tool, err)
		}
	}
	s, err := newServers(o.bin)
	if err != nil {
		return err
	}
	defer s.close()
	shipped, err := s.readShipped(o.caddyfile)
	if err != nil {
		return err
	}
	log.Printf("workdir %s", s.dir)
	st, err := startStores()
	if err != nil {
		return err
	}
	defer st.stop()
	defer s.stopAll()
	gw, added, err := s.startAll(st, shipped)
	if err != nil {
		return err
	}

	chainNote := "the default Caddyfile's API chain as shipped (" + strings.Join(shipped.Directives(), ", ") + "), read from " + o.caddyfile + ", keyed"
	configs := endToEnd(s.ports, gw, chainNote)
	if err := ready(configs, s.ports, s.dir); err != nil {
		return err
	}
	log.Printf("all servers ready; %d rounds × %d configurations × %v", o.rounds, len(configs), o.duration)
	if err := warmUp(o, configs); err != nil {
		return err
	}
	samples, err := interleave(o, configs, gw.backend.pid)
	if err != nil {
		return err
	}
	attacks, err := runAttacks(o, gw.rg.pid, fmt.Sprintf("http://127.0.0.1:%d/doc", s.ports.miss), s.dir)
	if err != nil {
		return err
	}
	feeds, err := runFeeds(o, s.ports, gw.feeds[2])
	if err != nil {
		return err
	}
	micro, err := microSections(o)
	if err != nil {
		return err
	}

	report := render(o, results{configs, samples}, attacks, micro, chainNote, added, st.rtt) + "\n" + feeds
	if err := os.WriteFile(o.out, []byte(report), 0o644); err != nil {
		return err
	}
	log.Printf("wrote %s", o.out)
	return nil
}
