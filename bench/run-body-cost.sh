#!/usr/bin/env bash
# run-body-cost.sh: what one 1 MiB proxied response costs airlock, in counts that do not
# depend on what else the machine runs — for comparing builds on a shared machine.
#
#   bench/run-body-cost.sh [--airlock BIN]... [--conc C] [--streams M] [--requests N]
#                          [--mode "strace callgrind plain"] [--upstream h1|h2c]
#
# For each BIN (default: build-release/airlock): the benchmark's upstream (Debian nginx,
# bench/upstream-nginx.conf, a 1 MiB file) and table (bench/airlock-table.conf: gateway
# mode, one worker, API key injected, so the echoed-secret scrubber runs; --upstream h2c:
# the same nginx over HTTP/2 with prior knowledge, one connection for all streams), then
#   strace:    `strace -c -f -p` on airlock during h2load -c C -m M -n N /t/bench/1m.bin:
#              system calls per response (total, read, writev+sendto), and the p50 / p99
#              of the response times (h2load's per-request log) — p99/p50 says how evenly
#              the streams of one connection are served;
#   plain:     the same load without strace: req/s (noise on a shared machine), p50 /
#              p99, and fairness: the p99 over responses of (its time / the median time
#              of the responses in flight with it), which discounts the load's swings;
#   callgrind: airlock under callgrind (instrumentation on for the N requests only):
#              instructions per response, and those of memcpy/memmove (all variants).
# Every process started is stopped by pid at the end.
set -euo pipefail
src=$(cd "$(dirname "$0")/.." && pwd)
cd "$src"
dir=$(mktemp -d /tmp/airlock-body.XXXXXX)
. bench/lib.sh
bins=()
conc=10
streams=10
requests=400
mode="strace callgrind"
upstream=h1
parse_opts "airlock=bins+ conc streams requests mode upstream" "$@"
[ ${#bins[@]} -gt 0 ] || bins=("$src/build-release/airlock")
need_tools "run deploy/install-deps.sh" nginx h2load valgrind callgrind_control \
  callgrind_annotate curl openssl strace
key="bench-$(openssl rand -hex 16)"
start_upstream
url_path=/t/bench/1m.bin

# start BIN N [WRAPPER...]: airlock serve (under WRAPPER) with its own state; sets
# proxy_port, admin_port, ap (pid).
start() {
  local bin=$1 n=$2 state
  shift 2
  state=$dir/state-$n
  proxy_port=$(free_port)
  admin_port=$(free_port)
  mkdir -p "$state" && chmod 700 "$state"
  render bench/airlock-table.conf "$dir/airlock-$n.yaml" DIR="$dir" PROXY_PORT="$proxy_port" \
    ADMIN_PORT="$admin_port" UPSTREAM_PORT="$upstream_port" AUDIT_CHAIN=true STATE="$state" \
    ENGINE=
  if [ "$upstream" = h2c ]; then # the same nginx's h2c port, HTTP/2 with prior knowledge
    sed -i "s|url: http://127.0.0.1:$upstream_port|url: http://127.0.0.1:$direct_port\n    upstream:\n      protocol: h2|" \
      "$dir/airlock-$n.yaml"
  fi
  printf '%s\n' "$key" | "$bin" identity create-api-key-credential-provider --name bench-key \
    --api-key - --state-dir "$state" >/dev/null
  "$@" "$bin" serve -c "$dir/airlock-$n.yaml" --state-dir "$state" >"$dir/airlock-$n.log" 2>&1 &
  ap=$!
  pids+=("$ap")
  wait_healthz "$admin_port" "$ap" 600 0.1 || { tail -5 "$dir/airlock-$n.log" >&2; exit 1; }
}
stop() {
  kill -TERM "$1" 2>/dev/null || true
  for _ in $(seq 300); do kill -0 "$1" 2>/dev/null || break; sleep 0.1; done
}
load() { # load N LOG: h2load's summary; per-request log in LOG
  h2load -c "$conc" -m "$streams" -t 1 -n "$1" --log-file="$2" \
    "http://127.0.0.1:$proxy_port$url_path"
}
pct() { # p50 and p99 (ms) of the successful requests of an h2load log
  awk -F'\t' '$2 == 200 {print $3}' "$1" | sort -n |
    awk '{v[NR] = $1} END {if (!NR) {print "- -"; exit}
      a = int(NR * 0.5); if (a < 1) a = 1; b = int(NR * 0.99); if (b < 1) b = 1
      printf "%.1f %.1f\n", v[a] / 1000, v[b] / 1000}'
}

fair() { # p99 over requests of (its time / the median time of the requests running at once)
  /usr/bin/python3 - "$1" <<'PY'
import sys
rows = []
for line in open(sys.argv[1]):
    f = line.split("\t")
    if len(f) >= 3 and f[1] == "200":
        rows.append((int(f[0]), int(f[0]) + int(f[2]), int(f[2])))
rel = []
for a0, a1, d in rows:
    peers = sorted(x[2] for x in rows if x[0] < a1 and a0 < x[1])
    rel.append(d / peers[len(peers) // 2])
rel.sort()
print("%.2f" % rel[max(0, int(len(rel) * 0.99) - 1)] if rel else "-")
PY
}

n=0
for bin in "${bins[@]}"; do
  for m in $mode; do
    n=$((n + 1))
    case "$m" in
      strace)
        start "$bin" "$n"
        load 100 "$dir/warm-$n.log" >/dev/null
        strace -c -f -p "$ap" -o "$dir/strace-$n.txt" &
        st=$!
        sleep 1 # strace attaches to every thread
        out=$(load "$requests" "$dir/h2-$n.log")
        kill -INT "$st"
        wait "$st" || true
        ok=$(printf '%s\n' "$out" | awk '/^requests:/ {print $8}')
        read -r p50 p99 < <(pct "$dir/h2-$n.log")
        per() { awk -v s="$1" -v n="$ok" '$NF == s {c = $4} END {printf "%.1f", (c ? c : 0) / n}' \
          "$dir/strace-$n.txt"; }
        total=$(awk -v n="$ok" '$NF == "total" {printf "%.1f", $4 / n}' "$dir/strace-$n.txt")
        echo "$bin strace: $ok responses, c=$conc m=$streams: syscalls/response $total" \
          "(read $(per read), writev $(per writev), sendto $(per sendto)," \
          "epoll_ctl $(per epoll_ctl), epoll_wait $(per epoll_wait)); p50 $p50 ms p99 $p99 ms"
        stop "$ap"
        ;;
      plain)
        start "$bin" "$n"
        load 100 "$dir/warm-$n.log" >/dev/null
        out=$(load "$requests" "$dir/h2-$n.log")
        ok=$(printf '%s\n' "$out" | awk '/^requests:/ {print $8}')
        rps=$(printf '%s\n' "$out" | awk '/^finished in/ {print $4}')
        read -r p50 p99 < <(pct "$dir/h2-$n.log")
        echo "$bin plain: $ok responses, c=$conc m=$streams: $rps req/s, p50 $p50 ms p99 $p99 ms," \
          "p99 of time / concurrent median $(fair "$dir/h2-$n.log")"
        stop "$ap"
        ;;
      callgrind)
        start "$bin" "$n" valgrind --tool=callgrind --instr-atstart=no \
          --callgrind-out-file="$dir/cg-$n.out"
        load 50 "$dir/warm-$n.log" >/dev/null
        callgrind_control -i on "$ap" >/dev/null
        out=$(load "$requests" "$dir/h2-$n.log")
        callgrind_control -i off "$ap" >/dev/null
        ok=$(printf '%s\n' "$out" | awk '/^requests:/ {print $8}')
        stop "$ap"
        total=0
        mc=0
        for f in "$dir"/cg-$n.out*; do
          t=$(awk '/^totals:/ {print $2; exit}' "$f")
          total=$((total + ${t:-0}))
          # self cost of every memcpy/memmove variant (leaf functions: all their cost)
          c=$(callgrind_annotate --threshold=100 "$f" 2>/dev/null |
            awk '/memcpy|memmove/ {gsub(",", "", $1); m += $1} END {print m+0}')
          mc=$((mc + c))
        done
        echo "$bin callgrind: $ok of $requests responses, c=$conc m=$streams:" \
          "instructions/response $((total / ok)), memcpy/memmove $((mc / ok))"
        ;;
    esac
  done
done
