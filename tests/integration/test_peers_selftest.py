#!/usr/bin/python3
"""The test peers work, checked with real clients before any proxy is involved:
the echo upstream (plain and TLS: echo, streaming bodies, SSE, status, reset,
trailers) and Debian nginx over TLS with HTTP/2. If these fail, every proxy test that
uses them would fail for the wrong reason."""
import hashlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from altest import (Proc, free_port, run, start_echo,  # noqa: E402
                    start_nginx_tls, start_oidc, start_resource_server, tmpdir, wait_port,
                    rss_kb, NODE, TESTS_DIR)

import requests  # noqa: E402  (Debian's python3-requests)

S = requests.Session()
S.trust_env = False  # never through a proxy from the environment

_echo = None


def echo():
    global _echo
    if _echo is None:
        _echo = start_echo()
    return _echo


def test_echo_reports_method_path_query_and_repeated_headers():
    _, port, _ = echo()
    r = S.get("http://127.0.0.1:%d/some/path?a=1&b=two" % port,
              headers={"Authorization": "Bearer agent-key", "X-Multi": "one"}, timeout=5)
    assert r.status_code == 200, r.status_code
    j = r.json()
    assert j["method"] == "GET" and j["path"] == "/some/path" and j["query"] == "a=1&b=two", j
    assert j["headers"]["authorization"] == ["Bearer agent-key"], j["headers"]
    assert j["body_bytes"] == 0 and j["body_sha256"] == hashlib.sha256(b"").hexdigest()
    # a repeated header arrives as a list of values (raw socket: requests merges them)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"GET /x HTTP/1.1\r\nHost: a\r\nX-Dup: 1\r\nX-Dup: 2\r\nConnection: close\r\n\r\n")
        raw = b""
        while True:
            b = s.recv(65536)
            if not b:
                break
            raw += b
    body = json.loads(raw.split(b"\r\n\r\n", 1)[1])
    assert body["headers"]["x-dup"] == ["1", "2"], body


def test_echo_keeps_the_connection_alive():
    _, port, _ = echo()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        f = s.makefile("rb")
        for i in range(3):
            s.sendall(b"GET /k%d HTTP/1.1\r\nHost: a\r\n\r\n" % i)
            status = f.readline()
            assert status.startswith(b"HTTP/1.1 200"), status
            length = None
            while True:
                h = f.readline()
                if h == b"\r\n":
                    break
                if h.lower().startswith(b"content-length:"):
                    length = int(h.split(b":")[1])
            assert json.loads(f.read(length))["path"] == "/k%d" % i


def test_echo_hashes_a_chunked_upload_and_a_sized_one():
    _, port, _ = echo()
    data = os.urandom(3 * 1024 * 1024 + 7)

    def gen():
        for i in range(0, len(data), 100000):
            yield data[i:i + 100000]

    r = S.post("http://127.0.0.1:%d/up" % port, data=gen(), timeout=30)  # chunked
    j = r.json()
    assert j["headers"]["transfer-encoding"] == ["chunked"], j["headers"]
    assert j["body_bytes"] == len(data) and j["body_sha256"] == hashlib.sha256(data).hexdigest()
    r = S.put("http://127.0.0.1:%d/up" % port, data=data, timeout=30)
    j = r.json()
    assert j["method"] == "PUT" and j["body_bytes"] == len(data), j
    assert j["body_sha256"] == hashlib.sha256(data).hexdigest()


def test_echo_streams_100_mb_upload_and_download_in_bounded_memory():
    p, port, _ = echo()
    total = 100 * 1024 * 1024
    piece = b"\xab" * (1 << 20)
    h = hashlib.sha256()
    for _ in range(100):
        h.update(piece)

    def gen():
        for _ in range(100):
            yield piece

    r = S.post("http://127.0.0.1:%d/big" % port, data=gen(), timeout=120)
    j = r.json()
    assert j["body_bytes"] == total and j["body_sha256"] == h.hexdigest(), j
    n = 0
    with S.get("http://127.0.0.1:%d/bytes?n=%d" % (port, total), stream=True, timeout=120) as r:
        assert r.headers.get("transfer-encoding") == "chunked"
        for b in r.iter_content(1 << 16):
            n += len(b)
    assert n == total, n
    # the peer never held the body: far less resident memory than 100 MB
    assert p.rss_kb() < 60 * 1024, "echo upstream RSS %d KiB" % p.rss_kb()


def test_echo_sse_events_arrive_one_by_one():
    _, port, _ = echo()
    t0 = time.monotonic()
    times = []
    with S.get("http://127.0.0.1:%d/sse?n=4&interval_ms=300" % port, stream=True,
               timeout=10) as r:
        assert r.headers["content-type"] == "text/event-stream"
        buf = b""
        for b in r.iter_content(None):
            buf += b
            while b"\n\n" in buf:
                ev, buf = buf.split(b"\n\n", 1)
                assert b"event: tick" in ev
                times.append(time.monotonic() - t0)
    assert len(times) == 4, times
    # first event long before the stream ends: it was flushed, not buffered
    assert times[0] < 0.5 and times[-1] > 0.8, times


def test_echo_status_slow_reset_trailers():
    _, port, _ = echo()
    r = S.get("http://127.0.0.1:%d/status/429" % port, timeout=5)
    assert r.status_code == 429 and r.headers["retry-after"] == "1" and r.json()["status"] == 429
    r = S.get("http://127.0.0.1:%d/status/503" % port, timeout=5)
    assert r.status_code == 503
    t0 = time.monotonic()
    r = S.get("http://127.0.0.1:%d/slow?ms=400" % port, timeout=5)
    assert r.status_code == 200 and time.monotonic() - t0 >= 0.4
    try:
        S.get("http://127.0.0.1:%d/reset" % port, timeout=5)
        raise AssertionError("/reset answered")
    except requests.exceptions.ConnectionError:
        pass
    # trailers: look at the raw bytes
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"GET /trailers HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        raw = b""
        while True:
            b = s.recv(65536)
            if not b:
                break
            raw += b
    assert b"Trailer: X-Checksum" in raw and b"\r\n0\r\nX-Checksum: sha256=" in raw, raw


def test_echo_over_tls_verifies_with_the_test_ca():
    _, port, ca = start_echo(tls=True)
    r = S.get("https://localhost:%d/tls?q=1" % port, verify=ca, timeout=5)
    assert r.status_code == 200 and r.json()["query"] == "q=1"
    r = S.get("https://127.0.0.1:%d/ip" % port, verify=ca, timeout=5)
    assert r.json()["path"] == "/ip"
    t0 = time.monotonic()
    try:
        S.get("https://localhost:%d/reset" % port, verify=ca, timeout=5)
        raise AssertionError("/reset answered over TLS")
    except requests.exceptions.ConnectionError:
        assert time.monotonic() - t0 < 3  # dropped at once, not after a timeout
    try:
        # a fresh session (a pooled connection would skip the handshake); system CAs
        s = requests.Session()
        s.trust_env = False
        s.get("https://localhost:%d/" % port, timeout=5)
        raise AssertionError("TLS verified without the test CA")
    except requests.exceptions.SSLError:
        pass


def test_nginx_tls_h2_echoes_headers_and_serves_large_files():
    p, port, ca = start_nginx_tls(h2=True)
    out = subprocess.run(
        ["curl", "-sS", "--http2", "--cacert", ca, "-H", "Authorization: Bearer k1",
         "-H", "X-Api-Key: k2", "-H", "X-Request-Id: rid-1",
         "-w", "\n%{http_version} %{http_code}", "https://localhost:%d/v1/x?y=1" % port],
        capture_output=True, text=True, timeout=10)
    assert out.returncode == 0, out.stderr
    body, tail = out.stdout.rsplit("\n", 1)
    assert tail == "2 200", tail
    j = json.loads(body)
    assert j["authorization"] == "Bearer k1" and j["x_api_key"] == "k2", j
    assert j["x_request_id"] == "rid-1" and j["protocol"] == "HTTP/2.0", j
    assert j["uri"] == "/v1/x?y=1" and j["method"] == "GET", j
    r = S.get("https://localhost:%d/status/404" % port, verify=ca, timeout=5)
    assert r.status_code == 404 and r.json()["protocol"] == "HTTP/1.1"
    out = subprocess.run(["curl", "-sS", "--http2", "--cacert", ca, "-o", "/dev/null",
                          "-w", "%{size_download}", "https://localhost:%d/files/10m.bin" % port],
                         capture_output=True, text=True, timeout=30)
    assert out.stdout == str(10 << 20), out
    assert p.alive()


def test_nginx_tls_without_h2_speaks_http1():
    _, port, ca = start_nginx_tls(h2=False)
    out = subprocess.run(["curl", "-sS", "--http2", "--cacert", ca, "-o", "/dev/null",
                          "-w", "%{http_version}", "https://localhost:%d/" % port],
                         capture_output=True, text=True, timeout=10)
    assert out.stdout == "1.1", out


def test_oidc_provider_issues_jwt_client_credentials_tokens_and_counts_them():
    import base64
    op = start_oidc(ttl=120, resources=["https://api.test/"])
    try:
        meta = S.get(op.discovery_url, verify=op.ca, timeout=10).json()
        assert meta["issuer"] == op.issuer and meta["token_endpoint"] == op.token_endpoint, meta
        assert "client_credentials" in meta["grant_types_supported"], meta
        jwks = S.get(meta["jwks_uri"], verify=op.ca, timeout=10).json()
        assert jwks["keys"] and all("d" not in k for k in jwks["keys"]), jwks  # public only
        r = S.post(op.token_endpoint, auth=(op.client_id, op.client_secret), verify=op.ca,
                   data={"grant_type": "client_credentials", "scope": "read",
                         "resource": "https://mcp.test/"}, timeout=10)
        assert r.status_code == 200, r.text
        tok = r.json()
        assert tok["token_type"].lower() == "bearer" and tok["expires_in"] == 120, tok
        parts = tok["access_token"].split(".")
        assert len(parts) == 3, "not a JWT"
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
        assert claims["aud"] == "https://mcp.test/" and claims["scope"] == "read", claims
        assert claims["iss"] == op.issuer and claims["client_id"] == op.client_id, claims
        bad = S.post(op.token_endpoint, auth=(op.client_id, "wrong"), verify=op.ca,
                     data={"grant_type": "client_credentials"}, timeout=10)
        assert bad.status_code == 401 and bad.json()["error"] == "invalid_client", bad.text
        post = S.post(op.token_endpoint, verify=op.ca, timeout=10,
                      data={"grant_type": "client_credentials", "client_id": op.client_id,
                            "client_secret": op.client_secret})
        assert post.status_code == 200, post.text  # client_secret_post is accepted too
        st = op.stats()
        assert st["token_requests"] == 3 and st["token_errors"] == 1, st
        assert st["last_params"]["auth"] == "post", st
        assert "client_secret" not in json.dumps(st) or op.client_secret not in json.dumps(st), st
        op.control(ttl=5)
        r = S.post(op.token_endpoint, auth=(op.client_id, op.client_secret), verify=op.ca,
                   data={"grant_type": "client_credentials"}, timeout=10)
        assert r.json()["expires_in"] == 5, r.text
        assert op.stats()["last_params"]["resource"] == "https://api.test/", op.stats()
    finally:
        op.stop()


def test_oidc_provider_3lo_code_flow_with_pkce_and_rotating_refresh_tokens():
    """The provider's user-facing side that airlock's 3LO builds on: its development login
    and consent pages driven with a cookie jar (OidcProvider.consent), PKCE S256 required,
    a code used once, the refresh token rotated on every use and a reused one refused,
    and two users getting tokens with their own subject."""
    import base64
    redirect = "https://airlock.test/oauth2/callback"
    op = start_oidc(ttl=60, resources=["https://api.test/"],
                    user_clients=[("agent-3lo", "s3cret-3lo", redirect)])
    meta = S.get(op.discovery_url, verify=op.ca, timeout=10).json()
    auth_ep = meta["authorization_endpoint"]
    assert "S256" in meta["code_challenge_methods_supported"], meta

    def b64(b):
        return base64.urlsafe_b64encode(b).rstrip(b"=").decode()

    def authorize(login, pkce=True):
        verifier = b64(os.urandom(32))
        state = b64(os.urandom(16))
        q = {"response_type": "code", "client_id": "agent-3lo", "redirect_uri": redirect,
             "scope": "openid offline_access read", "state": state, "prompt": "consent",
             "nonce": b64(os.urandom(16))}
        if pkce:
            q["code_challenge"] = b64(hashlib.sha256(verifier.encode()).digest())
            q["code_challenge_method"] = "S256"
        url = auth_ep + "?" + urllib.parse.urlencode(q)
        back = urllib.parse.urlparse(op.consent(url, login, redirect))
        got = dict(urllib.parse.parse_qsl(back.query))
        assert got.get("state") == state, got
        return got, verifier

    def token(**form):
        return S.post(op.token_endpoint, auth=("agent-3lo", "s3cret-3lo"), data=form,
                      verify=op.ca, timeout=10)

    def claims(jwt):
        p = jwt.split(".")[1]
        return json.loads(base64.urlsafe_b64decode(p + "=" * (-len(p) % 4)))

    try:
        got, _ = authorize("alice", pkce=False)
        assert got.get("error") == "invalid_request", got  # PKCE is required
        got, verifier = authorize("alice")
        r = token(grant_type="authorization_code", code=got["code"], redirect_uri=redirect,
                  code_verifier=verifier)
        assert r.status_code == 200, r.text
        t1 = r.json()
        assert t1["refresh_token"] and t1["expires_in"] == 60, t1
        assert claims(t1["access_token"])["sub"] == "alice", claims(t1["access_token"])
        r = token(grant_type="refresh_token", refresh_token=t1["refresh_token"])
        assert r.status_code == 200, r.text
        t2 = r.json()
        assert t2["refresh_token"] != t1["refresh_token"], "refresh token not rotated"
        assert claims(t2["access_token"])["sub"] == "alice"
        reuse = token(grant_type="refresh_token", refresh_token=t1["refresh_token"])
        assert reuse.status_code == 400 and reuse.json()["error"] == "invalid_grant", reuse.text
        # a code is single use (a replay also revokes what it issued: RFC 6749 4.1.2)
        again = token(grant_type="authorization_code", code=got["code"], redirect_uri=redirect,
                      code_verifier=verifier)
        assert again.status_code == 400 and again.json()["error"] == "invalid_grant", again.text
        gotc, _ = authorize("carol")  # a code with the wrong verifier
        bad = token(grant_type="authorization_code", code=gotc["code"], redirect_uri=redirect,
                    code_verifier=b64(os.urandom(32)))
        assert bad.status_code == 400 and bad.json()["error"] == "invalid_grant", bad.text
        gotb, vb = authorize("bob")
        r = token(grant_type="authorization_code", code=gotb["code"], redirect_uri=redirect,
                  code_verifier=vb)
        assert r.status_code == 200 and claims(r.json()["access_token"])["sub"] == "bob", r.text
        st = op.stats()
        assert st["code_grants"] == 2 and st["refresh_grants"] == 1, st
    finally:
        op.stop()


def test_oidc_provider_par_client_and_revocation():
    """The PAR client (RFC 9126) must push its authorization request: a plain one is
    refused, a pushed one (request_uri) completes; discovery advertises the endpoint but
    does not require PAR for everybody; a refresh token revoked at the revocation endpoint
    (RFC 7009) is no longer honoured, and the provider's own count says so."""
    import base64
    redirect = "https://airlock.test/oauth2/callback"
    op = start_oidc(ttl=60, resources=["https://api.test/"],
                    par_clients=[("agent-par", "s3cret-par", redirect)])
    meta = S.get(op.discovery_url, verify=op.ca, timeout=10).json()
    assert meta["pushed_authorization_request_endpoint"] == op.issuer + "/request", meta
    assert not meta.get("require_pushed_authorization_requests"), meta
    assert meta["revocation_endpoint"] == op.issuer + "/token/revocation", meta

    def b64(b):
        return base64.urlsafe_b64encode(b).rstrip(b"=").decode()

    verifier = b64(os.urandom(32))
    q = {"response_type": "code", "client_id": "agent-par", "redirect_uri": redirect,
         "scope": "openid offline_access read", "state": "st-1", "prompt": "consent",
         "code_challenge": b64(hashlib.sha256(verifier.encode()).digest()),
         "code_challenge_method": "S256"}
    try:
        back = urllib.parse.urlparse(op.consent(meta["authorization_endpoint"] + "?"
                                                + urllib.parse.urlencode(q), "dora", redirect))
        got = dict(urllib.parse.parse_qsl(back.query))
        assert got.get("error") == "invalid_request", got  # not pushed: refused
        r = S.post(meta["pushed_authorization_request_endpoint"], data=q,
                   auth=("agent-par", "s3cret-par"), verify=op.ca, timeout=10)
        assert r.status_code == 201, r.text
        ru = r.json()
        assert ru["request_uri"].startswith("urn:ietf:params:oauth:request_uri:"), ru
        assert ru["expires_in"] > 0, ru
        url = meta["authorization_endpoint"] + "?" + urllib.parse.urlencode(
            {"client_id": "agent-par", "request_uri": ru["request_uri"]})
        got = dict(urllib.parse.parse_qsl(urllib.parse.urlparse(
            op.consent(url, "dora", redirect)).query))
        assert got.get("state") == "st-1" and got.get("code"), got
        r = S.post(op.token_endpoint, auth=("agent-par", "s3cret-par"), verify=op.ca, timeout=10,
                   data={"grant_type": "authorization_code", "code": got["code"],
                         "redirect_uri": redirect, "code_verifier": verifier})
        assert r.status_code == 200 and r.json()["refresh_token"], r.text
        rt = r.json()["refresh_token"]
        assert op.active_refresh_tokens("dora") == 1
        st = op.stats()
        assert st["par_requests"] == 1 and st["authz_par"] == 1, st
        r = S.post(meta["revocation_endpoint"], auth=("agent-par", "s3cret-par"), verify=op.ca,
                   data={"token": rt, "token_type_hint": "refresh_token"}, timeout=10)
        assert r.status_code == 200, r.text
        assert op.active_refresh_tokens("dora") == 0
        assert op.stats()["revocations"] == 1
        r = S.post(op.token_endpoint, auth=("agent-par", "s3cret-par"), verify=op.ca, timeout=10,
                   data={"grant_type": "refresh_token", "refresh_token": rt})
        assert r.status_code == 400 and r.json()["error"] == "invalid_grant", r.text
    finally:
        op.stop()
    # --require-par: discovery says so
    op = start_oidc(ttl=60, user_clients=[("agent-3lo", "s3cret-3lo", redirect)],
                    require_par=True)
    try:
        meta = S.get(op.discovery_url, verify=op.ca, timeout=10).json()
        assert meta["require_pushed_authorization_requests"] is True, meta
    finally:
        op.stop()


def test_resource_server_and_mcp_accept_only_the_providers_tokens():
    op = start_oidc(ttl=120)
    try:
        rs, port, ca = start_resource_server(op, "https://api.test/",
                                             mcp_audience="https://mcp.test/mcp")
        base = "https://127.0.0.1:%d" % port

        def token(resource):
            r = S.post(op.token_endpoint, auth=(op.client_id, op.client_secret), verify=op.ca,
                       data={"grant_type": "client_credentials", "resource": resource},
                       timeout=10)
            return r.json()["access_token"]

        api_tok = token("https://api.test/")
        r = S.post(base + "/api/x", data=b"hello", verify=ca, timeout=10,
                   headers={"Authorization": "Bearer " + api_tok})
        assert r.status_code == 200 and r.json()["body_len"] == 5, r.text
        for bad in (None, "Bearer nope", "Bearer " + api_tok[:-4] + "AAAA",
                    "Bearer " + token("https://other.test/")):
            h = {"Authorization": bad} if bad else {}
            r = S.get(base + "/api/x", headers=h, verify=ca, timeout=10)
            assert r.status_code == 401, (bad, r.text)
            assert 'error="invalid_token"' in r.headers["www-authenticate"], r.headers
        # the MCP server: the official SDK client, streamed progress, with a direct token
        env = dict(os.environ, NODE_EXTRA_CA_CERTS=ca, MCP_TEST_BEARER=token("https://mcp.test/mcp"))
        out = subprocess.run([NODE, os.path.join(TESTS_DIR, "integration", "node", "mcp_client.mjs"),
                              base + "/mcp"], capture_output=True, text=True, env=env, timeout=60)
        j = json.loads(out.stdout.strip().splitlines()[-1])
        assert j["ok"] and j["tools"] == ["count"] and j["result"] == "counted to 3", (j, out.stderr)
        assert [p["progress"] for p in j["progress"]] == [1, 2, 3], j
        assert "lockstep_acked" not in j, j  # plain mode: no ack needed
        # lock-step mode: each progress acked before the next is sent (events one by one)
        out = subprocess.run([NODE, os.path.join(TESTS_DIR, "integration", "node", "mcp_client.mjs"),
                              base + "/mcp"], capture_output=True, text=True, timeout=90,
                             env=dict(env, MCP_TEST_ACK_URL=base + "/__ack",
                                      MCP_TEST_ACK_TIMEOUT_MS="20000"))
        j = json.loads(out.stdout.strip().splitlines()[-1])
        assert j["ok"] and j["result"] == "counted to 3", (j, out.stderr)
        assert [p["progress"] for p in j["progress"]] == [1, 2, 3], j
        assert j["lockstep_acked"] == 3 and j["acks"] == [200, 200, 200], j
        # an unawaited or late ack is refused
        assert S.get(base + "/__ack?id=nope&n=1", verify=ca, timeout=10).status_code == 409
        env["MCP_TEST_BEARER"] = api_tok  # wrong audience for /mcp
        out = subprocess.run([NODE, os.path.join(TESTS_DIR, "integration", "node", "mcp_client.mjs"),
                              base + "/mcp"], capture_output=True, text=True, env=env, timeout=60)
        assert out.returncode == 1, out.stdout
        # revocation
        assert S.post(base + "/__revoke", verify=ca, timeout=10).json()["revoked"] >= 2
        r = S.get(base + "/api/x", headers={"Authorization": "Bearer " + api_tok}, verify=ca,
                  timeout=10)
        assert r.status_code == 401, r.text
        rs.stop()
    finally:
        op.stop()


def test_proc_stop_kills_by_pid_and_cleanup_is_complete():
    p = Proc(["sleep", "300"], name="sleeper")
    assert p.alive() and rss_kb(p.pid) > 0
    p.stop()
    assert not p.alive() and rss_kb(p.pid) == 0
    d = tmpdir()
    assert os.path.isdir(d)
    port = free_port()
    try:
        wait_port(port, timeout=0.2)
        raise AssertionError("wait_port returned for a closed port")
    except TimeoutError:
        pass


if __name__ == "__main__":
    run(globals())
