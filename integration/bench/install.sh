# Sourced by the benchmark scripts: `install COMMAND=PACKAGE ...` installs,
# from Debian packages, each package whose command (or file) is missing.
install() {
  local need=() pair
  for pair in "$@"; do
    command -v "${pair%%=*}" >/dev/null || [ -e "${pair%%=*}" ] || need+=("${pair#*=}")
  done
  if [ ${#need[@]} -gt 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  fi
}
