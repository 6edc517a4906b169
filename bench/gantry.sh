#!/usr/bin/env bash
# Starts Gantry for the benchmark harness with a configuration equivalent to the peers'.
#   bench/gantry.sh plain|policies|tls
# run.sh exports BENCH_UPSTREAM, BENCH_PORT, BENCH_PORT_POLICIES, BENCH_PORT_TLS,
# BENCH_ACCESS_LOG, BENCH_CERT, BENCH_KEY and BENCH_RUN_DIR. One worker thread, like the peers.
# The `policies` instance runs what the peers run: key_auth (X-Api-Key among the harness's
# three keys, 401 without one), a fixed-window rate limit per client IP that never fires, and
# the JSON access log to a file.
set -euo pipefail
mode=${1:?usage: gantry.sh plain|policies|tls}
here=$(cd "$(dirname "$0")" && pwd)
binary=${GANTRY_BIN:-$here/../target/release/gantry}
config="$BENCH_RUN_DIR/gantry-$mode.yaml"

upstream_block="upstreams:
  - id: bench
    endpoints: [$BENCH_UPSTREAM]
routes:
  - id: all
    paths: [/*]
    upstream: bench"

case $mode in
  plain)
    listener="    - address: 127.0.0.1:$BENCH_PORT"
    extra="" ;;
  policies)
    listener="    - address: 127.0.0.1:$BENCH_PORT_POLICIES"
    extra="  access_log: {path: $BENCH_ACCESS_LOG}
consumers:
  - {id: bench-a, credentials: {key_auth: {key: bench-key-123}}}
  - {id: bench-b, credentials: {key_auth: {key: bench-key-456}}}
  - {id: bench-c, credentials: {key_auth: {key: bench-key-789}}}
global_policies:
  - key_auth: {header: x-api-key, hide_credentials: false}
  - rate_limit: {limit: 1000000000, window: 1h, key: [ip]}" ;;
  tls)
    listener="    - address: 127.0.0.1:$BENCH_PORT_TLS
      tls:
        certificates: [{cert_file: $BENCH_CERT, key_file: $BENCH_KEY}]"
    extra="" ;;
  *) echo "unknown mode $mode" >&2; exit 2 ;;
esac

cat > "$config" <<YAML
node:
  worker_threads: 1
  listeners:
$listener
$extra
$upstream_block
YAML
exec "$binary" run --config "$config" --no-watch
