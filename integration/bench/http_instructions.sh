#!/usr/bin/env bash
# User-space instructions attache spends per HTTP request, counted by
# valgrind's callgrind: deterministic to about 0.2% from run to run, where
# requests per second and CPU time move by 20% on a shared machine, so a
# change to the request path can be compared build against build.
#
#   integration/bench/http_instructions.sh [REQUESTS] [BINARY...]
#
# Default: 10000 requests, the release build made here. For each binary,
# with the access log on (the default) and off: h2load --h1 -n REQUESTS
# -c 64 on a 2-byte response from an nginx app, and attache's instructions
# less those of a start and stop without requests, per request. The
# kernel's share (about half of the CPU per request) is not counted. Last,
# the same count for the hyper floor (integration/bench/hyper_floor):
# hyper's server and client connections and nothing else.
set -euo pipefail
cd "$(dirname "$0")/../.."

source integration/bench/install.sh
source integration/bench/instructions.sh
install valgrind=valgrind nginx=nginx h2load=nghttp2-client curl=curl
requests=${1:-10000}
shift || true
binaries_to_measure "$@"
cargo build --release --locked -q -p attache-hyper-floor
floor=target/release/hyper-floor

work=$(mktemp -d)
app_port=$(free_port)
cat > "$work/nginx.conf" <<CONF
worker_processes 1; daemon off; pid $work/nginx.pid; error_log $work/nginx-error.log warn;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  server { listen 127.0.0.1:$app_port; location = /small { return 200 "ok"; } } }
CONF
nginx -c "$work/nginx.conf" &
nginx_pid=$!
trap 'kill $nginx_pid 2>/dev/null; rm -rf "$work"' EXIT

# The shell command that runs `count` requests through `port` (none for 0).
load_of() {
  local port=$1 count=$2
  if [ "$count" -gt 0 ]; then
    echo "h2load --h1 -n $count -c 64 http://127.0.0.1:$port/small | grep -q '$count succeeded' \
      || { echo 'h2load: not every request succeeded' >&2; exit 1; }"
  fi
}

# Instructions attache executes serving `count` requests ($1 binary, $2 access log on/off).
instructions() {
  local binary=$1 log=$2 count=$3 port
  port=$(free_port)
  write_config "{name: front, listen: 127.0.0.1:$port, protocol: http, upstream: app, http: {access_log: {enabled: $log}}}" \
    "app: {endpoints: [\"127.0.0.1:$app_port\"]}"
  counted_instructions "curl -fsS -o /dev/null http://127.0.0.1:$port/small" "$(load_of "$port" "$count")" \
    "$binary" run -c "$work/attache.yaml"
}

# The same for the hyper floor (integration/bench/hyper_floor).
floor_instructions() {
  local count=$1 port
  port=$(free_port)
  counted_instructions "curl -fsS -o /dev/null http://127.0.0.1:$port/small" "$(load_of "$port" "$count")" \
    "$floor" "127.0.0.1:$port" "127.0.0.1:$app_port"
}

printf '| binary | access log | instructions per request |\n|---|---|---|\n'
for binary in "${binaries[@]}"; do
  for log in true false; do
    idle=$(instructions "$binary" "$log" 0)
    loaded=$(instructions "$binary" "$log" "$requests")
    echo "| $binary | $([ "$log" = true ] && echo on || echo off) | $(( (loaded - idle) / requests )) |"
  done
done
idle=$(floor_instructions 0)
loaded=$(floor_instructions "$requests")
echo "| hyper floor ($floor) | none | $(( (loaded - idle) / requests )) |"
