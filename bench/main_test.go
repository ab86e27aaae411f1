package main

import (
	"fmt"
	"strings"
	"testing"
)

// TestJoinSplitResults: a module's log line on stdout between a
// benchmark's name and its numbers is dropped and the line mended, as
// benchstat needs it (it failed with "parsing iteration count" before).
func TestJoinSplitResults(t *testing.T) {
	raw := "goos: linux\npkg: example\n" +
		"BenchmarkGetByKey/postgres-2         \t2026-11-23T16:03:05.971Z\tDEBUG\tresources/resources.go:184\tresources on PostgreSQL\n" +
		"   13339\t     86427 ns/op\t    4044 B/op\t      79 allocs/op\n" +
		"BenchmarkCreate-2   \t    1000\t   1054 ns/op\t  10 B/op\t  1 allocs/op\n" +
		"some other log line\nPASS\nok  \texample\t1.0s\n"
	want := "goos: linux\npkg: example\n" +
		"BenchmarkGetByKey/postgres-2\t13339\t     86427 ns/op\t    4044 B/op\t      79 allocs/op\n" +
		"BenchmarkCreate-2   \t    1000\t   1054 ns/op\t  10 B/op\t  1 allocs/op\nPASS\nok  \texample\t1.0s\n"
	if got := string(joinSplitResults([]byte(raw))); got != want {
		t.Errorf("got\n%q\nwant\n%q", got, want)
	}
}

// TestChainTable: the per-handler table reads BenchmarkChain's lines and
// takes medians; without every row it stays out of the report.
func TestChainTable(t *testing.T) {
	var raw string
	for _, r := range []struct {
		name string
		ns   int
	}{{"bare", 14000}, {"errors", 14300}, {"ip_limit", 15900}, {"auth", 16200}, {"user_limit", 17200}, {"full", 19000}, {"cache_hit", 9900}, {"respond", 7000}} {
		for _, d := range []int{0, 100, -100} {
			raw += fmt.Sprintf("BenchmarkChain/%s-2 \t 1000\t %d ns/op\t 11000 B/op\t 140 allocs/op\n", r.name, r.ns+d)
		}
	}
	got := chainTable([]byte(raw))
	for _, want := range []string{"| + `api_errors` | 14300 | +300 |", "| Caddy's `respond` of the same 1 KiB | 7000 | hit − this: +2900 |", "adds 5.0 µs and 0 allocations to Caddy's 14.0 µs"} {
		if !strings.Contains(got, want) {
			t.Errorf("no %q in\n%s", want, got)
		}
	}
	if chainTable([]byte("BenchmarkChain/bare-2 \t 1000\t 14000 ns/op\t 1 B/op\t 1 allocs/op\n")) != "" {
		t.Error("a table from a partial run")
	}
}
