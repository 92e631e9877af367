#!/usr/bin/env bash
# run-proxy-bench.sh: airlock against nginx and HAProxy, one machine, one run.
#
#   bench/run-proxy-bench.sh [--airlock BIN] [--duration S] [--conc "1 10 50"]
#                            [--streams M] [--sizes "small 1m post"] [--rounds R]
#                            [--peers "direct nginx haproxy airlock native iam oauth2_2lo"]
#                            [--audit-chain true|false]
#
# Upstream: Debian nginx (one worker) on free 127.0.0.1 ports, a small response and a
# 1 MiB file, keep-alive HTTP/1.1 to every proxy. Load: h2load (one thread), h2c with
# prior knowledge, -c C connections x -m M streams, for -D S seconds after a warm-up.
# Peers, each with ONE worker thread/process:
#   direct   h2load straight at the upstream's h2c port (the ceiling)
#   nginx    nginx reverse proxy, proxy_set_header Authorization, upstream keepalive
#   haproxy  HAProxy nbthread 1, http-request set-header Authorization
#   airlock  airlock serve, limits.workers 1, gateway mode /t/bench/ injecting an API key
#            (the API key goes to 'airlock identity' on stdin, never in argv). The binary:
#            --airlock BIN or $AIRLOCK_BIN, else the script builds a Release one in
#            build-release/ (cmake -DCMAKE_BUILD_TYPE=Release, target airlock); a binary
#            built with AL_SANITIZE is refused, another build type is reported.
#            Its audit log is hash-chained with signed checkpoints (audit.chain: true,
#            the default); --audit-chain false measures the plain log for comparison.
#   native   the same airlock with limits.upstream_engine: native (its own HTTP/1.1
#            and HTTP/2 client instead of libcurl); the airlock row is the default
#            engine, so one run compares both
#   iam      the same airlock binary, one worker, signing every request with AWS SigV4
#            (an iam target, credentials from the environment) towards the same
#            upstream; its ratio to the airlock (api_key) row is the cost of signing.
# Sizes: small (GET, 24 B answer), 1m (GET, 1 MiB file), post (POST of a 512 B body to
# the small answer: the iam peer hashes and signs the body).
#   oauth2_2lo  the same airlock, but the target takes an OAuth 2.0 client-credentials
#            token from a real OpenID provider (npm oidc-provider from tests/node_modules,
#            HTTPS with a throw-away CA; skipped without node or the package): with the
#            token cached, its requests/s should be within 5 % of the airlock row.
# All peers see the same URLs (/t/bench/small, /t/bench/1m.bin); before measuring, each
# proxy is checked to deliver the injected header to the upstream. All peers run side by
# side and are measured in turn for each size and concurrency; with --rounds R each
# row is the median round (by requests/s).
# Prints requests/s, p50/p99 latency (from h2load's per-request log), the proxy's RSS
# (VmRSS, all its processes, after the run) and the ratios airlock/nginx,
# airlock/haproxy (and haproxy/nginx for reference). Every process started is killed
# at the end, by pid. Not a pass/fail test.
set -euo pipefail
cd "$(dirname "$0")/.."
src=$PWD
dir=$(mktemp -d /tmp/airlock-bench.XXXXXX)
. bench/lib.sh # pids, cleanup (trapped), parse_opts, free_port, wait_port, render, start_airlock

airlock_bin=${AIRLOCK_BIN:-}
duration=3
warmup=1
concs="1 10 50"
streams=10
sizes="small 1m post"
peers="direct nginx haproxy airlock native iam oauth2_2lo"
rounds=1
audit_chain=true
parse_opts "airlock=airlock_bin duration conc=concs streams sizes peers rounds audit-chain" "$@"
need_tools "run deploy/install-deps.sh" nginx haproxy h2load curl openssl /usr/bin/python3

# airlock's figures mean something only for an optimised, uninstrumented build.
airlock_build="given"
case " $peers " in
  *" airlock "* | *" native "* | *" iam "* | *" oauth2_2lo "*) release_airlock_bin ;;
esac

key="bench-$(openssl rand -hex 16)"
start_upstream
head -c 384 /dev/urandom | base64 -w0 >"$dir/post.body" # 512 bytes

# start_peer NAME: starts the proxy, sets peer_pid/peer_port, or peer_pid="" with a note.
note=""
start_peer() {
  peer_pid=""
  peer_port=$(free_port)
  case "$1" in
    direct)
      peer_port=$direct_port
      peer_pid=$upstream_pid
      return 0
      ;;
    nginx)
      render bench/nginx-proxy.conf "$dir/nginx-proxy.conf" DIR="$dir" PROXY_PORT="$peer_port" \
        UPSTREAM_PORT="$upstream_port" KEY="$key"
      spawn "$dir/nginx.out" \
        nginx -e "$dir/nginx-proxy-error.log" -p "$dir" -c "$dir/nginx-proxy.conf"
      peer_pid=$last_pid
      ;;
    haproxy)
      render bench/haproxy.conf "$dir/haproxy.cfg" PROXY_PORT="$peer_port" \
        UPSTREAM_PORT="$upstream_port" KEY="$key"
      spawn "$dir/haproxy.out" haproxy -db -f "$dir/haproxy.cfg"
      peer_pid=$last_pid
      ;;
    iam)
      if [ ! -x "$airlock_bin" ]; then
        note="iam: skipped, $airlock_bin is not built"
        return 1
      fi
      local iam_admin=$(free_port) istate=$dir/airlock-iam-state
      mkdir -p "$istate"
      chmod 700 "$istate"
      render bench/airlock-iam-table.conf "$dir/airlock-iam.yaml" DIR="$dir" PROXY_PORT="$peer_port" \
        ADMIN_PORT="$iam_admin" UPSTREAM_PORT="$upstream_port" AUDIT_CHAIN="$audit_chain"
      AWS_ACCESS_KEY_ID=AKIDBENCHEXAMPLE AWS_SECRET_ACCESS_KEY="$key" \
        "$airlock_bin" serve -c "$dir/airlock-iam.yaml" --state-dir "$istate" >"$dir/iam.out" 2>&1 &
      peer_pid=$!
      ;;
    airlock)
      start_airlock airlock bench/airlock-table.conf ENGINE= || return 1
      ;;
    native)
      start_airlock native bench/airlock-table.conf ENGINE="  upstream_engine: native" || return 1
      ;;
    oauth2_2lo)
      if [ ! -x "$airlock_bin" ] || ! command -v node >/dev/null ||
        [ ! -d "$src/tests/node_modules/oidc-provider" ]; then
        note="oauth2_2lo: skipped, needs node and (cd tests && npm ci)"
        return 1
      fi
      local admin_port state=$dir/airlock-oauth-state out rc op_port secret
      secret="bench-$(openssl rand -hex 16)"
      bash "$src/tests/peers/make_test_ca.sh" "$dir/ca" >/dev/null
      (cd "$src/tests" && exec node peers/oidc_provider.js --cert "$dir/ca/server.pem" \
        --key "$dir/ca/server.key" --ttl 3600 --client "bench:$secret") >"$dir/oidc.out" 2>&1 &
      pids+=("$!")
      for _ in $(seq 200); do
        op_port=$(awk '/^READY/ {print $2}' "$dir/oidc.out")
        [ -n "$op_port" ] && break
        sleep 0.05
      done
      if [ -z "$op_port" ]; then
        note="oauth2_2lo: skipped, the OpenID provider did not start: $(tail -2 "$dir/oidc.out" | tr '\n' ' ')"
        return 1
      fi
      admin_port=$(free_port)
      mkdir -p "$state"
      chmod 700 "$state"
      render bench/airlock-oauth-table.conf "$dir/airlock-oauth.yaml" DIR="$dir" \
        PROXY_PORT="$peer_port" ADMIN_PORT="$admin_port" UPSTREAM_PORT="$upstream_port" \
        AUDIT_CHAIN="$audit_chain"
      set +e
      out=$(printf '%s\n' "$secret" | "$airlock_bin" identity create-oauth2-credential-provider \
        --name bench-idp --client-id bench --client-secret - --state-dir "$state" \
        --discovery-url "https://127.0.0.1:$op_port/.well-known/openid-configuration" \
        --ca-file "$dir/ca/ca.pem" --allow-private-network 2>&1)
      rc=$?
      set -e
      if [ "$rc" -ne 0 ]; then
        note="oauth2_2lo: skipped, creating the provider failed (exit $rc): $(printf '%s' "$out" | head -1)"
        return 1
      fi
      # (an exit is caught by wait_port below)
      serve_airlock "$dir/airlock-oauth.yaml" "$state" "$dir/airlock-oauth.log" "$admin_port" ||
        true
      ;;
  esac
  pids+=("$peer_pid")
  if ! wait_port "$peer_port" "$peer_pid"; then
    note="$1: skipped, did not start: $(cat "$dir/$1.out" "$dir/$1-proxy-error.log" 2>/dev/null | tail -3 | tr '\n' ' ')"
    kill -TERM "$peer_pid" 2>/dev/null || true
    peer_pid=""
    return 1
  fi
  # The proxy must really inject the header, else its figures mean nothing.
  local got want="authorization=Bearer $key"
  got=$(curl -sS --noproxy '*' --http2-prior-knowledge "http://127.0.0.1:$peer_port/t/bench/check" 2>&1 || true)
  if [ "$1" = iam ]; then # a SigV4 Authorization with the benchmark's key id
    want="authorization=AWS4-HMAC-SHA256 Credential=AKIDBENCHEXAMPLE/"
    got=${got:0:${#want}}
  fi
  if [ "$1" = oauth2_2lo ]; then # a token from the provider, whatever its bytes
    case "$got" in "authorization=Bearer "?*) got=$want ;; esac
  fi
  if [ "$got" != "$want" ] && ! { [ "$want" = "authorization=Bearer $key" ] && header_arrived "$got" "$key"; }; then
    note="$1: skipped, the upstream did not get the injected header (got: ${got:0:120})"
    kill -TERM "$peer_pid" 2>/dev/null || true
    peer_pid=""
    return 1
  fi
}

# measure PEER SIZE CONC: one h2load run; appends a row to $dir/results.tsv.
measure() {
  local peer=$1 size=$2 conc=$3 path out log rps p50 p99 ok failed rss
  local data=()
  case "$size" in
    small) path=/t/bench/small ;;
    1m) path=/t/bench/1m.bin ;;
    post) path=/t/bench/small data=(-d "$dir/post.body") ;;
  esac
  log=$dir/h2load-$peer-$size-$conc.log
  out=$(h2load -c "$conc" -m "$streams" -t 1 -D "$duration" --warm-up-time "$warmup" \
    "${data[@]}" --log-file="$log" "http://127.0.0.1:$peer_port$path" 2>&1) || true
  rps=$(printf '%s\n' "$out" | awk '/^finished in/ {gsub(",", "", $4); print $4}')
  ok=$(printf '%s\n' "$out" | awk '/^requests:/ {print $8}')
  failed=$(printf '%s\n' "$out" | awk '/^requests:/ {print $10 + $12 + $14}')
  # p50/p99 of response times (column 3, microseconds) of the streams that succeeded
  read -r p50 p99 < <(awk -F'\t' '$2 != -1 {print $3}' "$log" 2>/dev/null | sort -n |
    awk '{v[NR] = $1} END {
      if (NR == 0) { print "- -"; exit }
      i50 = int(NR * 0.50); if (i50 < 1) i50 = 1
      i99 = int(NR * 0.99); if (i99 < 1) i99 = 1
      printf "%.2f %.2f\n", v[i50] / 1000, v[i99] / 1000 }')
  rss=$(rss_tree "$peer_pid")
  [ "$peer" = direct ] && rss=$(rss_tree "$upstream_pid")
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$size" "$conc" "$peer" "${rps:-0}" "$p50" "$p99" \
    "$((rss / 1024))" "${failed:-?}/${ok:-?}" >>"$dir/results.tsv"
  printf '  %-8s %-5s c=%-3s %10s req/s  p50 %7s ms  p99 %7s ms  rss %4s MiB  failed %s\n' \
    "$peer" "$size" "$conc" "${rps:-0}" "$p50" "$p99" "$((rss / 1024))" "${failed:-?}"
  rm -f "$log"
}

echo "machine: $(nproc) cpus, $(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo), $(date -u +%Y-%m-%dT%H:%MZ)"
echo "versions: $(nginx -v 2>&1 | sed 's/.*version: //'), HAProxy $(haproxy -v | awk 'NR==1 {print $3}'), $(h2load --version | head -1)"
echo "load average before: $(cut -d" " -f1-3 /proc/loadavg)"
echo "airlock: $airlock_bin (build type ${airlock_build:-unknown})"
echo "load: h2load -t 1 -c {$concs} -m $streams -D ${duration}s (warm-up ${warmup}s), h2c prior knowledge"
: >"$dir/results.tsv"
# All peers run side by side (an idle one costs nothing) and the measurements are
# interleaved (for each size and concurrency: every peer in turn), so a burst of
# noise on a shared machine hits all peers alike rather than one.
start_all $peers
for round in $(seq "$rounds"); do
  [ "$rounds" -gt 1 ] && echo "round $round of $rounds"
  for size in $sizes; do
    for conc in $concs; do
      for peer in "${running[@]}"; do
        peer_pid=${pid_of[$peer]}
        peer_port=${port_of[$peer]}
        measure "$peer" "$size" "$conc"
      done
    done
  done
done
# Median round per (size, conc, peer), by requests/s.
sort -t$'\t' -k1,1 -k2,2n -k3,3 -k4,4g "$dir/results.tsv" |
  awk -F'\t' -v R="$rounds" '{ k = $1 "\t" $2 "\t" $3; c[k]++; if (c[k] == int((R + 1) / 2)) print }' |
  sort -t$'\t' -k1,1r -k2,2n >"$dir/median.tsv"

echo
[ "$rounds" -gt 1 ] && echo "Median of $rounds rounds (by requests/s) per row:"
echo "| size | conns x streams | peer | req/s | p50 ms | p99 ms | RSS MiB | failed/ok |"
echo "|---|---|---|---:|---:|---:|---:|---:|"
awk -F'\t' -v m="$streams" '{printf "| %s | %s x %s | %s | %.0f | %s | %s | %s | %s |\n", $1, $2, m, $3, $4, $5, $6, $7, $8}' "$dir/median.tsv"
echo
echo "Ratios of requests/s (and p99, lower is better) in this run:"
awk -F'\t' '
  { rps[$1 "," $2 "," $3] = $4; p99[$1 "," $2 "," $3] = $6
    if (!(($1 "," $2) in seen)) { seen[$1 "," $2] = 1; ks[++n] = $1 "," $2 } }
  function r(a, b) { return (b > 0 && a != "" && b != "") ? sprintf("%.2f", a / b) : "n/a" }
  END {
    printf "| size | conns | airlock/nginx | airlock/haproxy | native/nginx | native/haproxy | p99 native/haproxy | haproxy/nginx | p99 airlock/nginx | iam/airlock (api_key) | oauth2_2lo/airlock (api_key) |\n"
    printf "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    for (i = 1; i <= n; i++) {
      k = ks[i]; split(k, kk, ",")
      a = rps[k ",airlock"]; ng = rps[k ",nginx"]; h = rps[k ",haproxy"]; nv = rps[k ",native"]
      printf "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", kk[1], kk[2], r(a, ng), r(a, h),
        r(nv, ng), r(nv, h), (p99[k ",native"] != "" ? r(p99[k ",native"], p99[k ",haproxy"]) : "n/a"), r(h, ng),
        (p99[k ",airlock"] != "" ? r(p99[k ",airlock"], p99[k ",nginx"]) : "n/a"), r(rps[k ",iam"], a),
        r(rps[k ",oauth2_2lo"], a)
    }
  }' "$dir/median.tsv"
for n in "${notes[@]}"; do echo "note: $n"; done
