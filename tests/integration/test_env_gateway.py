"""`airlock env` as agents use it (issue 9, items 3 and 4), with the real binary, curl
and Python requests:

- after `eval "$(airlock env -c TABLE)"` (which keeps the target's host, 127.0.0.1, out
  of NO_PROXY) both the forward-proxy line and the gateway line work: the gateway URL
  sent to the proxy as a forward request for airlock's own listener is a gateway
  request; other addresses that only look alike are not;
- the admin listener serves the CA certificate at GET /ca.crt (the one serve uses,
  never the key);
- an agent running as another user (nobody, when the test runs as root; else a state
  dir it cannot read) cannot read the state dir, is told how to get the certificate,
  and with `curl ADMIN/ca.crt` + `env --proxy URL --ca-file F` (or `-c TABLE --ca-file
  F`) reaches the target through the proxy, HTTPS included;
- `env` never creates a CA: without one it fails, says what to run, and writes nothing.
"""
import json
import os
import pwd
import shlex
import shutil
import stat
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from altest import *  # noqa: E402,F401,F403

SECRET = "sk-envgw-7c1e5a9b3d2f4e6a8b0c"
ECHO_PORT = None
AL = None

TABLE = """
listen:
  proxy: 127.0.0.1:{proxy_port}
  admin: 127.0.0.1:{admin_port}
  tls: 127.0.0.1:{tls_port}
limits:
  workers: 2
targets:
  - name: demo
    type: openapi
    url: http://127.0.0.1:ECHO_PORT
    allow_insecure_upstream: true
    allow_private_network: true
    auth: {method: api_key, provider: demo-key}
"""

PROXY_VARS = ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "all_proxy",
              "NO_PROXY", "no_proxy", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE",
              "NODE_EXTRA_CA_CERTS", "AIRLOCK_STATE_DIR")


def clean_env(**extra):
    e = {k: v for k, v in os.environ.items() if k not in PROXY_VARS}
    e.update(extra)
    return e


def sh(script, env=None, user=None, timeout=60):
    """Runs a bash script (optionally as another user via setpriv); CompletedProcess."""
    argv = ["bash", "-c", script]
    if user:
        pw = pwd.getpwnam(user)
        argv = ["setpriv", "--reuid=%d" % pw.pw_uid, "--regid=%d" % pw.pw_gid,
                "--clear-groups"] + argv
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                          env=env or clean_env())


def injected(body):
    """The Authorization header the echo upstream received (its JSON reply)."""
    data = json.loads(body)
    values = (data.get("headers") or {}).get("authorization") or [None]
    return values[0] if len(values) == 1 else values


def airlock_cmd():
    return shlex.quote(AIRLOCK_BIN)


def test_start():
    global ECHO_PORT, AL
    _, ECHO_PORT, _ = start_echo()
    AL = Airlock(TABLE.replace("ECHO_PORT", str(ECHO_PORT)), providers={"demo-key": SECRET})
    AL.start()  # serve creates the CA on first start


def curl_lines(*urls):
    return "; ".join("curl -sS --max-time 20 %s; echo" % shlex.quote(u) for u in urls)


def test_eval_env_then_forward_and_gateway_with_curl():
    forward = "http://127.0.0.1:%d/hello?x=1" % ECHO_PORT
    gateway = AL.gateway_url("demo", "/hello?x=1")
    https = "https://127.0.0.1:%d/hello" % ECHO_PORT
    script = 'eval "$(%s env -c %s)" && printf "%%s\\n" "$NO_PROXY" && %s' % (
        airlock_cmd(), shlex.quote(AL.table_path), curl_lines(forward, gateway, https))
    r = sh(script, env=clean_env(AIRLOCK_STATE_DIR=AL.state_dir))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().split("\n")
    assert "127.0.0.1" not in lines[0].split(","), lines[0]  # the case the issue hit
    for what, body in zip(("forward", "gateway", "https via CONNECT"), lines[1:]):
        assert injected(body) == "Bearer " + SECRET, (what, body, r.stderr)


def test_eval_env_then_forward_and_gateway_with_requests():
    code = (
        "import requests, sys\n"
        "for u in sys.argv[1:]:\n"
        "    r = requests.get(u, timeout=20)\n"
        "    print(r.status_code, r.json()['headers']['authorization'][0])\n")
    urls = ["http://127.0.0.1:%d/hello" % ECHO_PORT, AL.gateway_url("demo", "/hello"),
            "https://127.0.0.1:%d/hello" % ECHO_PORT]
    script = 'eval "$(%s env -c %s)" && /usr/bin/python3 -c %s %s' % (
        airlock_cmd(), shlex.quote(AL.table_path), shlex.quote(code),
        " ".join(shlex.quote(u) for u in urls))
    r = sh(script, env=clean_env(AIRLOCK_STATE_DIR=AL.state_dir))
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.split("\n")[:3] == ["200 Bearer " + SECRET] * 3, r.stdout


def test_eval_env_then_git_over_https():
    # git's libcurl (GnuTLS on Debian) reads neither SSL_CERT_FILE nor CURL_CA_BUNDLE:
    # env's GIT_SSL_CAINFO is what lets it verify the intercepted tunnel.
    url = "https://127.0.0.1:%d/repo.git" % ECHO_PORT
    base = 'eval "$(%s env -c %s 2>/dev/null)" && ' % (airlock_cmd(), shlex.quote(AL.table_path))
    env = clean_env(AIRLOCK_STATE_DIR=AL.state_dir, GIT_TERMINAL_PROMPT="0")
    r = sh(base + "git ls-remote %s" % shlex.quote(url), env=env)
    assert r.returncode == 0, r.stderr
    r = sh(base + "unset GIT_SSL_CAINFO && git ls-remote %s" % shlex.quote(url), env=env)
    assert r.returncode != 0 and "certificate" in r.stderr, r


def proxied(url, *extra):
    """curl -x <proxy> URL with no env; (status, body)."""
    r = subprocess.run(["curl", "-sS", "--max-time", "20", "--noproxy", "", "-x", AL.proxy_url(),
                        "-w", "\n%{http_code}"] + list(extra) + [url],
                       capture_output=True, text=True, env=clean_env(), timeout=30)
    body, _, code = r.stdout.rpartition("\n")
    return int(code or 0), body


def test_forward_request_for_own_listener_is_gateway():
    p = AL.proxy_port
    for host in ("127.0.0.1", "localhost", "LocalHost", "[::1]"):
        status, body = proxied("http://%s:%d/t/demo/echo/a?b=c" % (host, p))
        assert status == 200, (host, status, body)
        assert injected(body) == "Bearer " + SECRET, (host, body)
        assert (json.loads(body)["path"], json.loads(body)["query"]) == ("/echo/a", "b=c"), body
    # The HTTPS listener's address counts too.
    status, body = proxied("http://127.0.0.1:%d/t/demo/x" % AL.tls_port)
    assert status == 200 and injected(body) == "Bearer " + SECRET, (status, body)
    # An unknown name on our own address: the gateway's 404, not a forward 403.
    status, body = proxied("http://127.0.0.1:%d/t/nope/x" % p)
    assert status == 404 and json.loads(body)["error"] == "no_such_target", body


def test_lookalikes_of_own_listener_stay_forward_requests():
    p = AL.proxy_port
    for url in ("http://127.0.0.1:%d/t/demo/x" % AL.admin_port,   # another port of ours
                "http://127.0.0.2:%d/t/demo/x" % p,               # another loopback IP
                "http://127.0.0.1:%d/x/t/demo/x" % p,             # /t/ not at the start
                "http://127.0.0.1:%d/tt/demo/x" % p,
                "http://127.0.0.1:%d/T/demo/x" % p,
                "http://localhost.evil.example:%d/t/demo/x" % p):
        status, body = proxied(url)
        assert status == 403 and json.loads(body)["error"] == "unknown_target", (url, status, body)
    # A dot segment through the self-gateway is refused like any other.
    status, body = proxied("http://127.0.0.1:%d/t/demo/../../admin" % p, "--path-as-is")
    assert status == 400 and json.loads(body)["error"] == "path_not_normalized", (status, body)


def test_admin_serves_ca_certificate_not_key():
    status, body = http_get("http://127.0.0.1:%d/ca.crt" % AL.admin_port)
    assert status == 200, (status, body)
    with open(os.path.join(AL.state_dir, "ca.crt"), "rb") as f:
        on_disk = f.read()
    assert body.strip() == on_disk.strip(), body
    assert b"PRIVATE" not in body
    with open(os.path.join(AL.state_dir, "ca.key"), "rb") as f:
        key_b64 = b"".join(l for l in f.read().splitlines() if not l.startswith(b"-----"))
    assert key_b64[:40] not in body.replace(b"\n", b"")
    r = subprocess.run(["openssl", "x509", "-noout", "-subject"], input=body, capture_output=True)
    assert r.returncode == 0 and b"airlock local CA" in r.stdout, r
    # HEAD/POST/other paths do not leak anything else.
    status, body = http_get("http://127.0.0.1:%d/ca.key" % AL.admin_port)
    assert status == 404 and b"PRIVATE" not in body, (status, body)


def other_user_dir():
    """A directory the other user can write (mode 0777 inside the test's tmp)."""
    d = tmpdir("altest-envuser-")
    os.chmod(d, 0o777)
    return d


def test_env_as_another_user():
    d = other_user_dir()
    shutil.copy(AL.table_path, os.path.join(d, "table.yaml"))
    os.chmod(os.path.join(d, "table.yaml"), 0o644)
    if os.geteuid() == 0:
        user, env = "nobody", clean_env(HOME=d, AIRLOCK_STATE_DIR=AL.state_dir)
        os.chmod(AL.state_dir, 0o700)
    else:  # not root: a state dir this user cannot read stands in for another user's
        user, env = None, clean_env(HOME=d, AIRLOCK_STATE_DIR=os.path.join(d, "locked"))
        shutil.copytree(AL.state_dir, os.path.join(d, "locked"), ignore=shutil.ignore_patterns("*.sock"))
        os.chmod(os.path.join(d, "locked"), 0)
    table = shlex.quote(os.path.join(d, "table.yaml"))
    # Without access to the state dir: a clear error naming the way out, nothing created.
    r = sh("cd %s && %s env -c %s" % (shlex.quote(d), airlock_cmd(), table), env=env, user=user)
    assert r.returncode == 1 and r.stdout == "", r
    assert "ca.crt" in r.stderr and "--ca-file" in r.stderr, r.stderr
    assert "/ca.crt > airlock-ca.pem" in r.stderr, r.stderr
    assert "input/output error" not in r.stderr.lower(), r.stderr
    assert sorted(os.listdir(d)) == ["table.yaml"] + (["locked"] if user is None else []), os.listdir(d)

    admin = "http://127.0.0.1:%d/ca.crt" % AL.admin_port
    https = "https://127.0.0.1:%d/hello" % ECHO_PORT
    gateway = AL.gateway_url("demo", "/hello")
    forward = "http://127.0.0.1:%d/hello" % ECHO_PORT
    for args in ("--proxy %s --no-proxy localhost" % shlex.quote(AL.proxy_url()),
                 "-c %s" % table):
        script = ("cd %s && curl -fsS --noproxy '*' %s > airlock-ca.pem && "
                  'eval "$(%s env %s --ca-file airlock-ca.pem)" && '
                  'printf "%%s\\n" "$SSL_CERT_FILE" && %s') % (
            shlex.quote(d), shlex.quote(admin), airlock_cmd(), args,
            curl_lines(https, gateway, forward))
        r = sh(script, env=env, user=user)
        assert r.returncode == 0, (args, r.stdout, r.stderr)
        lines = r.stdout.strip().split("\n")
        assert lines[0] == os.path.join(d, ".cache", "airlock", "ca-bundle.pem"), lines[0]
        for what, body in zip(("https", "gateway", "forward"), lines[1:]):
            assert injected(body) == "Bearer " + SECRET, (args, what, body, r.stderr)
    if user is None:
        os.chmod(os.path.join(d, "locked"), 0o700)


def test_env_never_creates_a_ca():
    d = tmpdir("altest-envnoca-")
    empty = os.path.join(d, "empty")
    os.mkdir(empty, 0o700)
    for state in (os.path.join(d, "absent"), empty):
        r = sh("%s env -c %s --state-dir %s" % (airlock_cmd(), shlex.quote(AL.table_path),
                                                 shlex.quote(state)))
        assert r.returncode == 1 and r.stdout == "", r
        assert "airlock ca init" in r.stderr and "--ca-file" in r.stderr, r.stderr
        assert "127.0.0.1:%d/ca.crt" % AL.admin_port in r.stderr, r.stderr
    assert not os.path.exists(os.path.join(d, "absent"))
    assert os.listdir(empty) == [], os.listdir(empty)
    # --ca-file naming a missing file, a key, or not a certificate: refused, nothing written.
    key = os.path.join(AL.state_dir, "ca.key")
    bad = os.path.join(d, "bad.pem")
    with open(bad, "w") as f:
        f.write("hello\n")
    for ca in (os.path.join(d, "missing.pem"), key, bad):
        out = os.path.join(d, "bundle.pem")
        r = sh("%s env --proxy %s --ca-file %s --bundle-out %s" % (
            airlock_cmd(), AL.proxy_url(), shlex.quote(ca), shlex.quote(out)))
        assert r.returncode == 1 and r.stdout == "" and not os.path.exists(out), (ca, r)
        assert "PRIVATE" not in r.stderr
    # A bad --proxy is a usage problem the message explains.
    for url in ("127.0.0.1:8080", "ftp://h:1", "http://u:p@h:1", "http://h:1/path", "http://h"):
        r = sh("%s env --proxy %s --ca-file %s" % (airlock_cmd(), shlex.quote(url),
                                                  shlex.quote(os.path.join(AL.state_dir, "ca.crt"))))
        assert r.returncode == 1 and "--proxy" in r.stderr, (url, r)


def test_stop():
    assert AL.stop() == 0, AL.log_text()[-2000:]


run(globals())
