#!/usr/bin/env bash
# `airlock check` with the real binary: every example table passes; every bad table
# in tests/data/tables/bad fails with exit 1 and exactly the diagnostics in its
# .expected file; --format json, --matrix, --schema, usage errors and the secret in a
# URL's user info never echoed. Prints "N passed, M failed"; exits non-zero on any
# failure.
set -u
BIN=$(realpath "${AIRLOCK_BIN:?AIRLOCK_BIN is not set}")
SRC=${AIRLOCK_SOURCE_DIR:?AIRLOCK_SOURCE_DIR is not set}
DATA=${AIRLOCK_TEST_DATA:-$SRC/tests/data}
PY=/usr/bin/python3
T=$(mktemp -d /tmp/test_check.XXXXXX)
trap 'rm -rf "$T"' EXIT
passed=0
failed=0
ok() { passed=$((passed + 1)); echo "ok   $1"; }
bad() {
  failed=$((failed + 1))
  echo "FAIL $1${2:+: $2}"
}
run() { # run OUTNAME cmd...: stdout/stderr into $T/OUTNAME.{out,err}, rc in $rc
  local name=$1
  shift
  "$@" >"$T/$name.out" 2>"$T/$name.err"
  rc=$?
}

# ---- the examples are valid ------------------------------------------------------
for f in "$SRC"/deploy/examples/*.yaml; do
  b=$(basename "$f" .yaml)
  run "ex_$b" "$BIN" check -c "$f"
  # no store in the test's environment: the one warning allowed says so
  if [ $rc -eq 0 ] && head -1 "$T/ex_$b.out" | grep -q '^NAME  *TYPE  *METHOD  *PROVIDER  *UPSTREAM$' &&
    grep -q ": OK, [0-9]* target" "$T/ex_$b.out" &&
    ! grep -v "^$f: warning: providers were not checked: no identity store exists at " "$T/ex_$b.err" | grep -q .; then
    ok "example $b.yaml passes"
  else
    bad "example $b.yaml" "rc=$rc $(cat "$T/ex_$b.err")"
  fi
done
run qs "$BIN" check -c "$SRC/deploy/examples/quickstart.yaml"
grep -Eq '^demo +openapi +api_key +demo-key +http://127\.0\.0\.1:9090$' "$T/qs.out" &&
  ok "quickstart summary row" || bad "quickstart summary row" "$(cat "$T/qs.out")"
run qs_pos "$BIN" check "$SRC/deploy/examples/quickstart.yaml"
[ $rc -eq 0 ] && cmp -s "$T/qs.out" "$T/qs_pos.out" && ok "FILE as argument = -c FILE" ||
  bad "positional FILE" "rc=$rc"
run lam "$BIN" check "$SRC/deploy/examples/lambda.yaml"
grep -q 'https://lambda.us-east-1.amazonaws.com/2015-03-31/functions/arn:aws:lambda:us-east-1:123456789012:function:order-lookup' "$T/lam.out" &&
  ok "lambda upstream derived from the ARN" || bad "lambda upstream" "$(cat "$T/lam.out")"

# ---- bad tables: exit 1, exact diagnostics, a count line ------------------------
n_bad=0
for f in "$DATA"/tables/bad/*.yaml; do
  b=$(basename "$f" .yaml)
  n_bad=$((n_bad + 1))
  (cd "$DATA/tables/bad" && "$BIN" check "$b.yaml") >"$T/bad_$b.out" 2>"$T/bad_$b.err"
  rc=$?
  n=$(wc -l <"$DATA/tables/bad/$b.expected")
  want_tail="$b.yaml: $n error$([ "$n" -eq 1 ] || echo s)"
  if [ $rc -eq 1 ] && [ ! -s "$T/bad_$b.out" ] &&
    diff <(head -n -1 "$T/bad_$b.err") "$DATA/tables/bad/$b.expected" >"$T/bad_$b.diff" &&
    [ "$(tail -1 "$T/bad_$b.err")" = "$want_tail" ]; then
    ok "bad table $b.yaml: exit 1, $n diagnostics as expected"
  else
    bad "bad table $b.yaml" "rc=$rc; $(cat "$T/bad_$b.diff")"
  fi
done
[ $n_bad -ge 10 ] && ok "$n_bad bad tables checked" || bad "too few bad tables" "$n_bad"

# ---- every error in one run, positions, no secret echoed -------------------------
cat >"$T/multi.yaml" <<'YAML'
listen:
  proxy: 127.0.0.1:8080
targets:
  - name: fn
    type: lambda
    function_arn: arn:aws:lambda:us-east-1:123456789012:function:fn
    auth:
      method: api_key
      provider: k
  - name: leaky
    type: openapi
    url: https://svc:hunter2-secret@api.example.com/
  - name: fn
    type: mcp_server
    url: https://mcp.example.com
    auth: {method: oauth2_2lo, provider: c}
YAML
run multi "$BIN" check "$T/multi.yaml"
if [ $rc -eq 1 ] && grep -qx "$T/multi.yaml:8:15: error: target 'fn': type 'lambda' does not allow auth method 'api_key' (lambda allows: iam)" "$T/multi.err" &&
  grep -q "^$T/multi.yaml:12:10: error: target 'leaky': 'url' must not contain user info" "$T/multi.err" &&
  grep -qx "$T/multi.yaml:13:11: error: duplicate target name 'fn' (first defined at line 4)" "$T/multi.err"; then
  ok "three errors reported in one run with line:column"
else
  bad "multi-error table" "rc=$rc $(cat "$T/multi.err")"
fi
grep -q hunter2 "$T/multi.out" "$T/multi.err" && bad "user info secret echoed" || ok "user info password never echoed"

printf 'targets:\n  - name: a\n    type: openapi\n   url: x\n' >"$T/syntax.yaml"
run syn "$BIN" check "$T/syntax.yaml"
[ $rc -eq 1 ] && grep -q "^$T/syntax.yaml:4:4: error: YAML syntax error: " "$T/syn.err" &&
  ok "YAML syntax error with line:column" || bad "syntax error" "rc=$rc $(cat "$T/syn.err")"

run missing "$BIN" check "$T/nope.yaml"
[ $rc -eq 1 ] && grep -q "^$T/nope.yaml: error: cannot read the table: No such file or directory" "$T/missing.err" &&
  ok "missing file: exit 1 with the reason" || bad "missing file" "rc=$rc $(cat "$T/missing.err")"

# ---- JSON ---------------------------------------------------------------------
run js "$BIN" check --format json "$SRC/deploy/examples/quickstart.yaml"
[ $rc -eq 0 ] && $PY - "$T/js.out" <<'PY' && ok "--format json (valid table)" || bad "--format json valid" "rc=$rc"
import json, sys
j = json.load(open(sys.argv[1]))
assert j["ok"] is True and j["errors"] == [], j
t = j["targets"][0]
assert t["name"] == "demo" and t["type"] == "openapi" and t["method"] == "api_key", t
assert t["providers"] == ["demo-key"] and t["upstream"] == "http://127.0.0.1:9090", t
assert t["key_name"] == "Authorization" and t["prefix"] == "Bearer " and t["location"] == "header", t
PY
(cd "$DATA/tables/bad" && "$BIN" check --format=json matrix.yaml) >"$T/jsb.out" 2>"$T/jsb.err"
rc=$?
[ $rc -eq 1 ] && $PY - "$T/jsb.out" <<'PY' && ok "--format json (bad table): exit 1, errors with positions" || bad "--format json bad" "rc=$rc"
import json, sys
j = json.load(open(sys.argv[1]))
assert j["ok"] is False and j["targets"] == [], j
e = j["errors"]
assert len(e) == 2, e
assert e[0] == {"file": "matrix.yaml", "line": 6, "column": 15,
                "message": "target 'fn': type 'lambda' does not allow auth method 'api_key' (lambda allows: iam)"}, e[0]
PY

# ---- matrix and schema ------------------------------------------------------------
run mx "$BIN" check --matrix
if [ $rc -eq 0 ] && grep -qx '| target type | iam | oauth2_2lo | oauth2_3lo | api_key |' "$T/mx.out" &&
  grep -qx '| `lambda` | yes | no | no | no |' "$T/mx.out" &&
  grep -qx '| `api_gateway` | yes | no | no | yes |' "$T/mx.out" &&
  grep -qx '| `openapi` | no | yes | yes | yes |' "$T/mx.out" &&
  grep -qx '| `smithy` | yes | yes | yes | no |' "$T/mx.out" &&
  grep -qx '| `mcp_server` | no | yes | no | no |' "$T/mx.out"; then
  ok "--matrix prints the documented matrix"
else
  bad "--matrix" "$(cat "$T/mx.out" "$T/mx.err")"
fi
run mxj "$BIN" check --matrix --format json
[ $rc -eq 0 ] && $PY -c 'import json,sys; j=json.load(open(sys.argv[1])); assert j["types"]["api_gateway"]==["iam","api_key"], j' "$T/mxj.out" &&
  ok "--matrix --format json" || bad "--matrix json" "rc=$rc"
run sc "$BIN" check --schema
[ $rc -eq 0 ] && head -1 "$T/sc.out" | grep -qx '| Key | Type | Default | Description |' &&
  grep -q '^| `targets\[\].auth.provider` | string or list | required (optional for iam) |' "$T/sc.out" &&
  grep -q '^| `limits.max_header_bytes` | integer | 65536 |' "$T/sc.out" &&
  ok "--schema prints the Markdown reference" || bad "--schema" "rc=$rc"
run scj "$BIN" check --schema --format json
[ $rc -eq 0 ] && $PY -c 'import json,sys; r=json.load(open(sys.argv[1])); k=[x for x in r if x["key"]=="targets[].auth.scopes"][0]; assert k["methods"]==["oauth2_2lo","oauth2_3lo"], k' "$T/scj.out" &&
  ok "--schema --format json" || bad "--schema json" "rc=$rc"

# ---- providers against the store (environments) -----------------------------------
ST="$T/envstore"
cat >"$T/env.yaml" <<EOF
environment: dev
targets:
  - name: a
    type: openapi
    url: https://a.example.com
    auth: {method: api_key, provider: prod-key}
  - name: b
    type: openapi
    url: https://b.example.com
    auth: {method: api_key, provider: dev-key}
EOF
run nostore "$BIN" check --state-dir "$ST" "$T/env.yaml"
[ $rc -eq 0 ] && grep -qxF "$T/env.yaml: warning: providers were not checked: no identity store exists at $ST/identity.db (create the providers with \`airlock identity create-...-credential-provider\`, or point --state-dir at the store)" "$T/nostore.err" &&
  ok "no store yet: providers are not checked, and check says so" || bad "no store" "rc=$rc $(cat "$T/nostore.err")"
run nostore_strict "$BIN" check --strict --state-dir "$ST" "$T/env.yaml"
[ $rc -eq 1 ] && grep -q "^$T/env.yaml: error: providers were not checked: no identity store exists at $ST/identity.db.*(--strict)$" "$T/nostore_strict.err" &&
  [ ! -s "$T/nostore_strict.out" ] &&
  ok "no store with --strict: exit 1" || bad "no store --strict" "rc=$rc $(cat "$T/nostore_strict.err")"
run nostore_json "$BIN" check --format json --state-dir "$ST" "$T/env.yaml"
[ $rc -eq 0 ] && $PY -c 'import json,sys; j=json.load(open(sys.argv[1])); w=j["warnings"]; assert j["ok"] and len(w)==1 and "no identity store exists at "+sys.argv[2] in w[0]["message"], j' "$T/nostore_json.out" "$ST/identity.db" &&
  ok "no store: a warning in --format json" || bad "no store json" "rc=$rc $(cat "$T/nostore_json.out")"
printf 'targets:\n  - {name: open, type: openapi, url: "https://o.example.com"}\n' >"$T/noprov.yaml"
run noprov "$BIN" check --strict --state-dir "$ST" "$T/noprov.yaml"
[ $rc -eq 0 ] && [ ! -s "$T/noprov.err" ] && ok "no provider named: nothing to warn about" ||
  bad "no provider named" "rc=$rc $(cat "$T/noprov.err")"
printf 'prod-secret-%s' "$$" | "$BIN" identity create-api-key-credential-provider --name prod-key \
  --environment prod --api-key - --state-dir "$ST" >/dev/null 2>&1
run envbad "$BIN" check --state-dir "$ST" "$T/env.yaml"
[ $rc -eq 1 ] &&
  grep -qxF "$T/env.yaml:6:39: error: target 'a' is in environment 'dev' but provider 'prod-key' belongs to 'prod'; production keys never reach another environment: create a provider in 'dev'" "$T/envbad.err" &&
  grep -qF "$T/env.yaml:10:39: error: target 'b': provider 'dev-key' is not in the identity store" "$T/envbad.err" &&
  ! grep -q "prod-secret" "$T/envbad.out" "$T/envbad.err" &&
  ok "a dev target naming a prod provider is refused with line:column" || bad "environments" "rc=$rc $(cat "$T/envbad.err")"
run envserve "$BIN" serve --state-dir "$ST" -c "$T/env.yaml"
[ $rc -eq 1 ] && grep -q "belongs to 'prod'" "$T/envserve.err" &&
  ok "serve refuses the same table" || bad "serve environments" "rc=$rc"
printf 'dev-secret' | "$BIN" identity create-api-key-credential-provider --name dev-key \
  --environment dev --api-key - --state-dir "$ST" >/dev/null 2>&1
sed -i 's/provider: prod-key/provider: dev-key/' "$T/env.yaml"
run envok "$BIN" check --state-dir "$ST" "$T/env.yaml"
[ $rc -eq 0 ] && ok "matching environments pass" || bad "env ok" "rc=$rc $(cat "$T/envok.err")"

# ---- the missing-provider hint names the environment and the method's verb ---------
ST2="$T/hintstore"
cat >"$T/hint.yaml" <<EOF
environment: prod
targets:
  - name: gh
    type: openapi
    url: https://api.github.com
    auth: {method: api_key, provider: gh-key}
  - name: mcp
    type: mcp_server
    url: https://mcp.example.com
    environment: staging
    auth: {method: oauth2_2lo, provider: mcp-client}
EOF
printf 'x' | "$BIN" identity create-api-key-credential-provider --name unrelated --environment prod \
  --api-key - --state-dir "$ST2" >/dev/null 2>&1
run hint "$BIN" check --state-dir "$ST2" "$T/hint.yaml"
if [ $rc -eq 1 ] &&
  grep -qxF "$T/hint.yaml:6:39: error: target 'gh': provider 'gh-key' is not in the identity store; create it with \`airlock identity create-api-key-credential-provider --name gh-key --environment prod --api-key -\`" "$T/hint.err" &&
  grep -qF "create it with \`airlock identity create-oauth2-credential-provider --name mcp-client --environment staging --client-id ID --client-secret -\`" "$T/hint.err"; then
  ok "missing-provider hints carry --environment and the method's create verb"
else
  bad "missing-provider hint" "rc=$rc $(cat "$T/hint.err")"
fi
# following the hint as printed (plus the store) makes the table pass
cmd=$(grep -o "create it with \`airlock identity create-api-key[^\`]*\`" "$T/hint.err" | sed 's/^create it with `airlock //; s/`$//')
# shellcheck disable=SC2086
printf 'gh-secret' | "$BIN" $cmd --state-dir "$ST2" >/dev/null 2>&1
sed -i '/name: mcp$/,$d' "$T/hint.yaml"
run hint2 "$BIN" check --state-dir "$ST2" "$T/hint.yaml"
[ $rc -eq 0 ] && ok "the hint followed verbatim gives a provider the prod target accepts" ||
  bad "following the hint" "cmd=[$cmd] rc=$rc $(cat "$T/hint2.err")"

# ---- warnings: an Authorization prefix without its space ---------------------------
cat >"$T/prefix.yaml" <<'EOF'
targets:
  - name: gh
    type: openapi
    url: https://api.github.com
    auth: {method: api_key, provider: k1, prefix: token}
  - name: basic
    type: openapi
    url: https://b.example.com
    auth:
      method: api_key
      provider: k2
      name: authorization
      prefix: Basic
  - name: quoted
    type: openapi
    url: https://q.example.com
    auth: {method: api_key, provider: k3, prefix: "token "}
  - name: other-header
    type: openapi
    url: https://o.example.com
    auth: {method: api_key, provider: k4, name: X-Api-Key, prefix: key}
  - name: rails
    type: openapi
    url: https://r.example.com
    auth: {method: api_key, provider: k5, prefix: "Token token="}
  - name: raw
    type: openapi
    url: https://raw.example.com
    auth: {method: api_key, provider: k6, prefix: ""}
EOF
run prefix "$BIN" check --state-dir "$T/nostore-prefix" "$T/prefix.yaml"
if [ $rc -eq 0 ] &&
  grep -qxF "$T/prefix.yaml:5:51: warning: target 'gh': prefix 'token' of the Authorization header does not end in a space, so the header goes out as 'token<key>' (YAML drops trailing spaces of unquoted values); write prefix: \"token \"" "$T/prefix.err" &&
  grep -q "^$T/prefix.yaml:13:15: warning: target 'basic': prefix 'Basic' of the Authorization header" "$T/prefix.err" &&
  [ "$(grep -c 'of the Authorization header' "$T/prefix.err")" -eq 2 ]; then
  ok "prefix without its space: a warning with line:column (only for Authorization scheme names)"
else
  bad "prefix warning" "rc=$rc $(cat "$T/prefix.err")"
fi
run prefix_strict "$BIN" check --strict --state-dir "$T/nostore-prefix" "$T/prefix.yaml"
[ $rc -eq 1 ] && grep -q "^$T/prefix.yaml:5:51: error: target 'gh': prefix 'token'.*(--strict)$" "$T/prefix_strict.err" &&
  ok "prefix warning is an error with --strict" || bad "prefix --strict" "rc=$rc"

# ---- the audit log must be writable (serve dies on start otherwise) ----------------
mkdir -p "$T/auditok" "$T/auditdir.log"
for spec in "nodir|$T/no/such/dir/audit.log|its directory does not exist" \
  "isdir|$T/auditdir.log|it is a directory" \
  "fileparent|$T/prefix.yaml/audit.log|Not a directory"; do
  IFS='|' read -r name path why <<<"$spec"
  printf 'audit:\n  file: %s\ntargets: []\n' "$path" >"$T/audit_$name.yaml"
  run "audit_$name" "$BIN" check --state-dir "$T/auditok" "$T/audit_$name.yaml"
  if [ $rc -eq 1 ] && grep -qF "$T/audit_$name.yaml:2:9: error: the audit log $path cannot be written ($why), so serve would not start" "$T/audit_$name.err"; then
    ok "audit.file $name: error naming the path"
  else
    bad "audit.file $name" "rc=$rc $(cat "$T/audit_$name.err")"
  fi
done
printf 'targets: []\n' >"$T/audit_default.yaml"
run audit_default "$BIN" check --state-dir "$T/no/such/state" "$T/audit_default.yaml"
[ $rc -eq 1 ] && grep -qF "$T/audit_default.yaml: error: the audit log $T/no/such/state/audit.log cannot be written (neither the state dir nor its parent directory exists)" "$T/audit_default.err" &&
  ok "default audit log under a state dir serve cannot create: error" || bad "audit default" "rc=$rc $(cat "$T/audit_default.err")"
run audit_newstate "$BIN" check --state-dir "$T/fresh-state" "$T/audit_default.yaml"
[ $rc -eq 0 ] && ok "a state dir serve will create is fine" || bad "fresh state dir" "rc=$rc $(cat "$T/audit_newstate.err")"
printf 'audit:\n  file: %s\ntargets: []\n' "$T/auditok/a.log" >"$T/audit_good.yaml"
run audit_good "$BIN" check --state-dir "$T/auditok" "$T/audit_good.yaml"
[ $rc -eq 0 ] && ok "writable audit directory passes" || bad "audit good" "rc=$rc $(cat "$T/audit_good.err")"
run audit_serve "$BIN" serve --state-dir "$T/auditok" -c "$T/audit_nodir.yaml"
[ $rc -ne 0 ] && grep -q "cannot open the audit log $T/no/such/dir/audit.log" "$T/audit_serve.err" &&
  ok "serve indeed dies on that table (what check now predicts)" || bad "serve audit" "rc=$rc"

# ---- an empty table is an error at 1:1 ----------------------------------------------
for spec in "zero|" "blank|\n   \n" "comment|# nothing here yet\n"; do
  IFS='|' read -r name body <<<"$spec"
  printf "$body" >"$T/empty_$name.yaml"
  run "empty_$name" "$BIN" check "$T/empty_$name.yaml"
  [ $rc -eq 1 ] && grep -qxF "$T/empty_$name.yaml:1:1: error: the table is empty (no listen:, no targets:); write \`targets: []\` for a table without targets" "$T/empty_$name.err" &&
    ok "empty table ($name): error at 1:1" || bad "empty table $name" "rc=$rc $(cat "$T/empty_$name.err")"
done

# ---- usage ----------------------------------------------------------------------
run help "$BIN" check --help
[ $rc -eq 0 ] && grep -q "^usage: airlock check" "$T/help.out" && [ ! -s "$T/help.err" ] &&
  ok "check --help: usage on stdout, exit 0" || bad "check --help" "rc=$rc"
run help2 "$BIN" help check
[ $rc -eq 0 ] && grep -q "^usage: airlock check" "$T/help2.out" && ok "airlock help check" || bad "help check" "rc=$rc"
for args in "--bogus $SRC/deploy/examples/quickstart.yaml" "" "--format xml $SRC/deploy/examples/quickstart.yaml" \
  "--matrix $SRC/deploy/examples/quickstart.yaml" "a.yaml b.yaml" "-c"; do
  # shellcheck disable=SC2086
  run usage "$BIN" check $args
  [ $rc -eq 2 ] && grep -q "usage: airlock check" "$T/usage.err" && [ ! -s "$T/usage.out" ] &&
    ok "usage error exits 2: check $args" || bad "usage error: check $args" "rc=$rc"
done

echo "$passed passed, $failed failed"
[ $failed -eq 0 ]
