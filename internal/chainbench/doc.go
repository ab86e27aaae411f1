// Package chainbench measures what restgate's handler chain costs inside
// one Caddy server, without the network: its benchmarks load a real Caddy
// config in process, answer upstream from memory (the
// http.reverse_proxy.transport.bench_memory module its tests register) and
// call the server's ServeHTTP directly, once per iteration. The difference
// between two benchmarks is then what the added handlers cost in CPU and
// allocations, free of the kernel's and the backend's share, which the
// end-to-end rows of `make bench` cannot separate on a noisy machine.
package chainbench
