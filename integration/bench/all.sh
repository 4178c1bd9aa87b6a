#!/usr/bin/env bash
# Every benchmark in turn, each writing integration/bench/results/<name>.json,
# then the chart (docs/benchmarks.svg) drawn from those results. About 25
# minutes on two cores; run it on an otherwise idle machine.
#
#   integration/bench/all.sh
set -euo pipefail
cd "$(dirname "$0")"
for bench in tcp tls warm http redis redis_cache postgres; do
  echo "== $bench" >&2
  "./$bench.sh"
done
python3 chart.py
