"""CONNECT and TLS (issue 5) with the real binary and real clients: curl and Python
requests through HTTPS_PROXY with airlock's CA (HTTP/1.1 and HTTP/2 inside the
tunnel), the key injected on the way; the HTTPS listener (listen.tls) for forward,
gateway and h2; unlisted hosts refused before any tunnel; passthrough hosts checked
by the egress guard; a client that does not trust the CA fails while airlock lives on;
the leaf certificate's names and validity checked with openssl."""
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from altest import *  # noqa: E402,F401,F403

SECRET = "sk-connect-4b1d9e7a2c5f8a0b3d6e9f1a"
ECHO = None
AL = None
CA = None

TABLE = """
listen:
  proxy: 127.0.0.1:{proxy_port}
  admin: 127.0.0.1:{admin_port}
  tls: 127.0.0.1:{tls_port}
limits:
  workers: 2
egress:
  passthrough:
    - "*.localhost"
targets:
  - name: api
    type: openapi
    url: http://127.0.0.1:ECHO_PORT
    allow_insecure_upstream: true
    allow_private_network: true
    auth:
      method: api_key
      provider: conn-key
      name: X-Api-Key
"""


def curl(*args, env=None, timeout=30):
    e = dict(os.environ)
    for k in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "no_proxy"):
        e.pop(k, None)
    e.update(env or {})
    return subprocess.run(["curl", "-sS", "-w", "\n%{http_code} %{http_version}"] + list(args),
                          capture_output=True, text=True, timeout=timeout, env=e)


def parse(r):
    body, _, tail = r.stdout.rpartition("\n")
    code, _, ver = tail.partition(" ")
    return int(code or 0), ver, body


def test_start():
    global ECHO, AL, CA
    p, port, _ = start_echo()
    ECHO = port
    AL = Airlock(TABLE.replace("ECHO_PORT", str(port)), providers={"conn-key": SECRET})
    AL.start()
    CA = os.path.join(AL.state_dir, "ca.crt")
    wait_for(lambda: os.path.exists(CA), 5, "serve created the CA")


def test_curl_https_proxy_http1_inside_tunnel():
    r = curl("--http1.1", "--cacert", CA, "https://127.0.0.1:%d/v1/a" % ECHO, "-H", "X-Api-Key: mine",
             env={"HTTPS_PROXY": AL.proxy_url()})
    code, ver, body = parse(r)
    assert code == 200 and ver == "1.1", r.stdout + r.stderr
    h = json.loads(body)["headers"]
    assert h["x-api-key"] == [SECRET], h


def test_curl_http2_inside_tunnel():
    r = curl("--http2", "--cacert", CA, "https://127.0.0.1:%d/v1/h2" % ECHO,
             env={"HTTPS_PROXY": AL.proxy_url()})
    code, ver, body = parse(r)
    assert code == 200 and ver == "2", r.stdout + r.stderr
    assert json.loads(body)["headers"]["x-api-key"] == [SECRET]


def test_python_requests_https_proxy():
    code = r"""
import requests, sys
r = requests.get(sys.argv[1], timeout=10)
print(r.status_code); print(r.text)
"""
    env = dict(os.environ, HTTPS_PROXY=AL.proxy_url(), REQUESTS_CA_BUNDLE=CA)
    r = subprocess.run([PYTHON, "-c", code, "https://127.0.0.1:%d/py" % ECHO], capture_output=True,
                       text=True, timeout=30, env=env)
    status, _, text = r.stdout.partition("\n")
    assert status == "200", r.stdout + r.stderr
    assert json.loads(text)["headers"]["x-api-key"] == [SECRET]


def test_unlisted_host_refused_before_tunnel():
    r = curl("-p", "-x", AL.proxy_url(), "https://not-listed.example:443/", "-v")
    assert "CONNECT tunnel failed, response 403" in r.stderr, r.stderr[-600:]


def test_passthrough_goes_through_the_egress_guard():
    # *.localhost is a passthrough pattern, but it is loopback: the guard refuses it.
    r = curl("-p", "-x", AL.proxy_url(), "https://svc.localhost:%d/" % ECHO, "-v")
    assert "CONNECT tunnel failed, response 403" in r.stderr, r.stderr[-600:]
    lines = wait_for(lambda: [a for a in AL.audit_lines() if a.get("method") == "CONNECT"
                              and a.get("reason") == "egress_denied"], 5, "audit of the refusal")
    # the authority is in host and port, never in path (issue 9 item 14)
    assert lines[-1]["host"] == "svc.localhost" and lines[-1]["port"] == ECHO, lines[-1]
    assert lines[-1]["path"] is None, lines[-1]


def test_untrusting_client_fails_and_airlock_survives():
    r = curl("https://127.0.0.1:%d/x" % ECHO, env={"HTTPS_PROXY": AL.proxy_url()})
    assert parse(r)[0] == 0 and "certificate" in r.stderr, r.stderr
    r = curl("--cacert", CA, "https://127.0.0.1:%d/after" % ECHO, env={"HTTPS_PROXY": AL.proxy_url()})
    assert parse(r)[0] == 200, r.stdout + r.stderr
    # the refused handshake is in the audit log, not only in the log: an outcome (the
    # client failed), not a decision
    wait_for(lambda: any(l.get("reason") == "tls_handshake_failed" and l.get("decision") is None
                         and l.get("outcome") == "error"
                         for l in AL.audit_lines()), timeout=5, what="handshake audit line")


def test_tunnel_host_mismatch_refused():
    # Inside the tunnel for 127.0.0.1:PORT, a request naming another host is refused.
    r = curl("--http1.1", "--cacert", CA, "-p", "-x", AL.proxy_url(),
             "https://127.0.0.1:%d/x" % ECHO, "-H", "Host: other.example")
    code, _, body = parse(r)
    assert code == 403 and json.loads(body)["error"] == "tunnel_host_mismatch", r.stdout


def test_plain_http_inside_connect_tunnel():
    # curl --proxytunnel (like undici's default) tunnels http:// URLs through CONNECT and
    # then speaks plain HTTP: airlock serves it in the tunnel, still bound to its host.
    r = curl("-p", "-x", AL.proxy_url(), "http://127.0.0.1:%d/plain-tunnel" % ECHO)
    code, _, body = parse(r)
    assert code == 200, r.stdout + r.stderr
    j = json.loads(body)
    assert j["path"] == "/plain-tunnel" and j["headers"]["x-api-key"] == [SECRET], j
    r = curl("-p", "-x", AL.proxy_url(), "http://127.0.0.1:%d/x" % ECHO, "-H", "Host: other.example")
    code, _, body = parse(r)
    assert code == 403 and json.loads(body)["error"] == "tunnel_host_mismatch", r.stdout


def test_leaf_certificate_names_and_validity():
    r = subprocess.run("openssl s_client -connect 127.0.0.1:%d -servername localhost </dev/null "
                       "2>/dev/null | openssl x509 -noout -ext subjectAltName -dates" % AL.tls_port,
                       shell=True, capture_output=True, text=True, timeout=20)
    assert "DNS:localhost" in r.stdout or "IP Address:127.0.0.1" in r.stdout, r.stdout
    assert "notAfter" in r.stdout
    v = subprocess.run("openssl s_client -connect 127.0.0.1:%d -servername localhost </dev/null "
                       "2>/dev/null | openssl x509 > %s/leaf.pem && openssl verify -CAfile %s %s/leaf.pem"
                       % (AL.tls_port, AL.state_dir, CA, AL.state_dir), shell=True,
                       capture_output=True, text=True, timeout=20)
    assert v.returncode == 0 and "OK" in v.stdout, v.stdout + v.stderr


def test_https_listener_forward_gateway_and_h2():
    r = curl("--proxy", "https://127.0.0.1:%d" % AL.tls_port, "--proxy-cacert", CA,
             "http://127.0.0.1:%d/fwd" % ECHO)
    code, _, body = parse(r)
    assert code == 200 and json.loads(body)["headers"]["x-api-key"] == [SECRET], r.stdout + r.stderr
    r = curl("--http2", "--cacert", CA, "https://127.0.0.1:%d/t/api/gw" % AL.tls_port)
    code, ver, body = parse(r)
    assert code == 200 and ver == "2", r.stdout + r.stderr
    assert json.loads(body)["path"] == "/gw"


def test_large_h2_bodies_over_tls():
    # h2 DATA frames go out with their payload referenced in the stream's buffer; on TLS
    # (the https listener, and an intercepted CONNECT) they are queued in order before
    # SSL_write. A fast and a rate-limited reader (the queue backs up), Content-Length
    # and chunked upstream bodies: every byte arrives, nothing twice.
    n = 6 * 1024 * 1024 + 12345
    urls = [("https://127.0.0.1:%d/t/api/bytes?n=%d&cl=1" % (AL.tls_port, n), []),
            ("https://127.0.0.1:%d/t/api/bytes?n=%d" % (AL.tls_port, n), ["--limit-rate", "8M"]),
            ("https://127.0.0.1:%d/bytes?n=%d" % (ECHO, n),
             ["--proxy", "http://127.0.0.1:%d" % AL.proxy_port, "--limit-rate", "8M"])]
    for url, extra in urls:
        r = subprocess.run(["curl", "-sS", "--http2", "--cacert", CA, "-o", "-"] + extra + [url],
                           capture_output=True, timeout=60)
        assert r.returncode == 0, (url, r.stderr)
        assert len(r.stdout) == n and r.stdout.count(b"x") == n, (url, len(r.stdout))


def test_connect_over_the_https_listener():
    # curl --proxy https://... for an https:// URL: CONNECT inside TLS, then TLS again.
    for ver, want in (("--http1.1", "1.1"), ("--http2", "2")):
        r = curl(ver, "--proxy", "https://127.0.0.1:%d" % AL.tls_port, "--proxy-cacert", CA,
                 "--cacert", CA, "https://127.0.0.1:%d/nested" % ECHO)
        code, v, body = parse(r)
        assert code == 200 and v == want, r.stdout + r.stderr
        assert json.loads(body)["headers"]["x-api-key"] == [SECRET]


def test_no_secret_in_log_or_audit():
    text = AL.log_text() + open(AL.audit_path).read()
    assert SECRET not in text


run(globals())
