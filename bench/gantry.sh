#!/usr/bin/env bash
# Starts Gantry for the benchmark harness with a configuration equivalent to the peers'.
#   bench/gantry.sh plain|policies|tls
# run.sh exports BENCH_UPSTREAM, BENCH_PORT, BENCH_PORT_POLICIES, BENCH_PORT_TLS,
# BENCH_ACCESS_LOG, BENCH_CERT, BENCH_KEY and BENCH_RUN_DIR. One worker thread, like the peers.
# The `policies` instance runs ip_restriction and the access log; key-auth and rate limiting
# join it when those policies exist (see docs/benchmarks.md).
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
global_policies:
  - ip_restriction: {allow: [127.0.0.0/8], deny: [10.0.0.0/8]}" ;;
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
