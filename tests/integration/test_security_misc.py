"""The smaller holes of issue 8 finding 9, with the real binary and raw sockets:

- a reload (SIGHUP) with an empty, blank or comments-only table is refused with a
  clear log line and the old table keeps serving (it used to become "0 targets");
- a state_dir change on reload is logged as needing a restart, the old one kept;
- Host (RFC 9112 3.2): two Host headers, none, or an empty one is a 400 JSON inside a
  CONNECT tunnel (plain and TLS) and outside; an absolute-form URL wins over a Host
  that disagrees, and the agent's Host never reaches the upstream;
- bytes pipelined right after a CONNECT head, before the 200 arrived (a plain HTTP
  request, a TLS ClientHello whole or in part, TLS-in-TLS on listen.tls) are kept
  and processed, where they used to be dropped and the connection hung;
- `identity rotate-master-key` under a running serve logs no identity.unseal_failed
  and requests keep working."""
import json
import os
import socket
import ssl
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from altest import *  # noqa: E402,F401,F403

SECRET = "sk-misc-7c3e9a1f5b2d8e4a6c0f"
ST = {}

TABLE = """
state_dir: {state_dir}
listen:
  proxy: 127.0.0.1:{proxy_port}
  admin: 127.0.0.1:{admin_port}
  tls: 127.0.0.1:{tls_port}
limits:
  workers: 2
targets:
  - name: api
    type: openapi
    url: http://127.0.0.1:ECHO_PORT
    allow_insecure_upstream: true
    allow_private_network: true
    auth:
      method: api_key
      provider: misc-key
      name: X-Api-Key
  - name: prodapi
    type: openapi
    environment: prod
    url: http://127.0.0.1:ECHO_PORT/prod
    allow_insecure_upstream: true
    allow_private_network: true
    auth:
      method: api_key
      provider: prod-misc-key
"""

TIMEOUT = 10  # a hang (the old behaviour) shows as a timeout, never as a pass


def setup():
    if "al" in ST:
        return ST["al"]
    _, port, _ = start_echo()
    al = Airlock(TABLE.replace("ECHO_PORT", str(port)), providers={"misc-key": SECRET})
    al.start()
    ca = os.path.join(al.state_dir, "ca.crt")
    wait_for(lambda: os.path.exists(ca), 5, "serve created the CA")
    ST.update(al=al, echo=port, ca=ca, table=TABLE.replace("ECHO_PORT", str(port)))
    return al


def gateway_ok(al):
    status, body = http_get(al.gateway_url("api", "/still"), timeout=TIMEOUT)
    return status == 200 and json.loads(body)["headers"]["x-api-key"] == [SECRET]


def log_count(al, needle):
    return al.log_text().count(needle)


def reload_and_wait(al, text):
    """Writes the table, SIGHUPs, and waits until serve logged the reload's outcome."""
    before = log_count(al, "table.reload")
    al.reload(text)
    wait_for(lambda: log_count(al, "table.reload") > before, TIMEOUT, "the reload's log line")


# --- reloads -------------------------------------------------------------------------

def test_empty_table_on_sighup_keeps_the_old_one():
    al = setup()
    assert gateway_ok(al)
    for text in ("", "\n\n", "   \n  \n", "# the table is being rewritten\n", "---\n", "~\n"):
        before = log_count(al, "table.reload_failed")
        reload_and_wait(al, text)
        assert log_count(al, "table.reload_failed") == before + 1, (repr(text), al.log_text()[-800:])
        assert "the table is empty" in al.log_text(), al.log_text()[-800:]
        assert gateway_ok(al), repr(text)
    assert ":1:1: error: the table is empty" in al.log_text()
    # a valid table is still taken afterwards
    reload_and_wait(al, ST["table"])
    last = [l for l in al.log_text().splitlines() if "table.reload" in l][-1]
    assert "loaded " in last and ": 2 targets" in last, last
    assert gateway_ok(al)


def test_state_dir_change_on_reload_is_warned_and_ignored():
    al = setup()
    other = tmpdir("altest-other-state-")
    before = log_count(al, "state_dir changed")
    reload_and_wait(al, ST["table"].replace("{state_dir}", other))
    wait_for(lambda: log_count(al, "state_dir changed") > before, TIMEOUT, "the state_dir warning")
    line = [l for l in al.log_text().splitlines() if "state_dir changed" in l][-1]
    assert "restart" in line and al.state_dir in line and other in line, line
    assert gateway_ok(al)  # the store is still the old one: the key is still there
    assert not os.listdir(other), os.listdir(other)
    # back to the directory in use: nothing to warn about
    reload_and_wait(al, ST["table"])
    assert log_count(al, "state_dir changed") == before + 1, al.log_text()[-600:]


def test_authorization_prefix_without_space_is_logged_on_reload():
    al = setup()
    before = log_count(al, "table.warning")
    text = ST["table"].replace("provider: prod-misc-key", "provider: prod-misc-key\n      prefix: token")
    line_no = text.split("\n").index("      prefix: token") + 1
    reload_and_wait(al, text)
    lines = [json.loads(l)["msg"] for l in al.log_text().splitlines() if "table.warning" in l]
    assert len(lines) == before + 1, lines
    want = "table.yaml:%d:15: warning: target 'prodapi': prefix 'token' of the Authorization" % line_no
    assert want in lines[-1] and 'write prefix: "token "' in lines[-1], lines[-1]
    reload_and_wait(al, ST["table"])


# --- Host ----------------------------------------------------------------------------

def read_response(sock, timeout=TIMEOUT):
    """(status, headers text, body bytes) of one HTTP/1.1 response on sock."""
    sock.settimeout(timeout)
    buf = b""
    while b"\r\n\r\n" not in buf:
        d = sock.recv(65536)
        if not d:
            raise AssertionError("connection closed before a response head: %r" % buf)
        buf += d
    head, _, rest = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    hl = {l.split(":", 1)[0].strip().lower(): l.split(":", 1)[1].strip() for l in lines[1:]}
    if "content-length" in hl:
        n = int(hl["content-length"])
        while len(rest) < n:
            d = sock.recv(65536)
            if not d:
                break
            rest += d
        return status, hl, rest[:n]
    if hl.get("transfer-encoding") == "chunked":
        while not rest.endswith(b"0\r\n\r\n"):
            d = sock.recv(65536)
            if not d:
                break
            rest += d
        body, data = b"", rest
        while True:
            size, _, data = data.partition(b"\r\n")
            n = int(size, 16)
            if n == 0:
                return status, hl, body
            body, data = body + data[:n], data[n + 2:]
    while True:  # until close
        d = sock.recv(65536)
        if not d:
            return status, hl, rest
        rest += d


def connect_tunnel(port, authority, extra=b""):
    """A raw socket that sent CONNECT authority (+ extra bytes in the same write)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    s.sendall(b"CONNECT " + authority + b" HTTP/1.1\r\nHost: " + authority + b"\r\n\r\n" + extra)
    return s


def read_connect_200(s):
    buf = b""
    while b"\r\n\r\n" not in buf:
        d = s.recv(1)
        if not d:
            raise AssertionError("closed before the CONNECT answer: %r" % buf)
        buf += d
    assert buf.startswith(b"HTTP/1.1 200"), buf
    return buf


HOST_CASES = [
    # (name, header lines, expected status)
    ("two Hosts", b"Host: {a}\r\nHost: {a}\r\n", 400),
    ("two different Hosts", b"Host: {a}\r\nHost: evil.example\r\n", 400),
    ("two Hosts, other spelling", b"host: {a}\r\nX-A: 1\r\nHOST: {a}\r\n", 400),
    ("no Host", b"", 400),
    ("empty Host", b"Host:\r\n", 400),
    ("blank Host", b"Host:   \r\n", 400),
    ("Host list", b"Host: {a}, {a}\r\n", 400),
    ("one Host", b"Host: {a}\r\n", 200),
]


def host_request(path, lines, authority, version=b"HTTP/1.1"):
    return (b"GET " + path + b" " + version + b"\r\n" + lines.replace(b"{a}", authority)
            + b"Connection: close\r\n\r\n")


def check_refusal(status, hl, body, want, what):
    assert status == want, (what, status, body)
    if want == 400:
        j = json.loads(body)
        assert j["error"] == "bad_request" and "Host" in j["message"], (what, j)
        assert "json" in hl.get("content-type", ""), (what, hl)
    else:
        assert json.loads(body)["headers"]["x-api-key"] == [SECRET], (what, body)


def test_host_rules_inside_a_plain_tunnel():
    al = setup()
    a = b"127.0.0.1:%d" % ST["echo"]
    for name, lines, want in HOST_CASES:
        s = connect_tunnel(al.proxy_port, a)
        read_connect_200(s)
        s.sendall(host_request(b"/in-tunnel", lines, a))
        check_refusal(*read_response(s), want, "plain tunnel: " + name)
        s.close()
    # HTTP/1.0 has no Host requirement: the tunnel's host is the one
    s = connect_tunnel(al.proxy_port, a)
    read_connect_200(s)
    s.sendall(host_request(b"/in-tunnel-10", b"", a, b"HTTP/1.0"))
    check_refusal(*read_response(s), 200, "plain tunnel: HTTP/1.0 without Host")
    s.close()


def tls_client():
    ctx = ssl.create_default_context(cafile=ST["ca"])
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


def test_host_rules_inside_a_tls_tunnel():
    al = setup()
    a = b"127.0.0.1:%d" % ST["echo"]
    for name, lines, want in HOST_CASES:
        s = connect_tunnel(al.proxy_port, a)
        read_connect_200(s)
        t = tls_client().wrap_socket(s, server_hostname="127.0.0.1")
        t.sendall(host_request(b"/in-tls-tunnel", lines, a))
        check_refusal(*read_response(t), want, "TLS tunnel: " + name)
        t.close()


def test_host_rules_outside_tunnels():
    al = setup()
    a = b"127.0.0.1:%d" % al.proxy_port
    for name, lines, want in HOST_CASES:
        # gateway mode
        s = socket.create_connection(("127.0.0.1", al.proxy_port), timeout=TIMEOUT)
        s.sendall(host_request(b"/t/api/gw", lines, a))
        check_refusal(*read_response(s), want, "gateway: " + name)
        s.close()
        # forward proxy, absolute-form
        s = socket.create_connection(("127.0.0.1", al.proxy_port), timeout=TIMEOUT)
        up = b"127.0.0.1:%d" % ST["echo"]
        s.sendall(host_request(b"http://" + up + b"/fwd", lines, up))
        check_refusal(*read_response(s), want, "forward: " + name)
        s.close()


def test_absolute_form_wins_over_a_disagreeing_host():
    """RFC 9112 3.2.2: the absolute-form's authority is the target; the Host that
    disagrees is ignored and never forwarded (the upstream sees the target's)."""
    al = setup()
    up = b"127.0.0.1:%d" % ST["echo"]
    for host in (b"evil.example", b"127.0.0.1:1", b"[::1]:%d" % ST["echo"]):
        s = socket.create_connection(("127.0.0.1", al.proxy_port), timeout=TIMEOUT)
        s.sendall(b"GET http://" + up + b"/abs HTTP/1.1\r\nHost: " + host + b"\r\nConnection: close\r\n\r\n")
        status, _, body = read_response(s)
        s.close()
        assert status == 200, (host, body)
        j = json.loads(body)
        assert j["path"] == "/abs" and j["headers"]["host"] == [up.decode()], (host, j)
        assert j["headers"]["x-api-key"] == [SECRET]
    # inside a tunnel the absolute-form must still name the tunnel's host
    s = connect_tunnel(al.proxy_port, up)
    read_connect_200(s)
    s.sendall(b"GET http://" + up + b"/abs-in HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n")
    status, _, body = read_response(s)
    s.close()
    assert status == 200 and json.loads(body)["headers"]["host"] == [up.decode()], body


# --- bytes pipelined behind a CONNECT ------------------------------------------------

def test_plain_request_pipelined_with_connect():
    al = setup()
    a = b"127.0.0.1:%d" % ST["echo"]
    for req in (b"GET /piped HTTP/1.1\r\nHost: " + a + b"\r\nConnection: close\r\n\r\n",
                b"POST /piped HTTP/1.1\r\nHost: " + a + b"\r\nContent-Length: 5\r\n"
                b"Connection: close\r\n\r\nhello"):
        s = connect_tunnel(al.proxy_port, a, req)
        read_connect_200(s)
        status, _, body = read_response(s)
        s.close()
        j = json.loads(body)
        assert status == 200 and j["path"] == "/piped", body
        assert j["headers"]["x-api-key"] == [SECRET]
    # the request split: its first bytes with the CONNECT, the rest later
    req = b"GET /piped-split HTTP/1.1\r\nHost: " + a + b"\r\nConnection: close\r\n\r\n"
    s = connect_tunnel(al.proxy_port, a, req[:7])
    read_connect_200(s)
    s.sendall(req[7:])
    status, _, body = read_response(s)
    s.close()
    assert status == 200 and json.loads(body)["path"] == "/piped-split", body


class MemTLS:
    """A TLS client on memory BIOs over any socket-like `raw` (plain or TLS): the
    ClientHello can be sent in the same write as the CONNECT head."""

    def __init__(self, raw):
        self.raw = raw
        self.inc, self.out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.obj = tls_client().wrap_bio(self.inc, self.out, server_hostname="127.0.0.1")

    def client_hello(self):
        try:
            self.obj.do_handshake()
        except ssl.SSLWantReadError:
            pass
        return self.out.read()

    def _pump(self):
        d = self.raw.recv(65536)
        if not d:
            raise AssertionError("closed during TLS")
        self.inc.write(d)

    def finish_handshake(self, already=b""):
        if already:
            self.inc.write(already)
        while True:
            try:
                self.obj.do_handshake()
                self.raw.sendall(self.out.read())
                return
            except ssl.SSLWantReadError:
                self.raw.sendall(self.out.read())
                self._pump()

    def sendall(self, data):
        self.obj.write(data)
        self.raw.sendall(self.out.read())

    def recv(self, n):
        while True:
            try:
                return self.obj.read(n)
            except ssl.SSLWantReadError:
                try:
                    self._pump()
                except AssertionError:
                    return b""
            except ssl.SSLZeroReturnError:
                return b""

    def settimeout(self, t):
        self.raw.settimeout(t)


def tls_pipelined(raw_connect, split):
    """CONNECT + ClientHello (or its first `split` bytes) in one write; then a request."""
    al = setup()
    a = b"127.0.0.1:%d" % ST["echo"]
    raw, send_connect = raw_connect(al)
    m = MemTLS(raw)
    hello = m.client_hello()
    assert hello[:1] == b"\x16", hello[:8]
    first, rest = (hello, b"") if split is None else (hello[:split], hello[split:])
    send_connect(b"CONNECT " + a + b" HTTP/1.1\r\nHost: " + a + b"\r\n\r\n" + first)
    read_connect_200(raw)
    if rest:
        time.sleep(0.05)  # a second segment, not a timing assumption: any delay works
        raw.sendall(rest)
    m.finish_handshake()
    m.sendall(b"GET /tls-piped HTTP/1.1\r\nHost: " + a + b"\r\nConnection: close\r\n\r\n")
    status, _, body = read_response(m)
    raw.close()
    j = json.loads(body)
    assert status == 200 and j["path"] == "/tls-piped", body
    assert j["headers"]["x-api-key"] == [SECRET]


def plain_proxy(al):
    s = socket.create_connection(("127.0.0.1", al.proxy_port), timeout=TIMEOUT)
    return s, s.sendall


def tls_listener(al):
    ctx = ssl.create_default_context(cafile=ST["ca"])
    s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", al.tls_port), timeout=TIMEOUT),
                        server_hostname="127.0.0.1")
    return s, s.sendall


def test_client_hello_pipelined_with_connect():
    tls_pipelined(plain_proxy, None)


def test_part_of_the_client_hello_pipelined_with_connect():
    tls_pipelined(plain_proxy, 1)
    tls_pipelined(plain_proxy, 11)


def test_client_hello_pipelined_with_connect_on_the_tls_listener():
    tls_pipelined(tls_listener, None)
    tls_pipelined(tls_listener, 9)


def test_connect_then_separate_client_hello_still_works():
    al = setup()
    a = b"127.0.0.1:%d" % ST["echo"]
    s = connect_tunnel(al.proxy_port, a)
    read_connect_200(s)
    t = tls_client().wrap_socket(s, server_hostname="127.0.0.1")
    t.sendall(b"GET /after HTTP/1.1\r\nHost: " + a + b"\r\nConnection: close\r\n\r\n")
    status, _, body = read_response(t)
    assert status == 200 and json.loads(body)["path"] == "/after", body


# --- the missing-provider hint (issue 9 item 11) -------------------------------------

def test_missing_provider_hint_names_the_environment_and_works_verbatim():
    al = setup()
    want = ("airlock identity create-api-key-credential-provider --name prod-misc-key "
            "--environment prod --api-key -")
    line = [l for l in al.log_text().splitlines() if "table.provider_missing" in l]
    assert line and want in line[0], line
    status, body = http_get(al.gateway_url("prodapi", "/x"), timeout=TIMEOUT)
    j = json.loads(body)
    assert status == 502 and j["error"] == "credential_unavailable", (status, j)
    assert want in j["message"], j["message"]
    # follow it as printed (the store is the one serve uses)
    prod_secret = "sk-prod-" + os.urandom(8).hex()
    r = al.cli(*want.split()[1:], "--state-dir", al.state_dir, stdin_data=prod_secret + "\n")
    assert r.returncode == 0, r.stdout + r.stderr

    def served():
        st, b = http_get(al.gateway_url("prodapi", "/x"), timeout=TIMEOUT)
        return st == 200 and json.loads(b)["headers"]["authorization"] == ["Bearer " + prod_secret]
    wait_for(served, TIMEOUT, "the prod target served with the provider the hint created")
    assert prod_secret not in al.log_text()


# --- master key rotation under serve -------------------------------------------------

def test_rotate_master_key_under_serve_logs_no_unseal_failure():
    al = setup()
    for i in range(3):
        before = log_count(al, '"event":"identity.reload"')
        r = al.cli("identity", "rotate-master-key", "--state-dir", al.state_dir)
        assert r.returncode == 0, r.stdout + r.stderr
        # the watcher has re-read the store under the new key
        wait_for(lambda: log_count(al, '"event":"identity.reload"') > before
                 or "identity.unseal_failed" in al.log_text(), TIMEOUT, "the store reload")
        assert gateway_ok(al), i
    log = al.log_text()
    assert "identity.unseal_failed" not in log, [l for l in log.splitlines() if "unseal" in l]
    assert "identity.reload_failed" not in log, log[-800:]
    assert SECRET not in log


def test_airlock_still_healthy():
    al = setup()
    assert http_get("http://127.0.0.1:%d/healthz" % al.admin_port)[0] == 200
    assert gateway_ok(al)
    assert SECRET not in al.log_text()


run(globals())
