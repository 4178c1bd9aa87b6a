#!/usr/bin/env bash
# Side-by-side L4 benchmark: a direct connection, attache and HAProxy
# (mode tcp) on loopback, alternated and repeated, reported as ratios to
# direct. Installs its tools from Debian packages, builds attache in release.
#
#   integration/bench/tcp.sh [ROUNDS]      (default 3 rounds; about 2 minutes)
set -euo pipefail
cd "$(dirname "$0")/../.."

need=()
command -v haproxy >/dev/null || need+=(haproxy)
command -v iperf3 >/dev/null || need+=(iperf3)
command -v redis-server >/dev/null || need+=(redis-server)
command -v redis-benchmark >/dev/null || need+=(redis-tools)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
cargo build --release --locked -q -p attache
exec python3 integration/bench/tcp_bench.py --attache target/release/attache --rounds "${1:-3}"
