#!/usr/bin/env bash
# Instructions per proxied request, counted by valgrind's callgrind: stable
# where wall-clock figures on a shared machine are not. Scenario (a) of
# `cargo bench --bench proxy`: a returning browser reading its session on
# the memory store, 10 kept-alive connections.
#
#     bash benches/instructions.sh            # prints instructions/request
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

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
UP=$(free_port)
PROXY=$(free_port)
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
RUST_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$OUT/callgrind.out" \
    target/release/sessiongate --config "$OUT/sessiongate.toml" >"$OUT/valgrind.log" 2>&1 &
vg=$!
pids+=($vg)
for _ in $(seq 100); do
    curl -s -o /dev/null "http://127.0.0.1:$PROXY/" && break
    sleep 0.2
done
cookie=$(curl -si "http://127.0.0.1:$PROXY/set" | tr -d '\r' | sed -n 's/^[Ss]et-[Cc]ookie: \([^;]*\).*/\1/p')
[ -n "$cookie" ] || { echo "no session cookie from the proxy" >&2; exit 1; }
load() { oha --no-tui -n "$1" -c 10 -H "Cookie: $cookie" "http://127.0.0.1:$PROXY/" >/dev/null; }
load 1000                               # warm up: connections, pairing, caches
callgrind_control -z "$vg" >/dev/null 2>&1   # count from here
load "$REQUESTS"
callgrind_control -d "$vg" >/dev/null 2>&1
sleep 1
profile=$(ls -t "$OUT"/callgrind.out.* | head -1)
listing=$(callgrind_annotate --auto=no --threshold=100 "$profile" 2>/dev/null)
total=$(awk '/PROGRAM TOTALS/ { gsub(",", "", $1); print $1 }' <<<"$listing")
# valgrind's CPU has no SHA extensions, so sha2 falls back to its portable
# compression function here; on a CPU with SHA-NI (cpuinfo flag sha_ni) the
# cookie's HMAC costs a small fraction of this share.
sha=$(awk '/sha2::sha256::compress256/ { gsub(",", "", $1); n += $1 } END { print n + 0 }' <<<"$listing")
echo "sessiongate: $((total / REQUESTS)) instructions per request (scenario a; profile: $profile)"
echo "  of which SHA-256 in software (HMAC of the cookie): $((sha / REQUESTS))"
