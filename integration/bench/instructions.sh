# Sourced by the *_instructions.sh benchmarks: what counting attache's
# user-space instructions with callgrind takes, once.
#
#   binaries_to_measure "$@"   the binaries named (else a release build made
#                              here) into `binaries`
#   free_port                  a free loopback port
#   write_config LISTENER UPSTREAM
#                              $work/attache.yaml: warnings only, an admin
#                              port of its own, the one listener and the
#                              one upstream given (YAML list item, map entry)
#   counted_instructions READY LOAD COMMAND...
#                              instructions COMMAND executes from start to
#                              stop (SIGTERM) under callgrind, once the
#                              shell command READY succeeds and LOAD (may
#                              be empty) ran
#
# The caller sets `work` (a scratch directory) first.

binaries_to_measure() {
  binaries=("$@")
  if [ ${#binaries[@]} -eq 0 ]; then
    cargo build --release --locked -q -p attache
    binaries=(target/release/attache)
  fi
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

write_config() {
  cat > "$work/attache.yaml" <<CONF
log: {level: warn}
admin: {listen: 127.0.0.1:$(free_port)}
listeners:
  - $1
upstreams:
  $2
CONF
}

counted_instructions() {
  local ready=$1 load=$2 pid
  shift 2
  valgrind --tool=callgrind --callgrind-out-file="$work/callgrind.out" \
    "$@" >"$work/attache.out" 2>"$work/valgrind.log" &
  pid=$!
  until eval "$ready" >/dev/null 2>&1; do sleep 0.2; done
  if [ -n "$load" ]; then
    eval "$load"
  fi
  kill -TERM $pid
  wait $pid
  awk '/Collected/ {print $NF}' "$work/valgrind.log"
}
