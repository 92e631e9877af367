#!/usr/bin/env bash
# make_test_ca.sh OUTDIR: a throw-away test CA and a server certificate for
# localhost / 127.0.0.1 / ::1, signed by it, for the tests' TLS upstreams.
#   OUTDIR/ca.pem  ca.key  server.pem  server.key  (server.pem is the leaf only)
# EC P-256 keys (fast); 2-day validity: these never outlive a test run.
set -euo pipefail
out=${1:?usage: make_test_ca.sh OUTDIR}
mkdir -p "$out"
cd "$out"
umask 077

cat >ca.cnf <<'CNF'
[req]
distinguished_name = dn
prompt = no
[dn]
CN = airlock test CA
[v3_ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[v3_server]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost, IP:127.0.0.1, IP:::1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
CNF

openssl ecparam -name prime256v1 -genkey -noout -out ca.key 2>/dev/null
openssl req -x509 -new -key ca.key -sha256 -days 2 -config ca.cnf -extensions v3_ca \
  -out ca.pem 2>/dev/null
openssl ecparam -name prime256v1 -genkey -noout -out server.key 2>/dev/null
openssl req -new -key server.key -subj "/CN=localhost" -out server.csr 2>/dev/null
openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -sha256 -days 2 \
  -extfile ca.cnf -extensions v3_server -out server.pem 2>/dev/null
rm -f server.csr ca.srl
chmod 644 ca.pem server.pem
openssl verify -CAfile ca.pem server.pem >/dev/null
