#!/usr/bin/python3
"""OAuth 2.0 client credentials (2LO) against a real OpenID provider (npm oidc-provider,
tests/peers/oidc_provider.js, HTTPS with the test CA), counted at the provider.

Provider settings and the token client, through `airlock identity
test-oauth2-credential-provider` (the same client serve uses): discovery, CA file,
egress guard, http refusal, client_secret_basic / _post, resource, invalid_client; the
secret and the token never printed."""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from altest import Airlock, run, start_oidc, wait_for  # noqa: E402

TABLE = """
listen: {proxy: "127.0.0.1:{proxy_port}", admin: "127.0.0.1:{admin_port}"}
state_dir: "{state_dir}"
targets: []
"""

_op = None


def op():
    global _op
    if _op is None:
        _op = start_oidc(ttl=300, resources=["https://api.test/"])
    return _op


def create(al, name, *extra, secret=None, discovery=True):
    p = op()
    args = ["identity", "create-oauth2-credential-provider", "--name", name, "--client-id",
            p.client_id, "--client-secret", "-", "--state-dir", al.state_dir]
    if discovery:
        args += ["--discovery-url", p.discovery_url]
    return al.cli(*args, *extra, stdin_data=(secret or p.client_secret) + "\n")


def test_provider(al, name, *extra):
    return al.cli("identity", "test-oauth2-credential-provider", "--name", name, "--state-dir",
                  al.state_dir, *extra)


test_provider.__test__ = False


def no_secrets(p, *texts):
    for t in texts:
        assert p.client_secret not in t, "client secret leaked: %r" % t


def test_provider_flags_are_stored_and_shown():
    al = Airlock(TABLE)
    p = op()
    r = create(al, "idp", "--ca-file", p.ca, "--allow-private-network")
    assert r.returncode == 0, r.stderr
    got = json.loads(al.cli("identity", "get-oauth2-credential-provider", "--name", "idp",
                            "--state-dir", al.state_dir).stdout)
    text = json.dumps(got)
    assert '"caFile": "%s"' % os.path.realpath(p.ca) in text, text
    assert '"allowPrivateNetwork": true' in text, text
    assert "allowInsecureEndpoints" not in text, text
    no_secrets(p, r.stdout, r.stderr, text)
    # update can turn a switch off again
    r = al.cli("identity", "update-oauth2-credential-provider", "--name", "idp",
               "--allow-private-network=false", "--state-dir", al.state_dir)
    assert r.returncode == 0, r.stderr
    assert '"allowPrivateNetwork": false' in r.stdout, r.stdout
    # a switch takes no other value
    r = al.cli("identity", "update-oauth2-credential-provider", "--name", "idp",
               "--allow-private-network=yes", "--state-dir", al.state_dir)
    assert r.returncode != 0 and "switch" in r.stderr, r.stderr
    # a missing CA file is refused at create
    r = create(al, "idp2", "--ca-file", "/nonexistent/ca.pem")
    assert r.returncode != 0 and "ca-file" in r.stderr, r.stderr


def test_http_endpoints_need_allow_insecure_endpoints():
    al = Airlock(TABLE)
    p = op()
    r = al.cli("identity", "create-oauth2-credential-provider", "--name", "plain", "--client-id",
               "x", "--client-secret", "-", "--discovery-url",
               "http://127.0.0.1:9/.well-known/openid-configuration", "--state-dir",
               al.state_dir, stdin_data="s\n")
    assert r.returncode != 0 and "--allow-insecure-endpoints" in r.stderr, r.stderr
    r = al.cli("identity", "create-oauth2-credential-provider", "--name", "plain", "--client-id",
               "x", "--client-secret", "-", "--discovery-url",
               "http://127.0.0.1:9/.well-known/openid-configuration",
               "--allow-insecure-endpoints", "--state-dir", al.state_dir, stdin_data="s\n")
    assert r.returncode == 0 and "warning" in r.stderr, r.stderr
    no_secrets(p, r.stdout, r.stderr)


def test_serve_warns_at_start_about_insecure_endpoints():
    al = Airlock(TABLE.replace("targets: []", """targets:
  - name: plain-api
    type: openapi
    url: https://api.example.com
    auth: {method: oauth2_2lo, provider: plain}"""))
    r = al.cli("identity", "create-oauth2-credential-provider", "--name", "plain", "--client-id",
               "x", "--client-secret", "-", "--token-endpoint", "http://127.0.0.1:9/token",
               "--issuer", "http://127.0.0.1:9", "--authorization-endpoint",
               "http://127.0.0.1:9/auth", "--allow-insecure-endpoints", "--state-dir",
               al.state_dir, stdin_data="not-a-real-secret\n")
    assert r.returncode == 0, r.stderr
    al.start()
    try:
        wait_for(lambda: "oauth2.insecure_endpoints" in al.log_text(), 10, "the start warning")
        assert "provider=plain" in al.log_text() and "not-a-real-secret" not in al.log_text()
    finally:
        al.stop()


def test_token_through_discovery_with_ca_file_counted_at_the_provider():
    al = Airlock(TABLE)
    p = op()
    assert create(al, "idp", "--ca-file", p.ca, "--allow-private-network").returncode == 0
    before = p.stats()["token_requests"]
    r = test_provider(al, "idp", "--scope", "read", "--resource", "https://mcp.test/mcp")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["fingerprint"].startswith("sha256:") and out["expiresIn"] == 300, out
    assert out["scope"] == "read" and out["longLived"] is False, out
    st = p.stats()
    assert st["token_requests"] == before + 1, st
    lp = st["last_params"]
    assert lp["grant_type"] == "client_credentials" and lp["auth"] == "basic", lp
    assert lp["resource"] == "https://mcp.test/mcp" and lp["scope"] == "read", lp
    no_secrets(p, r.stdout, r.stderr)
    assert "eyJ" not in r.stdout + r.stderr  # no JWT printed


def test_client_secret_post_sends_the_secret_in_the_form():
    al = Airlock(TABLE)
    p = op()
    assert create(al, "idp", "--ca-file", p.ca, "--allow-private-network",
                  "--token-endpoint-auth-method", "client_secret_post").returncode == 0
    r = test_provider(al, "idp")
    assert r.returncode == 0, r.stderr
    lp = p.stats()["last_params"]
    assert lp["auth"] == "post" and "client_secret" in lp["names"], lp


def test_explicit_token_endpoint_without_discovery():
    al = Airlock(TABLE)
    p = op()
    r = create(al, "idp", "--issuer", p.issuer, "--authorization-endpoint", p.issuer + "/auth",
               "--token-endpoint", p.token_endpoint, "--ca-file", p.ca,
               "--allow-private-network", discovery=False)
    assert r.returncode == 0, r.stderr
    r = test_provider(al, "idp", "--audience", "api://x")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["expiresIn"] == 300, r.stdout


def test_egress_guard_and_ca_are_enforced():
    al = Airlock(TABLE)
    p = op()
    # loopback provider without --allow-private-network: refused before connecting
    assert create(al, "guarded", "--ca-file", p.ca).returncode == 0
    before = p.stats()["token_requests"]
    r = test_provider(al, "guarded")
    assert r.returncode != 0, r.stdout
    assert "--allow-private-network" in r.stderr and "127.0.0.1" in r.stderr, r.stderr
    # without the CA file the system CAs do not know the test CA
    assert create(al, "noca", "--allow-private-network").returncode == 0
    r = test_provider(al, "noca")
    assert r.returncode != 0 and "discovery failed" in r.stderr, r.stderr
    assert p.stats()["token_requests"] == before


def test_wrong_secret_names_invalid_client_and_never_the_secret():
    al = Airlock(TABLE)
    p = op()
    wrong = "wrong-" + os.urandom(8).hex()
    assert create(al, "bad", "--ca-file", p.ca, "--allow-private-network",
                  secret=wrong).returncode == 0
    r = test_provider(al, "bad")
    assert r.returncode != 0, r.stdout
    assert "invalid_client" in r.stderr and "127.0.0.1" in r.stderr, r.stderr
    assert wrong not in r.stdout + r.stderr
    no_secrets(p, r.stdout, r.stderr)


if __name__ == "__main__":
    run(globals())
