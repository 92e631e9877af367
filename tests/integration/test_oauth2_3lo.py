"""OAuth 2.0 on behalf of a user (3LO, issue 14), binding mode `link`, with the real
binary, the real OpenID provider (npm oidc-provider: authorization_code + PKCE S256,
rotating refresh tokens, JWT access tokens for the resource) driven through its own
login and consent pages like a browser (OidcProvider.consent), and a resource server
that verifies each JWT with `jose` and answers whose token it was (`sub`).

The agent's side: a request for an oauth2_3lo target whose user has no token gets
401 consent_required with airlock's authorization_url; the user opens it (302 to the
provider, PKCE), consents, the provider's redirect reaches airlock's callback, which
exchanges the code and stores the tokens; the agent's retry then reaches the upstream
with that user's token. Two users never get each other's tokens; a trusted client's
user header picks the user and never goes upstream, an untrusted one is refused; an
expired access token and an upstream 401 are refreshed (the rotated refresh token
stored); invalid_grant at refresh deletes the tokens and asks for consent again; a
replayed, forged or missing state, a reused link and the provider's own error leave
nothing stored. No token, code or state reaches airlock's log, the audit log or a
response to the agent. (Link/state expiry needs a clock: tests/unit/test_identity_consent.c.)"""
import base64
import json
import os
import sys
import time
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from altest import *  # noqa: E402,F401,F403

AUD = "https://airlock.test"  # inbound (agents') tokens
API = "https://api.test/"  # the resource the user's access tokens are for
CLIENT, SECRET = "airlock-3lo", "cs3-" + os.urandom(10).hex()
OP = AL = RS = None
RS_PORT = 0
BASE = CALLBACK = ""
KEY_FILE = ""
AGENT_SEEN = []  # every response (body + headers) the agent got
PAGES = []  # airlock's callback pages (body + headers)
SECRETS = []  # tokens, codes and states that must never show in a log or response

TABLE = table_head(tls=True, limits="  drain_timeout_ms: 2000\n") + inbound_jwt(True) + """
targets:
  - name: api
    type: openapi
    url: https://127.0.0.1:RS_PORT/api
    allow_private_network: true
    ca_file: CA
    auth:
      method: oauth2_3lo
      provider: idp
      scopes: [openid, offline_access, read]
      custom_parameters: {prompt: consent}
"""


session = http_session


def test_start():
    global OP, AL, RS, RS_PORT, BASE, CALLBACK, KEY_FILE
    t = start_3lo(TABLE, API, AUD, CLIENT, SECRET)
    AL, OP, RS, RS_PORT, BASE, CALLBACK, KEY_FILE = (t.al, t.op, t.rs, t.rs_port, t.base,
                                                     t.callback, t.key_file)
    AL.create_oauth2_provider("idp", OP, CLIENT, SECRET)
    AL.start()


def agent_token(sub, client="agent"):
    """An inbound access token for end user `sub`, signed with the issuer's own key."""
    return OP.user_access_token(KEY_FILE, sub, AUD, client)


TOKENS = {}


def agent(sub, path="/t/api/things", client="agent", headers=None):
    """The agent's request for end user `sub` (gateway mode); returns (status, json)."""
    key = (sub, client)
    if key not in TOKENS:
        TOKENS[key] = agent_token(sub, client)
    h = {"authorization": "Bearer " + TOKENS[key]}
    h.update(headers or {})
    r = session().get(BASE + path, headers=h, timeout=30)
    AGENT_SEEN.append(r.text + json.dumps(dict(r.headers)))
    try:
        return r.status_code, r.json()
    except ValueError:
        return r.status_code, {"raw": r.text}


def browser(url):
    r = session().get(url, allow_redirects=False, timeout=30)
    if "/oauth2/callback" in url:
        PAGES.append(r.text + json.dumps(dict(r.headers)))
    return r


def consent(sub, url=None):
    """The user `sub` consents through the link of a fresh 401; returns the callback page."""
    if url is None:
        st, body = agent(sub)
        assert st == 401 and body["error"] == "consent_required", (st, body)
        url = body["authorization_url"]
    back = OP.consent(url, sub, CALLBACK)
    q = urllib.parse.parse_qs(urllib.parse.urlparse(back).query)
    SECRETS.extend(q.get("code", []) + q.get("state", []))
    return browser(back), back


def user_tokens():
    r = AL.cli("identity", "list-user-tokens", "--provider", "idp", "--state-dir", AL.state_dir)
    assert r.returncode == 0, r.stderr
    return {t["user"]: t for t in json.loads(r.stdout)["userTokens"]}


def audit_events(name):
    out = []
    with open(AL.audit_path) as f:
        for line in f:
            if not line.endswith("\n"):
                break  # the writer thread is mid-line: event_where() reads again
            rec = json.loads(line)
            if rec.get("event") == name:
                out.append(rec)
    return out


def event_where(name, pred, timeout=10):
    """The last audit event `name` that pred accepts, waiting for the writer thread."""
    def find():
        ev = [e for e in audit_events(name) if pred(e)]
        return ev[-1] if ev else None
    return wait_for(find, timeout, "audit event " + name)


def test_consent_then_the_retry_carries_the_users_token():
    st, body = agent("alice")
    assert st == 401, (st, body)
    assert body["error"] == "consent_required", body
    assert body["expires_in"] == 600, body
    url = body["authorization_url"]
    assert url.startswith(BASE + "/oauth2/authorize/"), url
    assert "alice" not in url and len(url.rsplit("/", 1)[1]) == 43, url
    assert "authorization_url" in body["message"], body
    # the link: a 302 to the provider with PKCE S256, state, nonce (openid), our callback
    r = browser(url)
    assert r.status_code == 302, (r.status_code, r.text)
    loc = urllib.parse.urlparse(r.headers["location"])
    q = urllib.parse.parse_qs(loc.query)
    assert loc.netloc == "127.0.0.1:%d" % OP.port, loc
    assert q["client_id"] == [CLIENT] and q["redirect_uri"] == [CALLBACK], q
    assert q["code_challenge_method"] == ["S256"] and len(q["code_challenge"][0]) == 43, q
    assert q["response_type"] == ["code"] and q["prompt"] == ["consent"], q
    assert q["scope"] == ["openid offline_access read"] and q["nonce"] and q["state"], q
    assert r.headers.get("referrer-policy") == "no-referrer", r.headers
    # the link works once
    r2 = browser(url)
    assert r2.status_code == 404, (r2.status_code, r2.text)
    # the user consents (the provider's own pages) and comes back to the callback
    back = OP.consent(r.headers["location"], "alice", CALLBACK)
    qs = urllib.parse.parse_qs(urllib.parse.urlparse(back).query)
    SECRETS.extend(qs["code"] + qs["state"])
    page = browser(back)
    assert page.status_code == 200, (page.status_code, page.text)
    assert "Access granted" in page.text, page.text
    assert OP.stats()["code_grants"] >= 1
    toks = user_tokens()
    user = OP.issuer + " alice"
    assert user in toks and toks[user]["hasRefreshToken"], toks
    assert "read" in toks[user]["scope"], toks
    st, body = agent("alice")
    assert st == 200, (st, body)
    assert body["sub"] == "alice" and body["aud"] == API, body
    # the callback is a one-time thing: a replay stores nothing and says so
    again = browser(back)
    assert again.status_code == 400, (again.status_code, again.text)
    assert user_tokens()[user]["fingerprint"] == toks[user]["fingerprint"]
    assert event_where("consent.started", lambda e: e["outcome"] == "ok")
    assert event_where("consent.redirected", lambda e: e["outcome"] == "ok")
    done = event_where("consent.completed", lambda e: e["outcome"] == "ok")
    assert done["provider"] == "idp" and done["end_user"] == user and done["target"] == "api"
    assert wait_for(lambda: any(
        r.get("status") == 200 and r.get("end_user") == user for r in
        (json.loads(l) for l in open(AL.audit_path) if '"end_user"' in l)), 10,
        "the request record with end_user")


def test_two_users_never_share_tokens():
    st, body = agent("bob")
    assert st == 401 and body["error"] == "consent_required", (st, body)
    page, _ = consent("bob", body["authorization_url"])
    assert page.status_code == 200, page.text
    for _ in range(3):
        st, a = agent("alice")
        st2, b = agent("bob")
        assert (st, st2) == (200, 200), (a, b)
        assert a["sub"] == "alice" and b["sub"] == "bob", (a, b)
        assert a["jti"] != b["jti"]
    toks = user_tokens()
    assert toks[OP.issuer + " alice"]["fingerprint"] != toks[OP.issuer + " bob"]["fingerprint"]
    # a third user is asked for consent, never served someone else's token
    st, body = agent("carol")
    assert st == 401 and body["error"] == "consent_required", body


def test_user_header_only_from_trusted_clients_and_never_upstream():
    # the trusted caller (runtime) acts for alice by naming her
    st, body = agent("runtime-svc", client="runtime",
                     headers={"X-Airlock-User": OP.issuer + " alice"})
    assert st == 200, (st, body)
    assert body["sub"] == "alice" and body["x_airlock_user"] is None, body
    # anyone else naming a user is refused, whatever the spelling of the header
    for name in ("X-Airlock-User", "x-airlock-user", "X-AIRLOCK-USER"):
        st, body = agent("mallory", headers={name: OP.issuer + " alice"})
        assert st == 403 and body["error"] == "policy_denied", (name, st, body)
        assert "trusted_clients" in body["message"], body
    # a trusted caller naming a user twice, too long, or with bytes outside printable
    # ASCII, is refused (raw requests: clients refuse to send some of these)
    tok = TOKENS[("runtime-svc", "runtime")]
    for extra in (b"X-Airlock-User: a\r\nX-Airlock-User: b\r\n",
                  b"X-Airlock-User: " + b"u" * 300 + b"\r\n",
                  b"X-Airlock-User: al\xc3\xafce\r\n"):
        st, body = raw_get(b"/t/api/things", b"Authorization: Bearer " + tok.encode() +
                           b"\r\n" + extra)
        assert st == 400 and body["error"] == "bad_request", (extra, st, body)
        assert "X-Airlock-User must appear once" in body["message"], body
    # the user names of the shared 2LO token rows are not for end users
    for name in ("2lo:" + "ab" * 32, "2lo:", "2lo:alice"):
        st, body = raw_get(b"/t/api/things", b"Authorization: Bearer " + tok.encode() +
                           b"\r\nX-Airlock-User: " + name.encode() + b"\r\n")
        assert st == 400 and "reserved" in body["message"], (name, st, body)


def raw_get(path, headers):
    import socket
    with socket.create_connection(("127.0.0.1", AL.proxy_port), timeout=30) as c:
        c.sendall(b"GET " + path + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + headers +
                  b"\r\n")
        data = b""
        while True:
            b = c.recv(65536)
            if not b:
                break
            data += b
    head, _, body = data.partition(b"\r\n\r\n")
    AGENT_SEEN.append(data.decode("latin-1"))
    return int(head.split()[1]), json.loads(body or b"{}")


def test_upstream_401_refreshes_once_and_rotation_is_stored():
    user = OP.issuer + " alice"
    before = user_tokens()[user]
    grants = OP.stats()["refresh_grants"]
    st, first = agent("alice")
    assert st == 200
    # the resource server now refuses every token it has seen: airlock's 401 path
    # refreshes (rotating the refresh token) and retries once
    RS_revoke()
    st, body = agent("alice")
    assert st == 200, (st, body)
    assert body["sub"] == "alice" and body["jti"] != first["jti"], body
    assert OP.stats()["refresh_grants"] == grants + 1
    after = user_tokens()[user]
    assert after["fingerprint"] != before["fingerprint"], (before, after)
    # the rotated refresh token was stored: a second refresh works (oidc-provider
    # refuses a reused refresh token with invalid_grant, and then revokes the grant)
    RS_revoke()
    st, body = agent("alice")
    assert st == 200, (st, body)
    assert OP.stats()["refresh_grants"] == grants + 2
    assert event_where("user_token.refresh", lambda e: e["outcome"] == "ok")


def RS_revoke():
    return revoke_resource_tokens(OP, RS_PORT)


def test_expired_access_token_is_refreshed():
    OP.control(ttl=4)
    try:
        page, _ = consent("dave")
        assert page.status_code == 200, page.text
        st, a = agent("dave")
        assert st == 200 and a["sub"] == "dave", a
        grants = OP.stats()["refresh_grants"]
        time.sleep(4.5)  # the access token's own lifetime: no clock knob in serve
        # eight requests at once for the expired token: one refresh, all served with it
        import concurrent.futures
        with concurrent.futures.ThreadPoolExecutor(8) as ex:
            got = list(ex.map(lambda _: agent("dave"), range(8)))
        assert all(st == 200 and b["sub"] == "dave" for st, b in got), got
        assert len({b["jti"] for _, b in got}) == 1 and got[0][1]["jti"] != a["jti"], got
        assert OP.stats()["refresh_grants"] == grants + 1
    finally:
        OP.control(ttl=300)


def test_invalid_grant_deletes_the_tokens_and_asks_again():
    user = OP.issuer + " bob"
    assert user in user_tokens()
    OP.control(fail="invalid_grant")
    try:
        RS_revoke()  # bob's next request needs a refresh, which the provider refuses
        st, body = agent("bob")
    finally:
        OP.control(fail=None)
    assert st == 401 and body["error"] == "consent_required", (st, body)
    assert "invalid_grant" in body["message"], body
    assert user not in user_tokens()
    ev = event_where("user_token.refresh", lambda e: e["outcome"] == "invalid_grant")
    assert ev["end_user"] == user, ev
    # and consent brings bob back
    page, _ = consent("bob", body["authorization_url"])
    assert page.status_code == 200, page.text
    st, body = agent("bob")
    assert st == 200 and body["sub"] == "bob", body


def test_bad_state_and_provider_errors_store_nothing():
    before = user_tokens()
    st, body = agent("erin")
    assert st == 401
    link = body["authorization_url"]
    r = browser(link)
    assert r.status_code == 302
    state = urllib.parse.parse_qs(urllib.parse.urlparse(r.headers["location"]).query)["state"][0]
    SECRETS.append(state)
    # forged, missing, doubled, and malformed states: 400, nothing stored
    forged = "A" * 43
    for q in ("code=abc&state=" + forged, "code=abc", "code=abc&state=%s&state=%s" % (state, state),
              "code=abc&state=" + state[:-1], "code=abc&state=" + state + "%00",
              "code=abc&state=" + state + "x"):
        p = browser(CALLBACK + "?" + q)
        assert p.status_code == 400, (q, p.status_code, p.text)
        assert "Nothing was stored" in p.text, p.text
    # the user declines at the provider: its error comes back, is shown and audited
    back = OP.consent(r.headers["location"], "erin", CALLBACK, approve=False)
    assert "error=" in back, back
    p = browser(back)
    assert p.status_code == 400 and "access_denied" in p.text, p.text
    ev = event_where("consent.refused", lambda e: e["outcome"] == "provider_error")
    assert ev["end_user"] == OP.issuer + " erin", ev
    # that state is consumed now: replaying it with a code is refused too
    p = browser(CALLBACK + "?code=abc&state=" + state)
    assert p.status_code == 400, p.text
    # a provider error with markup is escaped, never rendered
    st, body = agent("erin")
    r = browser(body["authorization_url"])
    state2 = urllib.parse.parse_qs(urllib.parse.urlparse(r.headers["location"]).query)["state"][0]
    p = browser(CALLBACK + "?error=%3Cscript%3Ex&error_description=%3Cb%3Ehi&state=" + state2)
    assert p.status_code == 400 and "<script>" not in p.text and "<b>" not in p.text, p.text
    assert user_tokens() == before
    # the token endpoint refuses the code: its error and description are shown and
    # audited, nothing stored
    st, body = agent("gina")
    back = OP.consent(body["authorization_url"], "gina", CALLBACK)
    q = urllib.parse.parse_qs(urllib.parse.urlparse(back).query)
    SECRETS.extend(q["code"] + q["state"])
    OP.control(fail="invalid_grant")
    try:
        p = browser(back)
    finally:
        OP.control(fail=None)
    assert p.status_code == 502, (p.status_code, p.text)
    assert "invalid_grant (forced by the test)" in p.text, p.text
    ev = event_where("consent.refused", lambda e: e["outcome"] == "token_endpoint_error")
    assert ev["end_user"] == OP.issuer + " gina" and "invalid_grant" in ev["error"], ev
    assert user_tokens() == before
    # a link that does not exist, and other methods
    assert browser(BASE + "/oauth2/authorize/" + "B" * 43).status_code == 404
    assert session().post(CALLBACK, timeout=10).status_code == 405


def test_endpoints_over_http2_on_the_tls_listener():
    # a browser reaching airlock's TLS listener speaks h2 (:authority = the listener)
    import httpx
    ca = os.path.join(AL.state_dir, "ca.crt")
    base = "https://127.0.0.1:%d" % AL.tls_port
    with httpx.Client(http2=True, verify=ca, trust_env=False, timeout=30) as c:
        r = c.get(base + "/oauth2/authorize/" + "C" * 43)
        assert r.http_version == "HTTP/2" and r.status_code == 404, (r.http_version, r.text)
        r = c.get(base + "/oauth2/callback?code=x&state=" + "D" * 43)
        assert r.status_code == 400 and "Nothing was stored" in r.text, r.text
        PAGES.append(r.text)
        # a live link opened over h2 redirects like over HTTP/1.1
        st, body = agent("frank")
        assert st == 401
        r = c.get(body["authorization_url"].replace(BASE, base))
        assert r.status_code == 302 and "code_challenge=" in r.headers["location"], r.text


def test_check_refuses_3lo_without_a_way_to_know_the_user():
    d = tmpdir("altest-3lo-check-")
    path = os.path.join(d, "t.yaml")
    with open(path, "w") as f:
        f.write("listen: {proxy: 127.0.0.1:1}\n"
                "targets:\n"
                "  - name: api\n"
                "    type: openapi\n"
                "    url: https://api.example.com\n"
                "    auth:\n"
                "      method: oauth2_3lo\n"
                "      provider: idp\n")
    r = AL.cli("check", "-c", path)
    assert r.returncode != 0, r.stdout
    assert "%s:7:15: error:" % path in r.stderr + r.stdout, r.stderr + r.stdout
    assert "inbound.mode" in r.stderr + r.stdout
    with open(path, "a") as f:
        f.write("inbound:\n  user_header: {name: X-User, trusted_clients: [rt]}\n")
    r = AL.cli("check", "-c", path)
    assert "user_header" in r.stderr + r.stdout and r.returncode != 0, r.stderr


def test_stop_during_a_code_exchange_is_clean():
    # SIGTERM while the token endpoint still holds a code exchange (delayed past the drain
    # timeout): the dropped exchange's waiter is let go, nothing leaks or crashes
    import threading
    st, body = agent("hank")
    back = OP.consent(body["authorization_url"], "hank", CALLBACK)
    q = urllib.parse.parse_qs(urllib.parse.urlparse(back).query)
    SECRETS.extend(q["code"] + q["state"])
    before = OP.stats()["token_requests"]
    OP.control(delay_ms=6000)
    try:
        t = threading.Thread(target=lambda: _quiet(browser, back), daemon=True)
        t.start()
        wait_for(lambda: OP.stats()["token_requests"] > before, 10, "the code exchange")
        AL.stop(timeout=15)
    finally:
        OP.control(delay_ms=0)
    log = open(AL.log_path).read()
    assert "AddressSanitizer" not in log and "LeakSanitizer" not in log, log[-3000:]
    assert "runtime error" not in log, log[-3000:]


def _quiet(fn, *a):
    try:
        fn(*a)
    except Exception:
        pass  # the connection is cut by the stop


def test_no_token_code_or_state_in_logs_or_responses():
    rs = json.loads(session().get("https://127.0.0.1:%d/__stats" % RS_PORT, verify=OP.ca,
                                  timeout=10).text)
    seen = OP.stats()["secrets_seen"]  # codes, verifiers, refresh and ID tokens
    assert any(len(s) == 43 for s in seen), "no PKCE verifier recorded by the provider"
    secrets = [s for s in rs["tokens"] + SECRETS + seen if s and len(s) >= 16]
    assert len(secrets) >= 20, len(secrets)
    AL.stop()  # the audit writer flushes
    texts = {"audit log": open(AL.audit_path).read(), "airlock's log": open(AL.log_path).read(),
             "agent responses": "\n".join(AGENT_SEEN), "callback pages": "\n".join(PAGES)}
    for name, text in texts.items():
        for s in secrets:
            assert s not in text, "a token, code or state in the %s" % name
        assert SECRET not in text, "the client secret in the %s" % name


if __name__ == "__main__":
    run(globals())
