"""Integration: `airlock identity` with the real binary — the full CLI round trip for
the three provider kinds, rotation with grace, rotate-master-key, the state-dir rule,
refusal of secrets on argv, key-file permissions and a wrong master key, usage exits,
and finally a search for every stored secret in every CLI output, the audit log and
the raw bytes of identity.db (+ -wal, -shm): none may be found."""
import hashlib
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from altest import *  # noqa: E402,F401

# Every secret this test stores; each must never be seen outside the store.
SECRETS = []
OUTPUTS = []  # every stdout/stderr the CLI printed


def secret(tag):
    s = "sk-%s-%s" % (tag, os.urandom(12).hex())
    SECRETS.append(s)
    return s


def fingerprint(s):
    return "sha256:" + hashlib.sha256(s.encode()).hexdigest()[:12]


STATE = tmpdir("altest-identity-")
STORES = [STATE]  # every state dir a test wrote to
AUDIT = os.path.join(STATE, "audit.log")


def need_bin():
    if not os.path.exists(AIRLOCK_BIN):
        raise Skip("airlock binary not built: %s" % AIRLOCK_BIN)


def cli(*args, stdin=None, env=None, state=True, cwd=None):
    if not os.path.exists(AIRLOCK_BIN):
        raise Skip("airlock binary not built: %s" % AIRLOCK_BIN)
    full = dict(os.environ)
    for k in ("AIRLOCK_STATE_DIR", "AIRLOCK_MASTER_KEY_FILE", "AIRLOCK_AUDIT_FILE"):
        full.pop(k, None)
    full.update(env or {})
    argv = [AIRLOCK_BIN, "identity"] + list(args)
    if state:
        argv += ["--state-dir", STATE]
    r = subprocess.run(argv, input=stdin, capture_output=True, text=True, env=full, cwd=cwd,
                       timeout=30)
    OUTPUTS.append(r.stdout)
    OUTPUTS.append(r.stderr)
    return r


def ok(r):
    assert r.returncode == 0, "exit %d: %s%s" % (r.returncode, r.stdout, r.stderr)
    return json.loads(r.stdout) if r.stdout.strip() else None


def test_api_key_round_trip():
    need_bin()
    k1 = secret("api1")
    out = ok(cli("create-api-key-credential-provider", "--name", "openai", "--environment",
                 "prod", "--description", "OpenAI production", "--tag", "team=ml",
                 "--api-key", "-", stdin=k1 + "\n"))
    assert out["name"] == "openai" and out["kind"] == "api_key", out
    assert out["version"] == 1 and out["environment"] == "prod", out
    assert out["fingerprint"] == fingerprint(k1), out  # the trailing newline is not part of it
    assert out["tags"] == {"team": "ml"}, out
    st = os.stat(os.path.join(STATE, "master.key"))
    assert st.st_mode & 0o777 == 0o600, oct(st.st_mode)
    # Duplicate name: exit 1, clear message.
    r = cli("create-api-key-credential-provider", "--name", "openai", "--api-key", "-",
            stdin=secret("dup"))
    assert r.returncode == 1 and "already exists" in r.stderr, r
    # From a file and from an environment variable.
    k2 = secret("file")
    path = os.path.join(tmpdir(), "key.txt")
    with open(path, "w") as f:
        f.write(k2 + "\n")
    out = ok(cli("create-api-key-credential-provider", "--name", "from-file",
                 "--api-key-file", path))
    assert out["fingerprint"] == fingerprint(k2)
    k3 = secret("env")
    out = ok(cli("create-api-key-credential-provider", "--name", "from-env", "--api-key-env",
                 "MY_KEY", env={"MY_KEY": k3}))
    assert out["fingerprint"] == fingerprint(k3)
    got = ok(cli("get-api-key-credential-provider", "--name", "openai"))
    assert got["description"] == "OpenAI production" and got["version"] == 1
    names = [p["name"] for p in ok(cli("list-api-key-credential-providers"))["credentialProviders"]]
    assert names == ["from-env", "from-file", "openai"], names


def test_rotation_with_grace_and_cut_off():
    need_bin()
    k = secret("rot2")
    out = ok(cli("update-api-key-credential-provider", "--name", "openai", "--api-key", "-",
                 stdin=k))
    assert out["version"] == 2 and out["fingerprint"] == fingerprint(k)
    states = {v["version"]: v["state"] for v in out["versions"]}
    assert states == {1: "grace", 2: "current"}, states
    assert out["versions"][0]["expiresTime"] is not None
    k = secret("rot3")
    out = ok(cli("update-api-key-credential-provider", "--name", "openai", "--api-key", "-",
                 "--grace", "0", stdin=k))
    states = {v["version"]: (v["state"], v["wiped"]) for v in out["versions"]}
    assert states == {1: ("expired", True), 2: ("expired", True), 3: ("current", False)}, states
    # verify-store opens exactly the current version now.
    v = ok(cli("verify-store"))
    mine = [p for p in v["credentialProviders"] if p["name"] == "openai"]
    assert [(p["version"], p["ok"]) for p in mine] == [(3, True)], mine
    r = cli("update-api-key-credential-provider", "--name", "openai", "--grace", "soon")
    assert r.returncode == 2, r


def test_oauth2_and_aws_providers():
    need_bin()
    cs = secret("oauth")
    out = ok(cli("create-oauth2-credential-provider", "--name", "github",
                 "--credential-provider-vendor", "GithubOauth2", "--client-id", "Iv1.abc",
                 "--client-secret", "-", "--environment", "dev", stdin=cs))
    cfg = out["oauth2ProviderConfig"]
    assert out["credentialProviderVendor"] == "GithubOauth2"
    assert cfg["tokenEndpoint"] == "https://github.com/login/oauth/access_token", cfg
    assert cfg["clientId"] == "Iv1.abc" and out["fingerprint"] == fingerprint(cs)
    r = cli("create-oauth2-credential-provider", "--name", "custom", "--client-id", "x",
            "--client-secret", "-", stdin=secret("custom"))
    assert r.returncode == 1 and "--discovery-url" in r.stderr, r
    out = ok(cli("create-oauth2-credential-provider", "--name", "custom", "--client-id", "x",
                 "--discovery-url", "https://idp.example/.well-known/openid-configuration",
                 "--token-endpoint-auth-method", "client_secret_post", "--client-secret", "-",
                 stdin=secret("custom2")))
    assert out["oauth2ProviderConfig"]["tokenEndpointAuthMethod"] == "client_secret_post"
    sak, tok = secret("aws"), secret("awstok")
    path = os.path.join(tmpdir(), "sak")
    with open(path, "w") as f:
        f.write(sak)
    out = ok(cli("create-aws-credential-provider", "--name", "aws-prod", "--access-key-id",
                 "AKIDEXAMPLE", "--secret-access-key-file", path, "--session-token", "-",
                 "--region", "eu-west-1", stdin=tok))
    assert out["awsConfig"] == {"accessKeyId": "AKIDEXAMPLE", "region": "eu-west-1"}, out
    assert out["fingerprint"] == fingerprint(sak)
    kinds = {p["name"]: p["kind"] for p in ok(cli("list-oauth2-credential-providers"))
             ["credentialProviders"]}
    assert kinds == {"custom": "oauth2", "github": "oauth2"}, kinds
    # The same name through another kind's verbs is not found.
    r = cli("get-aws-credential-provider", "--name", "github")
    assert r.returncode == 1 and "no aws credential provider" in r.stderr, r
    ok(cli("delete-oauth2-credential-provider", "--name", "custom"))
    r = cli("get-oauth2-credential-provider", "--name", "custom")
    assert r.returncode == 1, r


def test_secret_on_argv_is_refused():
    need_bin()
    for flag, verb in (("--api-key", "create-api-key-credential-provider"),
                       ("--client-secret", "create-oauth2-credential-provider"),
                       ("--secret-access-key", "create-aws-credential-provider"),
                       ("--session-token", "update-aws-credential-provider")):
        s = secret("argv")
        for args in ([flag, s], [flag + "=" + s]):
            r = cli(verb, "--name", "argv-test", *args)
            assert r.returncode == 2, (flag, r)
            assert "refusing a secret written on the command line" in r.stderr, r.stderr
            assert flag + " -" in r.stderr and flag + "-file" in r.stderr, r.stderr
            assert s not in r.stderr and s not in r.stdout
    # A stray positional argument (a pasted key) is refused without being echoed.
    s = secret("stray")
    r = cli("create-api-key-credential-provider", "--name", "argv-test", s)
    assert r.returncode == 2 and "unexpected argument" in r.stderr, r
    assert s not in r.stderr + r.stdout
    r = cli("get-api-key-credential-provider", "--name", "argv-test")
    assert r.returncode == 1, "a refused command must not have stored anything"


def test_usage_and_exit_codes():
    need_bin()
    r = cli("--help", state=False)
    assert r.returncode == 0 and "create-api-key-credential-provider" in r.stdout
    r = cli("create-api-key-credential-provider", "--help", state=False)
    assert r.returncode == 0 and "--api-key-file" in r.stdout and "--grace" not in r.stdout
    r = cli("update-api-key-credential-provider", "--help", state=False)
    assert r.returncode == 0 and "--grace" in r.stdout
    r = cli("frobnicate", state=False)
    assert r.returncode == 2 and "unknown verb" in r.stderr
    r = cli("list-api-key-credential-providers", "--bogus")
    assert r.returncode == 2 and "unknown option '--bogus'" in r.stderr
    r = cli("get-api-key-credential-provider")
    assert r.returncode == 2 and "--name is required" in r.stderr
    r = cli("create-api-key-credential-provider", "--name", "nokey")
    assert r.returncode == 2 and "--api-key -" in r.stderr
    r = subprocess.run([AIRLOCK_BIN, "help", "identity"], capture_output=True, text=True)
    assert r.returncode == 0 and "rotate-master-key" in r.stdout


def test_state_dir_rule():
    need_bin()
    other = tmpdir("altest-identity-env-")
    STORES.append(other)
    s = secret("envdir")
    ok(cli("create-api-key-credential-provider", "--name", "in-env-dir", "--api-key", "-",
           stdin=s, env={"AIRLOCK_STATE_DIR": other}, state=False))
    assert os.path.exists(os.path.join(other, "identity.db"))
    # --state-dir wins over the environment.
    r = cli("get-api-key-credential-provider", "--name", "in-env-dir",
            env={"AIRLOCK_STATE_DIR": other})
    assert r.returncode == 1, r
    # Default: ./.airlock under the working directory.
    cwd = tmpdir("altest-identity-cwd-")
    STORES.append(os.path.join(cwd, ".airlock"))
    ok(cli("create-api-key-credential-provider", "--name", "in-cwd", "--api-key", "-",
           stdin=secret("cwd"), state=False, cwd=cwd))
    assert os.path.exists(os.path.join(cwd, ".airlock", "identity.db"))
    # -c FILE: the table's state_dir.
    table = os.path.join(cwd, "table.yaml")
    with open(table, "w") as f:
        f.write("state_dir: %s\ntargets: []\n" % other)
    r = cli("get-api-key-credential-provider", "--name", "in-env-dir", "-c", table, state=False,
            cwd=cwd)
    assert ok(r)["name"] == "in-env-dir"


def test_rotate_master_key():
    need_bin()
    mk = os.path.join(STATE, "master.key")
    before = open(mk).read()
    out = ok(cli("rotate-master-key"))
    assert out["rotated"] is True and out["rewrappedDataKeys"] >= 4, out
    after = open(mk).read()
    assert before != after and len(after.strip()) == 64
    assert os.stat(mk).st_mode & 0o777 == 0o600
    v = ok(cli("verify-store"))
    assert v["credentialProviders"] and all(p["ok"] for p in v["credentialProviders"]), v
    # The old key no longer opens the store: a clear error, nothing decrypted.
    old = os.path.join(tmpdir(), "old.key")
    with open(old, "w") as f:
        f.write(before)
    os.chmod(old, 0o600)
    r = cli("verify-store", env={"AIRLOCK_MASTER_KEY_FILE": old})
    assert r.returncode == 1 and "does not match" in r.stderr, r
    r = cli("create-api-key-credential-provider", "--name", "x", "--api-key", "-",
            stdin=secret("wrongkey"), env={"AIRLOCK_MASTER_KEY_FILE": old})
    assert r.returncode == 1 and "does not match" in r.stderr, r
    # Metadata (get/list) needs no key at all.
    ok(cli("list-api-key-credential-providers", env={"AIRLOCK_MASTER_KEY_FILE": old}))


def test_key_file_permissions_refused():
    need_bin()
    mk = os.path.join(STATE, "master.key")
    os.chmod(mk, 0o640)
    try:
        r = cli("create-api-key-credential-provider", "--name", "perm", "--api-key", "-",
                stdin=secret("perm"))
        assert r.returncode == 1, r
        assert "chmod 600 " + mk in r.stderr and mk in r.stderr, r.stderr
        r = cli("verify-store")
        assert r.returncode == 1 and "chmod 600" in r.stderr
    finally:
        os.chmod(mk, 0o600)
    ok(cli("verify-store"))


def test_audit_log_records_every_change():
    need_bin()
    lines = [json.loads(l) for l in open(AUDIT).read().splitlines() if l.strip()]
    events = [(l["event"], l.get("provider"), l.get("version")) for l in lines]
    assert ("identity.create", "openai", 1) in events, events
    assert ("identity.rotate", "openai", 2) in events
    assert ("identity.rotate", "openai", 3) in events
    assert ("identity.delete", "custom", 1) in events
    assert any(e[0] == "identity.rotate_master_key" for e in events)
    for l in lines:
        assert l["user"] and l["time"].endswith("Z"), l


def test_no_secret_anywhere():
    need_bin()
    assert len(SECRETS) > 10
    blobs = {"cli output": "\n".join(OUTPUTS).encode()}
    for d in STORES:
        p = os.path.join(d, "audit.log")
        if os.path.exists(p):
            blobs[p] = open(p, "rb").read()
    for d in STORES:
        for name in ("identity.db", "identity.db-wal", "identity.db-shm"):
            p = os.path.join(d, name)
            if os.path.exists(p):
                blobs[p] = open(p, "rb").read()
    assert "identity.db" in " ".join(blobs), blobs.keys()
    for s in SECRETS:
        for where, data in blobs.items():
            assert s.encode() not in data, "secret %s... found in %s" % (s[:8], where)
            # Nor its hex or its base64 core.
            assert s.encode().hex().encode() not in data, where


run(globals())
