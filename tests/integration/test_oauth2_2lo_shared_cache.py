#!/usr/bin/python3
"""Integration: a shared 2LO token cache across replicas (issue 17 item 3, second half).

Three `airlock serve` replicas share the identity store in a private PostgreSQL
(altest.start_postgres). Target `shared` says `auth.token_cache: shared`; target `local`
is the same provider, scopes and resource with the default per-process cache. The
OpenID provider is the real npm oidc-provider (client credentials, JWT access tokens),
the upstream a resource server that verifies them; token requests are counted AT the
provider (/__stats), tokens at the upstream (distinct jti).

- a burst of simultaneous requests on a cold cache, spread over the three replicas ->
  exactly one token request at the provider, every request 200 with that one token
  (the store's refresh lock: one replica fetches and stores it sealed, the others wait,
  read it and use it);
- once that token has expired, another burst -> exactly one new token request;
- the same bursts on `local` -> one token request PER replica (the switch matters);
- the client secret and every token absent from the logs, the audit logs and a dump of
  the database (which holds the token only sealed)."""
import asyncio
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from altest import (AIRLOCK_BIN, Airlock, Skip, run, start_oidc,  # noqa: E402
                    start_postgres, start_resource_server, tmpdir)

API = "https://api.test/"
TTL = 5
PER_REPLICA = 12
C = {}

TABLE = """
listen:
  proxy: 127.0.0.1:{proxy_port}
  admin: 127.0.0.1:{admin_port}
limits:
  workers: 2
store:
  backend: postgres
  dsn_file: DSN_FILE
targets:
  - name: shared
    type: openapi
    url: https://127.0.0.1:RS_PORT/api/s
    allow_private_network: true
    ca_file: CA
    auth: {method: oauth2_2lo, provider: idp, scopes: [read], resource: "API",
           token_cache: shared}
  - name: local
    type: openapi
    url: https://127.0.0.1:RS_PORT/api/l
    allow_private_network: true
    ca_file: CA
    auth: {method: oauth2_2lo, provider: idp, scopes: [read], resource: "API"}
"""


async def _one(port, path):
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(("GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n"
             % path).encode())
    await w.drain()
    data = await asyncio.wait_for(r.read(), 30)
    w.close()
    head, _, body = data.partition(b"\r\n\r\n")
    try:
        j = json.loads(body)
    except ValueError:
        j = {"raw": body[:200].decode("utf-8", "replace")}
    return int(head.split(b" ", 2)[1]), j


def burst(target, tag):
    """PER_REPLICA simultaneous requests on each replica: [(status, body)]."""
    async def main():
        return await asyncio.gather(*[
            _one(al.proxy_port, "/t/%s/%s/%d" % (target, tag, i))
            for i in range(PER_REPLICA) for al in C["replicas"]])
    return asyncio.run(main())


def token_requests():
    return C["op"].stats()["token_requests"]


def rs_stats():
    import requests
    s = requests.Session()
    s.trust_env = False
    return s.get("https://127.0.0.1:%d/__stats" % C["rs_port"], verify=C["ca"],
                 timeout=10).json()


def audit_token_requests():
    n = 0
    for al in C["replicas"]:
        with open(al.audit_path) as f:
            n += sum(1 for line in f if '"token_request"' in line)
    return n


def test_start():
    if not os.path.exists(AIRLOCK_BIN):
        raise Skip("airlock binary not built: %s" % AIRLOCK_BIN)
    pg = C["pg"] = start_postgres()
    d = tmpdir("altest-2loshared-")
    C["key"] = os.path.join(d, "master.key")
    op = C["op"] = start_oidc(ttl=TTL, resources=[API])
    C["rs"], C["rs_port"], C["ca"] = start_resource_server(op, API)
    replicas = [Airlock("listen: {proxy: 127.0.0.1:{proxy_port}}\n",
                        env={"AIRLOCK_MASTER_KEY_FILE": C["key"]}) for _ in range(3)]
    for al in replicas:
        al.write_table(TABLE.replace("DSN_FILE", pg.dsn_file).replace("RS_PORT",
                                                                        str(C["rs_port"]))
                       .replace("CA", C["ca"]).replace("API", API))
    # one master key for every replica (made once by a SQLite store)
    env = dict(os.environ)
    env.pop("AIRLOCK_MASTER_KEY_FILE", None)
    seed = os.path.join(d, "seed")
    subprocess.run([AIRLOCK_BIN, "identity", "create-api-key-credential-provider", "--name", "s",
                    "--api-key", "-", "--state-dir", seed], input="x" * 24 + "\n",
                   capture_output=True, text=True, env=env, check=True)
    os.rename(os.path.join(seed, "master.key"), C["key"])
    r = replicas[0].cli("identity", "create-oauth2-credential-provider", "--name", "idp",
                        "--client-id", op.client_id, "--client-secret", "-",
                        "--discovery-url", op.discovery_url, "--ca-file", op.ca,
                        "--allow-private-network", "-c", replicas[0].table_path,
                        stdin_data=op.client_secret + "\n")
    assert r.returncode == 0, r.stderr
    C["replicas"] = [al.start() for al in replicas]


def check_one_token(results, what):
    statuses = [st for st, _ in results]
    assert statuses == [200] * len(results), (what, results[:3])
    jtis = {body["jti"] for _, body in results}
    assert len(jtis) == 1, (what, jtis)
    return jtis.pop()


def test_cold_burst_on_three_replicas_costs_one_token_request():
    before, audits = token_requests(), audit_token_requests()
    t0 = time.monotonic()
    results = burst("shared", "cold")
    jti = check_one_token(results, "cold")
    print("%d simultaneous requests over 3 replicas, cold shared cache: all 200 in %.2fs; "
          "token requests at the provider: %d" % (len(results), time.monotonic() - t0,
                                                  token_requests() - before))
    assert token_requests() == before + 1, C["op"].stats()
    assert audit_token_requests() == audits + 1, audit_token_requests() - audits
    C["first_jti"] = jti


def test_expired_token_is_fetched_again_once_for_all_replicas():
    before = token_requests()
    time.sleep(TTL + 0.5)  # past the token's life on every replica (no clock knob in serve)
    results = burst("shared", "expired")
    jti = check_one_token(results, "expired")
    print("after expiry: %d requests over 3 replicas, token requests at the provider: %d"
          % (len(results), token_requests() - before))
    assert jti != C["first_jti"]
    assert token_requests() == before + 1, C["op"].stats()


def test_local_cache_fetches_one_token_per_replica():
    before = token_requests()
    results = burst("local", "cold")
    statuses = [st for st, _ in results]
    assert statuses == [200] * len(results), results[:3]
    jtis = {body["jti"] for _, body in results}
    print("local cache: %d requests over 3 replicas, token requests at the provider: %d, "
          "distinct tokens: %d" % (len(results), token_requests() - before, len(jtis)))
    assert token_requests() == before + 3, C["op"].stats()
    assert len(jtis) == 3, jtis


def test_no_secret_in_logs_audit_or_database():
    toks = rs_stats()["tokens"]
    assert toks
    dump = C["pg"].dump().decode("utf-8", "replace")
    assert "2lo:" in dump, "the shared token row is not in the store"
    hay = [dump]
    for al in C["replicas"]:
        hay += [al.log_text(), open(al.audit_path).read()]
    for h in hay:
        assert C["op"].client_secret not in h, "client secret leaked"
        for t in toks:
            assert t not in h, "an access token leaked"
            assert t.split(".")[2] not in h, "a token signature leaked"
            assert t.split(".")[1] not in h, "a token's claims leaked"


def test_stop():
    for al in C.get("replicas", []):
        al.stop()
    for k in ("rs", "op"):
        if k in C:
            C[k].stop()
    if "pg" in C:
        C["pg"].stop()


if __name__ == "__main__":
    run(globals())
