#!/usr/bin/env bash
# Short-connection benchmark of the warm pool: connection rate and time to
# first byte through attache with and without a warm pool, with and without
# TLS origination, against a direct connection (plain and TLS) and HAProxy,
# alternated in one run and reported as ratios.
# Installs its tools from Debian packages, builds attache in release.
#
#   integration/bench/warm.sh [ROUNDS]      (default 3 rounds; about 5 minutes each)
set -euo pipefail
cd "$(dirname "$0")/../.."

source integration/bench/install.sh
install haproxy=haproxy redis-server=redis-server redis-benchmark=redis-tools
cargo build --release --locked -q -p attache
exec python3 integration/bench/warm_bench.py --attache target/release/attache --rounds "${1:-3}"
