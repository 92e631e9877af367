"""Master-key rotation with users' 3LO tokens (issue 14 + the identity store): the real
binary, the real OpenID provider (oidc-provider, rotating refresh tokens) and a resource
server verifying each JWT, as test_oauth2_3lo.py.

  - alice and bob consent once; `airlock identity rotate-master-key` runs (the CLI) while
    serve runs and counts both user tokens among the rewrapped data keys;
  - alice's next request is 200 with her token, and a refresh right after the rotation
    (the upstream refuses her token) reads her row — sealed under the NEW key by the CLI —
    and stores the rotated refresh token under the new key too: list-user-tokens shows
    it, and a restarted serve opens it (200 with that very token, no refresh, no consent)
    and bob's (rewrapped by the CLI, never touched by serve);
  - a rotation that meets a user token row that does not open (carol's sealed blob
    damaged with sqlite3 for this test) fails with a message naming her and changes
    nothing: the key file, the check value and every provider and user row stay byte for
    byte, no "<key>.new" is left, and alice is still served;
  - no token, code, client secret or master key in the CLI's output, airlock's log or
    the audit log."""
import json
import os
import sqlite3
import sys
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from altest import *  # noqa: E402,F401,F403

AUD = "https://airlock.test"
API = "https://api.test/"
CLIENT, SECRET = "airlock-3lo-rot", "cs3r-" + os.urandom(10).hex()
OP = AL = RS = None
RS_PORT = 0
BASE = CALLBACK = KEY_FILE = ""
SEEN = []  # agent responses, CLI output, logs (serve's log is rewritten at a restart)
SECRETS = []
MASTER_KEYS = []
TOKENS = {}

TABLE = table_head(limits="  drain_timeout_ms: 2000\n") + inbound_jwt() + """
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


def cli(*args):
    r = AL.cli(*(list(args) + ["--state-dir", AL.state_dir]))
    SEEN.append(r.stdout + r.stderr)
    return r


def master_key():
    with open(os.path.join(AL.state_dir, "master.key")) as f:
        k = f.read().strip()
    MASTER_KEYS.append(k)
    return k


def test_start():
    global OP, AL, RS, RS_PORT, BASE, CALLBACK, KEY_FILE
    t = start_3lo(TABLE, API, AUD, CLIENT, SECRET)
    AL, OP, RS, RS_PORT, BASE, CALLBACK, KEY_FILE = (t.al, t.op, t.rs, t.rs_port, t.base,
                                                     t.callback, t.key_file)
    AL.create_oauth2_provider("idp", OP, CLIENT, SECRET)
    AL.start()


def agent(sub):
    if sub not in TOKENS:
        TOKENS[sub] = OP.user_access_token(KEY_FILE, sub, AUD, "agent")
    r = session().get(BASE + "/t/api/things", headers={"authorization": "Bearer " + TOKENS[sub]},
                      timeout=30)
    SEEN.append(r.text + json.dumps(dict(r.headers)))
    try:
        return r.status_code, r.json()
    except ValueError:
        return r.status_code, {"raw": r.text}


def consent(sub):
    st, body = agent(sub)
    assert st == 401 and body["error"] == "consent_required", (st, body)
    back = OP.consent(body["authorization_url"], sub, CALLBACK)
    q = urllib.parse.parse_qs(urllib.parse.urlparse(back).query)
    SECRETS.extend(q.get("code", []) + q.get("state", []))
    page = session().get(back, allow_redirects=False, timeout=30)
    SEEN.append(page.text)
    assert page.status_code == 200, (page.status_code, page.text)
    st, body = agent(sub)
    assert st == 200 and body["sub"] == sub, (st, body)
    return body


def user_tokens():
    r = cli("identity", "list-user-tokens", "--provider", "idp")
    assert r.returncode == 0, r.stderr
    return {t["user"]: t for t in json.loads(r.stdout)["userTokens"]}


def rs_revoke():
    return revoke_resource_tokens(OP, RS_PORT)


def test_rotation_while_serving_keeps_users_tokens():
    a0 = consent("alice")
    consent("bob")
    k0 = master_key()
    r = cli("identity", "rotate-master-key")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["rotated"] and out["rewrappedDataKeys"] == 3, out  # idp + alice + bob
    assert master_key() != k0
    st, body = agent("alice")
    assert st == 200 and body["sub"] == "alice", (st, body)
    # a refresh right after the rotation: airlock reads alice's row (rewrapped by the
    # CLI under the new key), refreshes, stores the rotated refresh token (new key)
    user = OP.issuer + " alice"
    before = user_tokens()[user]
    grants = OP.stats()["refresh_grants"]
    rs_revoke()
    st, body = agent("alice")
    assert st == 200, (st, body)
    assert body["sub"] == "alice" and body["jti"] != a0["jti"], body
    assert OP.stats()["refresh_grants"] == grants + 1
    after = wait_for(lambda: (lambda t: t if t["fingerprint"] != before["fingerprint"] else None)(
        user_tokens()[user]), 10, "the refreshed token in list-user-tokens")
    assert after["hasRefreshToken"], after
    assert "user_token.master_key" in AL.log_text()  # the vault followed the rotation
    # a restarted serve opens what the running one stored after the rotation, and bob's
    SEEN.append(AL.log_text())
    AL.stop()
    AL.start()
    grants = OP.stats()["refresh_grants"]
    st, again = agent("alice")  # the very token stored after the rotation: opened
    assert st == 200 and again["sub"] == "alice" and again["jti"] == body["jti"], (st, again)
    assert OP.stats()["refresh_grants"] == grants
    # bob's row was only rewrapped by the CLI (the resource server refuses his token
    # since rs_revoke, so this also opens his refresh token and refreshes)
    st, b = agent("bob")
    assert st == 200 and b["sub"] == "bob", (st, b)


def snapshot(db):
    c = sqlite3.connect(db, timeout=10)
    try:
        return {
            "meta": c.execute("SELECT k, v FROM meta WHERE k != 'generation' ORDER BY k")
            .fetchall(),
            "versions": c.execute("SELECT provider, version, wrapped_key, sealed FROM versions "
                                  "ORDER BY 1, 2").fetchall(),
            "users": c.execute("SELECT provider, user, fingerprint, updated_at, wrapped_key, "
                               "sealed FROM user_tokens ORDER BY 1, 2").fetchall(),
        }
    finally:
        c.close()


def test_rotation_that_meets_an_unopenable_user_row_changes_nothing():
    consent("carol")
    db = os.path.join(AL.state_dir, "identity.db")
    carol = OP.issuer + " carol"
    c = sqlite3.connect(db, timeout=10)
    (sealed,) = c.execute("SELECT sealed FROM user_tokens WHERE user = ?", (carol,)).fetchone()
    bad = bytearray(sealed)
    bad[len(bad) // 2] ^= 0x01  # one bit of the ciphertext: the GCM tag no longer matches
    c.execute("UPDATE user_tokens SET sealed = ? WHERE user = ?", (bytes(bad), carol))
    c.commit()
    c.close()
    before, k0 = snapshot(db), master_key()
    assert len(before["users"]) == 3, before["users"]
    r = cli("identity", "rotate-master-key")
    assert r.returncode != 0, r.stdout
    assert carol in r.stderr and "rotation aborted, nothing changed" in r.stderr, r.stderr
    assert snapshot(db) == before
    assert master_key() == k0
    assert not os.path.exists(os.path.join(AL.state_dir, "master.key.new"))
    st, body = agent("alice")
    assert st == 200 and body["sub"] == "alice", (st, body)
    # the operator's way out: delete the damaged row, then the rotation goes through
    r = cli("identity", "delete-user-token", "--provider", "idp", "--user", carol)
    assert r.returncode == 0, r.stderr
    r = cli("identity", "rotate-master-key")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["rewrappedDataKeys"] == 3  # idp + alice + bob
    master_key()
    st, body = agent("bob")
    assert st == 200 and body["sub"] == "bob", (st, body)


def test_no_token_code_secret_or_master_key_in_outputs():
    rs = json.loads(session().get("https://127.0.0.1:%d/__stats" % RS_PORT, verify=OP.ca,
                                  timeout=10).text)
    seen = OP.stats()["secrets_seen"]
    secrets = [s for s in rs["tokens"] + SECRETS + seen + MASTER_KEYS + [SECRET]
               if s and len(s) >= 16]
    assert len(secrets) >= 10 and len(MASTER_KEYS) >= 3, len(secrets)
    AL.stop()
    texts = {"cli, agent and pages": "\n".join(SEEN), "airlock's log": AL.log_text(),
             "audit log": open(AL.audit_path).read()}
    for name, text in texts.items():
        for s in secrets:
            assert s not in text, "a token, code, secret or master key in the %s" % name


if __name__ == "__main__":
    run(globals())
