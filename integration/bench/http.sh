#!/usr/bin/env bash
# Side-by-side L7 benchmark: wrk straight to an nginx app server, and
# through attache, HAProxy (mode http) and nginx (proxy_pass with upstream
# keepalive), alternated and repeated, reported as ratios to direct; and
# the hyper floor (integration/bench/hyper_floor), what hyper alone costs.
# Installs its tools from Debian packages, builds attache and hyper-floor
# in release.
#
#   integration/bench/http.sh [ROUNDS] [SECONDS]   (default 2 rounds of 5 s runs; about 6 minutes)
set -euo pipefail
cd "$(dirname "$0")/../.."

source integration/bench/install.sh
install haproxy=haproxy nginx=nginx wrk=wrk h2load=nghttp2-client
cargo build --release --locked -q -p attache -p attache-hyper-floor
exec python3 integration/bench/http_bench.py --attache target/release/attache --floor target/release/hyper-floor \
  --rounds "${1:-2}" --seconds "${2:-5}"
