#!/usr/bin/env bash
# The Redis cache benchmark: redis-benchmark GETs on 1000 warm keys straight
# to a private redis-server, through attache's Redis ambassador without a
# cache, and with one; Redis' CPU per GET; a 50% SET mix with and without
# the cache. Installs its tools from Debian packages, builds attache in release.
#
#   integration/bench/redis_cache.sh [ROUNDS]      (default 1 round; about 2 minutes)
set -euo pipefail
cd "$(dirname "$0")/../.."

source integration/bench/install.sh
install redis-server=redis-server redis-benchmark=redis-tools
cargo build --release --locked -q -p attache
exec python3 integration/bench/redis_cache_bench.py --attache target/release/attache --rounds "${1:-1}"
