#!/usr/bin/env bash
# run-tls-bench.sh: HTTPS through airlock's CONNECT + TLS interception against HAProxy
# and nginx terminating TLS and injecting the same header. One machine, one run.
#
#   bench/run-tls-bench.sh [--airlock BIN] [--tlsload BIN] [--duration S] [--rounds R]
#                          [--threads N] [--conns M] [--peers "nginx haproxy airlock"]
#                          [--sign-names N] [--perf FILE]
#
# Upstream: Debian nginx (one worker), HTTPS with a throw-away test CA
# (tests/peers/make_test_ca.sh), HTTP/1.1 keep-alive, a 24-byte response. Load:
# bench_proxy_tlsload (built from bench/bench_proxy_tlsload.c; h2load and wrk cannot send
# CONNECT), the same tool and settings for every peer: N threads x M connections, TLS 1.2+,
# SNI localhost, verification against the CA file, ALPN http/1.1, no session resumption.
# Peers, each with ONE worker thread/process, each forwarding over verified TLS with
# kept-alive connections to the same upstream and injecting "Authorization: Bearer KEY":
#   nginx    nginx worker_processes 1, TLS listener (leaf from the test CA), proxy_set_header
#   haproxy  HAProxy nbthread 1, TLS bind (same leaf), http-request set-header
#   airlock  airlock serve, limits.workers 1: the client sends CONNECT localhost:UPSTREAM,
#            then TLS to airlock's leaf for localhost (airlock's CA), key from the store
# Modes, each for -D S seconds after a 1 s warm-up:
#   handshake  one GET per connection, then close: new full handshakes per second
#              (airlock: CONNECT + handshake; its leaf cache is warm, so no signing)
#   request    connections kept, GETs back to back: requests per second on kept-alive
#              tunnels/connections
# Before measuring, each proxy is checked to deliver the injected header upstream.
# Then, for airlock only, the leaf-signing cost: a fresh airlock and --sign-names new
# names (targets https://127.0.0.N), CONNECT + handshake only, each name once (cache miss,
# signs a leaf) and then again (cache hit); the difference per handshake is the signing.
# With --rounds R each row is the median round. --perf FILE: after the rounds, one more
# airlock run per mode under `perf record` (not counted), summaries written to FILE.
# Prints a Markdown table and the ratios
# airlock/nginx and airlock/haproxy. Every process started is killed at the end, by pid.
# Not a pass/fail test.
set -euo pipefail
cd "$(dirname "$0")/.."
src=$PWD
dir=$(mktemp -d /tmp/airlock-tlsbench.XXXXXX)
. bench/lib.sh # pids, cleanup (trapped), parse_opts, free_port, wait_port, render, serve_airlock

airlock_bin=${AIRLOCK_BIN:-$src/build-tlsbench/airlock}
tlsload=""
duration=5
warmup=1
rounds=1
threads=2
conns=8
peers="nginx haproxy airlock"
sign_names=100
perf_out=""
parse_opts "airlock=airlock_bin tlsload duration rounds threads conns peers sign-names perf=perf_out" "$@"
[ -n "$tlsload" ] || tlsload=$(dirname "$airlock_bin")/bench/bench_proxy_tlsload
if [ "$sign_names" -gt 250 ]; then
  echo "run-tls-bench: --sign-names at most 250 (127.0.0.2 .. 127.0.0.251)" >&2
  exit 2
fi

need_tools "deploy/install-deps.sh; build the bench_proxy_tlsload target" nginx haproxy openssl \
  /usr/bin/python3 "$tlsload"

# CPU ticks (user + system) of a pid and its children.
cpu_ticks() {
  local total=0 p t
  for p in $1 $(pgrep -P "$1" || true); do
    t=$(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0)
    total=$((total + ${t:-0}))
  done
  echo "$total"
}

key="bench-$(openssl rand -hex 16)"
for d in up_client_body up_proxy up_fastcgi up_uwsgi up_scgi px_client_body px_proxy px_fastcgi px_uwsgi px_scgi; do
  mkdir -p "$dir/$d"
done
bash tests/peers/make_test_ca.sh "$dir/ca"
cat "$dir/ca/server.pem" "$dir/ca/server.key" >"$dir/ca/server-bundle.pem"
chmod 600 "$dir/ca/server-bundle.pem"
# nginx started as root runs its worker as "nobody", which must read the key
if [ "$(id -u)" = 0 ]; then chmod 755 "$dir" "$dir/ca" && chmod 644 "$dir/ca/server.key"; fi

upstream_port=$(free_port)
render bench/tls-upstream-nginx.conf "$dir/upstream.conf" DIR="$dir" UPSTREAM_PORT="$upstream_port"
spawn "$dir/upstream.out" \
  nginx -e "$dir/upstream-error.log" -p "$dir" -c "$dir/upstream.conf"
upstream_pid=$last_pid
wait_port "$upstream_port" "$upstream_pid" || { cat "$dir/upstream-error.log" >&2; exit 1; }
target="localhost:$upstream_port"

# Client arguments per peer: connect address, CA file, CONNECT or not.
declare -A pid_of args_of
note=""
notes=()
# start_airlock NAME [EXTRA_NAMES]: a fresh state dir, CA, provider and serve; sets
# peer_pid/peer_port; EXTRA_NAMES > 0 adds targets https://127.0.0.2.. for signing.
start_airlock() {
  local name=$1 extra=${2:-0} admin_port state=$dir/$1-state out rc i
  peer_pid=""
  if [ ! -x "$airlock_bin" ]; then
    note="airlock: skipped, $airlock_bin is not built"
    return 1
  fi
  peer_port=$(free_port)
  admin_port=$(free_port)
  mkdir -p "$state"
  chmod 700 "$state"
  render bench/tls-airlock.conf "$dir/$name.yaml" DIR="$dir" PROXY_PORT="$peer_port" \
    ADMIN_PORT="$admin_port" UPSTREAM_PORT="$upstream_port"
  sed -i "s|$dir/airlock-state|$state|g" "$dir/$name.yaml"
  for i in $(seq 2 $((extra + 1))); do
    printf '  - name: sign%d\n    type: openapi\n    url: https://127.0.0.%d:%d\n    ca_file: %s\n    allow_private_network: true\n    auth: {method: api_key, provider: bench-key, location: header, name: Authorization}\n' \
      "$i" "$i" "$upstream_port" "$dir/ca/ca.pem" >>"$dir/$name.yaml"
  done
  set +e
  out=$("$airlock_bin" ca init --state-dir "$state" 2>&1) &&
    out=$(printf '%s\n' "$key" | "$airlock_bin" identity create-api-key-credential-provider \
      --name bench-key --api-key - --state-dir "$state" 2>&1)
  rc=$?
  set -e
  if [ "$rc" -ne 0 ]; then
    note="airlock: skipped, CA or provider creation failed (exit $rc): $(printf '%s' "$out" | head -1)"
    return 1
  fi
  if ! serve_airlock "$dir/$name.yaml" "$state" "$dir/$name.log" "$admin_port" ||
    ! kill -0 "$peer_pid" 2>/dev/null || ! wait_port "$peer_port" "$peer_pid"; then
    note="airlock: skipped, serve did not start: $(tail -3 "$dir/$name.log" | tr '\n' ' ')"
    peer_pid=""
    return 1
  fi
  peer_ca=$state/ca.crt
}

# start_peer NAME: starts the proxy, sets pid_of/args_of, or a note.
start_peer() {
  local got
  peer_pid=""
  peer_port=$(free_port)
  case "$1" in
    nginx)
      render bench/tls-nginx-proxy.conf "$dir/nginx-proxy.conf" DIR="$dir" PROXY_PORT="$peer_port" \
        UPSTREAM_PORT="$upstream_port" KEY="$key"
      spawn "$dir/nginx.out" \
        nginx -e "$dir/nginx-proxy-error.log" -p "$dir" -c "$dir/nginx-proxy.conf"
      peer_pid=$last_pid
      args_of[$1]="--addr 127.0.0.1:$peer_port --cafile $dir/ca/ca.pem --sni localhost --host-header $target"
      ;;
    haproxy)
      render bench/tls-haproxy.conf "$dir/haproxy.cfg" DIR="$dir" PROXY_PORT="$peer_port" \
        UPSTREAM_PORT="$upstream_port" KEY="$key"
      spawn "$dir/haproxy.out" haproxy -db -f "$dir/haproxy.cfg"
      peer_pid=$last_pid
      args_of[$1]="--addr 127.0.0.1:$peer_port --cafile $dir/ca/ca.pem --sni localhost --host-header $target"
      ;;
    airlock)
      start_airlock airlock 0 || return 1
      args_of[$1]="--addr 127.0.0.1:$peer_port --cafile $peer_ca --connect $target"
      ;;
  esac
  if ! wait_port "$peer_port" "$peer_pid"; then
    note="$1: skipped, did not start: $(cat "$dir/$1.out" "$dir/$1-proxy-error.log" 2>/dev/null | tail -3 | tr '\n' ' ')"
    return 1
  fi
  # The proxy must really inject the header, else its figures mean nothing.
  # shellcheck disable=SC2086
  got=$("$tlsload" ${args_of[$1]} --path /check --once 2>&1 || true)
  if ! header_arrived "$got" "$key"; then
    note="$1: skipped, the upstream did not get the injected header (got: ${got:0:160})"
    return 1
  fi
  pid_of[$1]=$peer_pid
}

# measure PEER MODE: one tlsload run; appends a row to $dir/results.tsv.
measure() {
  local peer=$1 mode=$2 k out rate p50 p99 errs c0 c1 u0 u1 cpu upcpu tls
  case "$mode" in handshake) k=1 ;; request) k=100000000 ;; esac
  c0=$(cpu_ticks "${pid_of[$peer]}")
  u0=$(cpu_ticks "$upstream_pid")
  # shellcheck disable=SC2086
  out=$("$tlsload" ${args_of[$peer]} --path /small --threads "$threads" --conns "$conns" \
    --requests "$k" --duration "$duration" --warmup "$warmup" 2>&1) || true
  c1=$(cpu_ticks "${pid_of[$peer]}")
  u1=$(cpu_ticks "$upstream_pid")
  # proxy (all its processes and threads) and upstream CPU over warm-up + run, in % of
  # one core
  cpu=$(awk -v a="$c0" -v b="$c1" -v t="$(getconf CLK_TCK)" -v s="$duration" -v w="$warmup" \
    'BEGIN {printf "%.0f", (b - a) / t / (s + w) * 100}')
  upcpu=$(awk -v a="$u0" -v b="$u1" -v t="$(getconf CLK_TCK)" -v s="$duration" -v w="$warmup" \
    'BEGIN {printf "%.0f", (b - a) / t / (s + w) * 100}')
  if [ "$mode" = handshake ]; then
    rate=$(printf '%s\n' "$out" | sed -n 's/^RESULT.* hs_per_s=\([0-9.]*\).*/\1/p')
  else
    rate=$(printf '%s\n' "$out" | sed -n 's/^RESULT.* req_per_s=\([0-9.]*\).*/\1/p')
  fi
  p50=$(printf '%s\n' "$out" | sed -n 's/^RESULT.* p50_ms=\([0-9.]*\).*/\1/p')
  p99=$(printf '%s\n' "$out" | sed -n 's/^RESULT.* p99_ms=\([0-9.]*\).*/\1/p')
  errs=$(printf '%s\n' "$out" | sed -n 's/^RESULT.* errors=\([0-9]*\) bad_status=\([0-9]*\).*/\1+\2/p')
  tls=$(printf '%s\n' "$out" | sed -n 's/^TLS //p')
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$mode" "$peer" "${rate:-0}" "${p50:--}" \
    "${p99:--}" "$cpu" "$upcpu" "${errs:-?}" "$((($(rss_tree "${pid_of[$peer]}")) / 1024))" \
    >>"$dir/results.tsv"
  printf '  %-8s %-9s %10s /s  p50 %7s ms  p99 %7s ms  cpu %4s%%  upstream cpu %4s%%  errors %s\n' \
    "$peer" "$mode" "${rate:-0}" "${p50:--}" "${p99:--}" "$cpu" "$upcpu" "${errs:-?}"
  printf '%s\n' "$out" | grep '^LAST_ERROR' | sed 's/^/    /' || true
  [ -n "$tls" ] && echo "$peer: $tls" >>"$dir/tls.txt"
  return 0
}

echo "machine: $(nproc) cpus, $(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo), $(date -u +%Y-%m-%dT%H:%MZ)"
echo "versions: $(nginx -v 2>&1 | sed 's/.*version: //'), HAProxy $(haproxy -v | awk 'NR==1 {print $3}'), $(openssl version)"
echo "load average before: $(cut -d" " -f1-3 /proc/loadavg)"
echo "load: bench_proxy_tlsload $threads threads x $conns connections, ${duration}s after ${warmup}s warm-up"
: >"$dir/results.tsv"
running=()
for peer in $peers; do
  note=""
  if start_peer "$peer"; then
    running+=("$peer")
  else
    echo "  $note"
    notes+=("$note")
  fi
done
# Interleaved (every peer in turn for each mode) so a burst of noise on a shared
# machine hits all peers alike.
for round in $(seq "$rounds"); do
  [ "$rounds" -gt 1 ] && echo "round $round of $rounds"
  for mode in handshake request; do
    for peer in "${running[@]}"; do
      measure "$peer" "$mode"
    done
  done
done
# profile MODE: airlock under perf for one more (uncounted) run; summary to $perf_out.
profile() {
  local mode=$1 k ppid
  case "$mode" in handshake) k=1 ;; request) k=100000000 ;; esac
  perf record -q -F 499 --call-graph dwarf,16384 -p "${pid_of[airlock]}" -o "$dir/perf-$mode.data" \
    -- sleep "$((duration + 1))" >/dev/null 2>&1 &
  ppid=$!
  pids+=("$ppid")
  # shellcheck disable=SC2086
  "$tlsload" ${args_of[airlock]} --path /small --threads "$threads" --conns "$conns" \
    --requests "$k" --duration "$duration" --warmup 0.5 | sed -n 's/^RESULT/  under perf:/p'
  wait "$ppid" || true
  {
    echo "## airlock, $mode mode: CPU by shared object (perf, self time)"
    perf report -i "$dir/perf-$mode.data" --no-children --sort dso --stdio -g none 2>/dev/null |
      grep -v '^#' | grep -v '^$' | head -12 || true
    echo
    echo "## airlock, $mode mode: top symbols (self time)"
    perf report -i "$dir/perf-$mode.data" --no-children --sort dso,sym --stdio -g none 2>/dev/null |
      grep -v '^#' | grep -v '^$' | head -30 || true
    echo
    echo "## airlock, $mode mode: inclusive time (self + callees) of airlock's and libcurl's functions"
    perf report -i "$dir/perf-$mode.data" --children --sort dso,sym --stdio -g none 2>/dev/null |
      grep -E '(airlock|libcurl|libssl)' | head -40 || true
    echo
  } >>"$perf_out"
}
if [ -n "$perf_out" ] && [ -n "${pid_of[airlock]:-}" ]; then
  if command -v perf >/dev/null; then
    : >"$perf_out"
    echo "profiling airlock (not counted) -> $perf_out"
    profile handshake
    profile request
  else
    echo "note: perf missing, no profile"
  fi
fi
sort -t$'\t' -k1,1 -k2,2 -k3,3g "$dir/results.tsv" |
  awk -F'\t' -v R="$rounds" '{ k = $1 "\t" $2; c[k]++; if (c[k] == int((R + 1) / 2)) print }' \
    >"$dir/median.tsv"

echo
echo "TLS negotiated (first connection of each run):"
sort -u "$dir/tls.txt" 2>/dev/null | sed 's/^/  /'
echo
[ "$rounds" -gt 1 ] && echo "Median of $rounds rounds per row:"
echo "| mode | peer | per second | per proxy CPU-second | p50 ms | p99 ms | proxy CPU % | upstream CPU % | errors | RSS MiB |"
echo "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"
awk -F'\t' '{printf "| %s | %s | %.0f | %.0f | %s | %s | %s | %s | %s | %s |\n", $1, $2, $3,
  ($6 > 0 ? $3 / ($6 / 100) : 0), $4, $5, $6, $7, $8, $9}' "$dir/median.tsv"
echo
echo "Ratios (median rows):"
awk -F'\t' '
  { v[$1 "," $2] = $3; p99[$1 "," $2] = $5; e[$1 "," $2] = ($6 > 0 ? $3 / $6 : "") }
  function r(a, b) { return (a != "" && b != "" && b > 0) ? sprintf("%.2f", a / b) : "n/a" }
  END {
    printf "| mode | airlock/nginx | airlock/haproxy | haproxy/nginx | p99 airlock/nginx | per CPU-s airlock/nginx | per CPU-s airlock/haproxy |\n"
    printf "|---|---:|---:|---:|---:|---:|---:|\n"
    split("handshake request", ms, " ")
    for (i = 1; i <= 2; i++) {
      m = ms[i]
      printf "| %s | %s | %s | %s | %s | %s | %s |\n", m, r(v[m ",airlock"], v[m ",nginx"]),
        r(v[m ",airlock"], v[m ",haproxy"]), r(v[m ",haproxy"], v[m ",nginx"]),
        r(p99[m ",airlock"], p99[m ",nginx"]), r(e[m ",airlock"], e[m ",nginx"]),
        r(e[m ",airlock"], e[m ",haproxy"])
    }
  }' "$dir/median.tsv"

# Leaf signing: a fresh airlock whose cache is empty; each of N names once (miss: sign),
# then the same N again (hit). CONNECT + handshake only (--requests 0), one connection.
if [[ " $peers " == *" airlock "* ]] && [ "$sign_names" -gt 0 ]; then
  echo
  if start_airlock signer "$sign_names"; then
    sign_args=(--addr "127.0.0.1:$peer_port" --cafile "$peer_ca" --requests 0 --total "$sign_names"
      --duration 120)
    for i in $(seq 2 $((sign_names + 1))); do sign_args+=(--connect "127.0.0.$i:$upstream_port"); done
    miss=$("$tlsload" "${sign_args[@]}" 2>&1 || true)
    hit=$("$tlsload" "${sign_args[@]}" 2>&1 || true)
    awk -v n="$sign_names" -v miss="$miss" -v hit="$hit" 'BEGIN {
      match(miss, /secs=[0-9.]+/); ms = substr(miss, RSTART + 5, RLENGTH - 5)
      match(hit, /secs=[0-9.]+/); hs = substr(hit, RSTART + 5, RLENGTH - 5)
      match(miss, /p50_ms=[0-9.]+/); mp = substr(miss, RSTART + 7, RLENGTH - 7)
      match(hit, /p50_ms=[0-9.]+/); hp = substr(hit, RSTART + 7, RLENGTH - 7)
      if (ms == "" || hs == "") { print "leaf signing: measurement failed"; exit }
      printf "Leaf signing (airlock, one connection, CONNECT + full handshake, %d new names):\n", n
      printf "| leaf cache | handshakes/s | p50 ms |\n|---|---:|---:|\n"
      printf "| miss (signs a leaf) | %.0f | %s |\n| hit | %.0f | %s |\n", n / ms, mp, n / hs, hp
      printf "first-handshake extra cost: %.3f ms per new name (miss - hit, mean)\n",
        (ms - hs) / n * 1000 }'
    printf '%s\n%s\n' "$miss" "$hit" | grep '^LAST_ERROR' | sed 's/^/  /' || true
  else
    echo "note: $note"
  fi
fi
for n in "${notes[@]}"; do echo "note: $n"; done
