#!/usr/bin/env bash
# Short-connection benchmark of the warm pool: connection rate and time to
# first byte through attache with and without a warm pool, with and without
# TLS origination, against a direct connection (plain and TLS) and HAProxy,
# alternated in one run and reported as ratios.
# Installs its tools from Debian packages, builds attache in release.
#
#   integration/bench/warm.sh [ROUNDS]      (default 3 rounds; about 2 minutes)
set -euo pipefail
cd "$(dirname "$0")/../.."

need=()
command -v haproxy >/dev/null || need+=(haproxy)
command -v redis-server >/dev/null || need+=(redis-server)
command -v redis-benchmark >/dev/null || need+=(redis-tools)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
cargo build --release --locked -q -p attache
exec python3 integration/bench/warm_bench.py --attache target/release/attache --rounds "${1:-3}"
