"""OAuth 2.0 on behalf of a user (3LO, issue 14) beyond the link binding: pushed
authorization requests (RFC 9126), the `app` binding mode (AgentCore's
CompleteResourceTokenAuth), `force_authentication`, and revocation at the provider
(RFC 7009) when an operator deletes a user's tokens — with the real binary, the real
OpenID provider (npm oidc-provider, its own login and consent pages driven like a
browser by OidcProvider.consent) and a resource server that verifies each JWT with
`jose` and answers whose token it was (`sub`).

- PAR: a client the provider requires to push (`require_pushed_authorization_requests`
  in its client metadata; airlock's provider made with --use-par): the browser's
  redirect holds only client_id and request_uri (no state, no PKCE challenge), the
  provider counts the push, and the agent's retry carries the user's token.
- app binding: the callback stores nothing and sends the browser to the application's
  allow-listed return URL with a session id; POST /oauth2/sessions/complete by another
  user (their own valid JWT) is refused 403 and stores nothing (the session is gone);
  by the same user it stores the tokens and the agent's retry works. A return URL
  outside the allow-list (spellings) is refused when the link is opened, and at check
  time in the table.
- force_authentication: a user who holds tokens (from another target's consent) still
  gets consent_required; after consenting for this target the retry works.
- revocation: `airlock identity delete-user-token` revokes the user's refresh token at
  the provider: the provider itself no longer honours it (its own store), audited, and
  the running serve (SQLite) answers consent_required within a second. A re-consent
  (force_authentication) revokes the refresh token it replaced (the provider honours
  one); a revocation that fails is audited and logged and the consent still serves.
- sessions/complete: its 401 carries the Bearer challenge; while another process holds
  the SQLite store's write lock the workers keep answering (the completion waits on the
  store thread) and it completes once the lock is free.
- No token, code, state or session id in airlock's log, the audit log or any response
  to the agent."""
import json
import time
import os
import sys
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from altest import *  # noqa: E402,F401,F403

AUD = "https://airlock.test"
API = "https://api.test/"
CLIENT, SECRET = "airlock-3lo", "cs3-" + os.urandom(10).hex()
PAR_CLIENT, PAR_SECRET = "airlock-par", "csp-" + os.urandom(10).hex()
APP = "https://app.test/oauth/done"  # the application's allow-listed return URLs
APP2 = "https://app.test/other/"
OP = OP2 = AL = RS = None
RS_PORT = 0
BASE = CALLBACK = KEY_FILE = ""
AGENT_SEEN = []
SECRETS = []
TOKENS = {}

TABLE = table_head() + inbound_jwt(True) + """
targets:
  - name: api
    type: openapi
    url: https://127.0.0.1:RS_PORT/api
    allow_private_network: true
    ca_file: CA
    auth: {method: oauth2_3lo, provider: idp, scopes: [openid, offline_access, read]}
  - name: forced
    type: openapi
    url: https://127.0.0.1:RS_PORT/api/forced
    allow_private_network: true
    ca_file: CA
    auth:
      method: oauth2_3lo
      provider: idp
      scopes: [openid, offline_access, read]
      force_authentication: true
  - name: badrev
    type: openapi
    url: https://127.0.0.1:RS_PORT/api/badrev
    allow_private_network: true
    ca_file: CA
    auth: {method: oauth2_3lo, provider: idp-badrev, scopes: [openid, offline_access, read]}
  - name: badrev-forced
    type: openapi
    url: https://127.0.0.1:RS_PORT/api/badrev-forced
    allow_private_network: true
    ca_file: CA
    auth:
      method: oauth2_3lo
      provider: idp-badrev
      scopes: [openid, offline_access, read]
      force_authentication: true
  - name: keep
    type: openapi
    url: https://127.0.0.1:RS_PORT/api/keep
    allow_private_network: true
    ca_file: CA
    auth: {method: oauth2_3lo, provider: idp-keep, scopes: [openid, offline_access, read]}
  - name: keep-forced
    type: openapi
    url: https://127.0.0.1:RS_PORT/api/keep-forced
    allow_private_network: true
    ca_file: CA
    auth:
      method: oauth2_3lo
      provider: idp-keep
      scopes: [openid, offline_access, read]
      force_authentication: true
  - name: app
    type: openapi
    url: https://127.0.0.1:RS_PORT/api/app
    allow_private_network: true
    ca_file: CA
    auth:
      method: oauth2_3lo
      provider: idp-app
      scopes: [openid, offline_access, read]
      binding: app
      return_urls: ["APP", "APP2"]
  - name: par
    type: openapi
    url: https://127.0.0.1:RS_PORT/api/par
    allow_private_network: true
    ca_file: CA
    auth: {method: oauth2_3lo, provider: idp-par, scopes: [openid, offline_access, read]}
  - name: parmeta
    type: openapi
    url: https://127.0.0.1:RS_PORT/api/parmeta
    allow_private_network: true
    ca_file: CA
    auth: {method: oauth2_3lo, provider: idp-meta, scopes: [openid, read]}
"""


session = http_session


def create_provider(name, client, secret, *extra, op=None):
    AL.create_oauth2_provider(name, op or OP, client, secret, *extra)


def test_start():
    global OP, OP2, AL, RS, RS_PORT, BASE, CALLBACK, KEY_FILE
    t = start_3lo(TABLE, API, AUD, CLIENT, SECRET, par_clients=[(PAR_CLIENT, PAR_SECRET)],
                  APP2=APP2, APP=APP)
    AL, OP, RS, RS_PORT, BASE, CALLBACK, KEY_FILE = (t.al, t.op, t.rs, t.rs_port, t.base,
                                                     t.callback, t.key_file)
    create_provider("idp", CLIENT, SECRET, "--revoke-replaced-tokens")
    create_provider("idp-keep", CLIENT, SECRET)  # no --revoke-replaced-tokens
    create_provider("idp-app", CLIENT, SECRET)  # the same OAuth client, its own vault rows
    create_provider("idp-par", PAR_CLIENT, PAR_SECRET, "--use-par")
    # its revocation endpoint refuses connections (a port nobody listens on)
    create_provider("idp-badrev", CLIENT, SECRET, "--revoke-replaced-tokens", "--revocation-endpoint",
                    "https://127.0.0.1:%d/revoke" % free_port())
    # a provider whose discovery document requires PAR of every client (no --use-par)
    OP2 = start_oidc(ttl=300, user_clients=[(CLIENT, SECRET, CALLBACK)], require_par=True)
    create_provider("idp-meta", CLIENT, SECRET, op=OP2)
    AL.start()


def token_for(sub, client="agent"):
    if (sub, client) not in TOKENS:
        TOKENS[(sub, client)] = OP.user_access_token(KEY_FILE, sub, AUD, client)
    return TOKENS[(sub, client)]


def agent(sub, target, client="agent"):
    """The agent's request for end user `sub` (gateway mode): (status, json)."""
    r = session().get(BASE + "/t/%s/things" % target, timeout=30,
                      headers={"authorization": "Bearer " + token_for(sub, client)})
    AGENT_SEEN.append(r.text + json.dumps(dict(r.headers)))
    try:
        return r.status_code, r.json()
    except ValueError:
        return r.status_code, {"raw": r.text}


def consent_link(sub, target):
    st, body = agent(sub, target)
    assert st == 401 and body["error"] == "consent_required", (st, body)
    return body["authorization_url"]


def browser(url):
    return session().get(url, allow_redirects=False, timeout=30)


def to_callback(url, login):
    """The user opens airlock's link (or the provider's URL) and consents; returns the
    provider's redirect to airlock's callback (not yet requested)."""
    back = OP.consent(url, login, CALLBACK)
    q = urllib.parse.parse_qs(urllib.parse.urlparse(back).query)
    SECRETS.extend(q.get("code", []) + q.get("state", []))
    return back


def user_tokens(provider):
    r = AL.cli("identity", "list-user-tokens", "--provider", provider, "--state-dir",
               AL.state_dir)
    assert r.returncode == 0, r.stderr
    return {t["user"]: t for t in json.loads(r.stdout)["userTokens"]}


def complete(session_id, sub, client="agent", extra=None):
    h = {"authorization": "Bearer " + token_for(sub, client)}
    if session_id is not None:
        h["x-airlock-session-id"] = session_id
    h.update(extra or {})
    r = session().post(BASE + "/oauth2/sessions/complete", headers=h, timeout=30)
    AGENT_SEEN.append(r.text + json.dumps(dict(r.headers)))
    return r.status_code, r.json()


def audit(event):
    return [json.loads(l) for l in open(AL.audit_path) if '"event":"%s"' % event in l]


def test_par_client_pushes_its_authorization_request():
    before = OP.stats()
    url = consent_link("carol", "par")
    r = browser(url)
    assert r.status_code == 302, (r.status_code, r.text)
    loc = urllib.parse.urlparse(r.headers["location"])
    q = urllib.parse.parse_qs(loc.query)
    # only the reference travels through the browser: no state, PKCE or scope
    assert sorted(q) == ["client_id", "request_uri"], q
    assert q["client_id"] == [PAR_CLIENT], q
    assert q["request_uri"][0].startswith("urn:ietf:params:oauth:request_uri:"), q
    st = OP.stats()
    assert st["par_requests"] == before["par_requests"] + 1, st
    page = browser(to_callback(r.headers["location"], "carol"))
    assert page.status_code == 200 and "Access granted" in page.text, page.text
    assert OP.stats()["authz_par"] == before["authz_par"] + 1
    st, body = agent("carol", "par")
    assert st == 200 and body["sub"] == "carol", (st, body)
    # the same client without a push is refused by the provider itself
    direct = OP.issuer + "/auth?" + urllib.parse.urlencode(
        {"client_id": PAR_CLIENT, "response_type": "code", "redirect_uri": CALLBACK,
         "scope": "openid", "state": "x" * 20, "code_challenge": "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
         "code_challenge_method": "S256"})
    got = urllib.parse.parse_qs(urllib.parse.urlparse(OP.consent(direct, "carol", CALLBACK)).query)
    assert got.get("error") == ["invalid_request"], got
    assert any(e.get("error") == "par" for e in audit("consent.redirected")), "no PAR audit"


def test_par_when_discovery_requires_it():
    """No --use-par: the discovery document's require_pushed_authorization_requests is
    enough; the user consents and the callback stores the tokens."""
    r = browser(consent_link("hana", "parmeta"))
    assert r.status_code == 302, (r.status_code, r.text)
    q = urllib.parse.parse_qs(urllib.parse.urlparse(r.headers["location"]).query)
    assert sorted(q) == ["client_id", "request_uri"], q
    assert OP2.stats()["par_requests"] == 1
    page = browser(to_callback(r.headers["location"], "hana"))
    assert page.status_code == 200 and "Access granted" in page.text, page.text
    assert OP2.issuer + " hana" not in user_tokens("idp-meta")  # the user is OP's hana
    assert OP.issuer + " hana" in user_tokens("idp-meta")
    OP2.stop()


def test_app_binding_completed_by_another_user_stores_nothing():
    user = OP.issuer + " alice"
    url = consent_link("alice", "app")
    page = browser(to_callback(url, "alice"))
    # the callback holds the tokens and sends the browser back to the application
    assert page.status_code == 302, (page.status_code, page.text)
    loc = page.headers["location"]
    assert loc.startswith(APP + "?session_id="), loc
    sid = urllib.parse.parse_qs(urllib.parse.urlparse(loc).query)["session_id"][0]
    SECRETS.append(sid)
    assert len(sid) == 43, sid
    assert user not in user_tokens("idp-app"), "stored before the application completed"
    st, body = agent("alice", "app")
    assert st == 401 and body["error"] == "consent_required", (st, body)
    # bob (authenticated, his own token) completes alice's session: refused
    st, body = complete(sid, "bob")
    assert st == 403 and body["error"] == "session_user_mismatch", (st, body)
    assert sid not in json.dumps(body)
    assert user_tokens("idp-app") == {}, user_tokens("idp-app")
    # the session is gone: not even alice can complete it now
    st, body = complete(sid, "alice")
    assert st == 404 and body["error"] == "session_not_found", (st, body)
    assert user_tokens("idp-app") == {}
    refused = [e for e in audit("consent.refused") if e["outcome"] == "session_user_mismatch"]
    assert refused and refused[-1]["end_user"] == OP.issuer + " bob", refused


def test_app_binding_completed_by_its_user():
    user = OP.issuer + " alice"
    url = consent_link("alice", "app")
    page = browser(to_callback(url, "alice"))
    assert page.status_code == 302, page.text
    sid = urllib.parse.parse_qs(urllib.parse.urlparse(page.headers["location"]).query)[
        "session_id"][0]
    SECRETS.append(sid)
    # refusals that do not consume the session: no token, a bad token, no/odd session
    r = session().post(BASE + "/oauth2/sessions/complete", headers={"x-airlock-session-id": sid},
                       timeout=30)
    assert r.status_code == 401 and r.json()["error"] == "unauthenticated", r.text
    # RFC 6750: the gateway's Bearer challenge, as on its other 401s
    assert r.headers.get("www-authenticate", "").startswith('Bearer realm="airlock"'), r.headers
    r = session().post(BASE + "/oauth2/sessions/complete", timeout=30,
                       headers={"x-airlock-session-id": sid,
                                "authorization": "Bearer " + token_for("alice")[:-5] + "AAAAA"})
    assert r.status_code == 401, r.text
    assert r.headers.get("www-authenticate", "").startswith('Bearer realm="airlock"'), r.headers
    for bad in (None, sid[:-1], sid + "x"):
        st, body = complete(bad, "alice")
        assert st in (400, 404) and body["error"] in ("bad_request", "session_not_found"), body
    st, body = complete(sid, "alice", extra={"X-Airlock-User": OP.issuer + " bob"})
    assert st == 403 and body["error"] == "policy_denied", body  # an untrusted user header
    r = session().get(BASE + "/oauth2/sessions/complete", timeout=30,
                      headers={"authorization": "Bearer " + token_for("alice"),
                               "x-airlock-session-id": sid})
    assert r.status_code == 405, r.text
    # the trusted runtime naming bob is bob: refused (and that consumes the session)...
    # so alice herself completes it first
    st, body = complete(sid, "alice")
    assert st == 200 and body == {"status": "completed", "target": "app"}, (st, body)
    assert user in user_tokens("idp-app"), user_tokens("idp-app")
    st, body = agent("alice", "app")
    assert st == 200 and body["sub"] == "alice", (st, body)
    st, body = complete(sid, "alice")  # once
    assert st == 404, body
    done = [e for e in audit("consent.completed") if e["target"] == "app"]
    assert done and done[-1]["end_user"] == user, done


def test_session_completion_never_blocks_a_worker():
    """The completion's store write runs on the store thread: while another process
    holds the SQLite store's write lock (as a slow PostgreSQL round trip would hold it),
    the workers go on answering; the completion finishes once the lock is free."""
    import sqlite3
    import threading
    url = consent_link("ivy", "app")
    page = browser(to_callback(url, "ivy"))
    sid = urllib.parse.parse_qs(urllib.parse.urlparse(page.headers["location"]).query)[
        "session_id"][0]
    SECRETS.append(sid)
    db = sqlite3.connect(os.path.join(AL.state_dir, "identity.db"), timeout=10,
                         isolation_level=None)
    db.execute("BEGIN EXCLUSIVE")
    held = time.time()
    out = {}
    t = threading.Thread(target=lambda: out.update(r=complete(sid, "ivy")))
    t.start()
    worst = 0.0
    try:
        while time.time() - held < 2.0:  # the completion waits for the lock meanwhile
            t0 = time.time()
            r = session().get(BASE + "/oauth2/sessions/complete", timeout=30)
            assert r.status_code == 405, r.status_code
            worst = max(worst, time.time() - t0)
        assert "r" not in out, out  # it did wait for the store
    finally:
        db.execute("ROLLBACK")
        db.close()
    t.join(30)
    print("a worker's slowest answer while the store was locked for %.1f s: %.3f s"
          % (time.time() - held, worst))
    assert worst < 1.0, worst
    assert out["r"] == (200, {"status": "completed", "target": "app"}), out
    assert OP.issuer + " ivy" in user_tokens("idp-app")


def test_app_binding_via_trusted_runtime_user_header():
    """A trusted runtime completes for the user it names (the data path's own rule):
    naming the user who started the flow works, naming another is refused."""
    url = consent_link("dave", "app")
    page = browser(to_callback(url, "dave"))
    sid = urllib.parse.parse_qs(urllib.parse.urlparse(page.headers["location"]).query)[
        "session_id"][0]
    SECRETS.append(sid)
    st, body = complete(sid, "rt", client="runtime",
                        extra={"X-Airlock-User": OP.issuer + " dave"})
    assert st == 200, (st, body)
    assert OP.issuer + " dave" in user_tokens("idp-app")


def test_return_url_outside_the_allow_list_is_refused():
    url = consent_link("erin", "app")
    bad = ["https://evil.test/oauth/done", "https://app.test@evil.test/oauth/done",
           "https://app.test/oauth/donex", "https://app.test/oauth/done/../../admin",
           "https://app.test/oauth/done/%2e%2e/x", "http://app.test/oauth/done",
           "https://app.test:8443/oauth/done", "//app.test/oauth/done",
           "https://app.test\\@evil.test/oauth/done", "https://app.test/oauth/done#x",
           "javascript:alert(1)"]
    for b in bad:
        r = browser(url + "?" + urllib.parse.urlencode({"return_url": b}))
        assert r.status_code == 400, (b, r.status_code)
        assert "location" not in r.headers and "return" in r.text, r.text
    r = browser(url + "?return_url=a&return_url=b")
    assert r.status_code == 400, r.status_code
    # the link is still good with an allowed one; the callback goes there
    r = browser(url + "?" + urllib.parse.urlencode({"return_url": APP2 + "step"}))
    assert r.status_code == 302, (r.status_code, r.text)
    page = browser(to_callback(r.headers["location"], "erin"))
    assert page.status_code == 302 and page.headers["location"].startswith(
        APP2 + "step?session_id="), page.headers
    SECRETS.append(urllib.parse.parse_qs(urllib.parse.urlparse(
        page.headers["location"]).query)["session_id"][0])
    refused = [e for e in audit("consent.refused") if e["outcome"] == "return_url_not_allowed"]
    assert len(refused) >= len(bad), len(refused)
    # check time: the table's allow-list itself
    path = os.path.join(AL.state_dir, "bad-return.yaml")
    with open(path, "w") as f:
        f.write("inbound: {mode: jwt, jwt: {discovery_url: https://idp.example/.well-known/"
                "openid-configuration, allowed_audiences: [a]}}\n"
                "targets:\n"
                "  - name: a\n"
                "    type: openapi\n"
                "    url: https://api.example.com\n"
                "    auth:\n"
                "      method: oauth2_3lo\n"
                "      provider: idp\n"
                "      binding: app\n"
                "      return_urls: [\"https://u@app.example/cb\"]\n")
    r = AL.cli("check", "-c", path)
    assert r.returncode != 0 and "%s:10:21: error:" % path in r.stderr + r.stdout, r.stderr
    assert "userinfo" in r.stderr + r.stdout


def test_force_authentication_asks_again_though_tokens_exist():
    user = OP.issuer + " frank"
    url = consent_link("frank", "api")
    page = browser(to_callback(url, "frank"))
    assert page.status_code == 200, page.text
    assert agent("frank", "api")[0] == 200
    assert user in user_tokens("idp")
    # the same provider's tokens exist, but this target wants its own consent
    st, body = agent("frank", "forced")
    assert st == 401 and body["error"] == "consent_required", (st, body)
    assert "force_authentication" in body["message"], body
    page = browser(to_callback(body["authorization_url"], "frank"))
    assert page.status_code == 200, page.text
    st, body = agent("frank", "forced")
    assert st == 200 and body["sub"] == "frank", (st, body)
    st, body = agent("frank", "forced")
    assert st == 200, body  # the consent's token serves until it changes
    # the second consent replaced the first one's tokens: airlock revoked the replaced
    # refresh token at the provider (asynchronously, after storing the new ones), so the
    # provider honours exactly one refresh token of frank's, the stored one
    rev = wait_for(lambda: [e for e in audit("user_token.revoke") if e["end_user"] == user],
                   timeout=15, what="the replaced refresh token's revocation audit")
    assert rev[-1]["outcome"] == "revoked" and rev[-1]["provider"] == "idp", rev
    assert OP.active_refresh_tokens("frank") == 1, OP.active_refresh_tokens("frank")
    st, body = agent("frank", "forced")
    assert st == 200 and body["sub"] == "frank", (st, body)


def test_replaced_tokens_are_left_alone_without_the_switch():
    """A provider made without --revoke-replaced-tokens (the default: Google and others
    revoke the whole grant for one token): a re-consent revokes nothing."""
    user = OP.issuer + " ivan"
    assert browser(to_callback(consent_link("ivan", "keep"), "ivan")).status_code == 200
    assert browser(to_callback(consent_link("ivan", "keep-forced"), "ivan")).status_code == 200
    st, body = agent("ivan", "keep-forced")
    assert st == 200 and body["sub"] == "ivan", (st, body)
    # a revocation would have started on the fetch thread right after that store; the
    # same replacement on provider idp (with the switch) starts one two consents later,
    # so once that one is audited, idp-keep's would have been too
    assert browser(to_callback(consent_link("ivan", "api"), "ivan")).status_code == 200
    assert browser(to_callback(consent_link("ivan", "forced"), "ivan")).status_code == 200
    rev = wait_for(lambda: [e for e in audit("user_token.revoke") if e["end_user"] == user],
                   timeout=15, what="idp's revocation audit")
    assert [e["provider"] for e in rev] == ["idp"], rev
    # idp-keep's two and idp's one (the same OAuth client: one account at the provider)
    assert OP.active_refresh_tokens("ivan") == 3, OP.active_refresh_tokens("ivan")


def test_a_failed_revocation_never_blocks_the_consent():
    """The replaced refresh token's revocation fails (its endpoint refuses): the new
    consent still completes and serves; the failure is audited and logged."""
    user = OP.issuer + " hugo"
    assert browser(to_callback(consent_link("hugo", "badrev"), "hugo")).status_code == 200
    page = browser(to_callback(consent_link("hugo", "badrev-forced"), "hugo"))
    assert page.status_code == 200 and "Access granted" in page.text, page.text
    st, body = agent("hugo", "badrev-forced")
    assert st == 200 and body["sub"] == "hugo", (st, body)
    rev = wait_for(lambda: [e for e in audit("user_token.revoke") if e["end_user"] == user],
                   timeout=15, what="the failed revocation's audit")
    assert rev[-1]["outcome"] == "error" and "revocation endpoint" in rev[-1]["error"], rev
    wait_for(lambda: "was not revoked" in open(AL.log_path).read(), timeout=10,
             what="the failed revocation's log line")
    assert OP.active_refresh_tokens("hugo") == 2  # the replaced one is still alive
    assert OP.issuer + " hugo" in user_tokens("idp-badrev")


def test_delete_user_token_revokes_at_the_provider():
    user = OP.issuer + " gina"
    page = browser(to_callback(consent_link("gina", "api"), "gina"))
    assert page.status_code == 200, page.text
    st, body = agent("gina", "api")
    assert st == 200 and body["sub"] == "gina", (st, body)
    assert OP.active_refresh_tokens("gina") == 1
    before = OP.stats()["revocations"]
    r = AL.cli("identity", "delete-user-token", "--provider", "idp", "--user", user,
               "--state-dir", AL.state_dir)
    assert r.returncode == 0, r.stderr
    # the running serve (SQLite store) drops its cached access token within a second:
    # the offboarded user's next request asks for consent again
    gone = time.time()
    while True:
        st, body = agent("gina", "api")
        if st == 401:
            break
        assert st == 200 and time.time() - gone < 5, (st, body)
        time.sleep(0.02)
    took = time.time() - gone
    print("delete-user-token -> 401 consent_required after %.3f s" % took)
    assert body["error"] == "consent_required", body
    assert took < 1.0, took
    out = json.loads(r.stdout)
    assert out["deleted"] is True and out["revocation"] == {
        "outcome": "revoked", "tokenType": "refresh_token"}, out
    assert OP.stats()["revocations"] == before + 1
    # the provider itself no longer honours the grant's refresh tokens
    assert OP.active_refresh_tokens("gina") == 0
    assert user not in user_tokens("idp")
    rev = audit("identity.user_token_revoke")
    assert rev and rev[-1]["outcome"] == "revoked" and rev[-1]["end_user"] == user, rev


def test_no_token_code_state_or_session_in_logs_or_responses():
    rs = json.loads(session().get("https://127.0.0.1:%d/__stats" % RS_PORT, verify=OP.ca,
                                  timeout=10).text)
    # the provider's list adds every refresh token, code and PKCE verifier it saw (the
    # revocations' tokens among them)
    secrets = [s for s in rs["tokens"] + SECRETS + OP.stats()["secrets_seen"]
               if s and len(s) >= 16]
    assert len(secrets) >= 8, len(secrets)
    AL.stop()
    texts = {"audit log": open(AL.audit_path).read(), "airlock's log": open(AL.log_path).read(),
             "agent responses": "\n".join(AGENT_SEEN)}
    for name, text in texts.items():
        for s in secrets:
            assert s not in text, "a token, code, state or session id in the %s" % name
        for s in (SECRET, PAR_SECRET):
            assert s not in text, "a client secret in the %s" % name


if __name__ == "__main__":
    run(globals())
