#!/usr/bin/env bash
# Instructions per proxied request, counted by valgrind's callgrind: stable
# where wall-clock figures on a shared machine are not. Scenario (a) of
# `cargo bench --bench proxy`: a returning browser reading its session on
# the memory store, 10 kept-alive connections.
#
#     bash benches/instructions.sh            # prints instructions/request
#
# It counts the same load through the two floor proxies of `cargo bench
# --bench proxy` too: "hyper alone" (hyper's server and pooled client,
# nothing else) and "hyper paired" (hyper's server with one hyper client
# connection per browser connection, no pool: the leanest hyper proxy), so
# the difference is what the sessions cost; and through nginx as
# the bench's plain reverse proxy (one worker, upstream keepalive), the
# peer the issue's targets compare with. Then, for each, the
# instructions per new connection that carries one request (oha
# --disable-keepalive): what a burst of connections opening at once costs.
# And, for sessiongate, scenario (b): every request setting a key.
#
# Needs valgrind, nginx and oha (`cargo install oha --locked`). Leaves the
# callgrind profile in $OUT (default target/callgrind) for callgrind_annotate.
set -euo pipefail
cd "$(dirname "$0")/.."
for tool in valgrind callgrind_control nginx oha curl; do
    command -v "$tool" >/dev/null || { echo "needs $tool" >&2; exit 1; }
done
OUT=${OUT:-target/callgrind}
REQUESTS=${REQUESTS:-4000}
rm -rf "$OUT" && mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
cargo build --release --locked --quiet
# The bench binary that starts the floor proxy with --hyper-floor.
floor_bin=$(cargo bench --bench proxy --locked --no-run --message-format=json 2>/dev/null |
    python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "proxy" and m.get("executable"):
        print(m["executable"])')
[ -x "$floor_bin" ] || { echo "could not build the bench binary (benches/proxy.rs)" >&2; exit 1; }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
UP=$(free_port)
PROXY=$(free_port)
FLOOR=$(free_port)
PAIRED=$(free_port)
NGINX=$(free_port)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT

cat >"$OUT/upstream.conf" <<EOF
worker_processes 1;
daemon off;
pid $OUT/nginx.pid;
error_log $OUT/nginx.error.log;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $OUT/b; proxy_temp_path $OUT/p; fastcgi_temp_path $OUT/f;
  uwsgi_temp_path $OUT/u; scgi_temp_path $OUT/s;
  server {
    listen 127.0.0.1:$UP; keepalive_requests 100000;
    location / { return 200 "ok"; }
    location /set { add_header X-Session-Set "n=1"; return 200 "ok"; }
  }
}
EOF
nginx -c "$OUT/upstream.conf" &
pids+=($!)

cat >"$OUT/sessiongate.toml" <<EOF
listen = "127.0.0.1:$PROXY"
upstream = "http://127.0.0.1:$UP"
[secret]
value = "benchmark-secret-0123456789abcdef-0123456789"
[cookie]
secure = false
[server]
workers = 1
[admin]
listen = "off"
EOF
# Starts a proxy under callgrind on $port and waits until it answers.
start() {
    local name=$1
    port=$2
    shift 2
    RUST_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$OUT/$name.out" \
        "$@" >"$OUT/$name.valgrind.log" 2>&1 &
    vg=$!
    pids+=($vg)
    for _ in $(seq 100); do
        curl -s -o /dev/null "http://127.0.0.1:$port/" && break
        sleep 0.2
    done
}
# Warms the proxy started as $1 up, counts $REQUESTS requests (on kept-alive
# connections, or with "fresh" as $2 each on a new one), dumps the profile
# and prints instructions per request; sets $profile and its $listing.
count() {
    local name=$1 fresh=()
    [ "${2:-}" = fresh ] && fresh=(--disable-keepalive)
    load() { oha --no-tui -n "$1" -c 10 "${fresh[@]}" -H "Cookie: $cookie" "http://127.0.0.1:$port${path:-/}" >/dev/null; }
    load 1000                                  # warm up: connections, pairing, caches
    callgrind_control -z "$vg" >/dev/null 2>&1 # count from here
    load "$REQUESTS"
    callgrind_control -d "$vg" >/dev/null 2>&1
    sleep 1
    profile=$(ls -t "$OUT/$name".out.* | head -1)
    listing=$(callgrind_annotate --auto=no --threshold=100 "$profile" 2>/dev/null)
    awk '/PROGRAM TOTALS/ { gsub(",", "", $1); print int($1 / '"$REQUESTS"') }' <<<"$listing"
}

name=sessiongate
start "$name" "$PROXY" target/release/sessiongate --config "$OUT/sessiongate.toml"
cookie=$(curl -si "http://127.0.0.1:$PROXY/set" | tr -d '\r' | sed -n 's/^[Ss]et-[Cc]ookie: \([^;]*\).*/\1/p')
[ -n "$cookie" ] || { echo "no session cookie from the proxy" >&2; exit 1; }
count "$name" >"$OUT/count"
# valgrind's CPU has no SHA extensions, so sha2 falls back to its portable
# compression function here; on a CPU with SHA-NI (cpuinfo flag sha_ni) the
# cookie's HMAC costs a small fraction of this share.
sha=$(awk '/sha2::sha256::compress256/ { gsub(",", "", $1); n += $1 } END { print n + 0 }' <<<"$listing")
echo "sessiongate: $(cat "$OUT/count") instructions per request (scenario a; profile: $profile)"
echo "  of which SHA-256 in software (HMAC of the cookie): $((sha / REQUESTS))"
count "$name" fresh >"$OUT/count"
echo "sessiongate: $(cat "$OUT/count") instructions per new connection of one request (profile: $profile)"
path=/set count "$name" >"$OUT/count"
echo "sessiongate: $(cat "$OUT/count") instructions per request setting a key (scenario b; profile: $profile)"
kill "$vg" 2>/dev/null || true

# The same requests, cookie and all, through each floor: its name in the
# profile's file, its label, its port and the bench binary's flag for it.
floor() {
    name=$1
    start "$name" "$3" "$floor_bin" "$4" "$3" "$UP"
    count "$name" >"$OUT/count"
    echo "$2: $(cat "$OUT/count") instructions per request (profile: $profile)"
    count "$name" fresh >"$OUT/count"
    echo "$2: $(cat "$OUT/count") instructions per new connection of one request (profile: $profile)"
    kill "$vg" 2>/dev/null || true
}
floor floor "hyper alone" "$FLOOR" --hyper-floor
floor paired "hyper paired" "$PAIRED" --hyper-paired

# The same requests through nginx as a plain reverse proxy: the bench's
# configuration, one process (no master) so callgrind sees the worker.
cat >"$OUT/nginx-proxy.conf" <<EOF
worker_processes 1;
daemon off;
master_process off;
pid $OUT/nginx-proxy.pid;
error_log $OUT/nginx-proxy.error.log;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $OUT/b; proxy_temp_path $OUT/p; fastcgi_temp_path $OUT/f;
  uwsgi_temp_path $OUT/u; scgi_temp_path $OUT/s;
  upstream app { server 127.0.0.1:$UP; keepalive 128; keepalive_requests 100000; }
  server {
    listen 127.0.0.1:$NGINX; keepalive_requests 100000;
    location / { proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
}
EOF
name=nginx
start "$name" "$NGINX" nginx -c "$OUT/nginx-proxy.conf"
count "$name" >"$OUT/count"
echo "nginx: $(cat "$OUT/count") instructions per request (profile: $profile)"
count "$name" fresh >"$OUT/count"
echo "nginx: $(cat "$OUT/count") instructions per new connection of one request (profile: $profile)"
