#!/usr/bin/env bash
# run-request-cost.sh: airlock's user-space instructions per small request, measured
# with callgrind (all threads), so the figure does not depend on what else the machine
# runs — for comparing two builds (before/after a change) on a shared machine.
#
#   bench/run-request-cost.sh [--airlock BIN]... [--conc C] [--streams M] [--requests N]
#                             [--engines "curl native"]
#
# For each BIN (default: build-release/airlock): the benchmark's upstream (Debian
# nginx, bench/upstream-nginx.conf) and table (bench/airlock-table.conf: gateway mode,
# one worker, API key injected), airlock serve under `valgrind --tool=callgrind
# --instr-atstart=no`, a 500-request warm-up, then instrumentation on for N requests
# (h2load -c C -m M -n N /t/bench/small), off; prints total instructions / N, for each
# upstream engine named (limits.upstream_engine; default: the binary's default only).
# Every process started is stopped by pid at the end.
set -euo pipefail
src=$(cd "$(dirname "$0")/.." && pwd)
cd "$src"
dir=$(mktemp -d /tmp/airlock-cost.XXXXXX)
. bench/lib.sh
bins=()
conc=10
streams=10
requests=3000
engines=default
parse_opts "airlock=bins+ conc streams requests engines" "$@"
[ ${#bins[@]} -gt 0 ] || bins=("$src/build-release/airlock")
need_tools "run deploy/install-deps.sh" nginx h2load valgrind callgrind_control \
  callgrind_annotate curl openssl
key="bench-$(openssl rand -hex 16)"
start_upstream

echo "| airlock | engine | requests | conns x streams | instructions / request |"
echo "|---|---|---:|---|---:|"
n=0
for bin in "${bins[@]}"; do
 for engine in $engines; do
  n=$((n + 1))
  state=$dir/state-$n
  proxy_port=$(free_port)
  admin_port=$(free_port)
  mkdir -p "$state" && chmod 700 "$state"
  eline=""
  [ "$engine" = default ] || eline="  upstream_engine: $engine"
  render bench/airlock-table.conf "$dir/airlock-$n.yaml" DIR="$dir" PROXY_PORT="$proxy_port" \
    ADMIN_PORT="$admin_port" UPSTREAM_PORT="$upstream_port" AUDIT_CHAIN=true STATE="$state" \
    ENGINE="$eline"
  printf '%s\n' "$key" | "$bin" identity create-api-key-credential-provider --name bench-key \
    --api-key - --state-dir "$state" >/dev/null
  valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$dir/cg-$n.out" \
    "$bin" serve -c "$dir/airlock-$n.yaml" --state-dir "$state" >"$dir/airlock-$n.log" 2>&1 &
  vg=$!
  pids+=("$vg")
  wait_healthz "$admin_port" "$vg" 600 0.1 || { tail -5 "$dir/airlock-$n.log" >&2; exit 1; }
  h2load -c "$conc" -m "$streams" -t 1 -n 500 "http://127.0.0.1:$proxy_port/t/bench/small" >/dev/null
  callgrind_control -i on "$vg" >/dev/null
  out=$(h2load -c "$conc" -m "$streams" -t 1 -n "$requests" "http://127.0.0.1:$proxy_port/t/bench/small")
  callgrind_control -i off "$vg" >/dev/null
  ok=$(printf '%s\n' "$out" | awk '/^requests:/ {print $8}')
  kill -TERM "$vg"
  for _ in $(seq 300); do kill -0 "$vg" 2>/dev/null || break; sleep 0.1; done
  total=0
  for f in "$dir"/cg-$n.out*; do
    t=$(awk '/^totals:/ {print $2; exit}' "$f")
    total=$((total + ${t:-0}))
  done
  echo "| $bin | $engine | $ok | $conc x $streams | $((total / requests)) |"
 done
done
