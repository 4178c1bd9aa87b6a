#!/usr/bin/env bash
# Side-by-side mutual-TLS benchmark: tunnels (client-side origination +
# server-side termination, client certificates verified) built from attache,
# stunnel and HAProxy; full-handshake rate against each front door and nginx;
# memory per held TLS connection, attache against HAProxy; origination under
# load (redis-benchmark through ambassadors to a TLS-only redis-server).
# Installs its tools from Debian packages, builds attache in release.
#
#   integration/bench/tls.sh [ROUNDS]      (default 2 rounds; about 1 minute each)
set -euo pipefail
cd "$(dirname "$0")/../.."

source integration/bench/install.sh
install haproxy=haproxy iperf3=iperf3 stunnel4=stunnel4 nginx=nginx \
  /usr/lib/nginx/modules/ngx_stream_module.so=libnginx-mod-stream redis-server=redis-server
cargo build --release --locked -q -p attache
exec python3 integration/bench/tls_bench.py --attache target/release/attache --rounds "${1:-2}"
