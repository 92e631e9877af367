#!/usr/bin/env bash
# run-idle-scale.sh: memory per idle client connection, airlock against HAProxy.
#
#   bench/run-idle-scale.sh [--airlock BIN] [--count N] [--protos "h2 h1"]
#                           [--peers "airlock haproxy"]
#
# Each proxy (one worker / one thread, the same header injection as run-proxy-bench.sh,
# the same nginx upstream) gets N client connections (default 10,000) from
# bench/idle_conns.py: each connection makes one request (so it is a real, fully set-up
# connection: h2 preface, SETTINGS both ways, one stream; or one HTTP/1.1 keep-alive
# exchange), then stays idle. The proxy's RSS (VmRSS, all its processes) is read before
# the connections open and once they are all idle; (after - before) / N is the memory
# per idle connection. Client keep-alive timeouts are raised so nothing closes them
# meanwhile. Needs `ulimit -n` above N (for the client and the proxy). Prints one row
# per proxy and protocol and the ratios airlock/haproxy. Every process started is
# killed at the end, by pid. Not a pass/fail test; figures are noisy on shared cores.
set -euo pipefail
cd "$(dirname "$0")/.."
src=$PWD
dir=$(mktemp -d /tmp/airlock-idle.XXXXXX)
. bench/lib.sh # pids, cleanup (trapped), parse_opts, free_port, wait_port, render, start_airlock

airlock_bin=${AIRLOCK_BIN:-}
count=10000
protos="h2 h1"
peers="airlock haproxy"
parse_opts "airlock=airlock_bin count protos peers" "$@"
need_tools "run deploy/install-deps.sh" nginx haproxy h2load curl openssl /usr/bin/python3
/usr/bin/python3 -c 'import hpack' 2>/dev/null ||
  { echo "run-idle-scale: python3-hpack missing (python3-h2): run deploy/install-deps.sh" >&2; exit 1; }
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
# HAProxy reserves two descriptors per connection of its maxconn and refuses to start
# without them: with `ulimit -n` F it takes at most (F - 64) / 2 - 16 connections, and
# every peer gets the same count.
nofile=$(ulimit -n)
[ "$nofile" = unlimited ] && nofile=1048576
maxconn=$(((nofile - 64) / 2 - 16))
if [ "$count" -gt $((maxconn - 20)) ]; then
  echo "run-idle-scale: ulimit -n $nofile: HAProxy can hold $maxconn connections; measuring $((maxconn - 20)), not $count" >&2
  count=$((maxconn - 20))
fi

case " $peers " in *" airlock "*) release_airlock_bin ;; esac
key="bench-$(openssl rand -hex 16)"
start_upstream

note=""
start_peer() {
  peer_pid=""
  peer_port=$(free_port)
  case "$1" in
    haproxy)
      render bench/haproxy-idle.conf "$dir/haproxy.cfg" PROXY_PORT="$peer_port" \
        UPSTREAM_PORT="$upstream_port" KEY="$key" MAXCONN="$maxconn"
      spawn "$dir/haproxy.out" haproxy -db -f "$dir/haproxy.cfg"
      peer_pid=$last_pid
      ;;
    airlock)
      # the benchmark's table, with no idle timeout closing the held connections
      sed 's/^  workers: 1$/  workers: 1\n  client_keepalive_timeout_ms: 3600000/' \
        bench/airlock-table.conf >"$dir/airlock-idle-table.conf"
      start_airlock airlock "$dir/airlock-idle-table.conf" || return 1
      ;;
  esac
  if ! wait_port "$peer_port" "$peer_pid"; then
    note="$1: skipped, did not start: $(tail -3 "$dir/$1.out" "$dir/$1.log" 2>/dev/null | tr '\n' ' ')"
    return 1
  fi
}

echo "machine: $(nproc) cpus, $(date -u +%Y-%m-%dT%H:%MZ), load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "connections per run: $count (ulimit -n $(ulimit -n)); airlock: ${airlock_bin:-none} (${airlock_build:-})"
: >"$dir/results.tsv"
notes=()
# A fresh proxy per protocol: freed memory stays in the process, so a second run on the
# same one would measure reuse, not cost.
for peer in $peers; do
  for proto in $protos; do
    note=""
    if ! start_peer "$peer"; then
      echo "  $note"
      notes+=("$note")
      continue
    fi
    # warm the proxy up: 20,000 requests on 20 connections fill what a process holds
    # whatever its connection count (upstream pool, allocator arenas, request free
    # lists, airlock's 4 MiB audit ring, whose pages become resident as records pass),
    # so that (after - before) / N is per connection, not the process's first traffic
    case "$proto" in h2) flag=--http2-prior-knowledge h1=() ;; *) flag=--http1.1 h1=(--h1) ;; esac
    h2load "${h1[@]}" -n 20000 -c 20 -m 10 "http://127.0.0.1:$peer_port/t/bench/small" >/dev/null 2>&1 || true
    for _ in 1 2 3; do
      curl -sS --noproxy '*' -o /dev/null "$flag" "http://127.0.0.1:$peer_port/t/bench/small" \
        2>/dev/null || true
    done
    sleep 0.5
    before=$(rss_tree "$peer_pid")
    fifo=$dir/hold-$peer-$proto
    mkfifo "$fifo"
    /usr/bin/python3 bench/idle_conns.py --port "$peer_port" --count "$count" --proto "$proto" \
      <"$fifo" >"$dir/idle-$peer-$proto.out" 2>&1 &
    client=$!
    pids+=("$client")
    exec 7>"$fifo" # holds the client's stdin open until the sample is taken
    for _ in $(seq 2400); do
      grep -q '^READY' "$dir/idle-$peer-$proto.out" 2>/dev/null && break
      kill -0 "$client" 2>/dev/null || break
      sleep 0.1
    done
    sleep 1 # let the proxy settle (freed request buffers go back)
    after=$(rss_tree "$peer_pid")
    read -r _ ok failed < <(grep '^READY' "$dir/idle-$peer-$proto.out" || echo "READY 0 $count")
    exec 7>&-
    wait "$client" 2>/dev/null || true
    per=$(( ok > 0 ? (after - before) * 1024 / ok : 0 ))
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$peer" "$proto" "$ok" "$failed" "$before" "$after" "$per" >>"$dir/results.tsv"
    printf '  %-8s %s  %6s idle (%s failed)  RSS %7s -> %7s KiB  %6s bytes/connection\n' \
      "$peer" "$proto" "$ok" "$failed" "$before" "$after" "$per"
    kill -TERM "$peer_pid" 2>/dev/null || true
    wait "$peer_pid" 2>/dev/null || true
  done
done

echo
echo "| peer | protocol | idle connections | failed | RSS before KiB | RSS idle KiB | bytes per idle connection |"
echo "|---|---|---:|---:|---:|---:|---:|"
awk -F'\t' '{printf "| %s | %s | %s | %s | %s | %s | %s |\n", $1, $2, $3, $4, $5, $6, $7}' "$dir/results.tsv"
echo
echo "Ratios (bytes per idle connection, lower is better):"
awk -F'\t' '{ per[$1 "," $2] = $7; p[$2] = 1 }
  END { for (k in p) { a = per["airlock," k]; h = per["haproxy," k]
          printf "  %s: airlock/haproxy %s\n", k, (a != "" && h > 0) ? sprintf("%.2f", a / h) : "n/a" } }' \
  "$dir/results.tsv"
for n in "${notes[@]}"; do echo "note: $n"; done
