"""The native upstream engine (limits.upstream_engine: native, issue 15) against
upstreams of the test's own that misbehave on purpose.

1. An upstream that closes kept-alive connections at random (right after a response
   without saying so, or after a random idle wait, racing the next request): every
   GET is answered (a pooled connection found closed is not used; a request lost on a
   dead connection before any answer is sent again when it is idempotent without a
   body); no POST with a body reaches the upstream twice; a POST that failed never
   reached it.
2. An upstream that sends a malformed response: 502 upstream_reset, and the worker is
   unharmed (the next request on the same agent connection is answered).
3. 103 Early Hints reach HTTP/1.1 and HTTP/2 agents before the final head (never an
   HTTP/1.0 agent); X-Request-Id is on proxied responses (an upstream's own stays,
   airlock's is then X-Airlock-Request-Id).
4. A kept-alive connection the upstream closes as the next request arrives (what a
   FIN still in flight when airlock reuses the connection looks like: the request
   was written, then EOF before any response byte): a GET goes again once, on a fresh
   connection (never on another pooled one that may be closing too), and is answered;
   a POST with a body is not sent again (502)."""
import http.client
import os
import random
import re
import select
import socket
import subprocess
import sys
import threading

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from altest import *  # noqa: E402,F401,F403

AL = None
UP = None

TABLE = """
listen:
  proxy: 127.0.0.1:{proxy_port}
  admin: 127.0.0.1:{admin_port}
limits:
  upstream_engine: native
  workers: 1
  connect_timeout_ms: 3000
  first_byte_timeout_ms: 5000
  idle_timeout_ms: 5000
targets:
  - name: up
    type: openapi
    url: http://127.0.0.1:UP_PORT
    allow_insecure_upstream: true
    allow_private_network: true
  - name: drop
    type: openapi
    url: http://127.0.0.1:DROP_PORT
    allow_insecure_upstream: true
    allow_private_network: true
"""


class RawUpstream:
    """An HTTP/1.1 upstream on raw sockets: one thread per connection runs
    self._serve(c, n) (n: the connection's number, from 1)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.conns = 0
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            with self.lock:
                self.conns += 1
                n = self.conns
            threading.Thread(target=self._serve, args=(c, n), daemon=True).start()


def read_request(c, buf):
    """The next request on c after the bytes buf: (method, path, body, rest), or None
    when the connection closed first."""
    while b"\r\n\r\n" not in buf:
        d = c.recv(65536)
        if not d:
            return None
        buf += d
    head, _, buf = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    method, path = lines[0].split(" ")[:2]
    hdrs = {}
    for h in lines[1:]:
        k, _, v = h.partition(":")
        hdrs[k.strip().lower()] = v.strip()
    n = int(hdrs.get("content-length", "0"))
    while len(buf) < n:
        d = c.recv(65536)
        if not d:
            return None
        buf += d
    return method, path, buf[:n], buf[n:]


class ChaosUpstream(RawUpstream):
    """/get/<id> and /post/<id> are answered and recorded (only what was answered
    counts as processed); after each answer the connection is, at random, kept, closed
    at once (without Connection: close), or closed after a random idle wait unless the
    next request came first. /bad and /garbage answer malformed responses; /early
    sends a 103 first; /ownid carries the upstream's own X-Request-Id."""

    def __init__(self, seed=15):
        self.rand = random.Random(seed)
        self.processed = []  # (method, id, body)
        self.closes = 0
        super().__init__()

    def _choice(self):
        with self.lock:
            return self.rand.random(), self.rand.random()

    def _serve(self, c, _n):
        buf = b""
        c.settimeout(20)
        try:
            while True:
                req = read_request(c, buf)
                if req is None:
                    return
                method, path, body, buf = req
                if path == "/bad":
                    c.sendall(b"HTTP/1.1 200 OK\r\nNo colon in this line\r\n\r\n")
                    return
                if path == "/garbage":
                    c.sendall(b"SSH-2.0-OpenSSH_9.2\r\n\r\n")
                    return
                if path == "/early":
                    c.sendall(b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"
                              b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                    continue
                if path == "/many":  # 60 headers, 1.6 KB of names: past h2's small buffers
                    extra = b"".join(b"X-Many-Header-With-A-Long-Name-%02d: v%d\r\n" % (i, i)
                                     for i in range(60))
                    c.sendall(b"HTTP/1.1 200 OK\r\n" + extra + b"Content-Length: 2\r\n\r\nok")
                    continue
                if path == "/ownid":
                    c.sendall(b"HTTP/1.1 200 OK\r\nX-Request-Id: upstream-123\r\n"
                              b"Content-Length: 2\r\n\r\nok")
                    continue
                rid = path.rsplit("/", 1)[-1]
                reply = ("%s %s" % (method, rid)).encode()
                with self.lock:
                    self.processed.append((method, rid, body))
                c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(reply), reply))
                fate, wait = self._choice()
                if fate < 0.25:  # closed at once, without saying so
                    return
                if fate < 0.5 and not buf:  # closed after an idle wait, racing the next request
                    r, _, _ = select.select([c], [], [], wait * 0.03)
                    if not r:
                        return
        except OSError:
            pass
        finally:
            with self.lock:
                self.closes += 1
            try:
                c.close()
            except OSError:
                pass


class DropAfterFirst(RawUpstream):
    """Answers only the first request of each connection (kept alive); a later request
    on it is read whole, recorded, and the connection closed without a byte of answer.
    /hold/<id> answers wait until `hold` such requests are in, so that many
    connections are open and then pooled at once."""

    def __init__(self, hold=2):
        super().__init__()
        self.cond = threading.Condition(self.lock)
        self.hold = hold
        self.held = 0
        self.seen = []  # (connection number, request number on it, method, path, body)

    def _serve(self, c, cn):
        buf = b""
        c.settimeout(20)
        try:
            for k in range(2):
                req = read_request(c, buf)
                if req is None:
                    return
                method, path, body, buf = req
                with self.cond:
                    self.seen.append((cn, k, method, path, body))
                    if k == 1:
                        return  # closed without an answer
                    if path.startswith("/hold/"):
                        self.held += 1
                        self.cond.notify_all()
                        assert self.cond.wait_for(lambda: self.held >= self.hold, timeout=20)
                reply = ("%s %s" % (method, path)).encode()
                c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(reply), reply))
        except OSError:
            pass
        finally:
            c.close()


DROP = None


def test_start():
    global AL, UP, DROP
    UP = ChaosUpstream()
    DROP = DropAfterFirst()
    AL = Airlock(TABLE.replace("UP_PORT", str(UP.port)).replace("DROP_PORT", str(DROP.port)))
    AL.start()


def test_random_closes_lose_nothing_and_repeat_no_body():
    results = {}
    lock = threading.Lock()

    def agent(n):
        conn = http.client.HTTPConnection("127.0.0.1", AL.proxy_port, timeout=30)
        for i in range(40):
            rid = "a%d-%d" % (n, i)
            if i % 2:
                body = ("body of %s" % rid).encode()
                conn.request("POST", "/t/up/post/" + rid, body=body,
                             headers={"Content-Type": "text/plain"})
            else:
                conn.request("GET", "/t/up/get/" + rid)
            resp = conn.getresponse()
            data = resp.read()
            with lock:
                results[rid] = (resp.status, data)
        conn.close()

    threads = [threading.Thread(target=agent, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(results) == 320, len(results)
    with UP.lock:
        processed = list(UP.processed)
        conns, closes = UP.conns, UP.closes
    seen = {}
    for method, rid, body in processed:
        seen.setdefault(rid, []).append((method, body))
    failed_posts = 0
    for rid, (status, data) in results.items():
        is_post = rid.endswith(("1", "3", "5", "7", "9")) and int(rid.split("-")[1]) % 2
        got = seen.get(rid, [])
        if is_post:
            # a request with a body reaches the upstream at most once
            assert len(got) <= 1, (rid, got)
            if status == 200:
                assert got == [("POST", ("body of %s" % rid).encode())], (rid, got)
                assert data == ("POST %s" % rid).encode(), (rid, data)
            else:
                # failed only when it may have been sent on a connection that died
                # before any answer; then the upstream never processed it
                assert status == 502 and b"upstream_reset" in data, (rid, status, data)
                assert got == [], (rid, got)
                failed_posts += 1
        else:
            # nothing lost: every GET is answered (sent again when the connection it
            # went on died without an answer)
            assert status == 200, (rid, status, data)
            assert data == ("GET %s" % rid).encode(), (rid, data)
    # the chaos happened, and connections were still reused
    assert closes >= 50, closes
    assert conns < 320, conns
    assert failed_posts <= 40, failed_posts
    print("  %d upstream connections for 320 requests, %d closed by the upstream, "
          "%d POSTs refused with 502" % (conns, closes, failed_posts))


def test_malformed_response_is_502_and_worker_unharmed():
    conn = http.client.HTTPConnection("127.0.0.1", AL.proxy_port, timeout=10)
    for path in ("/bad", "/garbage"):
        conn.request("GET", "/t/up" + path)
        resp = conn.getresponse()
        data = resp.read()
        assert resp.status == 502, (path, resp.status, data)
        assert json.loads(data)["error"] == "upstream_reset", data
        # the same agent connection goes on
        conn.request("GET", "/t/up/get/after" + path.strip("/"))
        resp = conn.getresponse()
        assert resp.status == 200 and resp.read() == b"GET after" + path.strip("/").encode()
    conn.close()
    assert AL.proc.alive()


def _raw(request):
    s = socket.create_connection(("127.0.0.1", AL.proxy_port), timeout=10)
    s.sendall(request)
    out = b""
    while not out.endswith(b"ok"):
        d = s.recv(65536)
        if not d:
            break
        out += d
    s.close()
    return out


def test_early_hints_reach_the_agent():
    out = _raw(b"GET /t/up/early HTTP/1.1\r\nHost: x\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 103 Early Hints\r\n"), out
    hints, _, final = out.partition(b"\r\n\r\n")
    assert b"Link: </style.css>; rel=preload" in hints, out
    assert final.startswith(b"HTTP/1.1 200 "), out
    # never to an HTTP/1.0 agent (RFC 9110 section 15.2)
    out = _raw(b"GET /t/up/early HTTP/1.0\r\nHost: x\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 200 "), out
    assert b" 103 " not in out, out
    # HTTP/2: a HEADERS frame with :status 103 before the response
    r = subprocess.run(["curl", "-sS", "--http2-prior-knowledge", "-D", "-", "--noproxy", "",
                        AL.gateway_url("up", "/early")], capture_output=True, timeout=20)
    text = r.stdout.decode("latin-1")
    assert r.returncode == 0, r.stderr
    assert re.search(r"^HTTP/2 103", text, re.M), text
    assert text.index("103") < text.index("HTTP/2 200"), text
    assert "link: </style.css>; rel=preload" in text.lower(), text


def test_request_id_on_proxied_responses():
    conn = http.client.HTTPConnection("127.0.0.1", AL.proxy_port, timeout=10)
    conn.request("GET", "/t/up/get/rid1")
    resp = conn.getresponse()
    resp.read()
    rid = resp.getheader("X-Request-Id")
    assert rid and re.fullmatch(r"[0-9a-f]{32}", rid), resp.getheaders()
    assert resp.getheader("X-Airlock-Request-Id") is None
    # the id is the audit record's
    assert wait_for(lambda: any(l.get("request_id") == rid for l in AL.audit_lines()),
                    timeout=10, what="the audit record of " + rid)
    # an upstream's own id stays; airlock's comes beside it
    conn.request("GET", "/t/up/ownid")
    resp = conn.getresponse()
    resp.read()
    assert resp.getheader("X-Request-Id") == "upstream-123", resp.getheaders()
    assert re.fullmatch(r"[0-9a-f]{32}", resp.getheader("X-Airlock-Request-Id") or "")
    conn.close()
    r = subprocess.run(["curl", "-sS", "--http2-prior-knowledge", "-D", "-", "-o", "/dev/null",
                        "--noproxy", "", AL.gateway_url("up", "/get/rid2")],
                       capture_output=True, timeout=20)
    assert re.search(r"^x-request-id: [0-9a-f]{32}\r?$", r.stdout.decode(), re.M | re.I), r.stdout


def test_many_response_headers_reach_an_h2_agent():
    r = subprocess.run(["curl", "-sS", "--http2-prior-knowledge", "-D", "-", "--noproxy", "",
                        AL.gateway_url("up", "/many")], capture_output=True, timeout=20)
    text = r.stdout.decode("latin-1")
    assert r.returncode == 0, r.stderr
    assert text.startswith("HTTP/2 200"), text
    for i in range(60):
        assert "x-many-header-with-a-long-name-%02d: v%d\r\n" % (i, i) in text, (i, text)
    assert text.endswith("ok"), text


def test_reuse_racing_a_close_retries_a_get_once_on_a_fresh_connection():
    # two connections opened at once, then both pooled
    out = {}

    def hold(i):
        conn = http.client.HTTPConnection("127.0.0.1", AL.proxy_port, timeout=30)
        conn.request("GET", "/t/drop/hold/%d" % i)
        resp = conn.getresponse()
        out[i] = (resp.status, resp.read())
        conn.close()

    ts = [threading.Thread(target=hold, args=(i,)) for i in range(2)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(30)
    assert out == {0: (200, b"GET /hold/0"), 1: (200, b"GET /hold/1")}, out
    assert DROP.conns == 2, DROP.conns
    conn = http.client.HTTPConnection("127.0.0.1", AL.proxy_port, timeout=30)
    # a GET on a pooled connection that dies under it: sent again on a new one
    conn.request("GET", "/t/drop/get/g1")
    resp = conn.getresponse()
    data = resp.read()
    with DROP.lock:
        seen = [(cn, k) for cn, k, m, p, b in DROP.seen if p == "/get/g1"]
    assert (resp.status, data) == (200, b"GET /get/g1"), (resp.status, data, seen)
    # once on a pooled connection (its second request, dropped), then the first request
    # of a fresh connection (the other pooled one, closing too, is not tried)
    assert len(seen) == 2 and seen[0][1] == 1 and seen[1] == (3, 0), seen
    # a POST with a body on a pooled connection that dies under it: never sent twice
    conn.request("POST", "/t/drop/post/p1", body=b"once only",
                 headers={"Content-Type": "text/plain"})
    resp = conn.getresponse()
    data = resp.read()
    assert resp.status == 502 and json.loads(data)["error"] == "upstream_reset", (resp.status,
                                                                                  data)
    with DROP.lock:
        seen = [(cn, k, b) for cn, k, m, p, b in DROP.seen if p == "/post/p1"]
    assert len(seen) == 1 and seen[0][1] == 1 and seen[0][2] == b"once only", seen
    conn.close()
    assert AL.proc.alive()


def test_stop():
    AL.stop()


run(globals())
