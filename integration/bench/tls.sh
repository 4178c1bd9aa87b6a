#!/usr/bin/env bash
# Side-by-side mutual-TLS benchmark: tunnels (client-side origination +
# server-side termination, client certificates verified) built from attache,
# stunnel and HAProxy; full-handshake rate against each front door and nginx;
# memory per held TLS connection, attache against HAProxy.
# Installs its tools from Debian packages, builds attache in release.
#
#   integration/bench/tls.sh [ROUNDS]      (default 2 rounds; about 1 minute each)
set -euo pipefail
cd "$(dirname "$0")/../.."

need=()
command -v haproxy >/dev/null || need+=(haproxy)
command -v iperf3 >/dev/null || need+=(iperf3)
command -v stunnel4 >/dev/null || command -v stunnel >/dev/null || need+=(stunnel4)
command -v nginx >/dev/null || need+=(nginx)
[ -e /usr/lib/nginx/modules/ngx_stream_module.so ] || need+=(libnginx-mod-stream)
command -v redis-server >/dev/null || need+=(redis-server)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
cargo build --release --locked -q -p attache
exec python3 integration/bench/tls_bench.py --attache target/release/attache --rounds "${1:-2}"
