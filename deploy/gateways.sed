# The default Caddyfile for several gateways behind one name (README:
# "Several gateways"):
#
#   sed -f deploy/gateways.sed Caddyfile > gateways.caddyfile
#
# Three lines change, each to a variable of deploy/gateways.env:
#   - certificates and the local CA go to one directory every gateway
#     shares (RESTGATE_STORAGE), not to each gateway's data directory;
#   - the resources collections live in PostgreSQL (RESTGATE_DATABASE), not
#     in each gateway's SQLite file;
#   - the balancer's X-Forwarded-For is believed (RESTGATE_TRUSTED_PROXIES),
#     so the per-IP limit and the access log see the client, not the balancer.
# Everything else (keys, the pid lock) stays in each gateway's RESTGATE_DATA.
# (The Caddyfile replaces {$VAR:default} once, so a default cannot name
# another variable: the default Caddyfile keeps both in RESTGATE_DATA.)
s|^\tstorage file_system {\$RESTGATE_DATA:\./data}/caddy$|\tstorage file_system {$RESTGATE_STORAGE}|
s|^\t\t\tdatabase {\$RESTGATE_DATA:\./data}/resources\.db$|\t\t\tdatabase {$RESTGATE_DATABASE}|
s|^\t\ttimeouts {$|\t\ttrusted_proxies static {$RESTGATE_TRUSTED_PROXIES}\n&|
