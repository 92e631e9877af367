"""IAM targets (issue 13): airlock signs with SigV4, an independent verifier checks.

The upstreams are tests/peers/aws_fake.py over HTTPS (the test CA): every request's
signature is recomputed there with Debian's python3-botocore from the secret the fake
knows, and a mismatch is a 403 — airlock's signer is never used to check itself.

Driven by: curl in gateway mode (GET with queries and paths needing encoding, a
presigned URL refused), a lambda target (function error -> 502 with its error type and
message, throttling 429 passes with Retry-After) signed with temporary credentials
from the container credentials endpoint (session token), STS AssumeRole on top of
environment credentials (short expiry: refetched before it, once for concurrent
requests), boto3 with placeholder keys through HTTPS_PROXY (Lambda Invoke and DynamoDB
ListTables re-signed by airlock). Finally: no secret, token or placeholder key in any
output, and the audit names key id, region and service.
"""
import concurrent.futures
import hashlib
import json
import os
import re
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from altest import *  # noqa: E402,F401,F403

LONG_AKID, LONG_SECRET = "AKIDLONGTERMEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
TEMP_AKID, TEMP_SECRET = "ASIATEMPORARYEXAMPLE", "tempSecret/xyz+0123456789abcdefEXAMPLE"
TEMP_TOKEN = "IQoJb3JpZ2luX2VjEXAMPLETOKEN/session+token=="
PLACEHOLDER_AKID, PLACEHOLDER_SECRET = "AKIDPLACEHOLDERAGENT", "placeholder-secret-of-the-agent"
CONTAINER_TOKEN = "Bearer container-auth-token-EXAMPLE"
STS_TTL = 8  # seconds: airlock refreshes at half the lifetime (4 s) before expiry
FN = "arn:aws:lambda:us-east-1:123456789012:function:echo"
FN_FAIL = "arn:aws:lambda:us-east-1:123456789012:function:fail"
FN_THROTTLE = "arn:aws:lambda:us-east-1:123456789012:function:throttle"

TABLE = """
listen:
  proxy: 127.0.0.1:{proxy_port}
  admin: 127.0.0.1:{admin_port}
limits:
  workers: 2
targets:
  - name: gw
    type: smithy
    url: https://127.0.0.1:UP1/gw
    ca_file: CA
    allow_private_network: true
    auth: {method: iam, region: eu-west-1, service: example}
  - name: small
    type: smithy
    url: https://127.0.0.1:UP1/small
    ca_file: CA
    allow_private_network: true
    auth: {method: iam, region: eu-west-1, service: example, max_body_bytes: 4096}
  - name: fn
    type: lambda
    function_arn: "FN"
    endpoint: https://127.0.0.1:UP1
    ca_file: CA
    allow_private_network: true
    auth: {method: iam, source: container}
  - name: fn-fail
    type: lambda
    function_arn: "FN_FAIL"
    endpoint: https://127.0.0.1:UP1
    ca_file: CA
    allow_private_network: true
    auth: {method: iam, source: container}
  - name: fn-throttle
    type: lambda
    function_arn: "FN_THROTTLE"
    endpoint: https://127.0.0.1:UP1
    ca_file: CA
    allow_private_network: true
    auth: {method: iam, source: container}
  - name: role
    type: smithy
    url: https://127.0.0.1:UP1/role
    ca_file: CA
    allow_private_network: true
    auth: {method: iam, region: us-east-1, service: example, source: environment,
           role_arn: "arn:aws:iam::123456789012:role/agent-role", external_id: ext-7}
  - name: imds
    type: smithy
    url: https://127.0.0.1:UP1/imds
    ca_file: CA
    allow_private_network: true
    auth: {method: iam, region: us-east-1, service: example, source: imds}
  - name: webid
    type: smithy
    url: https://127.0.0.1:UP1/webid
    ca_file: CA
    allow_private_network: true
    auth: {method: iam, region: us-east-1, service: example, source: web_identity}
  - name: store
    type: smithy
    url: https://127.0.0.1:UP1/store
    ca_file: CA
    allow_private_network: true
    auth: {method: iam, region: us-east-1, service: example, provider: aws-store}
  - name: store-role
    type: smithy
    url: https://127.0.0.1:UP1/store-role
    ca_file: CA
    allow_private_network: true
    auth: {method: iam, region: us-east-1, service: example, provider: aws-store,
           role_arn: "arn:aws:iam::123456789012:role/from-store"}
  - name: apigw
    type: api_gateway
    url: https://127.0.0.1:UP1/prod
    ca_file: CA
    allow_private_network: true
    auth: {method: iam, region: ap-southeast-2, source: container}
  - name: sdk-lambda
    type: smithy
    url: https://localhost:UP2
    ca_file: CA
    allow_private_network: true
    auth: {method: iam, region: us-east-1, service: lambda}
  - name: sdk-dynamodb
    type: smithy
    url: https://127.0.0.1:UP2
    ca_file: CA
    allow_private_network: true
    auth: {method: iam, region: us-east-1, service: dynamodb, source: container}
"""


def start_fake(tls, keys_path):
    argv = [PYTHON, os.path.join(PEERS_DIR, "aws_fake.py"), "--port", "0", "--keys", keys_path,
            "--sts-ttl", str(STS_TTL), "--container-token", CONTAINER_TOKEN]
    if tls:
        c = test_ca()
        argv += ["--tls-cert", c["cert"], "--tls-key", c["key"]]
    p = Proc(argv, name="aws-fake-tls" if tls else "aws-fake")

    def ready():
        for line in p.log_text().splitlines():
            if line.startswith("READY "):
                return int(line.split()[1])
        if not p.alive():
            raise RuntimeError("aws_fake exited:\n" + p.log_tail())
        return None

    port = wait_for(ready, 10, "aws_fake READY")
    wait_port(port, proc=p)
    return p, port


def curl(*args, env=None, timeout=30, stdin=None):
    e = dict(os.environ)
    for k in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY",
              "no_proxy"):
        e.pop(k, None)
    e.update(env or {})
    r = subprocess.run(["curl", "-sS", "-D", "-", "-w", "\n%{http_code}"] + list(args),
                       capture_output=True, timeout=timeout, env=e, input=stdin)
    out, _, code = r.stdout.decode("utf-8", "replace").replace("\r\n", "\n").rpartition("\n")
    head, _, body = out.partition("\n\n")
    return int(code or 0), head, body


def stats(port, tls=True):
    import ssl
    import urllib.request
    ctx = ssl.create_default_context(cafile=test_ca()["ca"]) if tls else None
    url = "%s://127.0.0.1:%d/_stats" % ("https" if tls else "http", port)
    with urllib.request.urlopen(url, context=ctx, timeout=5) as r:
        return json.loads(r.read())


def test_start():
    global AL, UP1, UP2, CRED, FAKES, KEYS
    try:
        import botocore  # noqa: F401
        import boto3  # noqa: F401
    except ImportError:
        raise Skip("python3-botocore / python3-boto3 are not installed (deploy/install-deps.sh)")
    d = tmpdir("altest-iam-")
    KEYS = os.path.join(d, "keys.json")
    with open(KEYS, "w") as f:
        json.dump({LONG_AKID: {"secret": LONG_SECRET, "token": None},
                   TEMP_AKID: {"secret": TEMP_SECRET, "token": TEMP_TOKEN}}, f)
    p1, UP1 = start_fake(True, KEYS)
    p2, UP2 = start_fake(True, KEYS)
    p3, CRED = start_fake(False, KEYS)
    FAKES = [p1, p2, p3]
    table = (TABLE.replace("UP1", str(UP1)).replace("UP2", str(UP2))
             .replace("CA", test_ca()["ca"]).replace("FN_FAIL", FN_FAIL)
             .replace("FN_THROTTLE", FN_THROTTLE).replace('"FN"', '"%s"' % FN))
    wit = os.path.join(d, "web-identity-token")
    with open(wit, "w") as f:
        f.write("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhZ2VudCJ9.c2ln\n")
    AL = Airlock(table, env={
        "AWS_EC2_METADATA_SERVICE_ENDPOINT": "http://127.0.0.1:%d" % CRED,
        "AWS_WEB_IDENTITY_TOKEN_FILE": wit,
        "AWS_ROLE_ARN": "arn:aws:iam::123456789012:role/irsa-agent",
        "AWS_ACCESS_KEY_ID": LONG_AKID, "AWS_SECRET_ACCESS_KEY": LONG_SECRET,
        "AWS_CONTAINER_CREDENTIALS_FULL_URI": "http://127.0.0.1:%d/creds/container" % CRED,
        "AWS_CONTAINER_AUTHORIZATION_TOKEN": CONTAINER_TOKEN,
        "AIRLOCK_AWS_STS_ENDPOINT": "https://127.0.0.1:%d/" % UP1,
        "AWS_CA_BUNDLE": test_ca()["ca"],
    })
    r = AL.cli("identity", "create-aws-credential-provider", "--name", "aws-store",
               "--access-key-id", LONG_AKID, "--secret-access-key", "-",
               "--state-dir", AL.state_dir, stdin_data=LONG_SECRET + "\n")
    assert r.returncode == 0, r.stdout + r.stderr
    AL.start()


def test_gateway_get_signed_and_verified_by_botocore():
    # queries needing encoding (space, '+', '/', UTF-8, repeated keys, empty values) and
    # paths with spaces and UTF-8, percent-encoded on the wire
    for path in ("/plain", "/dir%20with%20space/file", "/caf%C3%A9/%E2%9C%93",
                 "/a/b/../c", "/q?b=2&a=1&a=0&s=a%20b&p=1+2&slash=a/b&u=%E2%9C%93&empty="):
        code, head, body = curl(AL.gateway_url("gw", path))
        assert code == 200, (path, code, body[-500:])
        doc = json.loads(body)
        assert doc["akid"] == LONG_AKID and doc["region"] == "eu-west-1", doc
        assert doc["service"] == "example" and "host" in doc["signed_headers"], doc


def test_gateway_headers_signed_as_sent():
    code, head, body = curl("-H", "Content-Type: application/json", "-H", "X-Amz-Target: Svc.Op",
                            "-H", "X-Amz-Meta-Note:  two   spaces  ",
                            AL.gateway_url("gw", "/hdrs"))
    assert code == 200, body
    doc = json.loads(body)
    for h in ("content-type", "x-amz-target", "x-amz-meta-note", "x-amz-date", "host"):
        assert h in doc["signed_headers"], doc["signed_headers"]


def test_gateway_post_bodies_hashed_and_verified():
    for body in ("", "x", '{"a": 1}', "\u00e9\u2713 utf-8", "A" * 70000, "B" * (1 << 20)):
        data = body.encode()
        code, head, out = curl("-X", "POST", "-H", "Content-Type: application/octet-stream",
                               "--data-binary", "@-", AL.gateway_url("gw", "/post?k=v"),
                               stdin=data)
        assert code == 200, (len(data), code, out[-300:])
        doc = json.loads(out)
        assert doc["body_sha256"] == hashlib.sha256(data).hexdigest(), len(data)
    # chunked (no Content-Length): buffered and hashed the same way
    code, head, out = curl("-X", "PUT", "-H", "Transfer-Encoding: chunked", "--data-binary", "@-",
                           AL.gateway_url("gw", "/chunked"), stdin=b"chunk" * 1000)
    assert code == 200, (code, out[-300:])
    assert json.loads(out)["body_sha256"] == hashlib.sha256(b"chunk" * 1000).hexdigest()


def test_body_over_the_limit_is_413_naming_it():
    for extra in ([], ["-H", "Transfer-Encoding: chunked"]):
        code, head, out = curl("-X", "POST", "--data-binary", "@-", *extra,
                               AL.gateway_url("small", "/p"), stdin=b"z" * 5000)
        assert code == 413, (extra, code, out)
        doc = json.loads(out)
        assert doc["error"] == "body_too_large" and "4096" in doc["message"], doc
    code, head, out = curl("-X", "POST", "--data-binary", "@-", AL.gateway_url("small", "/p"),
                           stdin=b"z" * 4096)
    assert code == 200, out


def test_presigned_url_refused():
    for q in ("X-Amz-Signature=abc&X-Amz-Credential=AKID%2F20250101", "x-amz-credential=a",
              "%58-Amz-Algorithm=AWS4-HMAC-SHA256"):
        code, head, body = curl(AL.gateway_url("gw", "/obj?" + q))
        assert code == 400, (q, code, body)
        assert json.loads(body)["error"] == "presigned_url_refused", body
    # a body signed chunk by chunk with the agent's key cannot be re-signed: refused
    code, head, body = curl("-X", "PUT", "-H", "x-amz-content-sha256: STREAMING-AWS4-HMAC-SHA256-PAYLOAD",
                            "--data-binary", "x", AL.gateway_url("gw", "/obj"))
    assert code == 400 and "chunk by chunk" in json.loads(body)["message"], (code, body)


def test_lambda_invoke_with_session_token_from_container_endpoint():
    code, head, body = curl("-X", "POST", "--data-binary", '{"order": 7}',
                            AL.gateway_url("fn", "/"))
    assert code == 200, (code, body)
    doc = json.loads(body)
    assert doc["function"] == FN and doc["echo"] == {"order": 7}, doc
    # any gateway path and method invokes: GET /t/fn/x -> POST .../invocations
    code, head, body = curl(AL.gateway_url("fn", "/x/y"))
    assert code == 200 and json.loads(body)["function"] == FN, body
    # the fake checked X-Amz-Security-Token (signed) for the temporary key
    s = stats(UP1)
    assert s.get("invoke", 0) >= 1 and s.get("mismatch", 0) == 0, s
    assert stats(CRED, tls=False).get("container", 0) >= 1


def test_lambda_function_error_is_502_with_its_error():
    code, head, body = curl("-X", "POST", AL.gateway_url("fn-fail", "/anything?ignored=1"))
    assert code == 502, (code, body)
    doc = json.loads(body)
    assert doc["error"] == "function_error", doc
    assert doc["function_error"] == "Unhandled" and doc["error_type"] == "ValueError", doc
    assert doc["error_message"].startswith("boom"), doc
    assert FN_FAIL in doc["message"], doc


def test_lambda_throttle_passes_with_retry_after():
    for _ in range(2):  # and the key is not rested: the second call reaches Lambda too
        code, head, body = curl("-X", "POST", AL.gateway_url("fn-throttle", "/"))
        assert code == 429, (code, body)
        assert "retry-after: 7" in head.lower(), head
        assert "Rate exceeded" in body, body


def test_assume_role_once_under_concurrency_and_refreshed_before_expiry():
    before = stats(UP1).get("AssumeRole", 0)
    with concurrent.futures.ThreadPoolExecutor(8) as ex:
        res = list(ex.map(lambda i: curl(AL.gateway_url("role", "/r%d" % i)), range(8)))
    akids = set()
    for code, head, body in res:
        assert code == 200, body
        akids.add(json.loads(body)["akid"])
    assert len(akids) == 1 and next(iter(akids)).startswith("ASIAROLE"), akids
    assert stats(UP1).get("AssumeRole", 0) == before + 1, stats(UP1)
    first = next(iter(akids))
    # Inside the refresh window (half of the 8 s lifetime) a request still goes with
    # the current credentials and one refresh starts; later ones use the new role key.
    t0 = time.monotonic()

    def refreshed():
        code, head, body = curl(AL.gateway_url("role", "/again"))
        assert code == 200, body
        return json.loads(body)["akid"] != first

    wait_for(refreshed, STS_TTL + 10, "AssumeRole refreshed before expiry", interval=0.25)
    assert time.monotonic() - t0 < STS_TTL, "refreshed only after expiry"
    assert stats(UP1).get("AssumeRole", 0) == before + 2, stats(UP1)


def test_imds_v2_and_web_identity_sources():
    for name in ("imds", "webid"):
        code, head, body = curl(AL.gateway_url(name, "/x"))
        assert code == 200, (name, code, body)
        assert json.loads(body)["akid"] == TEMP_AKID, body
    s = stats(CRED, tls=False)
    # IMDSv2 only: a token PUT came first, and no GET ever went without a token
    assert s.get("imds_token", 0) >= 1 and s.get("imds_get", 0) >= 2, s
    assert s.get("imds_get_refused", 0) == 0, s
    assert stats(UP1).get("AssumeRoleWithWebIdentity", 0) >= 1


def test_store_provider_and_a_role_assumed_with_it():
    code, head, body = curl("-X", "POST", "--data-binary", "store body",
                            AL.gateway_url("store", "/s"))
    assert code == 200, body
    assert json.loads(body)["akid"] == LONG_AKID
    code, head, body = curl(AL.gateway_url("store-role", "/s"))
    assert code == 200, body
    assert json.loads(body)["akid"].startswith("ASIAROLE"), body
    a = [x for x in AL.audit_lines() if x.get("target") == "store"][-1]
    assert a["provider"] == "aws-store" and a["aws_access_key_id"] == LONG_AKID, a


def test_api_gateway_signs_for_execute_api():
    code, head, body = curl(AL.gateway_url("apigw", "/orders?id=7"))
    assert code == 200, body
    doc = json.loads(body)
    assert doc["service"] == "execute-api" and doc["region"] == "ap-southeast-2", doc
    assert doc["path"] == "/prod/orders", doc


def boto_session(**kw):
    import boto3
    return boto3.session.Session(aws_access_key_id=PLACEHOLDER_AKID,
                                 aws_secret_access_key=PLACEHOLDER_SECRET,
                                 region_name="us-east-1", **kw)


def sdk_config():
    from botocore.config import Config
    ca = os.path.join(AL.state_dir, "ca.crt")
    wait_for(lambda: os.path.exists(ca), 5, "serve created the CA")
    return ca, Config(proxies={"https": AL.proxy_url()}, retries={"max_attempts": 1})


def test_boto3_through_https_proxy_is_resigned():
    ca, cfg = sdk_config()
    lam = boto_session().client("lambda", endpoint_url="https://localhost:%d" % UP2, verify=ca,
                                config=cfg)
    fns = lam.list_functions()["Functions"]
    assert fns[0]["FunctionArn"] == FN, fns
    # with a placeholder session token too (SDKs under an assumed role send one): the
    # upstream gets airlock's credentials (temporary ones here: the container source)
    import botocore.exceptions
    ddb_tok = boto_session(aws_session_token="placeholder-session-token").client(
        "lambda", endpoint_url="https://localhost:%d" % UP2, verify=ca, config=cfg)
    assert ddb_tok.list_functions()["Functions"], "re-signed with a token"
    assert stats(UP2).get("mismatch", 0) == 0, stats(UP2)
    # a wrong signature would have been a 403 from the fake: prove the check bites
    import boto3
    raw = boto3.session.Session(aws_access_key_id=LONG_AKID, aws_secret_access_key="wrong",
                                region_name="us-east-1").client(
        "lambda", endpoint_url="https://localhost:%d" % UP2, verify=test_ca()["ca"])
    try:
        raw.list_functions()
        raise AssertionError("the fake accepted a signature made with a wrong secret")
    except botocore.exceptions.ClientError as e:
        assert "InvalidSignature" in str(e) or "signature" in str(e), e


def test_boto3_invoke_and_dynamodb_with_bodies_resigned():
    ca, cfg = sdk_config()
    s = boto_session()
    lam = s.client("lambda", endpoint_url="https://localhost:%d" % UP2, verify=ca, config=cfg)
    before = stats(UP2).get("mismatch", 0)
    r = lam.invoke(FunctionName=FN, Payload=json.dumps({"x": 42}))
    assert r["StatusCode"] == 200, r
    assert json.loads(r["Payload"].read())["echo"] == {"x": 42}
    ddb = s.client("dynamodb", endpoint_url="https://127.0.0.1:%d" % UP2, verify=ca, config=cfg)
    assert ddb.list_tables()["TableNames"] == ["t1"]
    assert stats(UP2).get("mismatch", 0) == before, stats(UP2)


def test_audit_names_key_region_service():
    recs = wait_for(lambda: [a for a in AL.audit_lines() if a.get("target") == "fn"], 5,
                    "audit of fn")
    a = recs[-1]
    assert a["aws_access_key_id"] == TEMP_AKID and a["aws_region"] == "us-east-1", a
    assert a["aws_service"] == "lambda" and a["provider"] == "container", a
    g = [a for a in AL.audit_lines() if a.get("target") == "gw" and a["status"] == 200][-1]
    assert g["aws_access_key_id"] == LONG_AKID and g["provider"] == "environment", g


def test_no_secret_token_or_placeholder_anywhere():
    AL.stop()
    # airlock's own outputs: no secret, session token, container token or placeholder
    for name, text in (("airlock log", AL.log_text()), ("audit", open(AL.audit_path).read())):
        for s in (LONG_SECRET, TEMP_SECRET, TEMP_TOKEN, PLACEHOLDER_SECRET, CONTAINER_TOKEN,
                  "placeholder-session-token"):
            assert s not in text, "%s holds a secret (%s...)" % (name, s[:6])
        assert not re.search(r"Signature=[0-9a-f]{64}", text), name
    # the upstreams log every header they got: the agent's placeholder key, secret and
    # token never reached one, and no secret key travels (only signatures do)
    for p in FAKES:
        text = p.log_text()
        for s in (PLACEHOLDER_AKID, PLACEHOLDER_SECRET, "placeholder-session-token",
                  LONG_SECRET, TEMP_SECRET):
            assert s not in text, "%s got %s..." % (p.name, s[:8])


if __name__ == "__main__":
    run(globals())
