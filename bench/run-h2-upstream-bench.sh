#!/usr/bin/env bash
# run-h2-upstream-bench.sh: proxies in front of an HTTP/2 upstream; requests/s and how
# many upstream connections each proxy used.
#
#   bench/run-h2-upstream-bench.sh [--airlock BIN] [--duration S] [--conc "1 10"]
#                                  [--streams M] [--peers "airlock haproxy nginx"]
#                                  [--engine native|curl|""] [--protocol auto|h1|h2|""]
#
# Upstream: Debian nginx, one worker, TLS with ALPN h2 (certificate of a throw-away CA),
# `return 200` of 24 bytes; its access log names each request's connection, so the
# number of distinct upstream connections a proxy used during a run is exact.
# Load: h2load (one thread), h2c prior knowledge, -c C x -m M streams (default 1 x 100:
# 100 concurrent streams, which one HTTP/2 upstream connection can carry) for -D S s.
# Peers, one worker each, the same header injection:
#   airlock  gateway mode /t/bench/ towards https://127.0.0.1:PORT with the CA as
#            ca_file; --engine puts limits.upstream_engine, --protocol the target's
#            upstream.protocol in its table (empty: not written, the binary's default)
#   haproxy  HTTP/2 over TLS to the upstream (alpn h2, http-reuse always)
#   nginx    HTTP/1.1 over TLS to the same upstream (nginx has no HTTP/2 upstream):
#            the reference for what one connection per request costs
# Prints requests/s, p99, upstream connections (and their protocol) per peer and the
# ratio airlock/haproxy. Not a pass/fail test; on shared cores figures are noisy.
set -euo pipefail
cd "$(dirname "$0")/.."
src=$PWD
dir=$(mktemp -d /tmp/airlock-h2up.XXXXXX)
. bench/lib.sh # pids, cleanup (trapped), parse_opts, free_port, wait_port, render, start_airlock

airlock_bin=${AIRLOCK_BIN:-}
duration=3
warmup=1
concs="1"
streams=100
peers="airlock haproxy nginx"
engine=""
protocol=""
audit_chain=true
parse_opts "airlock=airlock_bin duration conc=concs streams peers engine protocol" "$@"
need_tools "run deploy/install-deps.sh" nginx haproxy h2load curl openssl /usr/bin/python3

case " $peers " in *" airlock "*) release_airlock_bin ;; esac
key="bench-$(openssl rand -hex 16)"
start_upstream # (the HTTP/1.1 upstream's temp directories; it idles)
bash tests/peers/make_test_ca.sh "$dir/ca" >/dev/null
chmod 755 "$dir/ca"
chmod 644 "$dir/ca/server.key" "$dir/ca/server.pem" "$dir/ca/ca.pem"
h2up_port=$(free_port)
render bench/h2-upstream-nginx.conf "$dir/h2up.conf" DIR="$dir" H2UP_PORT="$h2up_port" CA="$dir/ca"
spawn "$dir/h2up.out" nginx -e "$dir/h2up-error.log" -p "$dir" -c "$dir/h2up.conf"
h2up_pid=$last_pid
wait_port "$h2up_port" "$h2up_pid" || { cat "$dir/h2up-error.log" >&2; exit 1; }

note=""
start_peer() {
  peer_pid=""
  peer_port=$(free_port)
  case "$1" in
    haproxy)
      render bench/haproxy-h2up.conf "$dir/haproxy.cfg" PROXY_PORT="$peer_port" \
        H2UP_PORT="$h2up_port" KEY="$key" CA="$dir/ca"
      spawn "$dir/haproxy.out" haproxy -db -f "$dir/haproxy.cfg"
      peer_pid=$last_pid
      ;;
    nginx)
      render bench/nginx-h2up-proxy.conf "$dir/nginx-proxy.conf" DIR="$dir" PROXY_PORT="$peer_port" \
        H2UP_PORT="$h2up_port" KEY="$key" CA="$dir/ca"
      spawn "$dir/nginx.out" \
        nginx -e "$dir/nginx-proxy-error.log" -p "$dir" -c "$dir/nginx-proxy.conf"
      peer_pid=$last_pid
      ;;
    airlock)
      start_airlock airlock bench/airlock-h2up-table.conf H2UP_PORT="$h2up_port" CA="$dir/ca" \
        ENGINE="${engine:+  upstream_engine: $engine}" \
        TARGET_EXTRA="${protocol:+    upstream: {protocol: $protocol\}}" || return 1
      ;;
  esac
  if ! wait_port "$peer_port" "$peer_pid"; then
    note="$1: skipped, did not start: $(cat "$dir/$1.out" "$dir/$1.log" 2>/dev/null | tail -3 | tr '\n' ' ')"
    return 1
  fi
  local got
  got=$(curl -sS --noproxy '*' --http2-prior-knowledge "http://127.0.0.1:$peer_port/t/bench/check" 2>&1 || true)
  if ! header_arrived "$got" "$key"; then
    note="$1: skipped, the upstream did not get the injected header (got: ${got:0:120})"
    return 1
  fi
}

# measure PEER CONC: one h2load run; the upstream connections are the distinct
# $connection values its access log gained meanwhile.
measure() {
  local peer=$1 conc=$2 out log rps p99 failed lines conns protos
  sleep 1.2 # nginx flushes its access log buffer every second
  lines=$(wc -l <"$dir/h2up-access.log")
  log=$dir/h2load-$peer-$conc.log
  out=$(h2load -c "$conc" -m "$streams" -t 1 -D "$duration" --warm-up-time "$warmup" \
    --log-file="$log" "http://127.0.0.1:$peer_port/t/bench/small" 2>&1) || true
  rps=$(printf '%s\n' "$out" | awk '/^finished in/ {gsub(",", "", $4); print $4}')
  failed=$(printf '%s\n' "$out" | awk '/^requests:/ {print $10 + $12 + $14}')
  p99=$(awk -F'\t' '$2 != -1 {print $3}' "$log" 2>/dev/null | sort -n |
    awk '{v[NR] = $1} END { if (NR == 0) { print "-"; exit } i = int(NR * 0.99); if (i < 1) i = 1; printf "%.2f\n", v[i] / 1000 }')
  sleep 1.2
  conns=$(tail -n +"$((lines + 1))" "$dir/h2up-access.log" | awk '{print $1}' | sort -u | wc -l)
  protos=$(tail -n +"$((lines + 1))" "$dir/h2up-access.log" | awk '{print $2}' | sort | uniq -c |
    awk '{printf "%s%s:%s", (NR > 1 ? " " : ""), $2, $1}')
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$peer" "$conc" "${rps:-0}" "$p99" "$conns" "$protos" \
    "${failed:-?}" >>"$dir/results.tsv"
  printf '  %-8s c=%-3s x %s  %10s req/s  p99 %7s ms  upstream connections %4s (%s)  failed %s\n' \
    "$peer" "$conc" "$streams" "${rps:-0}" "$p99" "$conns" "$protos" "${failed:-?}"
  rm -f "$log"
}

echo "machine: $(nproc) cpus, $(date -u +%Y-%m-%dT%H:%MZ), load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "airlock: ${airlock_bin:-none} (${airlock_build:-}), engine '${engine:-default}', protocol '${protocol:-default}'"
echo "load: h2load -t 1 -c {$concs} -m $streams -D ${duration}s (warm-up ${warmup}s), h2c prior knowledge"
: >"$dir/results.tsv"
start_all $peers
for conc in $concs; do
  for peer in "${running[@]}"; do
    peer_pid=${pid_of[$peer]}
    peer_port=${port_of[$peer]}
    measure "$peer" "$conc"
  done
done
echo
echo "| conns x streams | peer | req/s | p99 ms | upstream connections | requests by upstream protocol | failed |"
echo "|---|---|---:|---:|---:|---|---:|"
awk -F'\t' -v m="$streams" '{printf "| %s x %s | %s | %.0f | %s | %s | %s | %s |\n", $2, m, $1, $3, $4, $5, $6, $7}' "$dir/results.tsv"
echo
awk -F'\t' '{ r[$2 "," $1] = $3; c[$2] = 1 }
  END { for (k in c) { a = r[k ",airlock"]; h = r[k ",haproxy"]; n = r[k ",nginx"]
          printf "c=%s: airlock/haproxy %s, airlock/nginx %s\n", k,
            (a != "" && h > 0) ? sprintf("%.2f", a / h) : "n/a", (a != "" && n > 0) ? sprintf("%.2f", a / n) : "n/a" } }' \
  "$dir/results.tsv"
for n in "${notes[@]}"; do echo "note: $n"; done
