#!/usr/bin/env bash
# Side-by-side L4 benchmark: a direct connection, attache and HAProxy
# (mode tcp) on loopback, alternated and repeated, reported as ratios to
# direct. Installs its tools from Debian packages, builds attache in release.
#
#   integration/bench/tcp.sh [ROUNDS]      (default 3 rounds; about 2 minutes)
set -euo pipefail
cd "$(dirname "$0")/../.."

source integration/bench/install.sh
install haproxy=haproxy iperf3=iperf3 redis-server=redis-server redis-benchmark=redis-tools
cargo build --release --locked -q -p attache
exec python3 integration/bench/tcp_bench.py --attache target/release/attache --rounds "${1:-3}"
