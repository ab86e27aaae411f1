package main

import (
	"context"
	"encoding/json"
	"fmt"
	"log"
	"net/http"
	"os"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// sample is one wrk run of one configuration.
type sample struct {
	rps      float64
	p50, p99 time.Duration
	requests int
	// CPU time per request, in µs, of the configuration's server (its
	// whole process group) and of the backend, over the same run
	serverCPU, backendCPU float64
	// heap allocations per request of the server's Go process (from its
	// admin /debug/vars), 0 where unknown
	allocs float64
}

// warmUp runs every configuration once, for up to 2 s, to fill the
// connection pools and the caches; a smoke run has none.
func warmUp(o options, configs []config) error {
	for _, c := range configs {
		if o.smoke {
			break
		}
		if _, err := runWrk(c, connsFor(c, o), min(o.duration, 2*time.Second)); err != nil {
			return fmt.Errorf("warm-up %s: %v", c.name, err)
		}
	}
	return nil
}

// interleave runs every configuration in turn, A/B/C/…, for o.rounds
// rounds: samples[i] are configs[i]'s. backend is the backend's process
// group.
func interleave(o options, configs []config, backend int) ([][]sample, error) {
	samples := make([][]sample, len(configs))
	for round := 0; round < o.rounds; round++ {
		for i, c := range configs {
			s, err := measure(c, connsFor(c, o), o.duration, backend)
			if err != nil {
				return nil, fmt.Errorf("round %d, %s: %v", round+1, c.name, err)
			}
			samples[i] = append(samples[i], s)
			log.Printf("round %d %-28s %9.0f req/s  p50 %-8v p99 %v", round+1, c.name, s.rps, s.p50, s.p99)
		}
	}
	return samples, nil
}

// measure runs wrk on c for d and adds, over the same run, the CPU time
// per request of c's server and of the backend, and the heap allocations
// per request of c's server.
func measure(c config, conns int, d time.Duration, backend int) (sample, error) {
	server0, backend0 := groupCPU(c.server.pid), groupCPU(backend)
	mallocs0, _ := mallocs(c.server.admin)
	s, err := runWrk(c, conns, d)
	if err != nil {
		return s, err
	}
	if s.requests > 0 {
		s.serverCPU = float64(groupCPU(c.server.pid)-server0) / float64(time.Microsecond) / float64(s.requests)
		s.backendCPU = float64(groupCPU(backend)-backend0) / float64(time.Microsecond) / float64(s.requests)
		if m, err := mallocs(c.server.admin); err == nil && mallocs0 > 0 {
			s.allocs = float64(m-mallocs0) / float64(s.requests)
		}
	}
	return s, nil
}

func connsFor(c config, o options) int {
	if c.conns > 0 {
		return c.conns
	}
	return o.conns
}

var (
	reRPS     = regexp.MustCompile(`Requests/sec:\s+([0-9.]+)`)
	reCount   = regexp.MustCompile(`(\d+) requests in`)
	reLatency = regexp.MustCompile(`(?m)^\s+(50|99)%\s+([0-9.]+)(us|ms|s)\s*$`)
	reNon2xx  = regexp.MustCompile(`Non-2xx or 3xx responses: (\d+)`)
	reErrors  = regexp.MustCompile(`Socket errors: .*`)
)

// runWrk runs wrk on CPU 1 and parses its report. Any non-2xx response
// makes the sample invalid: a gateway that refuses fast is not fast.
func runWrk(c config, conns int, d time.Duration) (sample, error) {
	args := []string{"-t1", "-c" + strconv.Itoa(conns), "-d" + strconv.Itoa(max(1, int(d.Round(time.Second).Seconds()))) + "s", "--latency", "--timeout", "5s"}
	if c.header != "" {
		args = append(args, "-H", c.header)
	}
	args = append(args, c.url)
	ctx, cancel := context.WithTimeout(context.Background(), d+30*time.Second)
	defer cancel()
	out, err := pinned(ctx, 1, "wrk", args...).CombinedOutput()
	if err != nil {
		return sample{}, fmt.Errorf("wrk: %v\n%s", err, out)
	}
	s := string(out)
	if m := reNon2xx.FindStringSubmatch(s); m != nil {
		return sample{}, fmt.Errorf("%s non-2xx responses:\n%s", m[1], s)
	}
	if m := reErrors.FindString(s); m != "" && !strings.Contains(m, "connect 0, read 0, write 0, timeout 0") {
		return sample{}, fmt.Errorf("wrk %s\n%s", m, s)
	}
	m := reRPS.FindStringSubmatch(s)
	if m == nil {
		return sample{}, fmt.Errorf("no Requests/sec in:\n%s", s)
	}
	var res sample
	res.rps, _ = strconv.ParseFloat(m[1], 64)
	if m := reCount.FindStringSubmatch(s); m != nil {
		res.requests, _ = strconv.Atoi(m[1])
	}
	for _, l := range reLatency.FindAllStringSubmatch(s, -1) {
		v, _ := strconv.ParseFloat(l[2], 64)
		unit := map[string]time.Duration{"us": time.Microsecond, "ms": time.Millisecond, "s": time.Second}[l[3]]
		d := time.Duration(v * float64(unit))
		if l[1] == "50" {
			res.p50 = d
		} else {
			res.p99 = d
		}
	}
	return res, nil
}

// groupCPU is the CPU time (user and system) the processes of a process
// group have used so far, from /proc (in clock ticks of 10 ms: Linux's
// USER_HZ is 100). A process that exited meanwhile is not counted, which
// no server does during a run.
func groupCPU(pgid int) time.Duration {
	if pgid == 0 {
		return 0
	}
	entries, _ := os.ReadDir("/proc")
	var ticks int64
	for _, e := range entries {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		// after the command in parentheses: state ppid pgrp … utime(12th) stime(13th)
		i := strings.LastIndex(string(b), ") ")
		if i < 0 {
			continue
		}
		f := strings.Fields(string(b)[i+2:])
		if len(f) < 13 || f[2] != strconv.Itoa(pgid) {
			continue
		}
		u, _ := strconv.ParseInt(f[11], 10, 64)
		st, _ := strconv.ParseInt(f[12], 10, 64)
		ticks += u + st
	}
	return time.Duration(ticks) * 10 * time.Millisecond
}

// mallocs reads the cumulative count of heap allocations of the Caddy
// process whose admin API listens on admin (its expvar /debug/vars).
func mallocs(admin string) (uint64, error) {
	if admin == "" {
		return 0, fmt.Errorf("no admin address")
	}
	client := http.Client{Timeout: 5 * time.Second}
	resp, err := client.Get("http://" + admin + "/debug/vars")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	var v struct {
		Memstats struct{ Mallocs uint64 } `json:"memstats"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&v); err != nil {
		return 0, err
	}
	return v.Memstats.Mallocs, nil
}
