"""Integration: the identity store in PostgreSQL (issue 17 items 1, 2, 4).

A private PostgreSQL (Debian's package, initdb on a temp dir, free port; see altest
Postgres) holds the store of two `airlock serve` replicas and of the CLI, all chosen by
the table's `store: {backend: postgres, dsn_file: F}`:
  - providers created, rotated and deleted through the CLI land in PostgreSQL (schema
    version table, generation), and a DSN written in the table is refused at line:col;
  - libpq's connection errors (a user named like the password, a URI to a closed port,
    a string that does not parse; from a file and from a variable) never show the
    password;
  - a rotation through the CLI reaches BOTH running serves within one second (LISTEN/
    NOTIFY; the measured time is printed), a new provider and a delete too;
  - `airlock store migrate` copies sqlite -> postgres and back, verified, idempotent;
  - the refresh lock and expect_generation on this server (the unit test binary
    test_identity_refresh_lock with AIRLOCK_TEST_PG_DSN);
  - PostgreSQL stopped: both serves keep injecting the cached key, /readyz stays ready,
    CLI writes fail with a clear message and a non-zero exit; a serve started while the
    database is down is not ready, and everything recovers by itself when it returns;
  - the DSN password and the secrets appear in no log, audit line or `ps` output, and
    `pg_dump` of the database holds no plaintext secret."""
import json
import os
import subprocess
import sys
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from altest import *  # noqa: E402,F401

TABLE = """
listen:
  proxy: 127.0.0.1:{proxy_port}
  admin: 127.0.0.1:{admin_port}
store:
  backend: postgres
  dsn_file: DSN_FILE
targets:
  - name: echo
    type: openapi
    url: http://127.0.0.1:ECHO_PORT/api
    allow_insecure_upstream: true
    allow_private_network: true
    scrub_echoed_credential: false
    auth:
      method: api_key
      provider: rotating-key
  - name: later
    type: openapi
    url: http://127.0.0.1:ECHO_PORT/later
    allow_insecure_upstream: true
    allow_private_network: true
    scrub_echoed_credential: false
    auth:
      method: api_key
      provider: later-key
"""

S = {}
SECRETS = []


def secret(tag):
    v = "sk-%s-%s" % (tag, os.urandom(10).hex())
    SECRETS.append(v)
    return v


def cli(*args, stdin_data=None, table=None):
    env = dict(os.environ)
    env["AIRLOCK_MASTER_KEY_FILE"] = S["key_file"]
    env["AIRLOCK_AUDIT_FILE"] = S["cli_audit"]
    env.pop("AIRLOCK_STATE_DIR", None)
    argv = [AIRLOCK_BIN] + [str(a) for a in args] + ["-c", table or S["table"]]
    r = subprocess.run(argv, input=stdin_data, capture_output=True, text=True, env=env,
                       timeout=60)
    S.setdefault("cli_out", []).append(r.stdout + r.stderr)
    return r


def put_key(name, value, verb="update"):
    r = cli("identity", "%s-api-key-credential-provider" % verb, "--name", name, "--api-key",
            "-", stdin_data=value + "\n")
    assert r.returncode == 0, r.stderr
    return r


def injected(al, target="echo"):
    with urllib.request.urlopen(al.gateway_url(target, "/x"), timeout=5) as r:
        body = json.loads(r.read())
    return (body["headers"].get("authorization") or [None])[0]


def injected_or_status(al, target="echo"):
    try:
        return injected(al, target)
    except urllib.error.HTTPError as e:
        return e.code


def readyz(al):
    return http_get("http://127.0.0.1:%d/readyz" % al.admin_port, timeout=3)[0]


def serve(name):
    table = TABLE.replace("ECHO_PORT", str(S["echo_port"])).replace("DSN_FILE",
                                                                     S["pg"].dsn_file)
    al = Airlock(table, env={"AIRLOCK_MASTER_KEY_FILE": S["key_file"]})
    al.name = name
    return al


def setup():
    if "pg" in S:
        return
    if not os.path.exists(AIRLOCK_BIN):
        raise Skip("airlock binary not built: %s" % AIRLOCK_BIN)
    t0 = time.monotonic()
    S["pg"] = start_postgres()
    print("postgres up in %.2fs" % (time.monotonic() - t0))
    S["echo"], S["echo_port"], _ = start_echo()
    d = tmpdir("altest-pgcli-")
    os.chmod(d, 0o700)
    S["dir"] = d
    S["key_file"] = os.path.join(d, "master.key")
    S["cli_audit"] = os.path.join(d, "cli-audit.log")
    S["table"] = os.path.join(d, "table.yaml")
    with open(S["table"], "w") as f:
        f.write("state_dir: %s\nstore:\n  backend: postgres\n  dsn_file: %s\n"
                % (os.path.join(d, "state"), S["pg"].dsn_file))
    # The master key: generated once by a SQLite store, then shared by everyone.
    env = dict(os.environ)
    env.pop("AIRLOCK_MASTER_KEY_FILE", None)
    r = subprocess.run([AIRLOCK_BIN, "identity", "create-api-key-credential-provider", "--name",
                        "seed", "--api-key", "-", "--state-dir", os.path.join(d, "seed")],
                       input=secret("seed") + "\n", capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    os.rename(os.path.join(d, "seed", "master.key"), S["key_file"])


def test_cli_providers_on_postgres():
    setup()
    S["k1"] = secret("v1")
    put_key("rotating-key", S["k1"], "create")
    S["tmp1"] = secret("tmp")
    put_key("tmp-key", S["tmp1"], "create")
    put_key("tmp-key", secret("tmp2"))
    r = cli("identity", "delete-api-key-credential-provider", "--name", "tmp-key")
    assert r.returncode == 0, r.stderr
    r = cli("identity", "list-api-key-credential-providers")
    assert r.returncode == 0, r.stderr
    names = [p["name"] for p in json.loads(r.stdout)["credentialProviders"]]
    assert names == ["rotating-key"], names
    pg = S["pg"]
    assert pg.psql("SELECT version FROM schema_version").split() == ["1"]
    assert pg.psql("SELECT name, current_version FROM providers").split() == ["rotating-key|1"]
    assert int(pg.psql("SELECT v FROM meta WHERE k = 'generation'")) >= 4
    # No SQLite store appeared in the state dir: the table chose PostgreSQL.
    assert not os.path.exists(os.path.join(S["dir"], "state", "identity.db"))


def test_dsn_in_table_refused_at_line_col():
    setup()
    bad = os.path.join(S["dir"], "bad.yaml")
    cases = [
        ("store:\n  backend: postgres\n  dsn: \"%s\"\n" % S["pg"].dsn, "bad.yaml:3:3"),
        ("store:\n  backend: postgres\n  password: hunter2\n  dsn_env: X\n", "bad.yaml:3:3"),
        ("store:\n  backend: postgres\n  dsn_file: \"%s\"\n" % S["pg"].dsn, "bad.yaml:3:13"),
        ("store:\n  backend: postgres\n  dsn_env: \"postgresql://a:%s@h/db\"\n" % S["pg"].password,
         "bad.yaml:3:12"),
        ("store:\n  backend: postgres\n", "bad.yaml:2:12"),
        ("store:\n  backend: postgress\n", "bad.yaml:2:12"),
        ("store:\n  dsn_env: AIRLOCK_DSN\n", "bad.yaml:2:12"),
    ]
    for text, where in cases:
        with open(bad, "w") as f:
            f.write(text)
        r = subprocess.run([AIRLOCK_BIN, "check", "-c", bad], capture_output=True, text=True)
        out = r.stdout + r.stderr
        assert r.returncode != 0, (text, out)
        assert where in out, (text, out)
        assert S["pg"].password not in out, out
        r = cli("identity", "list-api-key-credential-providers", table=bad)
        assert r.returncode != 0 and where in r.stderr, (text, r.stderr)
        assert S["pg"].password not in r.stdout + r.stderr


def test_connection_errors_never_show_the_password():
    """libpq's messages name host and user: a DSN whose user IS the password, a URI with
    the password to a closed port, a DSN that does not parse, the DSN from a variable —
    every CLI error and log line has the password cut out."""
    setup()
    pg, d = S["pg"], S["dir"]
    pw = "Pw-" + os.urandom(8).hex()
    closed = free_port()
    cases = [
        ("host=127.0.0.1 port=%d dbname=airlock user=%s password=%s" % (pg.port, pw, pw),
         "[REDACTED]"),
        ("postgresql://airlock:%s@127.0.0.1:%d/airlock" % (pw, closed), "unreachable"),
        ("host=127.0.0.1 port=%d password=%s nonsense_option=%s" % (pg.port, pw, pw),
         "not valid"),
        ("host=127.0.0.1 port=%d dbname=%s user=airlock password=%s" % (pg.port, pw, pw),
         "password authentication failed"),
    ]
    for i, (dsn, want) in enumerate(cases):
        for via in ("file", "env"):
            table = os.path.join(d, "bad-dsn.yaml")
            env_extra = {}
            if via == "file":
                f = os.path.join(d, "bad%d.dsn" % i)
                with open(f, "w") as fh:
                    fh.write(dsn)
                os.chmod(f, 0o600)
                src = "dsn_file: %s" % f
            else:
                env_extra["BAD_DSN"] = dsn
                src = "dsn_env: BAD_DSN"
            with open(table, "w") as fh:
                fh.write("state_dir: %s\nstore: {backend: postgres, %s}\n"
                         % (os.path.join(d, "state"), src))
            env = dict(os.environ, AIRLOCK_MASTER_KEY_FILE=S["key_file"], **env_extra)
            r = subprocess.run([AIRLOCK_BIN, "identity", "create-api-key-credential-provider",
                                "--name", "x", "--api-key", "-", "-c", table], input="k" * 20,
                               capture_output=True, text=True, env=env, timeout=60)
            out = r.stdout + r.stderr
            assert r.returncode != 0, (dsn, out)
            assert want in out, (i, via, out)
            assert pw not in out, "the password is in an error: %s" % out
            S.setdefault("cli_out", []).append(out)


def wait_both(replicas, want, timeout):
    """Seconds until every replica injects `want` (polling each at ~5 ms)."""
    t0 = time.monotonic()
    pending = list(replicas)
    while pending:
        pending = [al for al in pending if injected(al) != want]
        if time.monotonic() - t0 > timeout:
            raise AssertionError("not every replica injects the new key after %ss" % timeout)
        if pending:
            time.sleep(0.005)
    return time.monotonic() - t0


def test_two_serves_pick_up_a_rotation_within_one_second():
    setup()
    a, b = serve("a").start(), serve("b").start()
    S["a"], S["b"] = a, b
    for al in (a, b):
        assert injected(al) == "Bearer " + S["k1"]
        assert readyz(al) == 200
    times = []
    for i in range(3):
        k = secret("rot%d" % i)
        t0 = time.monotonic()
        put_key("rotating-key", k)
        cli_s = time.monotonic() - t0
        times.append(wait_both((a, b), "Bearer " + k, timeout=10))
        print("rotation %d: CLI %.3fs, then both replicas inject it after %.3fs"
              % (i, cli_s, times[-1]))
        S["k"] = k
    print("propagation (after the CLI returned): max %.3fs, mean %.3fs"
          % (max(times), sum(times) / len(times)))
    assert max(times) < 1.0, times
    # A provider created through the CLI is used at once by both.
    lk = secret("later")
    put_key("later-key", lk, "create")
    t0 = time.monotonic()
    wait_for(lambda: all(injected_or_status(al, "later") == "Bearer " + lk for al in (a, b)),
             timeout=5, what="both replicas use the new provider")
    print("new provider used by both after %.3fs" % (time.monotonic() - t0))
    assert "identity.reload" in a.log_text() and "identity.reload" in b.log_text()


def test_postgres_down_serving_continues_writes_fail_then_recovery():
    setup()
    a, b, pg = S["a"], S["b"], S["pg"]
    pg.stop()
    for al in (a, b):
        for _ in range(5):
            assert injected(al) == "Bearer " + S["k"]
        assert readyz(al) == 200
    r = cli("identity", "update-api-key-credential-provider", "--name", "rotating-key",
            "--api-key", "-", stdin_data=secret("down") + "\n")
    assert r.returncode != 0
    assert "unreachable" in r.stderr and "nothing was changed" in r.stderr, r.stderr
    assert pg.password not in r.stderr
    # A replica started while the database is down: alive, but not ready.
    c = serve("c").start()
    S["c"] = c
    time.sleep(0.3)
    assert readyz(c) == 503, readyz(c)
    assert injected(a) == "Bearer " + S["k"]
    pg.start()
    # Writes work again; every replica (c included) catches up by itself.
    k = secret("back")
    wait_for(lambda: cli("identity", "update-api-key-credential-provider", "--name",
                         "rotating-key", "--api-key", "-", stdin_data=k + "\n").returncode == 0,
             timeout=10, what="a CLI write after PostgreSQL came back", interval=0.2)
    t0 = time.monotonic()
    wait_for(lambda: all(injected_or_status(al) == "Bearer " + k for al in (a, b, c)),
             timeout=10, what="every replica injects the key written after recovery")
    print("after recovery: every replica injects the new key %.3fs after the write"
          % (time.monotonic() - t0))
    wait_for(lambda: readyz(c) == 200, timeout=10, what="the late replica becomes ready")
    S["k"] = k
    assert "identity.store_unavailable" in a.log_text()
    assert "identity.store_reconnected" in a.log_text()


def test_store_migrate_both_ways_verified_and_idempotent():
    setup()
    d = S["dir"]
    back = os.path.join(d, "back")
    r = cli("store", "migrate", "--from", "postgres", "--to", "sqlite:" + back)
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["verified"] is True and res["providers"] == 2, res
    # The SQLite copy opens with the same key and holds the current secret.
    env = dict(os.environ, AIRLOCK_MASTER_KEY_FILE=S["key_file"])
    r2 = subprocess.run([AIRLOCK_BIN, "identity", "get-api-key-credential-provider", "--name",
                         "rotating-key", "--state-dir", back], capture_output=True, text=True,
                        env=env)
    assert r2.returncode == 0, r2.stderr
    assert json.loads(r2.stdout)["version"] >= 5
    # sqlite -> a fresh PostgreSQL database, twice (idempotent), verified.
    pg = S["pg"]
    pg.psql("CREATE DATABASE airlock2 OWNER airlock;", db="postgres")
    dsn2 = os.path.join(d, "dsn2")
    fd = os.open(dsn2, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(pg.dsn.replace("dbname=airlock", "dbname=airlock2"))
    for _ in range(2):
        r = cli("store", "migrate", "--from", "sqlite:" + back, "--to", "postgres",
                "--dsn-file", dsn2)
        assert r.returncode == 0, r.stderr
        again = json.loads(r.stdout)
        assert again["verified"] is True and again["providers"] == res["providers"]
        assert again["versions"] == res["versions"] and again["meta"] == res["meta"]
    a1 = pg.psql("SELECT name, current_version, encode(sha256(sealed), 'hex') FROM versions v "
                 "JOIN providers p ON p.name = v.provider ORDER BY 1, 2, 3")
    a2 = pg.psql("SELECT name, current_version, encode(sha256(sealed), 'hex') FROM versions v "
                 "JOIN providers p ON p.name = v.provider ORDER BY 1, 2, 3", db="airlock2")
    assert a1 == a2 and a1.strip()
    # A destination sealed by another master key is refused.
    other = os.path.join(d, "other")
    env2 = dict(os.environ)
    env2.pop("AIRLOCK_MASTER_KEY_FILE", None)
    subprocess.run([AIRLOCK_BIN, "identity", "create-api-key-credential-provider", "--name", "o",
                    "--api-key", "-", "--state-dir", other], input="x" * 20 + "\n",
                   capture_output=True, text=True, env=env2, check=True)
    r = cli("store", "migrate", "--from", "postgres", "--to", "sqlite:" + other)
    assert r.returncode != 0 and "another master key" in r.stderr, r.stderr


def test_refresh_lock_and_store_semantics_on_postgres():
    """tests/unit/test_identity_refresh_lock.c against this server: the advisory refresh
    lock (wait, timeout, dead holder), one refresh of four racers, expect_generation."""
    setup()
    binary = os.path.join(os.path.dirname(os.path.abspath(AIRLOCK_BIN)), "tests",
                          "test_identity_refresh_lock")
    if not os.path.exists(binary):
        raise Skip("unit test binary not built: %s" % binary)
    env = dict(os.environ, AIRLOCK_TEST_PG_DSN=S["pg"].dsn)  # env, never argv
    r = subprocess.run([binary], capture_output=True, text=True, env=env, timeout=120)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    assert "_postgres" in out and out.count("[       OK ]") == 10, out[-3000:]
    S.setdefault("cli_out", []).append(out)


def test_rotation_rewraps_user_tokens_on_postgres():
    """tests/unit/test_identity_rotate_users.c against this server, on a database of its
    own: rotate-master-key rewraps users' 3LO tokens with the providers in one
    transaction; a row that does not open aborts it with every row unchanged."""
    setup()
    binary = os.path.join(os.path.dirname(os.path.abspath(AIRLOCK_BIN)), "tests",
                          "test_identity_rotate_users")
    if not os.path.exists(binary):
        raise Skip("unit test binary not built: %s" % binary)
    pg = S["pg"]
    pg.psql("CREATE DATABASE airlock_rot OWNER airlock;", db="postgres")
    env = dict(os.environ, AIRLOCK_TEST_PG_DSN=pg.dsn.replace("dbname=airlock",
                                                              "dbname=airlock_rot"))
    env.pop("AIRLOCK_MASTER_KEY_FILE", None)
    r = subprocess.run([binary], capture_output=True, text=True, env=env, timeout=120)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    assert out.count("[  PASSED  ] 2 test(s)") == 2, out[-3000:]  # sqlite, postgres


def test_no_password_or_secret_in_logs_audit_ps_or_dump():
    setup()
    pg = S["pg"]
    texts = {"cli": "\n".join(S.get("cli_out", [])), "cli-audit": open(S["cli_audit"]).read()}
    for n in ("a", "b", "c"):
        if n in S:
            texts["serve-" + n] = S[n].log_text()
            if os.path.exists(S[n].audit_path):
                texts["audit-" + n] = open(S[n].audit_path).read()
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    texts["ps"] = ps
    for n in ("a", "b", "c"):
        if n in S:
            with open("/proc/%d/cmdline" % S[n].pid, "rb") as f:
                texts["cmdline-" + n] = f.read().decode()
    for name, text in texts.items():
        assert pg.password not in text, "the DSN password is in %s" % name
        assert "password=" not in text, "a connection string is in %s" % name
        for s in SECRETS:
            assert s not in text, "a secret is in %s" % name
    dump = pg.dump()
    assert b"rotating-key" in dump  # the dump is of the right database
    for s in SECRETS:
        assert s.encode() not in dump, "plaintext secret in pg_dump"
    print("checked %d logs/audits/ps texts and a %d-byte pg_dump for %d secrets"
          % (len(texts), len(dump), len(SECRETS)))


if __name__ == "__main__":
    run(globals())
