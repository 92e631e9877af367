# Helpers shared by the benchmark scripts (sourced from the repository root, after
# `dir` is set to the run's temporary directory, before the command line is parsed):
# processes started are recorded in `pids` and stopped by pid (TERM, then KILL after
# 5 s) when the script exits.
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

me=$(basename "$0" .sh) # for messages
# usage: prints the script's leading comment block (its --help) and exits.
usage() {
  awk 'NR > 1 && /^#/ {sub(/^# ?/, ""); print; next} NR > 1 {exit}' "$0"
  exit 0
}
# parse_opts SPEC ARGS...: the script's command line. SPEC lists the options it takes,
# each with a value: OPT sets the variable OPT ('-' read as '_'), OPT=VAR sets VAR,
# OPT=VAR+ appends to the array VAR. -h / --help: usage; anything else exits 2.
parse_opts() {
  local spec=$1 opt var found
  shift
  while [ $# -gt 0 ]; do
    case "$1" in -h | --help) usage ;; esac
    found=""
    for opt in $spec; do
      var=${opt#*=}
      opt=${opt%%=*}
      [ "$var" != "$opt" ] || var=${opt//-/_}
      [ "$1" = "--$opt" ] || continue
      [ $# -ge 2 ] || { echo "$me: $1 needs a value (try --help)" >&2; exit 2; }
      case "$var" in
        *+) eval "${var%+}+=(\"\$2\")" ;;
        *) printf -v "$var" '%s' "$2" ;;
      esac
      found=1
      break
    done
    [ -n "$found" ] || { echo "$me: unknown option '$1' (try --help)" >&2; exit 2; }
    shift 2
  done
}
# need_tools HINT TOOL...: exits 1 naming the first TOOL not installed, and HINT.
need_tools() {
  local hint=$1 tool
  shift
  for tool in "$@"; do
    command -v "$tool" >/dev/null || { echo "$me: $tool missing: $hint" >&2; exit 1; }
  done
}

# spawn OUT CMD...: CMD in the background, its output in OUT; its pid in last_pid and on
# pids.
spawn() {
  local out=$1
  shift
  "$@" >"$out" 2>&1 &
  last_pid=$!
  pids+=("$last_pid")
}

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
# wait_healthz PORT PID [TRIES [STEP]]: polls airlock's /healthz on 127.0.0.1:PORT, TRIES
# times (default 300) every STEP s (default 0.05), until it answers; 1 when pid PID exited
# first, else 0 (also when it is still starting after TRIES polls: the caller's next
# check, usually wait_port, says so).
wait_healthz() {
  for _ in $(seq "${3:-300}"); do
    curl -fsS --noproxy '*' -o /dev/null "http://127.0.0.1:$1/healthz" 2>/dev/null && return 0
    kill -0 "$2" 2>/dev/null || return 1
    sleep "${4:-0.05}"
  done
}
# serve_airlock CONFIG STATE LOG ADMIN_PORT: `$airlock_bin serve` with the table CONFIG and
# the state dir STATE, its output in LOG; sets peer_pid (pushed on pids), then
# wait_healthz ADMIN_PORT (1: serve exited).
serve_airlock() {
  spawn "$3" "$airlock_bin" serve -c "$1" --state-dir "$2"
  peer_pid=$last_pid
  wait_healthz "$4" "$peer_pid"
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
  spawn "$dir/upstream.out" \
    nginx -e "$dir/upstream-error.log" -p "$dir" -c "$dir/upstream.conf"
  upstream_pid=$last_pid
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

# start_airlock NAME TEMPLATE [VAR=value...]: airlock ($airlock_bin) as peer NAME with the
# table TEMPLATE rendered (DIR, PROXY_PORT=$peer_port, ADMIN_PORT, UPSTREAM_PORT=$upstream_port,
# AUDIT_CHAIN=${audit_chain:-true}, STATE (its state dir), plus the VAR=value given; ENGINE
# and TARGET_EXTRA default to empty) and $key stored as the API key
# of provider bench-key (on stdin, never in argv); waits for /healthz. Sets peer_pid (pushed
# on pids), or returns 1 with `note` saying why.
start_airlock() {
  local name=$1 template=$2 admin_port state=$dir/$1-state out rc
  shift 2
  if [ ! -x "$airlock_bin" ]; then
    note="$name: skipped, $airlock_bin is not built"
    return 1
  fi
  admin_port=$(free_port)
  rm -rf "$state" # a fresh store: a peer started again creates its provider again
  mkdir -p "$state"
  chmod 700 "$state"
  render "$template" "$dir/$name.yaml" DIR="$dir" PROXY_PORT="$peer_port" ADMIN_PORT="$admin_port" \
    UPSTREAM_PORT="$upstream_port" AUDIT_CHAIN="${audit_chain:-true}" STATE="$state" "$@" \
    ENGINE= TARGET_EXTRA= # (defaults: render applies the first value given for a name)
  set +e
  out=$(printf '%s\n' "$key" | "$airlock_bin" identity create-api-key-credential-provider \
    --name bench-key --api-key - --state-dir "$state" 2>&1)
  rc=$?
  set -e
  if [ "$rc" -ne 0 ]; then
    note="$name: skipped, creating the provider failed (exit $rc): $(printf '%s' "$out" | head -1)"
    return 1
  fi
  if ! serve_airlock "$dir/$name.yaml" "$state" "$dir/$name.log" "$admin_port" ||
    ! kill -0 "$peer_pid" 2>/dev/null; then
    if grep -q "not built yet" "$dir/$name.log"; then
      note="$name: skipped, 'airlock serve' is not built yet"
    else
      note="$name: skipped, serve exited: $(tail -3 "$dir/$name.log" | tr '\n' ' ')"
    fi
    peer_pid=""
    return 1
  fi
}

# release_airlock_bin: sets airlock_bin (if empty) to a Release build in build-release/,
# building it when needed; refuses a sanitizer build; sets airlock_build (build type).
release_airlock_bin() {
  local cache
  airlock_build="given"
  if [ -z "$airlock_bin" ]; then
    echo "building a Release airlock in build-release/ ..." >&2
    cmake -S "$src" -B "$src/build-release" -DCMAKE_BUILD_TYPE=Release -DAL_SANITIZE=OFF \
      >/dev/null || { echo "bench: cmake configure failed" >&2; exit 1; }
    cmake --build "$src/build-release" -j2 --target airlock >/dev/null ||
      { echo "bench: building airlock failed" >&2; exit 1; }
    airlock_bin=$src/build-release/airlock
  fi
  cache=$(dirname "$airlock_bin")/CMakeCache.txt
  if [ -f "$cache" ]; then
    if grep -q '^AL_SANITIZE:BOOL=ON' "$cache"; then
      echo "bench: $airlock_bin is built with AL_SANITIZE (ASan/UBSan): not a benchmark build" >&2
      exit 1
    fi
    airlock_build=$(sed -n 's/^CMAKE_BUILD_TYPE:[A-Z]*=//p' "$cache")
    [ "$airlock_build" = Release ] ||
      echo "bench: warning: $airlock_bin is a '${airlock_build:-default}' build, not Release" >&2
  fi
}

# start_all PEER...: runs the script's start_peer for each peer; fills `running` (the
# peers up), `pid_of` / `port_of` (by peer) and `notes` (why others were skipped, also
# printed).
start_all() {
  declare -gA pid_of port_of
  running=()
  notes=()
  local peer
  for peer in "$@"; do
    note=""
    if start_peer "$peer"; then
      pid_of[$peer]=$peer_pid
      port_of[$peer]=$peer_port
      running+=("$peer")
    else
      echo "  $note"
      notes+=("$note")
    fi
  done
}
