"""Integration: one 3LO refresh across replicas (issue 17 item 3).

Two `airlock serve` replicas share the identity store and the user-token vault in a
private PostgreSQL (altest start_postgres). A user consents once through replica A
(the real OpenID provider, npm oidc-provider, which ROTATES refresh tokens and treats a
reused one as theft: invalid_grant, grant revoked). Once the access token has expired,
both replicas are asked for that user's upstream at the same instant (several requests
each): the store's refresh lock lets exactly one replica call the provider; the other
waits, reads the winner's stored token and uses it. So: exactly one refresh grant at
the provider, every request 200 with the user's token, no consent asked again, the
stored token is the refreshed one. Without the lock both replicas refresh with the same
refresh token, the second is refused and the user must consent again.
Then PostgreSQL is stopped: the replicas keep serving the user's token they hold, and a
replica started meanwhile is not ready until the database is back, then serves the
user's stored token without a restart. Last, `airlock identity delete-user-token`
through the CLI reaches all three replicas' caches within a second (NOTIFY): each asks
for consent again."""
import json
import os
import subprocess
import sys
import threading
import time
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from altest import *  # noqa: E402,F401,F403

AUD = "https://airlock.test"
API = "https://api.test/"
CLIENT, SECRET = "airlock-3lo", "cs3-" + os.urandom(10).hex()
TTL = 4
C = {}

TABLE = table_head() + """
store:
  backend: postgres
  dsn_file: DSN_FILE
identity:
  public_base_url: BASE_URL
""" + inbound_jwt() + """
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


def agent_token(sub):
    now = int(time.time())
    spec = {"base": {"iss": C["op"].issuer, "aud": AUD, "iat": now, "exp": now + 600,
                     "client_id": "agent", "scope": "read"},
            "tokens": [{"name": "t", "kind": "issuer", "claims": {"sub": sub}}]}
    r = subprocess.run([NODE, os.path.join(PEERS_DIR, "jwt_forge.js"), C["key_out"]],
                       input=json.dumps(spec), capture_output=True, text=True, cwd=TESTS_DIR,
                       timeout=30)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)["t"]


def agent(al, sub="alice"):
    r = session().get("http://127.0.0.1:%d/t/api/things" % al.proxy_port,
                      headers={"authorization": "Bearer " + C["tok"]}, timeout=30)
    try:
        return r.status_code, r.json()
    except ValueError:
        return r.status_code, {"raw": r.text}


def user_tokens():
    env = dict(os.environ, AIRLOCK_MASTER_KEY_FILE=C["key"])
    r = subprocess.run([AIRLOCK_BIN, "identity", "list-user-tokens", "--provider", "idp", "-c",
                        C["a"].table_path], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    return {t["user"]: t for t in json.loads(r.stdout)["userTokens"]}


def test_start():
    if not os.path.exists(AIRLOCK_BIN):
        raise Skip("airlock binary not built: %s" % AIRLOCK_BIN)
    pg = C["pg"] = start_postgres()
    d = tmpdir("altest-3lorep-")
    C["key"] = os.path.join(d, "master.key")
    C["key_out"] = os.path.join(d, "issuer-key.json")
    a = Airlock("listen: {proxy: 127.0.0.1:{proxy_port}}\n",
                env={"AIRLOCK_MASTER_KEY_FILE": C["key"]})
    b = Airlock("listen: {proxy: 127.0.0.1:{proxy_port}}\n",
                env={"AIRLOCK_MASTER_KEY_FILE": C["key"]})
    callback = "http://127.0.0.1:%d/oauth2/callback" % a.proxy_port
    op = C["op"] = start_oidc(ttl=TTL, resources=[API],
                              user_clients=[(CLIENT, SECRET, callback)], key_out=C["key_out"])
    rs, rs_port, _ = start_resource_server(op, API)
    C["rs_port"] = rs_port
    for al in (a, b):
        # both build their links on A's public URL: the one redirect_uri the client has
        al.write_table(oidc_table(TABLE.replace("DSN_FILE", pg.dsn_file), op, AUD, rs_port,
                                  BASE_URL="http://127.0.0.1:%d" % a.proxy_port))
    # the master key: made by a SQLite store once, then shared by CLI and replicas
    env = dict(os.environ)
    env.pop("AIRLOCK_MASTER_KEY_FILE", None)
    seed = os.path.join(d, "seed")
    subprocess.run([AIRLOCK_BIN, "identity", "create-api-key-credential-provider", "--name", "s",
                    "--api-key", "-", "--state-dir", seed], input="x" * 24 + "\n",
                   capture_output=True, text=True, env=env, check=True)
    os.rename(os.path.join(seed, "master.key"), C["key"])
    a.create_oauth2_provider("idp", op, CLIENT, SECRET, table=True)
    C["a"], C["b"] = a.start(), b.start()
    C["tok"] = agent_token("alice")


def test_consent_once_through_one_replica():
    a, b, op = C["a"], C["b"], C["op"]
    st, body = agent(a)
    assert st == 401 and body["error"] == "consent_required", (st, body)
    r = session().get(body["authorization_url"], allow_redirects=False, timeout=30)
    assert r.status_code == 302, r.text
    back = op.consent(r.headers["location"], "alice", "http://127.0.0.1:%d/oauth2/callback"
                      % a.proxy_port)
    page = session().get(back, allow_redirects=False, timeout=30)
    assert page.status_code == 200, page.text
    # both replicas use the one stored token (B never saw the consent)
    for al in (a, b):
        st, body = agent(al)
        assert st == 200 and body["sub"] == "alice", (st, body)
    assert len(user_tokens()) == 1


def test_expired_token_refreshed_once_for_two_replicas_at_the_same_instant():
    a, b, op = C["a"], C["b"], C["op"]
    user = op.issuer + " alice"
    before = user_tokens()[user]
    grants = op.stats()["refresh_grants"]
    # past the access token's life (TTL s, no clock knob in serve)
    time.sleep(TTL + 0.6)
    results, start = [], threading.Barrier(8)

    def one(al):
        start.wait()
        results.append(agent(al))

    threads = [threading.Thread(target=one, args=(al,)) for al in (a, b, a, b, a, b, a, b)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    took = time.monotonic() - t0
    statuses = [st for st, _ in results]
    print("8 requests (4 per replica) on an expired token: %s in %.2fs; provider refresh "
          "grants: %d" % (statuses, took, op.stats()["refresh_grants"] - grants))
    assert statuses == [200] * 8, results
    assert all(body["sub"] == "alice" for _, body in results), results
    assert op.stats()["refresh_grants"] == grants + 1, op.stats()
    after = user_tokens()[user]
    assert after["fingerprint"] != before["fingerprint"] and after["hasRefreshToken"]
    # the rotated refresh token works: the next expiry is refreshed again, once
    time.sleep(TTL + 0.6)
    st, body = agent(b)
    st2, body2 = agent(a)
    assert (st, st2) == (200, 200), (body, body2)
    assert op.stats()["refresh_grants"] == grants + 2, op.stats()
    for al in (a, b):
        assert "invalid_grant" not in al.log_text()



def test_postgres_down_cached_user_token_serves_and_a_replica_started_meanwhile_recovers():
    a, b, pg, op = C["a"], C["b"], C["pg"], C["op"]
    # a token that outlives this test even on a slow machine: expire the short one and
    # let the refresh get a long one
    op.control(ttl=300)
    time.sleep(TTL + 0.6)
    for al in (a, b):
        st, _ = agent(al)
        assert st == 200
    pg.stop()
    # the replicas keep using the user's token they hold (it is still valid)
    for al in (a, b):
        st, body = agent(al)
        assert st == 200 and body["sub"] == "alice", (st, body)
    # a replica started now: not ready (nothing loaded), then everything by itself
    c = Airlock("listen: {proxy: 127.0.0.1:{proxy_port}}\n",
                env={"AIRLOCK_MASTER_KEY_FILE": C["key"]})
    with open(a.table_path) as f:
        c.write_table(f.read().replace("127.0.0.1:%d" % a.proxy_port,
                                       "127.0.0.1:{proxy_port}", 1)
                      .replace("127.0.0.1:%d" % a.admin_port, "127.0.0.1:{admin_port}", 1))
    c.start()
    C["c"] = c
    ready = lambda: http_get("http://127.0.0.1:%d/readyz" % c.admin_port, timeout=3)[0]
    assert ready() == 503
    pg.start()
    wait_for(lambda: ready() == 200, timeout=15, what="the late replica ready after recovery")
    wait_for(lambda: agent(c)[0] == 200, timeout=15, interval=0.2,
             what="the late replica serving the user's stored token")
    st, body = agent(c)
    assert body["sub"] == "alice", body
    assert "user_tokens.unavailable" not in c.log_text()



def rs_revoke():
    """The resource server refuses every token it has seen (an upstream 401)."""
    return revoke_resource_tokens(C["op"], C["rs_port"])


def test_master_key_rotation_through_the_cli_while_replicas_serve():
    """rotate-master-key rewraps alice's row in PostgreSQL with the providers; both
    replicas then open it and seal their refreshes with the new key: no consent again."""
    a, b, op = C["a"], C["b"], C["op"]
    for al in (a, b):
        assert agent(al)[0] == 200
    with open(C["key"]) as f:
        k0 = f.read()
    env = dict(os.environ, AIRLOCK_MASTER_KEY_FILE=C["key"])
    r = subprocess.run([AIRLOCK_BIN, "identity", "rotate-master-key", "-c", a.table_path],
                       capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["rewrappedDataKeys"] == 2, r.stdout  # idp + alice
    with open(C["key"]) as f:
        assert f.read() != k0
    user = op.issuer + " alice"
    before = user_tokens()[user]
    grants = op.stats()["refresh_grants"]
    rs_revoke()  # B refreshes: it opens the row the CLI rewrapped, seals under the new key
    st, body = agent(b)
    assert st == 200 and body["sub"] == "alice", (st, body)
    assert op.stats()["refresh_grants"] == grants + 1
    # A's token is refused too: A reads the row B stored (new key) and uses it
    st, body = agent(a)
    assert st == 200 and body["sub"] == "alice", (st, body)
    after = user_tokens()[user]
    assert after["fingerprint"] != before["fingerprint"], (before, after)
    for al in (a, b):
        assert "does not open" not in al.log_text() and "user_token.unreadable" not in \
            al.log_text()


def test_delete_user_token_reaches_every_replica_within_a_second():
    a = C["a"]
    replicas = [C[k] for k in ("a", "b", "c") if k in C]
    for al in replicas:
        st, _ = agent(al)
        assert st == 200
    env = dict(os.environ, AIRLOCK_MASTER_KEY_FILE=C["key"])
    r = subprocess.run([AIRLOCK_BIN, "identity", "delete-user-token", "--provider", "idp",
                        "--user", C["op"].issuer + " alice", "-c", a.table_path],
                       capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    t0 = time.monotonic()
    pending = list(replicas)
    while pending:
        pending = [al for al in pending if agent(al)[0] != 401]
        assert time.monotonic() - t0 < 5, "a replica still uses the deleted user's token"
    took = time.monotonic() - t0
    print("delete-user-token: every replica asks for consent %.3fs after the CLI returned"
          % took)
    assert took < 1.0, took
    for al in replicas:
        st, body = agent(al)
        assert st == 401 and body["error"] == "consent_required", (st, body)


if __name__ == "__main__":
    run(globals())
