#!/usr/bin/env bash
# Side-by-side mutual-TLS benchmark: tunnels (client-side origination +
# server-side termination, client certificates verified) built from attache,
# stunnel and HAProxy, plus full-handshake rate against each front door.
# Installs its tools from Debian packages, builds attache in release.
#
#   integration/bench/tls.sh [ROUNDS]      (default 2 rounds; about 1 minute each)
set -euo pipefail
cd "$(dirname "$0")/../.."

need=()
command -v haproxy >/dev/null || need+=(haproxy)
command -v iperf3 >/dev/null || need+=(iperf3)
command -v stunnel4 >/dev/null || command -v stunnel >/dev/null || need+=(stunnel4)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
cargo build --release --locked -q -p attache
exec python3 integration/bench/tls_bench.py --attache target/release/attache --rounds "${1:-2}"
