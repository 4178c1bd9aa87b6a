#!/usr/bin/env bash
# The Postgres pooling benchmark: pgbench straight to the local Postgres,
# through PgBouncer (transaction pooling) and through attache's Postgres
# ambassador, at pool sizes 5 and 20; a new connection per transaction
# (-C); -M prepared; memory per idle client. Installs PgBouncer from
# Debian's package, builds attache in release.
#
#   integration/bench/postgres.sh [SECONDS]      (default 10 s per run; about 4 minutes)
set -euo pipefail
cd "$(dirname "$0")/../.."

source integration/bench/install.sh
install pgbouncer=pgbouncer
cargo build --release --locked -q -p attache
exec python3 integration/bench/postgres_bench.py --attache target/release/attache --seconds "${1:-10}"
