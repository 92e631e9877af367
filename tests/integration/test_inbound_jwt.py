"""Inbound JWT authentication and per-principal policy (issue 12) with the real binary,
the real OpenID provider (npm oidc-provider: client_credentials JWT access tokens for
agents A, B and C) and real clients (curl forward proxy, CONNECT with
Proxy-Authorization, gateway mode, Python requests). Bad tokens are made with the npm
`jose` library (tests/peers/jwt_forge.js) with the issuer's own key, each refused with
its status and check; an unknown kid makes airlock fetch the JWKS again once. The
token never shows in the audit log, airlock's log or a response."""
import base64
import json
import os
import ssl
import subprocess
import sys
import time
import urllib.parse
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from altest import *  # noqa: E402,F401,F403

AUD = "https://airlock.test"
OIDC = None  # dict: proc, issuer, ca, key_file, secrets
ECHO = None
MCP = None  # (Proc, port)
AL = None
CA = None
TOK = {}  # name -> token
ALL_TOKENS = []

TABLE = """
listen:
  proxy: 127.0.0.1:{proxy_port}
  admin: 127.0.0.1:{admin_port}
limits:
  workers: 2
inbound:
  mode: jwt
  jwt:
    discovery_url: ISSUER/.well-known/openid-configuration
    allowed_audiences: ["AUD"]
    allowed_clients: [agent-a, agent-b]
    ca_file: OIDC_CA
    allow_private_network: true
policy:
  rules:
    - name: a-reads
      clients: [agent-a]
      targets: [echo-a]
      methods: [GET]
      paths: ["/v1/**"]
    - name: b-all
      clients: [agent-b]
      targets: [echo-b]
    - name: a-tools
      clients: [agent-a]
      targets: [tools]
      mcp_tools: [search]
targets:
  - name: tools
    type: mcp_server
    url: http://127.0.0.1:MCP_PORT/mcp
    allow_insecure_upstream: true
    allow_private_network: true
  - name: echo-a
    type: openapi
    url: http://127.0.0.1:ECHO_PORT/a
    allow_insecure_upstream: true
    allow_private_network: true
  - name: echo-b
    type: openapi
    url: http://127.0.0.1:ECHO_PORT/b
    allow_insecure_upstream: true
    allow_private_network: true
"""


def curl(*args, timeout=30):
    e = dict(os.environ)
    for k in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY",
              "no_proxy"):
        e.pop(k, None)
    r = subprocess.run(["curl", "-sS", "-D", "-", "-w", "\n%{http_code}"] + list(args),
                       capture_output=True, text=True, timeout=timeout, env=e)
    out, _, code = r.stdout.rpartition("\n")
    head, _, body = out.partition("\n\n")  # text mode: CRLF reads as LF
    # a CONNECT answer comes first; the last head is the request's
    while body.startswith("HTTP/") and "\n\n" in body:
        head, _, body = body.partition("\n\n")
    return int(code or 0), head, body, r.stdout + r.stderr


def jbody(body):
    try:
        return json.loads(body)
    except ValueError:
        return {}


def oidc_call(path, data=None, auth=None):
    ctx = ssl.create_default_context(cafile=OIDC["ca"])
    req = urllib.request.Request(OIDC["issuer"] + path, data=data, method="POST" if data else "GET")
    if auth:
        req.add_header("authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}),
                                         urllib.request.HTTPSHandler(context=ctx))
    with opener.open(req, timeout=10) as r:
        return json.loads(r.read())


def token_for(client):
    form = urllib.parse.urlencode({"grant_type": "client_credentials", "resource": AUD,
                                   "scope": "read"}).encode()
    t = oidc_call("/token", form, auth="%s:%s" % (client, OIDC["secrets"][client]))["access_token"]
    ALL_TOKENS.append(t)
    return t


def test_start():
    global OIDC, ECHO, AL, CA, MCP
    if not node_modules_ready("oidc-provider", "jose"):
        raise Skip("tests/node_modules has no oidc-provider: run (cd tests && npm ci)")
    c = test_ca()
    d = tmpdir("altest-oidc-")
    key_file = os.path.join(d, "issuer.jwk")
    secrets = {n: "cs-" + os.urandom(12).hex() for n in ("agent-a", "agent-b", "agent-c")}
    argv = [NODE, os.path.join(PEERS_DIR, "oidc_provider.js"), "--cert", c["cert"], "--key",
            c["key"], "--ttl", "300", "--resource", AUD, "--key-out", key_file]
    for n, s in secrets.items():
        argv += ["--client", "%s:%s" % (n, s)]
    p = Proc(argv, name="oidc-provider", cwd=TESTS_DIR)

    def ready():
        for line in p.log_text().splitlines():
            if line.startswith("READY "):
                return line.split()[2]
        if not p.alive():
            raise RuntimeError("oidc provider exited:\n" + p.log_tail())
        return None

    issuer = wait_for(ready, 20, "oidc provider READY")
    OIDC = {"proc": p, "issuer": issuer, "ca": c["ca"], "key_file": key_file, "secrets": secrets}
    ep, ECHO, _ = start_echo()
    mp = Proc([NODE, os.path.join(PEERS_DIR, "mcp_tools_server.js")], name="mcp-server",
              cwd=TESTS_DIR)

    def mcp_ready():
        for line in mp.log_text().splitlines():
            if line.startswith("READY "):
                return int(line.split()[1])
        if not mp.alive():
            raise RuntimeError("mcp server exited:\n" + mp.log_tail())
        return None

    MCP = (mp, wait_for(mcp_ready, 20, "mcp server READY"))
    table = (TABLE.replace("ISSUER", issuer).replace("AUD", AUD).replace("OIDC_CA", c["ca"])
             .replace("ECHO_PORT", str(ECHO)).replace("MCP_PORT", str(MCP[1])))
    AL = Airlock(table)
    AL.start()
    OIDC["airlock_started"] = time.monotonic()
    CA = os.path.join(AL.state_dir, "ca.crt")
    wait_for(lambda: os.path.exists(CA), 5, "serve created the CA")
    for n in ("agent-a", "agent-b", "agent-c"):
        TOK[n] = token_for(n)
    claims = json.loads(base64.urlsafe_b64decode(TOK["agent-a"].split(".")[1] + "=="))
    assert claims["client_id"] == "agent-a" and claims["aud"] == AUD, claims


def fwd(token, url, *extra):
    args = ["-x", AL.proxy_url()]
    if token is not None:
        args += ["--proxy-header", "Proxy-Authorization: Bearer " + token]
    return curl(*(args + list(extra) + [url]))


def gw(token, target, path, *extra):
    args = []
    if token is not None:
        args += ["-H", "Authorization: Bearer " + token]
    return curl(*(args + list(extra) + [AL.gateway_url(target, path)]))


def echo_url(target_base, path):
    return "http://127.0.0.1:%d/%s%s" % (ECHO, target_base, path)


def test_each_agent_gets_its_target_forward_proxy():
    code, _, body, out = fwd(TOK["agent-a"], echo_url("a", "/v1/items"))
    assert code == 200, out
    seen = jbody(body)
    assert seen["path"] == "/a/v1/items", seen
    # the token airlock read does not go upstream
    assert "proxy-authorization" not in seen["headers"], seen["headers"]
    code, _, body, out = fwd(TOK["agent-b"], echo_url("b", "/anything"), "-X", "POST", "-d", "x")
    assert code == 200, out
    # A may not use B's target, nor another method or path of its own
    for tok, url, extra, missing in (
            (TOK["agent-a"], echo_url("b", "/x"), [], "target"),
            (TOK["agent-a"], echo_url("a", "/v1/items"), ["-X", "POST", "-d", "x"], "method"),
            (TOK["agent-a"], echo_url("a", "/v2/items"), [], "path"),
            (TOK["agent-b"], echo_url("a", "/v1/items"), [], "target")):
        code, _, body, out = fwd(tok, url, *extra)
        j = jbody(body)
        assert code == 403 and j.get("error") == "policy_denied", out
        assert missing in j.get("message", ""), (missing, j)


def test_gateway_mode():
    code, _, body, out = gw(TOK["agent-a"], "echo-a", "/v1/x")
    assert code == 200, out
    seen = jbody(body)
    assert "authorization" not in seen["headers"], seen["headers"]
    code, _, body, out = gw(TOK["agent-b"], "echo-b", "/z")
    assert code == 200, out
    code, _, body, out = gw(TOK["agent-b"], "echo-a", "/v1/x")
    assert code == 403 and jbody(body)["error"] == "policy_denied", out
    assert "echo-a" in jbody(body)["message"], body


def test_connect_with_proxy_authorization():
    # the tunnel's principal is the CONNECT's; requests inside carry no token
    url = "https://127.0.0.1:%d/a/v1/tunnel" % ECHO
    code, _, body, out = curl("-x", AL.proxy_url(), "--proxy-header",
                              "Proxy-Authorization: Bearer " + TOK["agent-a"], "--cacert", CA, url)
    assert code == 200, out
    assert jbody(body)["path"] == "/a/v1/tunnel", body
    code, _, body, out = curl("-x", AL.proxy_url(), "--proxy-header",
                              "Proxy-Authorization: Bearer " + TOK["agent-b"], "--cacert", CA,
                              "https://127.0.0.1:%d/a/v1/tunnel" % ECHO)
    assert code == 403, out
    # no token on the CONNECT: 407 before any tunnel
    code, head, body, out = curl("-x", AL.proxy_url(), "--cacert", CA, url)
    assert code == 407 or "407" in out, out


def test_python_requests():
    try:
        import requests
    except ImportError:
        raise Skip("python3-requests is not installed")
    s = requests.Session()
    s.trust_env = False
    proxies = {"http": AL.proxy_url()}
    r = s.get(echo_url("a", "/v1/py"), proxies=proxies,
              headers={"Proxy-Authorization": "Bearer " + TOK["agent-a"]}, timeout=10)
    assert r.status_code == 200, r.text
    r = s.get(echo_url("b", "/py"), proxies=proxies,
              headers={"Proxy-Authorization": "Bearer " + TOK["agent-a"]}, timeout=10)
    assert r.status_code == 403 and r.json()["error"] == "policy_denied", r.text
    r = s.get(AL.gateway_url("echo-b", "/py"), headers={"Authorization": "Bearer " + TOK["agent-b"]},
              timeout=10)
    assert r.status_code == 200, r.text


def forge(tokens):
    now = int(time.time())
    spec = {"base": {"iss": OIDC["issuer"], "sub": "agent-a", "client_id": "agent-a", "aud": AUD,
                     "iat": now, "exp": now + 300, "scope": "read"},
            "tokens": tokens}
    r = subprocess.run([NODE, os.path.join(PEERS_DIR, "jwt_forge.js"), OIDC["key_file"]],
                       input=json.dumps(spec), capture_output=True, text=True, cwd=TESTS_DIR,
                       timeout=30)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    ALL_TOKENS.extend(out.values())
    return out


def test_bad_tokens_refused_with_their_check():
    now = int(time.time())
    bad = forge([
        {"name": "control", "kind": "issuer"},
        {"name": "expired", "kind": "issuer", "claims": {"exp": now - 3600, "iat": now - 7200}},
        {"name": "not_yet_valid", "kind": "issuer", "claims": {"nbf": now + 3600}},
        {"name": "wrong_issuer", "kind": "issuer", "claims": {"iss": "https://evil.example.com"}},
        {"name": "wrong_audience", "kind": "issuer", "claims": {"aud": "https://other.test"}},
        {"name": "bad_signature", "kind": "tamper"},
        {"name": "alg_none", "kind": "none"},
        {"name": "hs256_public_key", "kind": "hs256pub"},
    ])
    cases = [(bad["expired"], "expired"), (bad["not_yet_valid"], "not_yet_valid"),
             (bad["wrong_issuer"], "wrong_issuer"), (bad["wrong_audience"], "wrong_audience"),
             (TOK["agent-c"], "client_not_allowed"), (bad["bad_signature"], "bad_signature"),
             (bad["alg_none"], "alg_not_allowed"), (bad["hs256_public_key"], "alg_not_allowed"),
             ("garbage", "malformed"), ("a.b.c", "malformed")]
    # the forged control token (issuer key, good claims) passes: the refusals are the checks'
    code, _, _, out = fwd(bad["control"], echo_url("a", "/v1/control"))
    assert code == 200, out
    for tok, check in cases:
        code, head, body, out = fwd(tok, echo_url("a", "/v1/x"))
        j = jbody(body)
        assert code == 407 and j.get("error") == "proxy_auth_required", (check, out)
        assert "check: %s" % check in j.get("message", ""), (check, j)
        assert "proxy-authenticate: bearer" in head.lower(), head
        assert tok not in out or tok in ("garbage", "a.b.c"), check
        code, head, body, out = gw(tok, "echo-a", "/v1/x")
        j = jbody(body)
        assert code == 401 and j.get("error") == "unauthenticated", (check, out)
        assert "check: %s" % check in j.get("message", ""), (check, j)
        hl = head.lower()
        assert 'www-authenticate: bearer realm="airlock", error="invalid_token"' in hl, head
        assert "error_description=\"%s" % check in hl, head
    # no token at all
    code, head, body, out = fwd(None, echo_url("a", "/v1/x"))
    assert code == 407 and "check: missing_token" in jbody(body)["message"], out
    code, head, body, out = gw(None, "echo-a", "/v1/x")
    assert code == 401 and 'www-authenticate: bearer realm="airlock"' in head.lower(), out
    # another scheme in the header is not a bearer token
    code, _, body, out = curl("-H", "Authorization: Basic YTpi", AL.gateway_url("echo-a", "/v1/x"))
    assert code == 401, out


def test_unknown_kid_refetches_jwks_once():
    # airlock fetched the JWKS at start; a forced re-fetch waits until that copy is 10 s
    # old (so forged kids cannot make it hammer the issuer)
    left = OIDC["airlock_started"] + 10.5 - time.monotonic()
    if left > 0:
        time.sleep(left)
    before = oidc_call("/__stats")["jwks_requests"]
    bad = forge([{"name": "k1", "kind": "other", "header": {"kid": "rotated-1"}},
                 {"name": "k2", "kind": "other", "header": {"kid": "rotated-2"}}])
    code, _, body, out = fwd(bad["k1"], echo_url("a", "/v1/x"))
    assert code == 407 and "check: unknown_key" in jbody(body)["message"], out
    wait_for(lambda: oidc_call("/__stats")["jwks_requests"] == before + 1, 10,
             "airlock fetched the JWKS again")
    # another unknown kid right after: refused, and no second fetch (rate limit)
    code, _, body, out = fwd(bad["k2"], echo_url("a", "/v1/x"))
    assert code == 407 and "check: unknown_key" in jbody(body)["message"], out
    time.sleep(0.5)
    assert oidc_call("/__stats")["jwks_requests"] == before + 1
    # the real tokens still work
    code, _, _, out = fwd(TOK["agent-a"], echo_url("a", "/v1/after"))
    assert code == 200, out


def mcp_stats():
    with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(
            "http://127.0.0.1:%d/__stats" % MCP[1], timeout=10) as r:
        return json.loads(r.read())


def mcp_client(token, *tools):
    r = subprocess.run([NODE, os.path.join(TESTS_DIR, "integration", "node", "mcp_tools_client.mjs"),
                        AL.gateway_url("tools", "/"), token] + list(tools),
                       capture_output=True, text=True, cwd=TESTS_DIR, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_mcp_tool_allowed_and_denied_through_the_gateway():
    before = mcp_stats()["calls"]
    out = mcp_client(TOK["agent-a"], "search", "delete")
    assert "connect_error" not in out, out
    assert out["tools"] == ["search"], out  # tools/list shows what A may call
    assert out["results"]["search"] == {"ok": True, "text": "search ran"}, out
    d = out["results"]["delete"]
    assert d["ok"] is False and d.get("code") == -32001 and "delete" in d["error"], out
    after = mcp_stats()["calls"]
    assert after["search"] == before["search"] + 1, after
    assert after["delete"] == before["delete"], after  # the upstream never saw it
    # a hand-made batch hiding the call among others, and an escaped name
    for body in ('[{"jsonrpc":"2.0","id":1,"method":"ping"},'
                 '{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"delete"}}]',
                 '{"jsonrpc":"2.0","id":3,"method":"tools\\/call",'
                 '"params":{"name":"del\\u0065te"}}',
                 '{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"search",'
                 '"name":"delete"}}'):
        code, _, rb, out = gw(TOK["agent-a"], "tools", "/", "-X", "POST", "-H",
                              "content-type: application/json", "-H",
                              "accept: application/json, text/event-stream", "--data-binary", body)
        assert code in (200, 400), out
        if code == 200:
            assert jbody(rb)["error"]["code"] == -32001, out
    assert mcp_stats()["calls"]["delete"] == before["delete"]
    # explain says the same, sending nothing
    for tool, allowed in (("search", True), ("delete", False)):
        tf = os.path.join(AL.state_dir, "explain-token")
        with open(tf, "w") as f:
            f.write(TOK["agent-a"])
        r = AL.cli("explain", "-c", AL.table_path, "--token", "@" + tf, "--mcp-tool", tool,
                   "--format", "json", "POST", "/t/tools/")
        e = json.loads(r.stdout)
        assert e["allowed"] is allowed and r.returncode == (0 if allowed else 1), r.stdout
        if not allowed:
            assert e["error"] == "policy_denied" and "delete" in e["message"], e
    assert mcp_stats()["calls"] == after or mcp_stats()["calls"]["delete"] == before["delete"]
    # agent B has no rule for the MCP target at all
    out = mcp_client(TOK["agent-b"], "search")
    assert "connect_error" in out and "policy_denied" in out["connect_error"], out


def explain(token, method, url):
    args = ["explain", "-c", AL.table_path, "--format", "json"]
    if token is not None:
        tf = os.path.join(AL.state_dir, "explain-token")
        with open(tf, "w") as f:
            f.write(token + "\n")
        args += ["--token", "@" + tf]
    r = AL.cli(*(args + [method, url]))
    assert r.returncode in (0, 1), r.stdout + r.stderr
    return json.loads(r.stdout), r


def test_explain_agrees_with_sending():
    ua, ub = TOK["agent-a"], TOK["agent-b"]
    cases = [
        (ua, "GET", echo_url("a", "/v1/items")), (ua, "POST", echo_url("a", "/v1/items")),
        (ua, "GET", echo_url("a", "/v2/items")), (ua, "GET", echo_url("b", "/x")),
        (ub, "GET", echo_url("b", "/x")), (ub, "DELETE", echo_url("b", "/x/y")),
        (ub, "GET", echo_url("a", "/v1/items")), (None, "GET", echo_url("a", "/v1/items")),
        ("garbage", "GET", echo_url("a", "/v1/items")),
        (TOK["agent-c"], "GET", echo_url("a", "/v1/items")),
        (ua, "GET", "http://127.0.0.1:%d/elsewhere" % ECHO),
        (ua, "GET", "/t/echo-a/v1/gw"), (ub, "GET", "/t/echo-a/v1/gw"), (None, "GET", "/t/echo-b/x"),
        (ua, "GET", "/t/nope/x"), (ua, "GET", "https://127.0.0.1:%d/a/v1/tls" % ECHO),
    ]
    for tok, method, url in cases:
        e, r = explain(tok, method, url)
        if url.startswith("/"):
            code, _, body, out = gw(tok, url.split("/")[2], "/" + url.split("/", 3)[3],
                                    "-X", method)
        elif url.startswith("https://"):
            args = ["-x", AL.proxy_url(), "--cacert", CA, "-X", method, url]
            if tok:
                args = ["--proxy-header", "Proxy-Authorization: Bearer " + tok] + args
            code, _, body, out = curl(*args)
        else:
            code, _, body, out = fwd(tok, url, "-X", method)
        sent_error = jbody(body).get("error") if code != 200 else None
        assert e["status"] == code, (method, url, e, out)
        assert e["error"] == sent_error, (method, url, e, out)
        assert e["allowed"] == (code == 200) and r.returncode == (0 if code == 200 else 1), e
        if code == 200:
            assert e["would_send"].startswith("http://127.0.0.1:%d/" % ECHO), e
            assert e["rule"] and e["principal"]["client_id"], e
        assert tok is None or len(tok) < 20 or tok not in r.stdout + r.stderr
    # a principal without a token: the policy alone
    r = AL.cli("explain", "-c", AL.table_path, "--principal", "client_id=agent-b,sub=agent-b",
               "GET", echo_url("b", "/p"))
    assert r.returncode == 0 and "b-all" in r.stdout, r.stdout + r.stderr
    r = AL.cli("explain", "-c", AL.table_path, "--principal", "client_id=agent-b", "GET",
               echo_url("a", "/v1/p"))
    assert r.returncode == 1 and "policy_denied" in r.stdout and "a-reads" not in r.stdout, r.stdout


def test_reload_changes_the_policy():
    code, _, _, out = fwd(TOK["agent-b"], echo_url("a", "/v1/r"))
    assert code == 403, out
    table = open(AL.table_path).read().replace(
        "      clients: [agent-b]\n      targets: [echo-b]\n",
        "      clients: [agent-b]\n      targets: [echo-b, echo-a]\n")
    gen = AL.audit_lines()
    AL.reload(table)
    wait_for(lambda: any(l.get("event") == "table.reload" for l in AL.audit_lines()[len(gen):]),
             10, "the reload was applied")
    # the new table's authenticator verifies at once (the issuer's documents are cached)
    code, _, _, out = fwd(TOK["agent-b"], echo_url("a", "/v1/r"))
    assert code == 200, out
    code, _, body, out = fwd(TOK["agent-a"], echo_url("a", "/v1/r"), "-X", "POST", "-d", "x")
    assert code == 403 and jbody(body)["error"] == "policy_denied", out


def test_audit_has_principal_and_rule_never_the_token():
    # (an MCP SDK client's first connection stays CLOSE-WAIT in airlock until the drain
    # timeout: a data-path issue older than this test, so the stop may take 5 s)
    AL.stop()
    lines = AL.audit_lines()
    reqs = [l for l in lines if l.get("event") == "request"]
    ok = [l for l in reqs if l.get("path") == "/a/v1/items" and l.get("status") == 200]
    assert ok, reqs[-5:]
    p = ok[0]["principal"]
    assert p["iss"] == OIDC["issuer"] and p["client_id"] == "agent-a" and p["sub"] == "agent-a", p
    assert ok[0]["rule"].startswith("a-reads ("), ok[0]
    denied = [l for l in reqs if l.get("reason") == "policy_denied"]
    assert denied and denied[0]["principal"]["client_id"], denied
    unauth = [l for l in reqs if l.get("reason") in ("proxy_auth_required", "unauthenticated")]
    assert unauth and all(l.get("principal") is None for l in unauth), unauth[:2]
    text = open(AL.audit_path).read() + AL.log_text()
    for t in ALL_TOKENS:
        if len(t) > 20:
            assert t not in text
            # nor a recognisable part of it (the signature)
            assert t.rsplit(".", 1)[-1][:40] not in text or not t.rsplit(".", 1)[-1]


run(globals())
