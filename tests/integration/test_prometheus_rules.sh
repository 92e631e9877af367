#!/usr/bin/env bash
# deploy/prometheus with Prometheus' own promtool (Debian `prometheus`): the rules load,
# their unit tests (airlock-rules.test.yml: each alert fires on its synthetic series and
# stays quiet on the others) pass, and the example configuration is valid. Prints
# "N passed, M failed"; exits non-zero on any failure.
set -u
SRC=${AIRLOCK_SOURCE_DIR:?AIRLOCK_SOURCE_DIR is not set}
D=$SRC/deploy/prometheus
passed=0
failed=0
check() { # check NAME cmd...
  local name=$1 out
  shift
  if out=$("$@" 2>&1); then
    passed=$((passed + 1))
    echo "ok   $name"
  else
    failed=$((failed + 1))
    echo "FAIL $name"
    echo "$out" | sed 's/^/     /'
  fi
}
if ! command -v promtool >/dev/null 2>&1; then
  echo "FAIL promtool not installed (deploy/install-deps.sh installs Debian's prometheus)"
  exit 1
fi
cd "$D" || exit 1
check "promtool check rules" promtool check rules airlock-rules.yml
check "promtool test rules" promtool test rules airlock-rules.test.yml
check "promtool check config (example)" promtool check config prometheus.example.yml
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
