#!/usr/bin/env bash
# Side-by-side Redis benchmark: redis-benchmark straight to a private
# redis-server, through attache's Redis ambassador (protocol: redis), through
# attache as a plain TCP proxy, and through twemproxy (nutcracker), reported
# as ratios to direct, with the upstream connections each one used.
# Installs its tools from Debian packages, builds attache in release.
#
#   integration/bench/redis.sh [ROUNDS]      (default 1 round; about 3 minutes)
set -euo pipefail
cd "$(dirname "$0")/../.."

source integration/bench/install.sh
install redis-server=redis-server redis-benchmark=redis-tools nutcracker=nutcracker
cargo build --release --locked -q -p attache
exec python3 integration/bench/redis_bench.py --attache target/release/attache --rounds "${1:-1}"
