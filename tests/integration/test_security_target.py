"""The credential reaches its target and nowhere else (issue 8, findings 1 and 2).

The real binary, a real upstream target (tests/peers/echo_upstream.py, under base
path /v1) and a TRAP: a listener on another port of the same address, which is no
target and must never see a connection, let alone the key. Many spellings of the
request target go in over every way in: HTTP/1.1 forward proxy and gateway mode (raw
bytes, so no client normalises them), h2c (python3-h2 sending exactly the
pseudo-headers given), and HTTP/1.1 and HTTP/2 inside an intercepted CONNECT tunnel.
Each answer must be a 4xx JSON refusal or the real target's echo at a path under its
base path; the trap must stay silent, and the secret appear in no log line or audit
record. Finding 2 runs against nginx, which decodes %2F and resolves dot segments
itself: every escaping spelling must be refused as path_not_normalized, and what
passes must land in nginx's /v1/ location."""
import json
import os
import socket
import ssl
import sys
import threading
from urllib.parse import parse_qs, unquote

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from altest import *  # noqa: E402,F401,F403

import h2.config  # noqa: E402
import h2.connection  # noqa: E402
import h2.events  # noqa: E402

SECRET = "sk-target-7f3a9c1e5b2d8f4a6c0e91b3"
AL = None
ECHO = None
ROOT = None
ECHO_TLS = None
NGX = None
TRAP = None

TABLE = """
listen:
  proxy: 127.0.0.1:{proxy_port}
  admin: 127.0.0.1:{admin_port}
limits:
  workers: 2
targets:
  - name: root
    type: openapi
    url: http://127.0.0.1:ROOT_PORT
    allow_insecure_upstream: true
    allow_private_network: true
    auth:
      method: api_key
      provider: real-key
      name: X-Api-Key
  - name: real
    type: openapi
    url: http://127.0.0.1:ECHO_PORT/v1
    allow_insecure_upstream: true
    allow_private_network: true
    auth:
      method: api_key
      provider: real-key
      name: X-Api-Key
  - name: tls
    type: openapi
    url: https://localhost:ECHO_TLS_PORT
    ca_file: CA_FILE
    allow_private_network: true
    auth:
      method: api_key
      provider: real-key
      name: X-Api-Key
  - name: q
    type: openapi
    url: http://127.0.0.1:ROOT_PORT/q
    allow_insecure_upstream: true
    allow_private_network: true
    auth:
      method: api_key
      provider: real-key
      location: query
      name: appid
  - name: ngx
    type: openapi
    url: http://127.0.0.1:NGX_PORT/v1
    allow_insecure_upstream: true
    allow_private_network: true
    scrub_echoed_credential: false  # nginx echoes the key raw; the checks read it back
    auth:
      method: api_key
      provider: real-key
      name: X-Api-Key
"""


class Trap:
    """A listener that is no target: records every connection and every byte."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.data = b""
        self.lock = threading.Lock()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            with self.lock:
                self.connections += 1
            c.settimeout(1)
            try:
                got = c.recv(65536)
                with self.lock:
                    self.data += got
                c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\nConnection: close\r\n\r\ntrapped")
            except OSError:
                pass
            c.close()


def start_nginx_plain():
    """nginx over plain HTTP with two locations, so where a path lands after nginx's own
    decoding and dot-segment resolution is visible: /v1/... (under the base path) or
    anywhere else (escaped)."""
    d = tmpdir("altest-nginx-sec-")
    for sub in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        os.mkdir(os.path.join(d, sub))
    body = '{"where":"%s","uri":"$uri","key":"$http_x_api_key"}\\n'
    for _attempt in range(3):
        port = free_port()
        conf = os.path.join(d, "nginx.conf")
        with open(conf, "w") as f:
            f.write("""
daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    merge_slashes off;
    server {{
        listen 127.0.0.1:{port};
        default_type application/json;
        location /v1/ {{ return 200 '{v1}'; }}
        location = /v1 {{ return 200 '{v1}'; }}
        location / {{ return 200 '{other}'; }}
    }}
}}
""".format(d=d, port=port, v1=body % "v1", other=body % "escaped"))
        p = Proc(["nginx", "-e", os.path.join(d, "error.log"), "-p", d, "-c", conf], name="nginx-sec")
        try:
            wait_port(port, proc=p)
            return p, port
        except RuntimeError:
            p.stop()
    raise RuntimeError("nginx did not start")


# --- clients that send exactly what they are given -------------------------------------

def read_http1(s):
    """Reads one HTTP/1.1 response (Content-Length or until close); (status, body)."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        b = s.recv(65536)
        if not b:
            break
        buf += b
    head, _, body = buf.partition(b"\r\n\r\n")
    if not head:
        return 0, b""
    status = int(head.split(b" ", 2)[1])
    cl = None
    for line in head.split(b"\r\n")[1:]:
        k, _, v = line.partition(b":")
        if k.strip().lower() == b"content-length":
            cl = int(v.strip())
    while (cl is None or len(body) < cl):
        b = s.recv(65536)
        if not b:
            break
        body += b
    return status, body[:cl] if cl is not None else body


def h1(target, host=None, sock=None):
    """One request with this exact request-target on a fresh proxy connection (or sock)."""
    own = sock is None
    if own:
        sock = socket.create_connection(("127.0.0.1", AL.proxy_port), timeout=10)
    req = b"GET " + target + b" HTTP/1.1\r\nHost: " + (host or b"127.0.0.1") + \
        b"\r\nX-Api-Key: agent-own\r\nConnection: " + (b"close" if own else b"keep-alive") + b"\r\n\r\n"
    try:
        sock.sendall(req)
        return read_http1(sock)
    finally:
        if own:
            sock.close()


def h2_request(sock, headers):
    """One HTTP/2 stream with exactly these headers (list of (bytes, bytes)); returns
    (status, body), ("reset", code) or ("goaway", code)."""
    cfg = h2.config.H2Configuration(client_side=True, header_encoding=None,
                                    validate_outbound_headers=False,
                                    normalize_outbound_headers=False,
                                    validate_inbound_headers=False)
    c = h2.connection.H2Connection(config=cfg)
    c.initiate_connection()
    sock.sendall(c.data_to_send())
    sid = c.get_next_available_stream_id()
    c.send_headers(sid, headers, end_stream=True)
    sock.sendall(c.data_to_send())
    status, body = None, b""
    while True:
        data = sock.recv(65536)
        if not data:
            return ("closed", body)
        for ev in c.receive_data(data):
            if isinstance(ev, h2.events.ResponseReceived):
                status = int(dict(ev.headers)[b":status"])
            elif isinstance(ev, h2.events.DataReceived):
                body += ev.data
                c.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, h2.events.StreamEnded):
                return (status, body)
            elif isinstance(ev, h2.events.StreamReset):
                return ("reset", ev.error_code)
            elif isinstance(ev, h2.events.ConnectionTerminated):
                return ("goaway", ev.error_code)
        out = c.data_to_send()
        if out:
            sock.sendall(out)


def h2c(pseudo, extra=()):
    s = socket.create_connection(("127.0.0.1", AL.proxy_port), timeout=10)
    try:
        return h2_request(s, list(pseudo) + [(b"x-api-key", b"agent-own")] + list(extra))
    finally:
        s.close()


def tunnel(alpn, port):
    """CONNECT 127.0.0.1:ECHO through airlock, then TLS with airlock's CA; returns the
    TLS socket (ALPN alpn)."""
    s = socket.create_connection(("127.0.0.1", AL.proxy_port), timeout=10)
    s.sendall(b"CONNECT 127.0.0.1:%d HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n" % (port, port))
    buf = b""
    while b"\r\n\r\n" not in buf:
        b = s.recv(4096)
        assert b, "tunnel closed: %r" % buf
        buf += b
    assert buf.startswith(b"HTTP/1.1 200"), buf
    ctx = ssl.create_default_context(cafile=os.path.join(AL.state_dir, "ca.crt"))
    ctx.set_alpn_protocols([alpn])
    t = ctx.wrap_socket(s, server_hostname="127.0.0.1")
    assert t.selected_alpn_protocol() == alpn, t.selected_alpn_protocol()
    return t


# --- verdicts ---------------------------------------------------------------------------

VERDICTS = []


def resolved(path):
    """Where a lenient server could take this path: decoded up to four times, '\\' as
    '/', ';' parameters dropped, dot segments resolved."""
    p = path.split("?")[0]
    for _ in range(4):
        p = unquote(p, errors="replace")
    segs = []
    for seg in p.replace("\\", "/").split("/"):
        seg = seg.split(";")[0].strip()
        if seg and set(seg) == {"."}:
            if len(seg) >= 2 and segs:
                segs.pop()
            continue
        if seg:
            segs.append(seg)
    return "/" + "/".join(segs)


def judge(case, result, base="/v1"):
    """4xx with a JSON error, an h2 stream/connection error, or 200 from the real target
    at a path under its base path with the key; anything else fails."""
    status, body = result
    VERDICTS.append((case, status))
    if status in ("reset", "goaway", "closed"):
        return status
    assert isinstance(status, int), (case, result)
    assert body != b"trapped", (case, "the request (and the key) reached the trap")
    if 400 <= status < 500:
        j = json.loads(body)
        assert j.get("error") and j.get("message"), (case, j)
        return j["error"]
    assert status == 200, (case, status, body[:300])
    j = json.loads(body)
    assert j["path"] == base or j["path"].startswith(base + "/"), (case, j["path"])
    r = resolved(j["path"])
    assert r == base or r.startswith(base + "/"), (case, j["path"], r)
    assert j["headers"]["x-api-key"] == [SECRET], (case, j["headers"])
    return "forwarded"


def assert_trap_silent():
    with TRAP.lock:
        assert TRAP.connections == 0, "the trap got %d connection(s): %r" % (TRAP.connections, TRAP.data[:500])


# --- tests --------------------------------------------------------------------------------

def test_start():
    global AL, ECHO, ROOT, ECHO_TLS, NGX, TRAP
    TRAP = Trap()
    _, ECHO, _ = start_echo()
    _, ROOT, _ = start_echo()
    _, ECHO_TLS, ca = start_echo(tls=True)
    _, NGX = start_nginx_plain()
    t = (TABLE.replace("ECHO_PORT", str(ECHO)).replace("ROOT_PORT", str(ROOT)).replace("ECHO_TLS_PORT", str(ECHO_TLS))
         .replace("NGX_PORT", str(NGX)).replace("CA_FILE", ca))
    AL = Airlock(t, providers={"real-key": SECRET})
    AL.start()
    wait_for(lambda: os.path.exists(os.path.join(AL.state_dir, "ca.crt")), 5, "serve created the CA")
    # the set-up works: a plain request reaches the real target with the key
    assert judge("sanity", h1(b"/t/real/ok")) == "forwarded"
    assert judge("sanity-tls", h1(b"/t/tls/ok"), base="") == "forwarded"  # TLS name = target host
    assert judge("sanity-h2", h2c([(b":method", b"GET"), (b":scheme", b"http"),
                                   (b":authority", b"127.0.0.1:%d" % ECHO), (b":path", b"/v1/ok")])) == "forwarded"


def attack_targets(R):
    """Absolute-form and origin-form spellings that try to name the trap, or to leave the
    base path; P is the trap's port, R the target's."""
    P = TRAP.port
    out = []
    for host in (b"127.0.0.1", b"localhost"):
        out += [
            b"http://127.0.0.1:%d@%s:%d/v1/x" % (R, host, P),
            b"http://u:p@%s:%d/v1/x" % (host, P),
            b"http://127.0.0.1:%d\\@%s:%d/v1/x" % (R, host, P),
            b"http://127.0.0.1:%d#@%s:%d/v1/x" % (R, host, P),
            b"http://127.0.0.1:%d/v1/x#@%s:%d/" % (R, host, P),
            b"http://127.0.0.1:%d//%s:%d/v1/x" % (R, host, P),
            b"//%s:%d/v1/x" % (host, P),
            b"@%s:%d/v1/x" % (host, P),
            b"foo://127.0.0.1:%d/v1/x" % R,
            b"ftp://%s:%d/v1/x" % (host, P),
            b"http:%s:%d/v1/x" % (host, P),
            b"http:/%s:%d/v1/x" % (host, P),
        ]
    for p in (b"/v1/..%2fadmin", b"/v1/%2e%2e/admin", b"/v1/%2E%2E%2Fadmin", b"/v1/..%5cadmin",
              b"/v1/..;/admin", b"/v1/%252e%252e/admin", b"/v1/..\\admin", b"/v1/x y",
              b"/v1/%c0%ae%c0%ae/admin", b"/v1/x?a=1#frag"):
        out.append(b"http://127.0.0.1:%d" % R + p)
    return out


def test_http1_forward_proxy_spellings():
    for R, base in ((ECHO, "/v1"), (ROOT, "")):
        for t in attack_targets(R):
            judge(("h1-forward", t), h1(t), base)
    assert_trap_silent()


def test_gateway_spellings():
    P = TRAP.port
    paths = [b"/@127.0.0.1:%d/x" % P, b"@127.0.0.1:%d/x" % P, b"//127.0.0.1:%d/x" % P,
             b"/..%2f..%2fx", b"/%2e%2e/x", b"/%2E%2e%2Fx", b"/..%5Cx", b"/..;/x", b"/.;/x",
             b"/%252e%252e/x", b"/%25%32%65%25%32%65/x", b"/\\..\\x", b"/%ef%bc%8e%ef%bc%8e/x",
             b"/x#@127.0.0.1:%d" % P, b"/x%00", b"/..%20/x"]
    for name, base in ((b"real", "/v1"), (b"root", "")):
        for p in paths:
            judge(("gateway", name, p), h1(b"/t/" + name + p), base)
    for name in (b"real@127.0.0.1:%d" % P, b"real:%d" % P, b"real%2f..", b"..%2freal"):
        code = judge(("gateway-name", name), h1(b"/t/" + name + b"/x"))
        assert code in ("no_such_target", "bad_request", "path_not_normalized"), (name, code)
    assert_trap_silent()


def test_h2c_pseudo_header_spellings():
    P = TRAP.port
    for R, base in ((ROOT, ""), (ECHO, "/v1")):  # the root target first: finding 1 as reported
        h2c_cases(P, R, base)
    assert_trap_silent()


def h2c_cases(P, R, base):
    auth = b"127.0.0.1:%d" % R
    cases = [
        # the reported one: another scheme lets :path skip the '/' check
        (b"foo", auth, b"@127.0.0.1:%d/stolen" % P),
        (b"foo", auth, b"/v1/x"),
        (b"HTTP", auth, b"@127.0.0.1:%d/stolen" % P),
        (b"", auth, b"/v1/x"),
        (b"http", auth, b"@127.0.0.1:%d/stolen" % P),
        (b"http", auth, b"@localhost:%d/stolen" % P),
        (b"https", b"localhost:%d" % ECHO_TLS, b"@localhost:%d/exfil" % P),
        (b"https", b"localhost:%d" % ECHO_TLS, b"@127.0.0.1:%d/exfil" % P),
        (b"http", auth, b"//127.0.0.1:%d/v1/x" % P),
        (b"http", auth, b"\\\\127.0.0.1:%d\\v1\\x" % P),
        (b"http", auth, b"/v1\\..\\..\\x"),
        (b"http", auth, b"?@127.0.0.1:%d/" % P),
        (b"http", auth, b"http://127.0.0.1:%d/v1/x" % P),
        (b"http", auth, b"127.0.0.1:%d/v1/x" % P),
        (b"http", auth, b""),
        (b"http", auth, b"*"),
        (b"http", auth, b"/v1/x#@127.0.0.1:%d" % P),
        (b"http", b"127.0.0.1:%d@127.0.0.1:%d" % (R, P), b"/v1/x"),
        (b"http", b"u@127.0.0.1:%d" % R, b"/v1/x"),
        (b"http", auth, b"/v1/..%2fadmin"),
        (b"http", auth, b"/v1/%2e%2e%2fadmin"),
        (b"http", auth, b"/v1/..;/admin"),
        (b"http", auth, b"/t/real/..%2fadmin"),
        (b"http", auth, b"/t/real/%252e%252e/admin"),
        (b"foo", b"localhost:%d" % ECHO_TLS, b"@127.0.0.1:%d/exfil" % P),
    ]
    for scheme, authority, path in cases:
        res = h2c([(b":method", b"GET"), (b":scheme", scheme), (b":authority", authority),
                   (b":path", path)])
        b = "" if authority.startswith(b"localhost") else base
        judge(("h2c", scheme, authority, path), res, b)


def test_inside_connect_tunnel_h1_and_h2():
    for R, base in ((ECHO, "/v1"), (ROOT, "")):
        tunnel_cases(TRAP.port, R, base)
    assert_trap_silent()


def tunnel_cases(P, R, base):
    paths = [b"@127.0.0.1:%d/x" % P, b"//127.0.0.1:%d/x" % P, b"/v1/..%2f..%2fx",
             b"/v1/%2e%2e/x", b"/v1/..;/x", b"/v1\\..\\x", b"http://127.0.0.1:%d@127.0.0.1:%d/v1/x" % (R, P),
             b"foo://127.0.0.1:%d/v1/x" % R, b"*"]
    for p in paths:
        t = tunnel("http/1.1", R)
        try:
            judge(("tunnel-h1", p), h1(p, host=b"127.0.0.1:%d" % R, sock=t), base)
        finally:
            t.close()
    h2paths = paths + [b"", b"?x"]
    for scheme in (b"https", b"foo"):
        for p in h2paths:
            t = tunnel("h2", R)
            try:
                res = h2_request(t, [(b":method", b"GET"), (b":scheme", scheme),
                                     (b":authority", b"127.0.0.1:%d" % R), (b":path", p)])
                judge(("tunnel-h2", scheme, p), res, base)
            finally:
                t.close()


def test_connect_authority_spellings():
    P, R = TRAP.port, ROOT
    for auth in (b"u@127.0.0.1:%d" % R, b"127.0.0.1:%d@127.0.0.1:%d" % (R, P), b"127.0.0.1",
                 b"127.0.0.1:0", b"127.0.0.1:%d/x" % R, b"127.0.0.1%%2f:%d" % R,
                 b"[::1%%25lo]:%d" % R, b"127.0.0.1:%d:%d" % (R, P), b"http://127.0.0.1:%d" % R):
        s = socket.create_connection(("127.0.0.1", AL.proxy_port), timeout=10)
        try:
            s.sendall(b"CONNECT " + auth + b" HTTP/1.1\r\nHost: x\r\n\r\n")
            status, body = read_http1(s)
        finally:
            s.close()
        assert status in (400, 403) and json.loads(body)["error"], (auth, status, body)
    assert_trap_silent()


def nginx_get(mode, path):
    if mode == "gateway":
        return h1(b"/t/ngx" + path)
    return h1(b"http://127.0.0.1:%d/v1" % NGX + path)


def test_nginx_encoded_slash_cannot_leave_the_base_path():
    escaping = [b"/..%2fadmin", b"/..%2Fadmin", b"/%2e%2e%2fadmin", b"/%2E%2E%2Fadmin",
                b"/%2e%2E/admin", b"/..%5cadmin", b"/..%5Cadmin", b"/..;/admin", b"/.%2e;x/admin",
                b"/%252e%252e/admin", b"/%252E%252E%252Fadmin", b"/..%252fadmin",
                b"/a/..%2f..%2fadmin", b"/%2e%2e%2f%2e%2e%2fadmin"]
    for mode in ("gateway", "forward"):
        for p in escaping:
            status, body = nginx_get(mode, p)
            assert status == 400, (mode, p, status, body[:300])
            assert json.loads(body)["error"] == "path_not_normalized", (mode, p, body)
        # what passes lands under /v1/ with the key, bytes as sent
        for p, uri in ((b"/a%2Fb", "/v1/a/b"), (b"/a..b/c", "/v1/a..b/c"), (b"/x?q=..%2f..", "/v1/x")):
            status, body = nginx_get(mode, p)
            j = json.loads(body)
            assert status == 200 and j["where"] == "v1" and j["uri"] == uri, (mode, p, body)
            assert j["key"] == SECRET


def test_query_key_no_agent_copy_survives():
    # issue 8 finding 9: spellings of the key's parameter a lenient framework reads as ours
    q = (b"a=1&;appid=X1&appid+=X2&APPID=X3&appid%3D=X4&app%69d=X5&%2561ppid=X6&appid[]=X7"
         b"&b=2;appid=X8&c=3%26appid%3DX9&appidx=keep")
    status, body = h1(b"/t/q/x?" + q)
    assert status == 200, (status, body)
    j = json.loads(body)
    assert j["path"] == "/q/x", j
    query = parse_qs(j["query"], keep_blank_values=True)
    assert query.get("appid") == [SECRET], query
    assert query.get("a") == ["1"] and query.get("appidx") == ["keep"], query
    raw = json.dumps(j)
    for n in range(1, 10):
        assert "X%d" % n not in raw, (n, raw)


def test_secret_only_at_the_real_targets():
    assert_trap_silent()
    log = AL.log_text()
    audit = open(AL.audit_path).read() if os.path.exists(AL.audit_path) else ""
    assert SECRET not in log and SECRET not in audit
    # no audit record names a path outside a base path as sent upstream
    for rec in AL.audit_lines():
        if rec.get("decision") == "allow" and rec.get("status") == 200 and rec.get("target") == "real":
            assert rec.get("path", "").startswith("/v1"), rec
    refused = [v for v in VERDICTS if isinstance(v[1], int) and 400 <= v[1] < 500]
    assert len(refused) > 150, len(refused)


if __name__ == "__main__":
    run(globals())
