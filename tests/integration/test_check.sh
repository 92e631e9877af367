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
  if [ $rc -eq 0 ] && head -1 "$T/ex_$b.out" | grep -q '^NAME  *TYPE  *METHOD  *PROVIDER  *UPSTREAM$' &&
    grep -q ": OK, [0-9]* target" "$T/ex_$b.out" && [ ! -s "$T/ex_$b.err" ]; then
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
[ $rc -eq 0 ] && ok "no store yet: providers are not checked" || bad "no store" "rc=$rc $(cat "$T/nostore.err")"
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
