#!/usr/bin/env bash
# The MySQL pooling benchmark: sysbench oltp_point_select with 50 threads
# (prepared statements, then text queries) and mariadb-slap with a new
# connection per query, straight to the local MariaDB, through HAProxy
# (mode tcp), attache's tcp listener and attache's mysql listener
# (transaction pooling, pool of 10). Installs sysbench, HAProxy and the
# mariadb client from Debian's packages, builds attache in release.
#
#   integration/bench/mysql.sh [SECONDS]      (default 10 s per run; about two minutes)
set -euo pipefail
cd "$(dirname "$0")/../.."

source integration/bench/install.sh
install sysbench=sysbench haproxy=haproxy mariadb-slap=mariadb-client
cargo build --release --locked -q -p attache
exec python3 integration/bench/mysql_bench.py --attache target/release/attache --seconds "${1:-10}"
