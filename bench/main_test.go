package main

import "testing"

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
