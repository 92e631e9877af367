"""Echoed-secret scrubbing (issue 16, item 6) with the real binary: an upstream that
echoes the key airlock injected (tests/peers/echo_key_upstream.py) in a response header,
in a JSON error body, split across two chunks, one byte per chunk, and across SSE
events; agents on HTTP/1.1 (Python requests) and HTTP/2 (curl --http2-prior-knowledge)
never see it, get "[REDACTED]" padded to the key's length (so Content-Length holds),
and the scrub is counted in /metrics and in the request's audit record. A target with
scrub_echoed_credential: false passes the echo through (the check can fail), and text
that only resembles the key is left alone."""
import json
import os
import re
import subprocess
import sys
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from altest import *  # noqa: E402,F401,F403

SECRET = "sk-scrub-5e8a1c3f7b9d2e4a6c0f"
MASK = "[REDACTED]" + "*" * (len(SECRET) - 10)
S = {}

TABLE = """
listen:
  proxy: 127.0.0.1:{proxy_port}
  admin: 127.0.0.1:{admin_port}
limits:
  workers: 1
targets:
  - name: echo
    type: openapi
    url: http://127.0.0.1:PEER_PORT/a
    allow_insecure_upstream: true
    allow_private_network: true
    auth: {method: api_key, provider: scrub-key}
  - name: raw
    type: openapi
    url: http://127.0.0.1:PEER_PORT/b
    allow_insecure_upstream: true
    allow_private_network: true
    scrub_echoed_credential: false
    auth: {method: api_key, provider: scrub-key}
"""


def setup():
    if "al" not in S:
        p = Proc([PYTHON, os.path.join(PEERS_DIR, "echo_key_upstream.py"), "--port", "0"],
                 name="echo-key")

        def ready():
            m = re.search(r"^READY (\d+)$", p.log_text(), re.M)
            if not m and not p.alive():
                raise RuntimeError("echo-key exited:\n" + p.log_tail())
            return int(m.group(1)) if m else None
        port = wait_for(ready, 10, "echo-key READY")
        wait_port(port, proc=p)
        al = Airlock(TABLE.replace("PEER_PORT", str(port)), providers={"scrub-key": SECRET})
        al.start()
        S["al"] = al
    return S["al"]


def h1(target, path):
    """(status, headers text, body bytes) with Python requests, as an agent would."""
    import requests
    r = requests.get(setup().gateway_url(target, path), timeout=10,
                     proxies={"http": None, "https": None})
    head = "".join("%s: %s\n" % kv for kv in r.headers.items())
    return r.status_code, head, r.content, r.headers


def h2(target, path):
    """(status, the whole response as curl -i prints it) over h2c prior knowledge."""
    r = subprocess.run(["curl", "-sS", "-i", "--http2-prior-knowledge", "--noproxy", "*",
                        "--max-time", "10", setup().gateway_url(target, path)],
                       capture_output=True, timeout=20)
    assert r.returncode == 0, r.stderr
    out = r.stdout.decode("latin-1")
    assert out.startswith("HTTP/2 "), out[:80]
    return int(out.split()[1]), out


def test_header_echo_is_redacted_h1_and_h2():
    st, head, body, hdrs = h1("echo", "/header")
    assert st == 200 and SECRET not in head, head
    assert hdrs["X-Echo-Key"] == MASK, head
    assert hdrs["WWW-Authenticate"] == 'Bearer error="invalid_token", key="%s"' % MASK, head
    st, out = h2("echo", "/header")
    assert st == 200 and SECRET not in out and ("x-echo-key: " + MASK) in out, out


def test_json_error_body_is_redacted_and_keeps_its_length():
    st, head, body, hdrs = h1("echo", "/json")
    assert st == 401 and SECRET.encode() not in body, body
    assert int(hdrs["Content-Length"]) == len(body), (hdrs, len(body))
    msg = json.loads(body)["error"]["message"]
    assert msg.startswith("Incorrect API key provided: " + MASK + ". You can"), msg
    st, out = h2("echo", "/json")
    assert st == 401 and SECRET not in out and MASK in out, out


def test_split_across_chunks_bytes_and_sse_events():
    for at in (1, 5, len(SECRET) // 2, len(SECRET) - 1):
        st, head, body, _ = h1("echo", "/split?at=%d" % at)
        assert body == b"echo:" + MASK.encode() + b":end\n", (at, body)
    st, head, body, _ = h1("echo", "/bytes")
    assert body == b"before " + MASK.encode() + b" after\n", body
    st, head, body, _ = h1("echo", "/sse")
    want = ('data: {"delta": "your key is %s"}\n\ndata: {"again": "%s"}\n\ndata: [DONE]\n\n'
            % (MASK, MASK)).encode()
    assert body == want, body
    for path in ("/split", "/bytes", "/sse"):
        st, out = h2("echo", path)
        assert SECRET not in out and MASK in out, (path, out)


def test_large_body_keys_across_read_and_frame_boundaries():
    # 2 MiB with the key every 97 bytes: the upstream reads (64 KiB), the zero-copy
    # spans handed to the sink, h2 DATA frames and a slow reader's held output all cut
    # through copies of the key; every one is replaced, nothing else changes.
    sys.path.insert(0, PEERS_DIR)
    from echo_key_upstream import big_body
    n = 2 * 1024 * 1024
    want = big_body(SECRET.encode(), n).replace(SECRET.encode(), MASK.encode())
    assert len(want) == n and SECRET.encode() not in want
    st, head, body, _ = h1("echo", "/big?n=%d" % n)
    assert st == 200 and len(body) == n and body == want, (st, len(body))
    url = setup().gateway_url("echo", "/big?n=%d" % n)
    for extra in ([], ["--limit-rate", "4M"]):  # the second: the sink refuses, output waits
        r = subprocess.run(["curl", "-sS", "--http2-prior-knowledge", "--noproxy", "*",
                            "--max-time", "60", "-o", "-"] + extra + [url],
                           capture_output=True, timeout=90)
        assert r.returncode == 0, r.stderr
        assert r.stdout == want, (extra, len(r.stdout))


def test_look_alikes_pass_untouched_and_off_means_off():
    st, head, body, _ = h1("echo", "/near")
    lines = body.decode().splitlines()
    assert len(lines) == len(SECRET) and "[REDACTED]" not in body.decode(), body
    assert lines[-2] == SECRET[:-1] and lines[-1][:-1] == SECRET[:-1], lines[-2:]
    # the target that turned scrubbing off: the echo arrives as the upstream sent it
    st, head, body, hdrs = h1("raw", "/header")
    assert hdrs["X-Echo-Key"] == SECRET, head
    st, head, body, _ = h1("raw", "/split")
    assert body == b"echo:" + SECRET.encode() + b":end\n", body


def test_scrubs_are_counted_and_audited():
    al = setup()

    def metric():
        with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % al.admin_port,
                                    timeout=5) as r:
            text = r.read().decode()
        m = re.search(r'^airlock_scrubbed_secrets_total\{target="echo"\} (\d+)$', text, re.M)
        return int(m.group(1)) if m and int(m.group(1)) >= 10 else None
    n = wait_for(metric, 10, "scrubs counted")
    assert n >= 10, n
    recs = [r for r in al.audit_lines() if r.get("target") == "echo" and r.get("scrubbed")]
    assert any(r["path"].endswith("/sse") and r["scrubbed"] == 2 for r in recs), recs
    assert not [r for r in al.audit_lines() if r.get("target") == "raw" and r.get("scrubbed")]
    with open(al.audit_path) as f:
        assert SECRET not in f.read()


if __name__ == "__main__":
    run(globals())
