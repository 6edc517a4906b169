#!/usr/bin/env bash
# User-space instructions per proxied request, counted by callgrind: a figure that does not
# move with the machine's load, for comparing two builds of Gantry.
#   bench/instructions.sh [GANTRY_BINARY] [SCENARIO]   (default: target/release/gantry, plain)
# SCENARIO: plain (proxy only), key_auth (API key in X-Api-Key among 3 consumers),
# jwt_rs256 (an RS256 bearer token checked against an inline public key; after the first
# request it is answered from the policy's verified-token cache), jwt_rs256_uncached (the same
# with the cache off: the signature is checked on every request), rate_limit_memory
# or rate_limit_redis (a fixed-window limit per client IP, high enough never to refuse, counted
# in memory or in a redis-server the script starts on :19160; the figure counts Gantry's
# instructions only, not Redis's); the difference to plain is the per-request cost of the policy.
# Request metrics are on in every scenario (the default) except plain_no_metrics
# (node.metrics.enabled: false); access_log adds the JSON access log to a file, and
# key_auth_consumer_metrics is key_auth with per-consumer metrics (node.metrics.consumer_label).
# tracing_unsampled and tracing_sampled turn on node.tracing (OTLP/HTTP to the nginx upstream,
# which answers POST /v1/traces with 200): sampler ratio 0 without parent-based sampling (each
# request's traceparent is read and passed on under a new span id, nothing is recorded) or ratio 1 (every request is recorded and its spans
# exported; the exporter thread's instructions are counted too). plain_traceparent is plain with
# the same traceparent header as tracing_unsampled, tracing off: what the header itself costs.
# Starts its own nginx upstream (96-byte JSON) on 127.0.0.1:19101 and Gantry on :19150,
# loads it with wrk for 5 s on 10 keep-alive connections, prints instructions ÷ requests.
# Needs valgrind, nginx and wrk (bench/setup.sh installs the last two); jwt_rs256* need openssl.
# PROFILE_OUT=FILE keeps the measured part's callgrind profile for callgrind_annotate (function
# names need a build with line tables: CARGO_PROFILE_RELEASE_DEBUG=line-tables-only).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
binary=${1:-$here/../target/release/gantry}
scenario=${2:-plain}
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
    location = /v1/traces {
      return 200;
    }
    location / {
      default_type application/json;
      return 200 '{"message":"hello","items":[1,2,3],"ok":true,"padding":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}';
    }
  }
}
NGINX
node_extra="" consumers="" policies="" header=()
case $scenario in
  plain) ;;
  plain_traceparent)
    header=(-H "traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01") ;;
  plain_no_metrics)
    node_extra="  metrics: {enabled: false}" ;;
  access_log)
    node_extra="  access_log: {path: $work/access.log}" ;;
  key_auth | key_auth_consumer_metrics)
    if [ "$scenario" = key_auth_consumer_metrics ]; then node_extra="  metrics: {consumer_label: true}"; fi
    consumers="consumers:
  - {id: bench-a, credentials: {key_auth: {key: bench-key-123}}}
  - {id: bench-b, credentials: {key_auth: {key: bench-key-456}}}
  - {id: bench-c, credentials: {key_auth: {key: bench-key-789}}}"
    policies="    policies:
      - key_auth: {header: x-api-key, hide_credentials: false}"
    header=(-H "X-Api-Key: bench-key-123") ;;
  jwt_rs256 | jwt_rs256_uncached)
    cache=""
    if [ "$scenario" = jwt_rs256_uncached ]; then cache="
          cache: {max_tokens: 0}"; fi
    openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$work/jwt.key" 2>/dev/null
    openssl pkey -in "$work/jwt.key" -pubout -out "$work/jwt.pub"
    b64url() { openssl base64 -A | tr '+/' '-_' | tr -d '='; }
    signing_input="$(printf '{"alg":"RS256","typ":"JWT","kid":"bench"}' | b64url).$(printf '{"sub":"bench-a","iss":"bench","exp":4102444800}' | b64url)"
    signature=$(printf '%s' "$signing_input" | openssl dgst -sha256 -sign "$work/jwt.key" | b64url)
    policies="    policies:
      - jwt:
          issuers: [bench]$cache
          keys:
            - kid: bench
              alg: RS256
              public_key: |
$(sed 's/^/                /' "$work/jwt.pub")"
    header=(-H "Authorization: Bearer $signing_input.$signature") ;;
  tracing_unsampled)
    node_extra="  tracing: {exporter: {protocol: http, endpoint: 'http://127.0.0.1:19101/v1/traces'}, sampler: {ratio: 0, parent_based: false}}"
    header=(-H "traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01") ;;
  tracing_sampled)
    node_extra="  tracing: {exporter: {protocol: http, endpoint: 'http://127.0.0.1:19101/v1/traces'}, sampler: {ratio: 1}}" ;;
  rate_limit_memory)
    policies="    policies:
      - rate_limit: {limit: 1000000000, window: 1h, key: [ip]}" ;;
  rate_limit_redis)
    redis-server --bind 127.0.0.1 --port 19160 --save '' --appendonly no --dir "$work" --logfile "$work/redis.log" &
    node_extra="  stores:
    redis: {urls: ['redis://127.0.0.1:19160']}"
    policies="    policies:
      - rate_limit: {limit: 1000000000, window: 1h, key: [ip], store: redis}" ;;
  *) echo "unknown scenario $scenario: plain, plain_traceparent, plain_no_metrics, access_log, key_auth, key_auth_consumer_metrics, jwt_rs256, jwt_rs256_uncached, rate_limit_memory, rate_limit_redis, tracing_unsampled or tracing_sampled" >&2; exit 2 ;;
esac
cat > "$work/gantry.yaml" <<YAML
node:
  worker_threads: 1
  listeners:
    - address: 127.0.0.1:19150
$node_extra
$consumers
upstreams:
  - id: bench
    endpoints: [127.0.0.1:19101]
routes:
  - id: all
    paths: [/*]
    upstream: bench
$policies
YAML
nginx -c "$work/nginx.conf" -p "$work" &
GANTRY_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$work/callgrind.out" \
  "$binary" run --config "$work/gantry.yaml" --no-watch > "$work/valgrind.log" 2>&1 &
for _ in $(seq 1 150); do
  curl -s -o /dev/null "${header[@]}" http://127.0.0.1:19150/json && break
  sleep 0.2
done
status=$(curl -s -o /dev/null -w '%{http_code}' "${header[@]}" http://127.0.0.1:19150/json)
[ "$status" = 200 ] || { echo "the $scenario instance answers $status, not 200" >&2; exit 1; }
wrk -t1 -c10 -d2s "${header[@]}" http://127.0.0.1:19150/json > /dev/null   # warm-up: pools, caches
callgrind_control -z > /dev/null 2>&1
requests=$(wrk -t1 -c10 -d5s "${header[@]}" http://127.0.0.1:19150/json | awk '/requests in/ {print $1}')
callgrind_control -d > /dev/null 2>&1
sleep 1
instructions=$(grep -h '^totals:\|^summary:' "$work"/callgrind.out.* | awk '{print $2}' | sort -n | tail -1)
if [ -n "${PROFILE_OUT:-}" ]; then
  cp "$(grep -l "^\(totals\|summary\): $instructions\$" "$work"/callgrind.out.* | head -1)" "$PROFILE_OUT"
fi
echo "scenario=$scenario requests=$requests instructions=$instructions per_request=$((instructions / requests))"
