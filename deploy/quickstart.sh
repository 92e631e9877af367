#!/usr/bin/env bash
# quickstart.sh: install, build and run airlock on a working demo, on a fresh Debian 12.
#
#   ./deploy/quickstart.sh [--no-install] [--no-build] [--prefix DIR]
#
# 1. deploy/install-deps.sh (with sudo when not root)      skipped by --no-install
# 2. Release build in build/                                skipped by --no-build
# 3. cmake --install build (prefix /usr/local, or --prefix DIR; sudo when not root and
#    the prefix is not writable): bin/airlock, share/airlock/examples/,
#    lib/systemd/system/airlock.service, the man page airlock(1)
# 4. airlock check of deploy/examples/quickstart.yaml
# 5. the demo API-key provider "demo-key" in ./.airlock, a random key made by
#    `openssl rand` and piped on stdin (never on a command line); kept if present
# 6. a local echo upstream on 127.0.0.1:9090 (tests/peers/echo_upstream.py) and
#    `airlock serve` on 127.0.0.1:8080 (admin 127.0.0.1:8081), then the curl lines to
#    try; runs until Ctrl-C, then stops both (by pid).
set -euo pipefail
cd "$(dirname "$0")/.."

install=1
build=1
prefix=/usr/local
builddir=${AIRLOCK_BUILD_DIR:-build}
while [ $# -gt 0 ]; do
  arg=$1
  shift
  case "$arg" in
    --no-install) install=0 ;;
    --no-build) build=0 ;;
    --prefix)
      [ $# -gt 0 ] || { echo "quickstart: --prefix needs a directory" >&2; exit 2; }
      prefix=$1
      shift
      ;;
    -h | --help)
      sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'
      exit 0
      ;;
    *)
      echo "quickstart: unknown option '$arg' (try --help)" >&2
      exit 2
      ;;
  esac
done

# (AIRLOCK_BUILD_DIR, AIRLOCK_QUICKSTART_TABLE and DESTDIR are for testing this script)
bin=$builddir/airlock
table=${AIRLOCK_QUICKSTART_TABLE:-deploy/examples/quickstart.yaml}
state=./.airlock
upstream_port=9090
admin=127.0.0.1:8081
py=/usr/bin/python3

say() { printf '\n==> %s\n' "$*"; }

if [ "$install" = 1 ]; then
  say "installing Debian packages (deploy/install-deps.sh)"
  if [ "$(id -u)" -eq 0 ]; then
    deploy/install-deps.sh
  else
    sudo deploy/install-deps.sh
  fi
fi

if [ "$build" = 1 ]; then
  say "building (Release) in $builddir/"
  cmake -S . -B "$builddir" -DCMAKE_BUILD_TYPE=Release
  cmake --build "$builddir" -j --target airlock airlock_man
fi

[ -x "$bin" ] || { echo "quickstart: $bin is missing: run without --no-build" >&2; exit 1; }

# The README's commands call `airlock` by name: install it (and the example tables,
# the systemd unit and the man page). DESTDIR stages the install (packaging, tests).
say "installing airlock into ${DESTDIR:-}$prefix (cmake --install $builddir)"
mkdir -p "${DESTDIR:-}$prefix" 2>/dev/null || true
if [ -n "${DESTDIR:-}" ] || [ "$(id -u)" -eq 0 ] || [ -w "$prefix" ]; then
  cmake --install "$builddir" --prefix "$prefix"
else
  sudo cmake --install "$builddir" --prefix "$prefix"
fi
if [ -z "${DESTDIR:-}" ] && [ "$(command -v airlock 2>/dev/null)" != "$prefix/bin/airlock" ]; then
  echo "note: $prefix/bin is not first on your PATH; add it: export PATH=\"$prefix/bin:\$PATH\""
fi
[ -f "$table" ] || { echo "quickstart: $table is missing" >&2; exit 1; }

# Runs "$@" and sets out/rc without tripping set -e.
capture() {
  set +e
  out=$("$@" 2>&1)
  rc=$?
  set -e
}
not_built() { [ "$rc" -eq 2 ] && printf '%s' "$out" | grep -q "not built yet"; }

say "checking the table: $bin check -c $table"
capture "$bin" check -c "$table"
printf '%s\n' "$out"
if not_built; then
  echo "(airlock check is not built yet in this version)"
elif [ "$rc" -ne 0 ]; then
  echo "quickstart: $table is invalid (see above)" >&2
  exit 1
fi

say "demo credential provider 'demo-key' in $state"
mkdir -p "$state"
chmod 700 "$state"
capture "$bin" identity get-api-key-credential-provider --name demo-key --state-dir "$state"
if [ "$rc" -eq 0 ]; then
  echo "demo-key already exists: keeping it"
elif not_built; then
  echo "(airlock identity is not built yet in this version: no provider created)"
else
  # the key goes from openssl to airlock through a pipe: never on a command line
  set +e
  out=$(openssl rand -hex 24 | sed 's/^/demo-/' |
    "$bin" identity create-api-key-credential-provider --name demo-key --api-key - \
      --state-dir "$state" 2>&1)
  rc=$?
  set -e
  printf '%s\n' "$out"
  if not_built; then
    echo "(airlock identity is not built yet in this version: no provider created)"
  elif [ "$rc" -ne 0 ]; then
    echo "quickstart: creating demo-key failed" >&2
    exit 1
  fi
fi

echo_pid=""
airlock_pid=""
stop_all() {
  trap - INT TERM EXIT
  for pid in $airlock_pid $echo_pid; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in $airlock_pid $echo_pid; do
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  done
}
trap stop_all EXIT
trap 'exit 130' INT TERM

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Polls (bounded) until "$@" succeeds; fails after $1 tenths of a second.
wait_until() {
  local tenths=$1
  shift
  for _ in $(seq "$tenths"); do
    "$@" && return 0
    sleep 0.1
  done
  return 1
}

say "starting the echo upstream on 127.0.0.1:$upstream_port"
if port_busy "$upstream_port"; then
  echo "quickstart: 127.0.0.1:$upstream_port is in use (an earlier quickstart still running?)" >&2
  exit 1
fi
logdir=$state/logs
mkdir -p "$logdir"
"$py" tests/peers/echo_upstream.py --port "$upstream_port" --plain >"$logdir/echo.log" 2>&1 &
echo_pid=$!
wait_until 100 port_busy "$upstream_port" || {
  echo "quickstart: the echo upstream did not start:" >&2
  tail -20 "$logdir/echo.log" >&2
  exit 1
}

say "starting airlock: $bin serve -c $table"
"$bin" serve -c "$table" --state-dir "$state" >"$logdir/airlock.log" 2>&1 &
airlock_pid=$!
healthy() { curl -fsS --noproxy '*' -o /dev/null "http://$admin/healthz" 2>/dev/null; }
alive() { kill -0 "$airlock_pid" 2>/dev/null; }
healthy_or_dead() { healthy || ! alive; }
wait_until 150 healthy_or_dead || true
if ! alive; then
  set +e
  wait "$airlock_pid"
  rc=$?
  set -e
  airlock_pid=""
  out=$(cat "$logdir/airlock.log")
  if not_built; then
    cat <<EOF

airlock serve is not built yet in this version: the proxy cannot run.
Install, build and the table check worked; rerun ./deploy/quickstart.sh --no-install
once the data path lands.
EOF
    exit 0
  fi
  echo "quickstart: airlock serve exited with status $rc:" >&2
  tail -30 "$logdir/airlock.log" >&2
  exit 1
fi
if ! healthy; then
  echo "quickstart: airlock did not answer http://$admin/healthz within 15 s:" >&2
  tail -30 "$logdir/airlock.log" >&2
  exit 1
fi

cat <<EOF

airlock is running (pid $airlock_pid, log $logdir/airlock.log); the echo upstream
(pid $echo_pid) answers with the headers it received.

Try it from another terminal, in $PWD (README.md, "Agent set-up").
Gateway mode (the agent calls the target's URL on airlock):

  curl -s http://127.0.0.1:8080/t/demo/hello

Forward-proxy mode (the agent uses airlock as its HTTP proxy):

  curl -s -x http://127.0.0.1:8080 http://127.0.0.1:9090/hello

Or let airlock set up a shell's proxy and CA variables, then call as usual:

  eval "\$(airlock env -c deploy/examples/quickstart.yaml)"
  curl -s http://127.0.0.1:9090/hello

In the JSON the upstream sends back, "authorization" holds "Bearer demo-...": airlock
took the key from its encrypted store ($state) and added it on the way out; the
client never had it. Each request is one line in the audit log ($state/audit.log,
or the table's audit.file).

Press Ctrl-C to stop airlock and the echo upstream.
EOF

# Until Ctrl-C, or until one of the two exits.
while alive && kill -0 "$echo_pid" 2>/dev/null; do
  sleep 1
done
echo "quickstart: a process exited; see $logdir/" >&2
exit 1
