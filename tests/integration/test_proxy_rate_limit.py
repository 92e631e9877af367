"""Issue 10 item 7: when every key of a target's pool rests after the upstream answered
429, the agent gets airlock's own 429 rate_limited with Retry-After (the seconds until
the first key wakes), not 502 credential_unavailable with "create it with ...", and the
request is not spent on a rested key. A 429 to one key of a pool is retried once with
another awake key. With the real binary, curl and the echo upstream
(whose /status/429?retry_after=S answers 429 with that Retry-After)."""
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from altest import *  # noqa: E402,F401,F403

TABLE = """
listen:
  proxy: 127.0.0.1:{proxy_port}
  admin: 127.0.0.1:{admin_port}
limits:
  workers: 1
targets:
  - name: pooled
    type: openapi
    url: http://127.0.0.1:ECHO_PORT
    allow_insecure_upstream: true
    allow_private_network: true
    auth:
      method: api_key
      provider: [rl-a, rl-b]
  - name: single
    type: openapi
    url: http://127.0.0.1:ECHO2_PORT
    allow_insecure_upstream: true
    allow_private_network: true
    auth:
      method: api_key
      provider: rl-c
"""
AL = None
ECHO = None


def curl(*args):
    e = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    r = subprocess.run(["curl", "-sS", "-D", "-", "-w", "\n%{http_code}"] + list(args),
                       capture_output=True, text=True, timeout=30, env=e)
    out, _, code = r.stdout.rpartition("\n")
    head, _, body = out.partition("\n\n")
    hdrs = {}
    for line in head.split("\n")[1:]:
        k, _, v = line.partition(":")
        hdrs[k.strip().lower()] = v.strip()
    return int(code or 0), hdrs, body


def test_start():
    global AL, ECHO
    _, ECHO, _ = start_echo()
    _, echo2, _ = start_echo()
    AL = Airlock(TABLE.replace("ECHO_PORT", str(ECHO)).replace("ECHO2_PORT", str(echo2)),
                 providers={"rl-a": "sk-rl-a-0123456789", "rl-b": "sk-rl-b-0123456789",
                            "rl-c": "sk-rl-c-0123456789"})
    AL.start()


def check_resting_answer(target, most):
    code, h, body = curl(AL.gateway_url(target, "/after"), "-H", "X-Request-Id: rl-" + target)
    assert code == 429, (code, body)
    err = json.loads(body)
    assert err["error"] == "rate_limited", err
    assert "create it" not in err["message"] and "retry after" in err["message"], err
    ra = int(h["retry-after"])
    assert 1 <= ra <= most, h
    assert "rate_limited" in h.get("proxy-status", ""), h
    return ra


def test_every_key_of_a_pool_resting_is_429_with_retry_after():
    # the first key gets a 429 with Retry-After: 30 and rests; the request is retried
    # once with the other key of the pool, which gets one too: the agent sees the
    # upstream's 429, and both keys rest
    code, h, _ = curl(AL.gateway_url("pooled", "/status/429?retry_after=30"), "-H",
                      "X-Request-Id: rl-both")
    assert code == 429 and h.get("retry-after") == "30", (code, h)
    rec = wait_for(lambda: [r for r in AL.audit_lines() if r.get("client_request_id") == "rl-both"],
                   10, "audit record")[-1]
    assert rec["retry"] == "another_pool_key" and rec["status"] == 429, rec
    # airlock's own answer (the upstream's would be the echo's JSON): no key was spent
    ra = check_resting_answer("pooled", 30)
    assert ra >= 28, ra  # the keys wake in ~30 s
    rec = wait_for(lambda: [r for r in AL.audit_lines() if r.get("client_request_id") == "rl-pooled"],
                   10, "audit record")[-1]
    assert rec["status"] == 429 and rec["reason"] == "rate_limited", rec
    assert rec["decision"] == "allow" and rec["outcome"] == "error", rec


def test_single_key_resting_and_waking():
    code, _, _ = curl(AL.gateway_url("single", "/status/429?retry_after=2"))
    assert code == 429, code
    check_resting_answer("single", 2)
    # once Retry-After has passed, the key is used again
    wait_for(lambda: curl(AL.gateway_url("single", "/x"))[0] == 200, 10, "the key wakes")


run(globals())
