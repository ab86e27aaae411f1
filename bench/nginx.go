package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// writeNginx writes the closest nginx equivalent of restgate's chain: the
// API key mapped to a user with `map` (nginx has no hashing, so the map
// holds the keys themselves), `limit_req` per client address and per user,
// `proxy_pass` with upstream keep-alive, and `proxy_cache` keyed by user
// for the hit server.
func writeNginx(dir string, keys, backend, miss, hit int) (string, error) {
	for _, d := range []string{"tmp/body", "tmp/proxy", "tmp/fastcgi", "tmp/uwsgi", "tmp/scgi", "cache", "logs"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			return "", err
		}
	}
	var m strings.Builder
	for i := 0; i < keys; i++ {
		fmt.Fprintf(&m, "\t\trg_bench_key_%d user%d;\n", i, i)
	}
	user := ""
	if os.Geteuid() == 0 {
		user = "user root;" // workers must reach the temp dirs this run made
	}
	location := func(cache string) string {
		return fmt.Sprintf(`		location / {
			if ($api_user = "") {
				return 401;
			}
			limit_req zone=perip burst=1000000 nodelay;
			limit_req zone=peruser burst=1000000 nodelay;
			proxy_http_version 1.1;
			proxy_set_header Connection "";
			proxy_set_header X-Api-Key "";
			proxy_set_header X-Auth-User $api_user;
%s			proxy_pass http://backend;
		}
`, cache)
	}
	conf := fmt.Sprintf(`%s
worker_processes 1;
daemon off;
pid %[2]s/nginx.pid;
error_log %[2]s/logs/error.log warn;
events {
	worker_connections 4096;
}
http {
	access_log off;
	client_body_temp_path %[2]s/tmp/body;
	proxy_temp_path %[2]s/tmp/proxy;
	fastcgi_temp_path %[2]s/tmp/fastcgi;
	uwsgi_temp_path %[2]s/tmp/uwsgi;
	scgi_temp_path %[2]s/tmp/scgi;
	map_hash_bucket_size 128;
	map_hash_max_size 65536;
	map $http_x_api_key $api_user {
		default "";
%[3]s	}
	limit_req_zone $binary_remote_addr zone=perip:16m rate=1000000r/s;
	limit_req_zone $api_user zone=peruser:16m rate=1000000r/s;
	proxy_cache_path %[2]s/cache keys_zone=api:16m max_size=64m;
	upstream backend {
		server 127.0.0.1:%[4]d;
		keepalive 64;
	}
	server {
		listen 127.0.0.1:%[5]d;
%[7]s	}
	server {
		listen 127.0.0.1:%[6]d;
%[8]s	}
}
`, user, dir, m.String(), backend, miss, hit, location(""),
		location("\t\t\tproxy_cache api;\n\t\t\tproxy_cache_key \"$api_user$request_uri\";\n\t\t\tproxy_cache_valid 200 1h;\n"))
	path := filepath.Join(dir, "nginx.conf")
	return path, os.WriteFile(path, []byte(conf), 0o600)
}
