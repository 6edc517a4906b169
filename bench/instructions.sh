#!/usr/bin/env bash
# User-space instructions per proxied request, counted by callgrind: a figure that does not
# move with the machine's load, for comparing two builds of Gantry.
#   bench/instructions.sh [GANTRY_BINARY]      (default: target/release/gantry)
# Starts its own nginx upstream (96-byte JSON) on 127.0.0.1:19101 and Gantry on :19150,
# loads it with wrk for 5 s on 10 keep-alive connections, prints instructions ÷ requests.
# Needs valgrind, nginx and wrk (bench/setup.sh installs the last two).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
binary=${1:-$here/../target/release/gantry}
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; sleep 0.5; rm -rf "$work"' EXIT

cat > "$work/nginx.conf" <<NGINX
worker_processes 1;
daemon off;
pid $work/nginx.pid;
error_log $work/error.log;
events { worker_connections 1024; }
http {
  access_log off;
  server {
    listen 127.0.0.1:19101;
    location / {
      default_type application/json;
      return 200 '{"message":"hello","items":[1,2,3],"ok":true,"padding":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}';
    }
  }
}
NGINX
cat > "$work/gantry.yaml" <<YAML
node:
  worker_threads: 1
  listeners:
    - address: 127.0.0.1:19150
upstreams:
  - id: bench
    endpoints: [127.0.0.1:19101]
routes:
  - id: all
    paths: [/*]
    upstream: bench
YAML
nginx -c "$work/nginx.conf" -p "$work" &
GANTRY_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$work/callgrind.out" \
  "$binary" run --config "$work/gantry.yaml" --no-watch > "$work/valgrind.log" 2>&1 &
for _ in $(seq 1 150); do
  curl -s -o /dev/null http://127.0.0.1:19150/json && break
  sleep 0.2
done
wrk -t1 -c10 -d2s http://127.0.0.1:19150/json > /dev/null   # warm-up: pools, caches
callgrind_control -z > /dev/null 2>&1
requests=$(wrk -t1 -c10 -d5s http://127.0.0.1:19150/json | awk '/requests in/ {print $1}')
callgrind_control -d > /dev/null 2>&1
sleep 1
instructions=$(grep -h '^totals:\|^summary:' "$work"/callgrind.out.* | awk '{print $2}' | sort -n | tail -1)
echo "requests=$requests instructions=$instructions per_request=$((instructions / requests))"
