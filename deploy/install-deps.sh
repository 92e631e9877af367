#!/usr/bin/env bash
# Installs every Debian 12 package airlock's build, tests and benchmarks need.
# Idempotent and non-interactive: safe to run twice. Needs root (or sudo).
set -euo pipefail

packages=(
  # build
  build-essential cmake pkg-config clang libclang-rt-14-dev
  # libraries
  libnghttp2-dev libssl-dev libcurl4-openssl-dev libyaml-dev libc-ares-dev libev-dev
  libjansson-dev libsqlite3-dev libhttp-parser-dev libcmocka-dev libpq-dev
  # test peers and clients
  curl openssl nginx haproxy nghttp2-client nghttp2-server wrk sqlite3 procps
  python3 python3-requests python3-httpx python3-h2 nodejs npm git groff-base
  # deployment files: YAML manifests parsed and checked against the Kubernetes API
  # models, the systemd unit verified (systemd-analyze)
  python3-yaml python3-kubernetes systemd
  # AWS SigV4: an independent verifier (botocore) and an SDK playing an agent (boto3)
  python3-botocore python3-boto3
  # the PostgreSQL store (several replicas): the tests start a private server with the
  # package's initdb/postgres (as its `postgres` user when run as root)
  postgresql
  # security-team features: promtool / a real Prometheus scrape, and the status page
  # in a real headless browser (npm puppeteer-core drives this one, downloads none)
  prometheus chromium
)

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

missing=()
for p in "${packages[@]}"; do
  # Node may come from elsewhere than Debian (a newer one): keep it if present.
  if [ "$p" = nodejs ] && command -v node >/dev/null 2>&1; then continue; fi
  if [ "$p" = npm ] && command -v npm >/dev/null 2>&1; then continue; fi
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if [ ${#missing[@]} -gt 0 ]; then
  echo "install-deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
  echo "install-deps: all packages present"
fi

# The Debian nginx/haproxy/prometheus/postgresql packages start system services on
# install; airlock's tests and benchmarks run their own instances on free ports, so stop
# those (and keep Prometheus from coming back at boot: it would hold port 9090).
for svc in nginx haproxy prometheus postgresql; do
  if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet "$svc" 2>/dev/null; then
    $SUDO systemctl stop "$svc" || true
  fi
done
if command -v systemctl >/dev/null 2>&1; then
  $SUDO systemctl disable prometheus >/dev/null 2>&1 || true
fi
