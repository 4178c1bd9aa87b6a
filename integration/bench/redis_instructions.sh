#!/usr/bin/env bash
# User-space instructions attache's Redis ambassador spends per command,
# counted by valgrind's callgrind: deterministic to a fraction of a
# percent from run to run, where commands per second move by 20% on a
# shared machine, so a change to the command path can be compared build
# against build.
#
#   integration/bench/redis_instructions.sh [COMMANDS] [BINARY...]
#
# Default: 100000 commands, the release build made here. For each binary,
# without pipelining and with pipelines of 16: redis-benchmark -t get -n
# COMMANDS -c 50 through attache (`protocol: redis`, its defaults) to a
# private redis-server, and attache's instructions less those of a start
# and stop without commands, per command. The kernel's share (most of the
# CPU per command without pipelining) is not counted.
set -euo pipefail
cd "$(dirname "$0")/../.."

source integration/bench/install.sh
source integration/bench/instructions.sh
install valgrind=valgrind redis-server=redis-server redis-benchmark=redis-tools redis-cli=redis-tools
commands=${1:-100000}
shift || true
binaries_to_measure "$@"

work=$(mktemp -d)
server_port=$(free_port)
redis-server --port "$server_port" --bind 127.0.0.1 --save "" --appendonly no --dir "$work" >/dev/null &
server_pid=$!
trap 'kill $server_pid 2>/dev/null; rm -rf "$work"' EXIT
until redis-cli -p "$server_port" ping >/dev/null 2>&1; do sleep 0.1; done

# Instructions attache executes for `count` GETs ($1 binary, $2 pipeline depth).
instructions() {
  local binary=$1 pipeline=$2 count=$3 port
  port=$(free_port)
  write_config "{name: redis, listen: 127.0.0.1:$port, protocol: redis, upstream: redis}" \
    "redis: {endpoints: [\"127.0.0.1:$server_port\"]}"
  local load=""
  if [ "$count" -gt 0 ]; then
    load="redis-benchmark -p $port -t get -n $count -c 50 -P $pipeline -q >/dev/null"
  fi
  counted_instructions "redis-cli -p $port ping" "$load" "$binary" run -c "$work/attache.yaml"
}

printf '| binary | pipeline | instructions per command |\n|---|---|---|\n'
for binary in "${binaries[@]}"; do
  for pipeline in 1 16; do
    idle=$(instructions "$binary" "$pipeline" 0)
    loaded=$(instructions "$binary" "$pipeline" "$commands")
    echo "| $binary | $pipeline | $(( (loaded - idle) / commands )) |"
  done
done
