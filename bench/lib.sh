# Helpers shared by the benchmark scripts (sourced from the repository root, after
# `dir` is set to the run's temporary directory): processes started are recorded in
# `pids` and stopped by pid (TERM, then KILL after 5 s) when the script exits.
# shellcheck shell=bash
: "${dir:?bench/lib.sh needs dir set to the run directory}"
pids=()
cleanup() {
  local pid
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  done
  if [ "${AIRLOCK_KEEP_TMP:-0}" = 1 ]; then echo "kept $dir" >&2; else rm -rf "$dir"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
  /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
# Polls (bounded, 10 s) until 127.0.0.1:$1 accepts, failing early if pid $2 died.
wait_port() {
  for _ in $(seq 200); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    kill -0 "$2" 2>/dev/null || return 1
    sleep 0.05
  done
  return 1
}
# render TEMPLATE OUT VAR=value...: replaces @VAR@ in the template.
render() {
  local in=$1 out=$2 expr=() kv
  shift 2
  for kv in "$@"; do expr+=(-e "s|@${kv%%=*}@|${kv#*=}|g"); done
  sed "${expr[@]}" "$in" >"$out"
}
# RSS in KiB of a pid and all its children (nginx master + worker).
rss_tree() {
  local total=0 p kb
  for p in $1 $(pgrep -P "$1" || true); do
    kb=$(awk '/^VmRSS:/ {print $2}' "/proc/$p/status" 2>/dev/null || echo 0)
    total=$((total + ${kb:-0}))
  done
  echo "$total"
}
# start_upstream: the benchmark's upstream (Debian nginx, bench/upstream-nginx.conf, one
# worker: a small response and a 1 MiB file) on free ports; sets upstream_port,
# direct_port (h2c) and upstream_pid.
start_upstream() {
  local d
  mkdir -p "$dir/www"
  for d in up_client_body up_proxy up_fastcgi up_uwsgi up_scgi px_client_body px_proxy px_fastcgi px_uwsgi px_scgi; do
    mkdir -p "$dir/$d"
  done
  head -c 1048576 /dev/urandom >"$dir/www/1m.bin"
  # nginx started as root serves files from its worker as "nobody": let it read them
  chmod 755 "$dir" "$dir/www"
  chmod 644 "$dir/www/1m.bin"
  upstream_port=$(free_port)
  direct_port=$(free_port)
  render bench/upstream-nginx.conf "$dir/upstream.conf" DIR="$dir" UPSTREAM_PORT="$upstream_port" \
    DIRECT_PORT="$direct_port"
  nginx -e "$dir/upstream-error.log" -p "$dir" -c "$dir/upstream.conf" >"$dir/upstream.out" 2>&1 &
  upstream_pid=$!
  pids+=("$upstream_pid")
  wait_port "$upstream_port" "$upstream_pid" || { cat "$dir/upstream-error.log" >&2; exit 1; }
  wait_port "$direct_port" "$upstream_pid" || { cat "$dir/upstream-error.log" >&2; exit 1; }
}

# header_arrived GOT KEY: 0 when the upstream's /check answer GOT shows that it received
# "Authorization: Bearer KEY". airlock scrubs a credential the upstream echoes back
# ([REDACTED] padded with '*' to the key's length), so that exact shape counts as proof
# too: the scrubber replaces only the very bytes it injected.
header_arrived() {
  local got=$1 key=$2 stars
  [ "$got" = "authorization=Bearer $key" ] && return 0
  [ ${#key} -ge 10 ] || return 1
  stars=$(printf '%*s' $((${#key} - 10)) '' | tr ' ' '*')
  [ "$got" = "authorization=Bearer [REDACTED]$stars" ]
}
