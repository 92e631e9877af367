"""Integration: `airlock identity list-user-tokens` / `delete-user-token` (3LO user
tokens, issue 14) with the real binary — metadata only (never a sealed blob), the
--provider filter, delete with its audit line (provider, end user, outcome; nothing
sealed), a second delete and missing flags refused with the documented exit codes, and
a store that does not exist listed as empty without being created.

The rows are written with Python's sqlite3 because nothing but the consent flow (not
merged yet) creates them; only their metadata columns matter to these verbs, so the
sealed columns hold marker bytes that must never appear in any output."""
import json
import os
import sqlite3
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from altest import *  # noqa: E402,F401

MARK = b"SEALED-MARKER-" + os.urandom(8).hex().encode()


def cli(state, *args):
    if not os.path.exists(AIRLOCK_BIN):
        raise Skip("airlock binary not built: %s" % AIRLOCK_BIN)
    env = dict(os.environ)
    for k in ("AIRLOCK_STATE_DIR", "AIRLOCK_MASTER_KEY_FILE", "AIRLOCK_AUDIT_FILE"):
        env.pop(k, None)
    r = subprocess.run([AIRLOCK_BIN, "identity"] + list(args) + ["--state-dir", state],
                       capture_output=True, text=True, env=env, timeout=30, input="cs-secret")
    assert MARK.decode() not in r.stdout + r.stderr
    return r


def store_with_rows():
    state = tmpdir("altest-usertok-")
    r = cli(state, "create-oauth2-credential-provider", "--name", "gh", "--client-id", "cid",
            "--client-secret", "-", "--issuer", "https://idp.example", "--authorization-endpoint",
            "https://idp.example/authorize", "--token-endpoint", "https://idp.example/token")
    assert r.returncode == 0, r.stderr
    db = sqlite3.connect(os.path.join(state, "identity.db"))
    rows = [("gh", "https://idp.example alice", "openid repo", 100, 400, 1),
            ("gh", "https://idp.example bob", "repo", 110, 0, 0),
            ("slack", "https://idp.example alice", "chat", 120, 500, 1)]
    for p, u, sc, ob, ex, hr in rows:
        db.execute("INSERT INTO user_tokens (provider, user, scope, obtained_at, expires_at, "
                   "updated_at, has_refresh, fingerprint, wrapped_key, sealed) "
                   "VALUES (?,?,?,?,?,?,?,?,?,?)",
                   (p, u, sc, ob, ex, ob, hr, "sha256:0123456789ab", MARK, MARK))
    db.commit()
    db.close()
    return state


def test_list_is_metadata_only_and_filtered():
    state = store_with_rows()
    r = cli(state, "list-user-tokens")
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)["userTokens"]
    assert [(t["provider"], t["user"]) for t in got] == [
        ("gh", "https://idp.example alice"), ("gh", "https://idp.example bob"),
        ("slack", "https://idp.example alice")]
    assert got[0] == {"provider": "gh", "user": "https://idp.example alice",
                      "scope": "openid repo", "obtainedAt": 100, "expiresAt": 400,
                      "updatedAt": 100, "hasRefreshToken": True,
                      "fingerprint": "sha256:0123456789ab"}, got[0]
    r = cli(state, "list-user-tokens", "--provider", "slack")
    assert [t["provider"] for t in json.loads(r.stdout)["userTokens"]] == ["slack"]
    r = cli(state, "list-user-tokens", "--provider", "none")
    assert json.loads(r.stdout)["userTokens"] == []


def test_delete_audited_once():
    state = store_with_rows()
    r = cli(state, "delete-user-token", "--provider", "gh", "--user", "https://idp.example bob")
    assert r.returncode == 0, r.stderr
    # the marker rows do not open, so nothing can be revoked at the provider: said on
    # stderr and in the output, audited, and the delete happens anyway
    out = json.loads(r.stdout)
    assert out["revocation"]["outcome"] == "not_opened", out
    del out["revocation"]
    assert out == {"provider": "gh", "user": "https://idp.example bob", "deleted": True}, out
    assert "not revoked at the provider" in r.stderr, r.stderr
    left = json.loads(cli(state, "list-user-tokens", "--provider", "gh").stdout)["userTokens"]
    assert [t["user"] for t in left] == ["https://idp.example alice"]
    r = cli(state, "delete-user-token", "--provider", "gh", "--user", "https://idp.example bob")
    assert r.returncode == 1 and "no tokens of user" in r.stderr, (r.returncode, r.stderr)
    # another provider's row of the same user is a different row
    r = cli(state, "delete-user-token", "--provider", "slack", "--user",
            "https://idp.example bob")
    assert r.returncode == 1
    audit = open(os.path.join(state, "audit.log"), "rb").read()
    assert MARK not in audit
    lines = [json.loads(x) for x in audit.decode().splitlines()
             if "user_token_delete" in x]
    assert len(lines) == 1, lines
    assert lines[0]["provider"] == "gh" and lines[0]["end_user"] == "https://idp.example bob"
    assert lines[0]["outcome"] == "deleted"
    rev = [json.loads(x) for x in audit.decode().splitlines() if "user_token_revoke" in x]
    assert len(rev) == 1 and rev[0]["outcome"] == "not_opened", rev


def test_usage_and_missing_store():
    state = store_with_rows()
    for args in (["--provider", "gh"], ["--user", "x"], []):
        r = cli(state, "delete-user-token", *args)
        assert r.returncode == 2 and "--provider and --user are required" in r.stderr, r.stderr
    r = cli(state, "list-user-tokens", "--user", "x")  # --user is delete's only
    assert r.returncode == 2
    missing = os.path.join(tmpdir("altest-usertok-none-"), "state")
    r = cli(missing, "list-user-tokens")
    assert r.returncode == 0 and json.loads(r.stdout) == {"userTokens": []}, r.stderr
    assert not os.path.exists(missing), "listing must not create a store"


run(globals())
