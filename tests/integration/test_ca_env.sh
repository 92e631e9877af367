#!/usr/bin/env bash
# Integration: `airlock ca` and `airlock env` with the real binary.
#  - ca init/cert: files and modes, refusal to overwrite, --force, the state-dir rule,
#    what `openssl x509 -text` shows, refusal of a group/world-readable key;
#  - name constraints (--permit-host): OpenSSL accepts a leaf for a permitted host and
#    rejects one for any other host;
#  - env: `eval "$(airlock env -c ...)"` sets the proxy and CA variables, the bundle holds
#    the system CAs and airlock's, odd paths survive shell quoting, and real clients
#    (curl, Python requests and httpx, Node https and fetch) trust a server whose certificate the CA signed.
# Prints "N passed, M failed"; exits non-zero on any failure.
set -u

BIN=${AIRLOCK_BIN:-$(dirname "$0")/../../build/airlock}
PY=/usr/bin/python3
pass=0
fail=0
pids=()
T=$(mktemp -d /tmp/al_ca_env.XXXXXX)

cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null && wait "$p" 2>/dev/null; done
  rm -rf "$T"
}
trap cleanup EXIT

ok() { pass=$((pass + 1)); echo "ok   - $1"; }
bad() { fail=$((fail + 1)); echo "FAIL - $1"; [ -n "${2:-}" ] && echo "       $2"; }
check() { # check "name" command...
  local name=$1; shift
  if "$@" >/dev/null 2>&1; then ok "$name"; else bad "$name" "command: $*"; fi
}
# A free TCP port on 127.0.0.1 (bound, released, used at once).
free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# Bounded poll until something accepts on 127.0.0.1:$1 (at most ~10 s).
wait_port() {
  for _ in $(seq 1 200); do
    "$PY" -c 'import socket,sys; socket.create_connection(("127.0.0.1",int(sys.argv[1])),0.2).close()' "$1" 2>/dev/null && return 0
    sleep 0.05
  done
  return 1
}
mode() { stat -c %a "$1"; }
fpr() { openssl x509 -in "$1" -noout -fingerprint -sha256 2>/dev/null; }

if [ ! -x "$BIN" ]; then
  echo "airlock binary not found: $BIN"
  echo "0 passed, 1 failed"
  exit 1
fi
BIN=$(realpath "$BIN") # some checks run in another directory

# ---- ca: usage ----------------------------------------------------------------
out=$("$BIN" ca --help 2>&1); rc=$?
[ $rc -eq 0 ] && grep -q "usage: airlock ca init" <<<"$out" && ok "ca --help: usage, exit 0" || bad "ca --help" "rc=$rc"
"$BIN" ca init --no-such-flag >/dev/null 2>&1; rc=$?
[ $rc -eq 2 ] && ok "ca: unknown flag exits 2" || bad "ca: unknown flag exits 2" "rc=$rc"
"$BIN" ca >/dev/null 2>&1; rc=$?
[ $rc -eq 2 ] && ok "ca: no subcommand exits 2" || bad "ca: no subcommand exits 2" "rc=$rc"

# ---- ca init -------------------------------------------------------------------
S=$T/state/nested
out=$("$BIN" ca init --state-dir "$S" 2>&1); rc=$?
[ $rc -eq 0 ] && ok "ca init: exit 0" || bad "ca init" "rc=$rc out=$out"
[ -f "$S/ca.key" ] && [ "$(mode "$S/ca.key")" = 600 ] && ok "ca.key is 0600" || bad "ca.key is 0600" "$(ls -l "$S" 2>&1)"
[ "$(mode "$S")" = 700 ] && ok "state dir is 0700" || bad "state dir is 0700" "$(mode "$S")"
grep -q "BEGIN PRIVATE KEY" "$S/ca.key" && ! grep -q "PRIVATE" <<<"$out" && ok "key written, not printed" || bad "key written, not printed"
before=$(fpr "$S/ca.crt")
err=$("$BIN" ca init --state-dir "$S" 2>&1 >/dev/null); rc=$?
[ $rc -eq 1 ] && grep -q -- "--force" <<<"$err" && [ "$(fpr "$S/ca.crt")" = "$before" ] &&
  ok "second ca init refused (exit 1, names --force), CA unchanged" || bad "second ca init refused" "rc=$rc err=$err"

# ---- ca cert -------------------------------------------------------------------
"$BIN" ca cert --state-dir "$S" >"$T/printed.pem" 2>"$T/err"; rc=$?
[ $rc -eq 0 ] && [ "$(fpr "$T/printed.pem")" = "$before" ] && [ -n "$before" ] &&
  ok "ca cert prints the CA certificate" || bad "ca cert" "rc=$rc $(cat "$T/err")"
! grep -q PRIVATE "$T/printed.pem" && ok "ca cert prints no key" || bad "ca cert prints no key"

# ---- what the CA certificate says ---------------------------------------------
text=$(openssl x509 -in "$S/ca.crt" -noout -text)
has() { grep -q -- "$1" <<<"$text" && ok "CA text: $2" || bad "CA text: $2" "missing: $1"; }
has "X509v3 Basic Constraints: critical" "basic constraints critical"
has "CA:TRUE, pathlen:0" "CA:TRUE, pathlen 0"
has "X509v3 Key Usage: critical" "key usage critical"
has "Certificate Sign, CRL Sign" "keyCertSign, cRLSign"
has "X509v3 Subject Key Identifier" "subject key identifier"
has "ASN1 OID: prime256v1" "ECDSA P-256 key"
has "Signature Algorithm: ecdsa-with-SHA256" "ecdsa-with-SHA256"
has "Subject: O = airlock, CN = airlock local CA (" "subject names the host"
grep -q "Name Constraints" <<<"$text" && bad "no name constraints by default" || ok "no name constraints by default"
serial=$(openssl x509 -in "$S/ca.crt" -noout -serial | cut -d= -f2)
[ ${#serial} -ge 30 ] && ok "serial is ~128 random bits (${#serial} hex digits)" || bad "serial length" "$serial"
# Valid 10 years: still valid in 9.9 years, not in 10.1.
openssl x509 -in "$S/ca.crt" -noout -checkend $((3650 * 86400 - 86400 * 30)) >/dev/null &&
  ! openssl x509 -in "$S/ca.crt" -noout -checkend $((3650 * 86400 + 86400 * 30)) >/dev/null &&
  ok "valid for 10 years" || bad "valid for 10 years" "$(openssl x509 -in "$S/ca.crt" -noout -dates)"
check "openssl verify: self-signed CA verifies" openssl verify -CAfile "$S/ca.crt" "$S/ca.crt"
openssl pkey -in "$S/ca.key" -pubout 2>/dev/null | cmp -s - <(openssl x509 -in "$S/ca.crt" -noout -pubkey) &&
  ok "ca.key matches ca.crt" || bad "ca.key matches ca.crt"

# ---- --force -------------------------------------------------------------------
"$BIN" ca init --force --state-dir "$S" >/dev/null 2>&1; rc=$?
[ $rc -eq 0 ] && [ "$(fpr "$S/ca.crt")" != "$before" ] && [ "$(mode "$S/ca.key")" = 600 ] &&
  ok "ca init --force makes a new CA" || bad "ca init --force" "rc=$rc"

# ---- the state-dir rule ---------------------------------------------------------
AIRLOCK_STATE_DIR=$T/fromenv "$BIN" ca init >/dev/null 2>&1
[ -f "$T/fromenv/ca.crt" ] && ok "state dir from \$AIRLOCK_STATE_DIR" || bad "state dir from \$AIRLOCK_STATE_DIR"
AIRLOCK_STATE_DIR=$T/notme "$BIN" ca init --state-dir "$T/flagwins" >/dev/null 2>&1
[ -f "$T/flagwins/ca.crt" ] && [ ! -e "$T/notme" ] && ok "--state-dir beats \$AIRLOCK_STATE_DIR" || bad "--state-dir beats \$AIRLOCK_STATE_DIR"
(cd "$T" && "$BIN" ca init >/dev/null 2>&1)
[ -f "$T/.airlock/ca.crt" ] && ok "default state dir ./.airlock" || bad "default state dir ./.airlock"

# ---- key permissions ---------------------------------------------------------
chmod 640 "$S/ca.key"
err=$("$BIN" ca cert --state-dir "$S" 2>&1 >/dev/null); rc=$?
[ $rc -eq 1 ] && grep -q "chmod 600" <<<"$err" && ok "group-readable key refused, names chmod 600" || bad "group-readable key refused" "rc=$rc err=$err"
chmod 604 "$S/ca.key"
"$BIN" ca cert --state-dir "$S" >/dev/null 2>&1; rc=$?
[ $rc -eq 1 ] && ok "world-readable key refused" || bad "world-readable key refused" "rc=$rc"
chmod 600 "$S/ca.key"

# ---- name constraints ------------------------------------------------------------
NC=$T/nc
out=$("$BIN" ca init --state-dir "$NC" --permit-host api.example.com --permit-host 10.9.8.7 2>&1); rc=$?
nctext=$(openssl x509 -in "$NC/ca.crt" -noout -text 2>/dev/null)
[ $rc -eq 0 ] && grep -q "X509v3 Name Constraints: critical" <<<"$nctext" &&
  grep -q "DNS:api.example.com" <<<"$nctext" && grep -q "IP:10.9.8.7/255.255.255.255" <<<"$nctext" &&
  grep -q "DNS:localhost" <<<"$nctext" && ok "--permit-host: critical name constraints" ||
  bad "--permit-host: name constraints" "rc=$rc out=$out"
# Sign leaves with the CA key by hand (as a thief of the key would) and let OpenSSL judge.
leaf() { # leaf NAME SAN
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$T/$1.key" \
    -subj "/CN=$1" -out "$T/$1.csr" >/dev/null 2>&1 &&
    printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth\n' "$2" >"$T/$1.ext" &&
    openssl x509 -req -in "$T/$1.csr" -CA "$NC/ca.crt" -CAkey "$NC/ca.key" -CAcreateserial \
      -days 1 -extfile "$T/$1.ext" -out "$T/$1.crt" >/dev/null 2>&1
}
leaf permitted "DNS:v1.api.example.com" && openssl verify -CAfile "$NC/ca.crt" "$T/permitted.crt" >/dev/null 2>&1 &&
  ok "name-constrained CA: leaf for a permitted host verifies" || bad "permitted leaf verifies"
leaf stolen "DNS:www.bank.example" && ! openssl verify -CAfile "$NC/ca.crt" "$T/stolen.crt" >/dev/null 2>&1 &&
  openssl verify -CAfile "$NC/ca.crt" "$T/stolen.crt" 2>&1 | grep -q "permitted subtree violation" &&
  ok "name-constrained CA: leaf for another host is rejected" || bad "other-host leaf rejected"
"$BIN" ca init --force --state-dir "$NC" --permit-host "bad host" >/dev/null 2>&1; rc=$?
[ $rc -eq 1 ] && ok "--permit-host with a bad name: exit 1" || bad "--permit-host bad name" "rc=$rc"

# ---- env -----------------------------------------------------------------------
PORT=$(free_port)
cat >"$T/table.yaml" <<EOF
listen:
  proxy: 127.0.0.1:$PORT
targets:
  - name: openai
    type: openapi
    url: https://api.example.com/v1
    auth:
      method: api_key
      provider: openai-key
EOF
"$BIN" ca init --state-dir "$T/ft" --from-table "$T/table.yaml" >/dev/null 2>&1; rc=$?
fttext=$(openssl x509 -in "$T/ft/ca.crt" -noout -text 2>/dev/null)
[ $rc -eq 0 ] && grep -q "X509v3 Name Constraints: critical" <<<"$fttext" && grep -q "DNS:api.example.com" <<<"$fttext" &&
  ok "ca init --from-table permits the table's target hosts" || bad "ca init --from-table" "rc=$rc"
"$BIN" env --help >"$T/envhelp" 2>&1 && grep -q "usage: airlock env" "$T/envhelp" && ok "env --help" || bad "env --help"
"$BIN" env >/dev/null 2>&1; rc=$?
[ $rc -eq 2 ] && ok "env without -c or --proxy: exit 2" || bad "env without -c or --proxy" "rc=$rc"
"$BIN" env -c "$T/table.yaml" --bogus >/dev/null 2>&1; rc=$?
[ $rc -eq 2 ] && ok "env: unknown flag exits 2" || bad "env: unknown flag" "rc=$rc"

E=$T/envstate
# env never creates a CA (it would be one serve does not use): it says what to run.
"$BIN" env -c "$T/table.yaml" --state-dir "$E" >"$T/env.out" 2>"$T/env.err"; rc=$?
[ $rc -eq 1 ] && [ ! -s "$T/env.out" ] && [ ! -e "$E" ] && grep -q "airlock ca init" "$T/env.err" &&
  ok "env without a CA: exit 1, names 'airlock ca init', creates nothing" || bad "env without a CA" "rc=$rc $(cat "$T/env.err")"
"$BIN" ca init --state-dir "$E" >/dev/null 2>&1
"$BIN" env -c "$T/table.yaml" --state-dir "$E" >"$T/env.out" 2>"$T/env.err"; rc=$?
[ $rc -eq 0 ] && ok "env: exit 0" || bad "env: exit 0" "rc=$rc $(cat "$T/env.err")"
# ca cert -o writes only when there is a certificate: no empty file behind.
"$BIN" ca cert --state-dir "$T/noca" -o "$T/noca.pem" >/dev/null 2>"$T/noca.err"; rc=$?
[ $rc -eq 1 ] && [ ! -e "$T/noca.pem" ] && grep -q "airlock ca init" "$T/noca.err" &&
  ok "ca cert -o without a CA: exit 1, no file" || bad "ca cert -o without a CA" "rc=$rc"
"$BIN" ca cert --state-dir "$E" -o "$T/out.pem" >/dev/null 2>&1 && cmp -s "$T/out.pem" "$E/ca.crt" &&
  [ "$(mode "$T/out.pem")" = 644 ] && ok "ca cert -o writes the certificate (0644)" || bad "ca cert -o"
(
  unset HTTPS_PROXY HTTP_PROXY NO_PROXY SSL_CERT_FILE REQUESTS_CA_BUNDLE CURL_CA_BUNDLE NODE_EXTRA_CA_CERTS
  eval "$(cat "$T/env.out")"
  printf '%s\n' "$HTTPS_PROXY" "$HTTP_PROXY" "$https_proxy" "$http_proxy" "$NO_PROXY" "$SSL_CERT_FILE" \
    "$REQUESTS_CA_BUNDLE" "$CURL_CA_BUNDLE" "$NODE_EXTRA_CA_CERTS" >"$T/vars"
)
mapfile -t v <"$T/vars"
[ "${v[0]}" = "http://127.0.0.1:$PORT" ] && [ "${v[1]}" = "http://127.0.0.1:$PORT" ] &&
  [ "${v[2]}" = "${v[0]}" ] && [ "${v[3]}" = "${v[0]}" ] && ok "eval sets HTTPS_PROXY/HTTP_PROXY (and lower-case)" ||
  bad "proxy variables" "${v[*]:0:4}"
[[ ",${v[4]}," == *",localhost,"* && ",${v[4]}," == *",127.0.0.1,"* && ",${v[4]}," == *",::1,"* ]] &&
  ok "NO_PROXY has localhost,127.0.0.1,::1" || bad "NO_PROXY" "${v[4]}"
[ "${v[5]}" = "$E/ca-bundle.pem" ] && [ "${v[6]}" = "${v[5]}" ] && [ "${v[7]}" = "${v[5]}" ] &&
  ok "SSL_CERT_FILE = REQUESTS_CA_BUNDLE = CURL_CA_BUNDLE = <state>/ca-bundle.pem" || bad "bundle variables" "${v[*]:5:3}"
[ "${v[8]}" = "$E/ca.crt" ] && ok "NODE_EXTRA_CA_CERTS = the CA certificate" || bad "NODE_EXTRA_CA_CERTS" "${v[8]}"
B=${v[5]}
[ -f "$B" ] && [ "$(grep -cxF -f "$E/ca.crt" "$B")" -ge "$(wc -l <"$E/ca.crt")" ] &&
  ok "bundle contains airlock's CA" || bad "bundle contains airlock's CA"
if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
  sys=$(grep -c "BEGIN CERTIFICATE" /etc/ssl/certs/ca-certificates.crt)
  [ "$(grep -c "BEGIN CERTIFICATE" "$B")" -eq $((sys + 1)) ] && ok "bundle = system CAs ($sys) + airlock's" ||
    bad "bundle = system CAs + airlock's" "$(grep -c "BEGIN CERTIFICATE" "$B") certs"
fi
check "openssl verify of the CA against the bundle" openssl verify -CAfile "$B" "$E/ca.crt"
"$PY" - "$B" "$E/ca.crt" <<'EOF' && ok "Python ssl loads the bundle and finds airlock's CA" || bad "Python ssl loads the bundle"
import ssl, sys
ctx = ssl.create_default_context(cafile=sys.argv[1])
subjects = [dict(x[0] for x in c["subject"]).get("commonName", "") for c in ctx.get_ca_certs()]
sys.exit(0 if any(s.startswith("airlock local CA (") for s in subjects) and len(subjects) > 1 else 1)
EOF
! grep -q PRIVATE "$T/env.out" "$B" && ok "no key in env output or bundle" || bad "no key in env output or bundle"
# Running env again keeps the same CA (agents already trust it).
f1=$(fpr "$E/ca.crt")
"$BIN" env -c "$T/table.yaml" --state-dir "$E" >/dev/null 2>&1
[ "$(fpr "$E/ca.crt")" = "$f1" ] && ok "env again keeps the CA" || bad "env again keeps the CA"

# Paths that need quoting: a space and a single quote.
Q="$T/it's a dir"
mkdir -p "$Q"
"$BIN" env -c "$T/table.yaml" --state-dir "$E" --bundle-out "$Q/my bundle.pem" >"$T/envq.out" 2>/dev/null
got=$(bash -c 'eval "$(cat "$1")" && printf %s "$SSL_CERT_FILE"' _ "$T/envq.out")
[ "$got" = "$Q/my bundle.pem" ] && [ -f "$Q/my bundle.pem" ] && ok "--bundle-out with odd characters survives eval" ||
  bad "--bundle-out quoting" "got '$got'"

# A wildcard listen address: agents reach the proxy on loopback.
sed "s/127.0.0.1:$PORT/0.0.0.0:$PORT/" "$T/table.yaml" >"$T/wild.yaml"
got=$(bash -c 'eval "$("$1" env -c "$2" --state-dir "$3" 2>/dev/null)" && printf %s "$HTTPS_PROXY"' _ "$BIN" "$T/wild.yaml" "$E")
[ "$got" = "http://127.0.0.1:$PORT" ] && ok "listen 0.0.0.0 -> HTTPS_PROXY on 127.0.0.1" || bad "wildcard listen" "got '$got'"

# A table without listen.proxy is an error the user can act on.
printf 'targets: []\n' >"$T/noproxy.yaml"
"$BIN" env -c "$T/noproxy.yaml" --state-dir "$E" >/dev/null 2>"$T/np.err"; rc=$?
[ $rc -eq 1 ] && ok "table without listen.proxy: exit 1" || bad "table without listen.proxy" "rc=$rc $(cat "$T/np.err")"
# A group-readable key: env refuses too.
chmod 640 "$E/ca.key"
err=$("$BIN" env -c "$T/table.yaml" --state-dir "$E" 2>&1 >/dev/null); rc=$?
[ $rc -eq 1 ] && grep -q "chmod 600" <<<"$err" && ok "env refuses a group-readable key" || bad "env refuses a group-readable key" "rc=$rc"
chmod 600 "$E/ca.key"

# ---- real clients trust what the CA signs, with only `airlock env` applied -----------
# A TLS server on 127.0.0.1 with a leaf for "localhost" signed by the env's CA. The
# server is local, so NO_PROXY sends the clients to it directly.
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$T/srv.key" \
  -subj "/CN=localhost" -out "$T/srv.csr" >/dev/null 2>&1
printf 'subjectAltName=DNS:localhost\nextendedKeyUsage=serverAuth\n' >"$T/srv.ext"
openssl x509 -req -in "$T/srv.csr" -CA "$E/ca.crt" -CAkey "$E/ca.key" -CAcreateserial -days 1 \
  -extfile "$T/srv.ext" -out "$T/srv.crt" >/dev/null 2>&1
SPORT=$(free_port)
openssl s_server -quiet -accept "127.0.0.1:$SPORT" -cert "$T/srv.crt" -key "$T/srv.key" -www \
  >/dev/null 2>&1 </dev/null &
pids+=($!)
if wait_port "$SPORT"; then
  run_env() { bash -c 'eval "$(cat "$1")"; shift; "$@"' _ "$T/env.out" "$@"; }
  run_env curl -sS -o /dev/null -w '%{http_code}' "https://localhost:$SPORT/" >"$T/curl.out" 2>"$T/curl.err"
  [ "$(cat "$T/curl.out")" = 200 ] && ok "curl trusts the CA through CURL_CA_BUNDLE" || bad "curl trusts the CA" "$(cat "$T/curl.err")"
  # Without the env, the same request fails verification.
  env -u CURL_CA_BUNDLE -u SSL_CERT_FILE curl -sS -o /dev/null "https://localhost:$SPORT/" >/dev/null 2>&1 &&
    bad "curl without the env must not trust the CA" || ok "curl without the env rejects the certificate"
  run_env "$PY" -c 'import requests,sys; sys.exit(0 if requests.get("https://localhost:%s/" % sys.argv[1], timeout=5).status_code == 200 else 1)' "$SPORT" \
    >/dev/null 2>"$T/py.err" && ok "Python requests trusts the CA through REQUESTS_CA_BUNDLE" || bad "Python requests" "$(tail -1 "$T/py.err")"
  run_env "$PY" -c 'import httpx,sys; sys.exit(0 if httpx.get("https://localhost:%s/" % sys.argv[1], timeout=5).status_code == 200 else 1)' "$SPORT" \
    >/dev/null 2>"$T/httpx.err" && ok "Python httpx trusts the CA through SSL_CERT_FILE" || bad "Python httpx" "$(tail -1 "$T/httpx.err")"
  # Node is a required test peer (deploy/install-deps.sh): missing, it is a failure,
  # not a silent skip.
  if ! command -v node >/dev/null 2>&1; then
    bad "Node https/fetch trust the CA" "node is not installed (deploy/install-deps.sh installs it)"
  else
    run_env node -e '
      const https = require("https");
      https.get({host: "localhost", port: process.argv[1], path: "/"}, r => process.exit(r.statusCode === 200 ? 0 : 1))
        .on("error", e => { console.error(e.message); process.exit(1); });' "$SPORT" >/dev/null 2>"$T/node.err" &&
      ! grep -q "Ignoring extra certs" "$T/node.err" && ok "Node https trusts the CA through NODE_EXTRA_CA_CERTS" ||
      bad "Node https" "$(cat "$T/node.err")"
    # Node's fetch (undici, what the openai SDK uses) reads the same extra CAs.
    run_env node -e '
      fetch("https://localhost:" + process.argv[1] + "/").then(r => process.exit(r.status === 200 ? 0 : 1),
        e => { console.error(e.cause ? e.cause.code : e.message); process.exit(1); });' "$SPORT" \
      >/dev/null 2>"$T/fetch.err" && ok "Node fetch trusts the CA through NODE_EXTRA_CA_CERTS" ||
      bad "Node fetch" "$(cat "$T/fetch.err")"
  fi
else
  bad "openssl s_server did not start"
fi

echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
