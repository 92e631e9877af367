"""An unmodified Node agent stack through airlock with only `airlock env` applied
(issue 5, Node; issue 4, undici ProxyAgent): real Node 20, undici and the official openai
SDK pinned by tests/package-lock.json, against tests/peers/fake_openai.py (an
OpenAI-compatible upstream over TLS with the test CA, and a plain-HTTP one).

Every Node client runs as `bash -c 'eval "$(cat ENV)"; exec node SCRIPT ...'` where ENV
is what `airlock env -c TABLE` printed: the proxy variables and NODE_EXTRA_CA_CERTS come
from there and nowhere else. The upstream answers with the SHA-256 of the Authorization
it received (never the key itself), and records the raw headers in a file only this
test reads; the secret must never appear in anything a Node client printed.
"""
import hashlib
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from altest import *  # noqa: E402,F401,F403

SECRET = "sk-node-agent-7c1e4a9d2b8f5e3a6d0c"
LOCKSTEP_ACK_TIMEOUT_S = 20  # how long the upstream waits for a chunk's ack: slowness, not a race
AGENT_OWN = "Bearer sk-agent-own-placeholder"
NODE_DIR = os.path.join(HERE, "node")
TESTS_DIR = os.path.join(SOURCE_DIR, "tests")

TABLE = """
listen:
  proxy: 127.0.0.1:{proxy_port}
  admin: 127.0.0.1:{admin_port}
limits:
  workers: 2
targets:
  - name: openai
    type: openapi
    url: https://127.0.0.1:TLS_PORT/v1
    ca_file: CA_FILE
    allow_private_network: true
    auth: {method: api_key, provider: openai-key}
  - name: plain
    type: openapi
    url: http://127.0.0.1:HTTP_PORT/v1
    allow_insecure_upstream: true
    allow_private_network: true
    auth: {method: api_key, provider: openai-key}
"""

S = {}  # state shared by the tests, filled by test_start
OUTPUTS = []  # everything any Node client printed (stdout + stderr)
PROXY_VARS = ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "all_proxy",
              "NO_PROXY", "no_proxy", "NODE_EXTRA_CA_CERTS", "SSL_CERT_FILE", "NODE_OPTIONS",
              "OPENAI_API_KEY", "OPENAI_BASE_URL")


def sha(s):
    return hashlib.sha256(s.encode()).hexdigest()


def start_fake_openai(tls, record):
    # Lock-step streaming (see fake_openai.py): chunk i+1 leaves the upstream only after the
    # client acknowledged chunk i, so no timer decides whether airlock streamed.
    argv = [PYTHON, os.path.join(PEERS_DIR, "fake_openai.py"), "--port", "0", "--record", record,
            "--stream-ack-timeout-s", str(LOCKSTEP_ACK_TIMEOUT_S)]
    if tls:
        c = test_ca()
        argv += ["--tls-cert", c["cert"], "--tls-key", c["key"]]
    p = Proc(argv, name="fake-openai-tls" if tls else "fake-openai-http")

    def ready():
        for line in p.log_text().splitlines():
            if line.startswith("READY "):
                return int(line.split()[1])
        if not p.alive():
            raise RuntimeError("fake_openai exited:\n" + p.log_tail())
        return None

    port = wait_for(ready, 10, "fake_openai READY")
    wait_port(port, proc=p)
    return p, port


def records(path):
    try:
        with open(path) as f:
            return [json.loads(l) for l in f if l.strip()]
    except FileNotFoundError:
        return []


def node(script, *args, drop=(), extra_env=None, timeout=30):
    """Runs a Node client with the `airlock env` output eval'ed first (minus the
    variables in `drop`); returns (exit code, parsed last JSON line or None, text)."""
    env = {k: v for k, v in os.environ.items() if k not in PROXY_VARS}
    env.update(extra_env or {})
    unset = "".join("unset %s; " % v for v in drop)
    cmd = 'eval "$(cat "$1")"; %sshift; exec node "$@"' % unset
    r = subprocess.run(["bash", "-c", cmd, "_", S["env_file"], os.path.join(NODE_DIR, script)] + list(args),
                       capture_output=True, text=True, timeout=timeout, env=env, cwd=NODE_DIR)
    text = r.stdout + r.stderr
    OUTPUTS.append(text)
    out = None
    for line in reversed(r.stdout.splitlines()):
        if line.startswith("{"):
            out = json.loads(line)
            break
    return r.returncode, out, text


def test_start():
    if not os.path.isdir(os.path.join(TESTS_DIR, "node_modules", "undici")) or \
            not os.path.isdir(os.path.join(TESTS_DIR, "node_modules", "openai")):
        raise AssertionError("tests/node_modules is missing: run `(cd tests && npm ci)` "
                             "(tests/run.sh does)")
    r = subprocess.run(["node", "--version"], capture_output=True, text=True, timeout=10)
    S["node_version"] = r.stdout.strip()
    d = tmpdir("altest-node-")
    S["rec_tls"] = os.path.join(d, "tls.jsonl")
    S["rec_http"] = os.path.join(d, "http.jsonl")
    _, S["tls_port"] = start_fake_openai(True, S["rec_tls"])
    _, S["http_port"] = start_fake_openai(False, S["rec_http"])
    table = (TABLE.replace("TLS_PORT", str(S["tls_port"])).replace("HTTP_PORT", str(S["http_port"]))
             .replace("CA_FILE", test_ca()["ca"]))
    al = Airlock(table, providers={"openai-key": SECRET})
    al.start()
    S["al"] = al
    # What a user runs: airlock env -c TABLE, eval'ed into the agent's shell.
    r = al.cli("env", "-c", al.table_path)
    assert r.returncode == 0, r.stderr
    S["env_file"] = os.path.join(d, "airlock.env")
    with open(S["env_file"], "w") as f:
        f.write(r.stdout)
    S["env_text"], S["env_err"] = r.stdout, r.stderr
    S["base"] = "https://127.0.0.1:%d/v1" % S["tls_port"]


def test_env_keeps_the_loopback_target_on_the_proxy():
    # The target lives on 127.0.0.1, so `airlock env` must leave it out of NO_PROXY
    # (and say so), or the agent would bypass airlock and get no key.
    out = subprocess.run(["bash", "-c", 'eval "$(cat "$1")"; printf "%s\\n" "$NO_PROXY" "$HTTPS_PROXY" '
                          '"$NODE_EXTRA_CA_CERTS"', "_", S["env_file"]], capture_output=True, text=True,
                         timeout=10).stdout.splitlines()
    no_proxy, https_proxy, extra = out
    assert "127.0.0.1" not in no_proxy.split(","), no_proxy
    assert "localhost" in no_proxy.split(","), no_proxy
    assert "127.0.0.1 is left out of NO_PROXY" in S["env_err"], S["env_err"]
    assert https_proxy == S["al"].proxy_url(), https_proxy
    assert extra == os.path.join(S["al"].state_dir, "ca.crt") and os.path.exists(extra), extra


def test_undici_env_proxy_agent_https_injects_and_replaces():
    code, out, text = node("fetch_env_proxy.mjs", S["base"] + "/models",
                           extra_env={"AGENT_AUTHORIZATION": AGENT_OWN})
    assert code == 0 and out and out["ok"], text
    assert out["status"] == 200, out
    assert out["received_auth_sha256"] == sha("Bearer " + SECRET), (out, "upstream did not get airlock's key")
    assert out["received_auth_sha256"] != sha(AGENT_OWN)
    assert [m["id"] for m in out["body"]["data"]][0] == "gpt-4o-mini", out
    last = records(S["rec_tls"])[-1]
    assert last["path"] == "/v1/models" and last["headers"]["authorization"] == ["Bearer " + SECRET], last
    assert "proxy-authorization" not in last["headers"], last


def test_undici_env_proxy_agent_without_own_key():
    code, out, text = node("fetch_env_proxy.mjs", S["base"] + "/models/gpt-4o")
    assert code == 0 and out and out["status"] == 200, text
    assert out["body"]["id"] == "gpt-4o" and out["received_auth_sha256"] == sha("Bearer " + SECRET), out


def test_node_builtin_fetch_follows_the_global_dispatcher():
    # Node 20's own fetch (its bundled undici) uses the dispatcher undici's
    # setGlobalDispatcher installs: code calling plain fetch() needs no change.
    code, out, text = node("fetch_env_proxy.mjs", S["base"] + "/models", "global",
                           extra_env={"AGENT_AUTHORIZATION": AGENT_OWN})
    assert code == 0 and out and out["status"] == 200, text
    assert out["received_auth_sha256"] == sha("Bearer " + SECRET), out


def test_undici_env_proxy_agent_plain_http_url():
    # HTTP_PROXY for an http:// target, forward-proxied (proxyTunnel: false).
    url = "http://127.0.0.1:%d/v1/models/gpt-4o-mini" % S["http_port"]
    code, out, text = node("fetch_env_proxy.mjs", url, extra_env={"AGENT_AUTHORIZATION": AGENT_OWN})
    assert code == 0 and out and out["status"] == 200, text
    assert out["body"]["id"] == "gpt-4o-mini" and out["received_auth_sha256"] == sha("Bearer " + SECRET), out
    assert records(S["rec_http"])[-1]["headers"]["authorization"] == ["Bearer " + SECRET]


def test_undici_proxy_agent_plain_http_forward():
    url = "http://127.0.0.1:%d/v1/models" % S["http_port"]
    code, out, text = node("proxy_agent_http.mjs", url, extra_env={"AGENT_AUTHORIZATION": AGENT_OWN})
    assert code == 0 and out and out["ok"], text
    assert out["status"] == 200 and out["received_auth_sha256"] == sha("Bearer " + SECRET), out
    last = records(S["rec_http"])[-1]
    assert last["headers"]["authorization"] == ["Bearer " + SECRET], last
    # A forward proxy rewrites the absolute-form request to origin form.
    assert last["path"] == "/v1/models", last


def test_openai_sdk_chat_completion():
    n_before = len(records(S["rec_tls"]))
    code, out, text = node("openai_sdk.mjs", "chat", S["base"])
    assert code == 0 and out and out["ok"], text
    assert out["object"] == "chat.completion" and out["content"] == "Hello from the fake upstream.", out
    assert out["finish_reason"] == "stop" and out["usage"]["total_tokens"] == 15, out
    assert out["received_auth_sha256"] == sha("Bearer " + SECRET), out
    assert out["header_auth_sha256"] == out["received_auth_sha256"], out
    assert out["received_auth_sha256"] != sha("Bearer unused")
    new = records(S["rec_tls"])[n_before:]
    assert len(new) == 1, new
    rec = new[0]
    assert rec["method"] == "POST" and rec["path"] == "/v1/chat/completions", rec
    assert rec["headers"]["authorization"] == ["Bearer " + SECRET], rec["headers"].get("authorization")
    body = json.loads(rec["body"])
    assert body["model"] == "gpt-4o-mini" and body["messages"][0]["content"] == "Say hello.", body
    assert any(k.startswith("x-stainless-") for k in rec["headers"]), "not the SDK's request?"


def test_openai_sdk_streaming_sse():
    # Lock-step: in its `for await` loop the client acknowledges each chunk straight to the
    # upstream (not through airlock), and the upstream sends the next chunk only after that
    # ack. Streaming passes however loaded the machine; a proxy that buffers holds chunk 0
    # until the upstream gives up waiting (LOCKSTEP_ACK_TIMEOUT_S) and ends the stream with
    # a lockstep_timeout error event, which the SDK raises.
    code, out, text = node("openai_sdk.mjs", "stream", S["base"], timeout=LOCKSTEP_ACK_TIMEOUT_S + 40,
                           extra_env={"FAKE_OPENAI_ACK_CA": test_ca()["ca"]})
    assert not (out and out.get("code") == "lockstep_timeout"), \
        ("chunk 1 was not delivered before the upstream needed its ack: the proxy buffered", out)
    assert code == 0 and out and out["ok"], text
    # role chunk + 6 content chunks + the finish chunk, each acknowledged before the next
    assert out["chunks"] == 8 and out["objects"] == ["chat.completion.chunk"], out
    assert out["acks"] == 8 and out["lockstep_acked"] == 7, ("the stream was not in lock-step", out)
    assert out["content"] == "Hello from the fake upstream." and out["finish_reason"] == "stop", out
    assert out["received_auth_sha256"] == sha("Bearer " + SECRET), out
    assert records(S["rec_tls"])[-1]["headers"]["authorization"] == ["Bearer " + SECRET]


def test_openai_sdk_through_the_global_dispatcher():
    # No proxy option on the client: setGlobalDispatcher(new EnvHttpProxyAgent()) alone.
    code, out, text = node("openai_sdk.mjs", "chat", S["base"], "global")
    assert code == 0 and out and out["ok"], text
    assert out["content"] == "Hello from the fake upstream.", out
    assert out["received_auth_sha256"] == sha("Bearer " + SECRET), out


def test_openai_sdk_models_list():
    code, out, text = node("openai_sdk.mjs", "models", S["base"])
    assert code == 0 and out and out["ok"], text
    assert out["ids"] == ["gpt-4o-mini", "gpt-4o", "text-embedding-3-small"], out


def test_client_without_the_ca_fails_and_airlock_survives():
    code, out, text = node("fetch_env_proxy.mjs", S["base"] + "/models", drop=("NODE_EXTRA_CA_CERTS",))
    assert code == 1 and out and not out["ok"], text
    cert_codes = ("SELF_SIGNED_CERT_IN_CHAIN", "UNABLE_TO_VERIFY_LEAF_SIGNATURE",
                  "UNABLE_TO_GET_ISSUER_CERT_LOCALLY", "DEPTH_ZERO_SELF_SIGNED_CERT")
    assert out["code"] in cert_codes and "certificate" in out["error"], out
    code, out, text = node("openai_sdk.mjs", "chat", S["base"], drop=("NODE_EXTRA_CA_CERTS",))
    assert code == 1 and out and out["code"] in cert_codes and "certificate" in out["cause"], text
    assert S["al"].proc.alive(), "airlock died after a failed handshake"
    # airlock logs each refused handshake with its reason (the two clients above).
    wait_for(lambda: S["al"].log_text().count('"tls.handshake_failed"') >= 2, 5,
             "tls.handshake_failed log lines")
    code, out, text = node("fetch_env_proxy.mjs", S["base"] + "/models")
    assert code == 0 and out["status"] == 200, text
    assert out["received_auth_sha256"] == sha("Bearer " + SECRET), out


def test_audit_names_the_target():
    lines = wait_for(lambda: [a for a in S["al"].audit_lines() if a.get("target") == "openai"
                              and a.get("path", "").endswith("/chat/completions")], 5, "audit of the SDK call")
    assert any(a.get("status") == 200 for a in lines), lines


def test_secret_never_in_node_output_or_logs():
    assert len(OUTPUTS) >= 8, len(OUTPUTS)
    for text in OUTPUTS:
        assert SECRET not in text, "the secret reached a Node client's output"
    assert SECRET not in S["env_text"] and SECRET not in S["env_err"]
    al = S["al"]
    assert SECRET not in al.log_text()
    with open(al.audit_path) as f:
        assert SECRET not in f.read()


run(globals())
