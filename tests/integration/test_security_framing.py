"""Message framing across airlock (issue 8, findings 5, 6 and 8), with attacker peers
of the test's own.

5. An upstream that frames its response ambiguously (Content-Length with
   Transfer-Encoding, two lengths, "+2", a coding other than chunked) must get a 502
   upstream_bad_framing and a closed upstream connection; a body longer than its
   Content-Length never goes past it. Checked the way the attack works: a kept-alive
   HTTP/1.1 agent connection sends a second request, to another target, and must get
   that target's real answer, not the upstream's forged one.
6. An HTTP/2 request with content-length reaches an HTTP/1.1 upstream with that
   Content-Length (not chunked), over h2c and h2 inside CONNECT; DATA that does not
   match the length resets the stream (PROTOCOL_ERROR) and aborts the upstream request.
8. HTTP/2 conformance: a HEADERS frame on a stream id lower than one already used is
   a connection error (GOAWAY PROTOCOL_ERROR), never answered; a connection that began
   as the h2 preface and went wrong is not answered as HTTP/1.1."""
import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from altest import *  # noqa: E402,F401,F403

SECRET = "sk-framing-5e1c7a3b9d2f4e6a8c0b1d3f"
AL = None
ECHO = None
EVIL = None
CA = None

TABLE = """
listen:
  proxy: 127.0.0.1:{proxy_port}
  admin: 127.0.0.1:{admin_port}
limits:
  connect_timeout_ms: 3000
  first_byte_timeout_ms: 5000
  idle_timeout_ms: 5000
  workers: 1
targets:
  - name: evil
    type: openapi
    url: http://127.0.0.1:EVIL_PORT
    allow_insecure_upstream: true
    allow_private_network: true
  - name: good
    type: openapi
    url: http://127.0.0.1:ECHO_PORT
    allow_insecure_upstream: true
    allow_private_network: true
    auth:
      method: api_key
      provider: good-key
"""

FAKE = b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\nX-Spoofed: 1\r\n\r\nspoofed"


def chunk(b):
    return b"%x\r\n%s\r\n" % (len(b), b)


# name -> (raw response, expected status, expected body if 200)
CASES = {
    "cl_te": (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n"
              + chunk(b"ok") + chunk(FAKE) + b"0\r\n\r\n", 502, None),
    "te_cl": (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 2\r\n\r\n"
              + chunk(b"ok") + chunk(FAKE) + b"0\r\n\r\n", 502, None),
    "te_upper_cl": (b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ntransfer-encoding: CHUNKED\r\n\r\n"
                    + chunk(b"ok" + FAKE) + b"0\r\n\r\n", 502, None),
    "two_cl": (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: %d\r\n\r\nok"
               % (2 + len(FAKE)) + FAKE, 502, None),
    "two_cl_rev": (b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nContent-Length: 2\r\n\r\nok"
                   % (2 + len(FAKE)) + FAKE, 502, None),
    "cl_list_diff": (b"HTTP/1.1 200 OK\r\nContent-Length: 2, %d\r\n\r\nok" % (2 + len(FAKE))
                     + FAKE, 502, None),
    "cl_plus": (b"HTTP/1.1 200 OK\r\nContent-Length: +2\r\n\r\nok" + FAKE, 502, None),
    "cl_minus": (b"HTTP/1.1 200 OK\r\nContent-Length: -2\r\n\r\nok" + FAKE, 502, None),
    "cl_hex": (b"HTTP/1.1 200 OK\r\nContent-Length: 0x2\r\n\r\nok" + FAKE, 502, None),
    "cl_space": (b"HTTP/1.1 200 OK\r\nContent-Length: 2 9\r\n\r\nok" + FAKE, 502, None),
    "cl_empty": (b"HTTP/1.1 200 OK\r\nContent-Length:\r\n\r\nok" + FAKE, 502, None),
    "te_chunked_identity": (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, identity\r\n\r\n"
                            + chunk(b"ok") + b"0\r\n\r\n", 502, None),
    "te_gzip_chunked": (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
                        + chunk(b"ok") + b"0\r\n\r\n", 502, None),
    "te_twice": (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n"
                 + chunk(b"ok") + b"0\r\n\r\n", 502, None),
    "te_identity": (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: identity\r\nContent-Length: 2\r\n\r\nok"
                    + FAKE, 502, None),
    # RFC 9110 section 8.6: identical lengths are one length
    "cl_dup_same": (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok", 200, b"ok"),
    "cl_list_same": (b"HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\n\r\nok", 200, b"ok"),
    # one clean length and a longer body: exactly the length reaches the agent
    "overlong": (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok" + FAKE, 200, b"ok"),
    "plain": (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", 200, b"ok"),
}


class EvilUpstream:
    """A raw-socket HTTP/1.1 upstream: GET /case/<name> gets CASES[name][0] verbatim,
    POST /record reads what the request's framing says and records it. Each
    connection is recorded: the requests seen on it and whether it was closed."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.lock = threading.Lock()
        self.conns = []  # dicts: paths, eof, heads, bodies
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            rec = {"paths": [], "eof": False, "heads": [], "bodies": []}
            with self.lock:
                self.conns.append(rec)
            threading.Thread(target=self._serve, args=(c, rec), daemon=True).start()

    def _serve(self, c, rec):
        buf = b""
        c.settimeout(30)
        try:
            while True:
                while b"\r\n\r\n" not in buf:
                    d = c.recv(65536)
                    if not d:
                        rec["eof"] = True
                        return
                    buf += d
                head, _, buf = buf.partition(b"\r\n\r\n")
                line = head.split(b"\r\n")[0].decode("latin-1")
                path = line.split(" ")[1]
                hdrs = {}
                for h in head.split(b"\r\n")[1:]:
                    k, _, v = h.decode("latin-1").partition(":")
                    hdrs.setdefault(k.strip().lower(), []).append(v.strip())
                with self.lock:
                    rec["paths"].append(path)
                    rec["heads"].append(hdrs)
                if path.startswith("/record"):
                    body = b""
                    n = int(hdrs.get("content-length", ["0"])[0])
                    while len(buf) < n:
                        d = c.recv(65536)
                        if not d:
                            rec["bodies"].append(buf)
                            rec["eof"] = True
                            return
                        buf += d
                    body, buf = buf[:n], buf[n:]
                    rec["bodies"].append(body)
                    c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nrecorded")
                    continue
                name = path.rsplit("/", 1)[-1]
                if name == "short":  # a body shorter than its length, then the close
                    c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nok")
                    return
                c.sendall(CASES[name][0])
        except OSError:
            rec["eof"] = True
        finally:
            c.close()

    def conn_of(self, path):
        with self.lock:
            for rec in self.conns:
                if path in rec["paths"]:
                    return rec
        return None


# --- an HTTP/1.1 client that reads exactly one response ----------------------------

class H1:
    def __init__(self):
        self.s = socket.create_connection(("127.0.0.1", AL.proxy_port))
        self.s.settimeout(10)
        self.buf = b""
        self.closed = False

    def _more(self):
        d = self.s.recv(65536)
        if not d:
            self.closed = True
            raise EOFError
        self.buf += d

    def _need(self, n):
        while len(self.buf) < n:
            self._more()

    def _line(self):
        while b"\r\n" not in self.buf:
            self._more()
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line

    def request(self, path):
        self.s.sendall(b"GET %s HTTP/1.1\r\nHost: airlock\r\n\r\n" % path.encode())
        while b"\r\n\r\n" not in self.buf:
            self._more()
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split()[1])
        hdrs = {}
        for h in lines[1:]:
            k, _, v = h.decode("latin-1").partition(":")
            hdrs.setdefault(k.strip().lower(), []).append(v.strip())
        body = b""
        if "chunked" in ",".join(hdrs.get("transfer-encoding", [])).lower():
            while True:
                n = int(self._line().split(b";")[0], 16)
                if n == 0:
                    while self._line():
                        pass
                    break
                self._need(n + 2)
                body += self.buf[:n]
                self.buf = self.buf[n + 2:]
        elif "content-length" in hdrs:
            n = int(hdrs["content-length"][0])
            self._need(n)
            body, self.buf = self.buf[:n], self.buf[n:]
        else:
            try:
                while True:
                    self._more()
            except EOFError:
                pass
            body, self.buf = self.buf, b""
        return status, hdrs, body

    def at_eof(self, timeout=2):
        """True when the server closed the connection (nothing else may arrive)."""
        self.s.settimeout(timeout)
        try:
            d = self.s.recv(65536)
        except socket.timeout:
            return False
        finally:
            self.s.settimeout(10)
        if d:
            self.buf += d
            return False
        self.closed = True
        return True

    def close(self):
        self.s.close()


def test_start():
    global AL, ECHO, EVIL, CA
    _, port, _ = start_echo()
    ECHO = port
    EVIL = EvilUpstream()
    AL = Airlock(TABLE.replace("ECHO_PORT", str(port)).replace("EVIL_PORT", str(EVIL.port)),
                 providers={"good-key": SECRET})
    AL.start()
    CA = os.path.join(AL.state_dir, "ca.crt")


def test_upstream_framing_cannot_spoof_the_next_response():
    bad = []
    for name, (_, want_status, want_body) in CASES.items():
        path = "/t/evil/case/%s" % name
        c = H1()
        try:
            status, hdrs, body = c.request(path)
            if status != want_status:
                bad.append((name, "status", status, body[:120]))
            if want_status == 502:
                if b'"error":"upstream_bad_framing"' not in body.replace(b" ", b""):
                    bad.append((name, "error", body[:200]))
            elif body != want_body:
                bad.append((name, "body", body[:120]))
            if "content-length" in hdrs and "transfer-encoding" in hdrs:
                bad.append((name, "both framings to the agent", hdrs))
            # the same kept-alive connection (a new one if airlock closed it) asks
            # another target: the answer must be that target's own
            if c.closed or c.at_eof(timeout=0.2):
                c.close()
                c = H1()
            st2, h2, b2 = c.request("/t/good/second")
            if st2 != 200 or b"spoofed" in b2 or "x-spoofed" in h2:
                bad.append((name, "second response spoofed", st2, h2, b2[:120]))
            else:
                j = json.loads(b2)
                if j["path"] != "/second":
                    bad.append((name, "second response", j["path"]))
        except (EOFError, socket.timeout, ValueError) as e:
            bad.append((name, "exception", repr(e)))
        finally:
            c.close()
        if want_status == 502:
            # the upstream connection that answered so is closed, never reused
            try:
                rec = wait_for(lambda: EVIL.conn_of("/case/%s" % name), 5, "request at evil")
                wait_for(lambda: rec["eof"], 5, "evil's connection closed after %s" % name)
                if len(rec["paths"]) != 1:
                    bad.append((name, "upstream connection reused", rec["paths"]))
            except TimeoutError as e:
                bad.append((name, str(e)))
    assert not bad, "\n".join(repr(b) for b in bad)


def test_bad_framing_is_audited():
    lines = AL.audit_lines()
    deny = [a for a in lines if a.get("reason") == "upstream_bad_framing"]
    assert len(deny) >= 10, [a.get("reason") for a in lines][-30:]
    assert all(a.get("status") == 502 and a.get("target") == "evil" for a in deny), deny[:3]


def test_h2_agent_gets_the_length_airlock_counts():
    # h2c: content-length comes from airlock's framing; the over-long body is cut
    for name, want in (("overlong", b"ok"), ("cl_list_same", b"ok"), ("cl_dup_same", b"ok")):
        r = subprocess.run(["curl", "-sS", "--http2-prior-knowledge", "-D", "-", "--noproxy", "",
                            AL.gateway_url("evil", "/case/" + name)],
                           capture_output=True, timeout=20)
        head, _, body = r.stdout.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/2 200"), (name, r.stdout, r.stderr)
        cls = [l for l in head.lower().split(b"\r\n") if l.startswith(b"content-length:")]
        assert cls == [b"content-length: 2"], (name, head)
        assert body == want, (name, body)
    r = subprocess.run(["curl", "-sS", "--http2-prior-knowledge", "-w", "\n%{http_code}", "--noproxy",
                        "", AL.gateway_url("evil", "/case/cl_te")], capture_output=True, timeout=20)
    assert r.stdout.endswith(b"\n502") and b"upstream_bad_framing" in r.stdout, r.stdout


def test_short_body_aborts_the_agent_response():
    # h1: the head says 10 bytes, 2 come: the agent connection is closed (never a
    # kept-alive connection with a response cut short)
    c = H1()
    try:
        try:
            c.request("/t/evil/case/short")
            assert False, "a 2-byte body under Content-Length: 10 was delivered whole"
        except EOFError:
            pass
        assert c.closed
    finally:
        c.close()
    # h2: that stream is reset, the connection and its other stream live on
    r = subprocess.run(["nghttp", "-v", AL.gateway_url("evil", "/case/short"),
                        AL.gateway_url("good", "/after-short")],
                       capture_output=True, text=True, timeout=20)
    assert "recv RST_STREAM" in r.stdout, r.stdout[-1500:]
    assert '"path": "/after-short"' in r.stdout, r.stdout[-1500:]


# --- finding 6: h2 request bodies keep their length ---------------------------------

def test_h2c_post_reaches_upstream_with_content_length():
    data = b"x" * 70000  # more than one DATA frame and one window
    r = subprocess.run(["curl", "-sS", "--http2-prior-knowledge", "--noproxy", "", "-w", "\n%{http_code}",
                        "--data-binary", "@-", "-H", "Content-Type: application/octet-stream",
                        AL.gateway_url("good", "/post")], input=data, capture_output=True, timeout=20)
    body, _, code = r.stdout.rpartition(b"\n")
    assert code == b"200", r.stdout[-300:] + r.stderr
    j = json.loads(body)
    h = j["headers"]
    assert h.get("content-length") == [str(len(data))], h
    assert "transfer-encoding" not in h, h
    assert j["body_bytes"] == len(data), j
    # an empty POST says Content-Length: 0
    r = subprocess.run(["curl", "-sS", "--http2-prior-knowledge", "--noproxy", "", "-X", "POST",
                        "-d", "", AL.gateway_url("good", "/empty")], capture_output=True, timeout=20)
    h = json.loads(r.stdout)["headers"]
    assert h.get("content-length") == ["0"] and "transfer-encoding" not in h, h


def test_h2_inside_connect_post_has_content_length():
    wait_for(lambda: os.path.exists(CA), 5, "serve created the CA")
    e = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    e["HTTPS_PROXY"] = AL.proxy_url()
    data = b'{"model": "m", "input": "' + b"y" * 5000 + b'"}'
    r = subprocess.run(["curl", "-sS", "--http2", "--cacert", CA, "-w", "\n%{http_code} %{http_version}",
                        "--data-binary", "@-", "https://127.0.0.1:%d/v1/responses" % ECHO],
                       input=data, capture_output=True, timeout=30, env=e)
    body, _, tail = r.stdout.rpartition(b"\n")
    assert tail == b"200 2", r.stdout[-300:] + r.stderr
    j = json.loads(body)
    assert j["headers"].get("content-length") == [str(len(data))], j["headers"]
    assert "transfer-encoding" not in j["headers"], j["headers"]
    assert j["headers"]["authorization"] == ["Bearer " + SECRET], j["headers"]
    assert j["body_bytes"] == len(data), j


# --- raw HTTP/2 frames -------------------------------------------------------------

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS, GOAWAY, WINDOW_UPDATE = 0, 1, 3, 4, 7, 8
END_STREAM, END_HEADERS, ACK = 1, 4, 1
PROTOCOL_ERROR = 1


def frame(ftype, flags, sid, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([ftype, flags]) + struct.pack(">I", sid) + payload


def hblock(path, method="GET", extra=()):
    import hpack
    return hpack.Encoder().encode([(":method", method), (":scheme", "http"),
                                   (":authority", "127.0.0.1"), (":path", path)] + list(extra))


class H2Raw:
    """Sends exactly the frames given; reads the server's frames."""

    def __init__(self):
        self.s = socket.create_connection(("127.0.0.1", AL.proxy_port))
        self.buf = b""
        self.frames = []
        self.eof = False
        self.s.sendall(PREFACE + frame(SETTINGS, 0, 0))

    def send(self, *frames):
        self.s.sendall(b"".join(frames))

    def read_until(self, cond, timeout=5):
        deadline = time.monotonic() + timeout
        while not cond() and not self.eof:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self.s.settimeout(left)
            try:
                d = self.s.recv(65536)
            except socket.timeout:
                break
            except ConnectionResetError:
                self.eof = True
                break
            if not d:
                self.eof = True
                break
            self.buf += d
            while len(self.buf) >= 9:
                n = int.from_bytes(self.buf[:3], "big")
                if len(self.buf) < 9 + n:
                    break
                t, fl = self.buf[3], self.buf[4]
                sid = int.from_bytes(self.buf[5:9], "big") & 0x7FFFFFFF
                self.frames.append((t, fl, sid, self.buf[9:9 + n]))
                if t == SETTINGS and not fl & ACK:
                    self.s.sendall(frame(SETTINGS, ACK, 0))
                self.buf = self.buf[9 + n:]
        return cond()

    def of(self, t, sid=None):
        return [f for f in self.frames if f[0] == t and (sid is None or f[2] == sid)]

    def goaway_code(self):
        g = self.of(GOAWAY)
        return struct.unpack(">I", g[0][3][4:8])[0] if g else None

    def close(self):
        self.s.close()


def test_h2_content_length_mismatch_resets_the_stream():
    cases = [("/record/short", 10, b"hello"), ("/record/long", 3, b"hello"),
             ("/record/zero", 0, b"x")]
    for path, cl, body in cases:
        c = H2Raw()
        try:
            c.send(frame(HEADERS, END_HEADERS, 1,
                         hblock("/t/evil" + path, "POST", [("content-length", str(cl))])),
                   frame(DATA, END_STREAM, 1, body))
            got = c.read_until(lambda: c.of(RST_STREAM, 1) or c.of(HEADERS, 1) or c.of(GOAWAY))
            assert got, (path, c.frames, c.eof)
            rst = c.of(RST_STREAM, 1)
            assert rst and struct.unpack(">I", rst[0][3])[0] == PROTOCOL_ERROR, (path, c.frames)
            assert not c.of(HEADERS, 1), (path, "answered", c.frames)
        finally:
            c.close()
        # the upstream never got a complete request of the wrong length
        rec = EVIL.conn_of(path)
        if rec is not None:
            wait_for(lambda: rec["eof"] or rec["bodies"], 5, "evil saw the end of " + path)
            assert not rec["bodies"] or len(rec["bodies"][0]) != cl or len(body) == cl, rec
            assert rec["heads"][0].get("content-length") == [str(cl)], rec["heads"]
    # and the right length goes through, with Content-Length upstream
    c = H2Raw()
    try:
        c.send(frame(HEADERS, END_HEADERS, 1,
                     hblock("/t/evil/record/exact", "POST", [("content-length", "5")])),
               frame(DATA, END_STREAM, 1, b"hello"))
        assert c.read_until(lambda: c.of(DATA, 1) and c.of(DATA, 1)[-1][1] & END_STREAM), c.frames
        assert b"".join(f[3] for f in c.of(DATA, 1)) == b"recorded", c.frames
    finally:
        c.close()
    rec = EVIL.conn_of("/record/exact")
    assert rec["heads"][-1].get("content-length") == ["5"], rec["heads"]
    assert "transfer-encoding" not in rec["heads"][-1], rec["heads"]
    assert rec["bodies"][-1] == b"hello", rec


def test_h2_lower_stream_id_is_a_connection_error():
    for first, second in ((5, 3), (5, 1), (9, 7), (3, 2)):
        c = H2Raw()
        try:
            c.send(frame(HEADERS, END_HEADERS | END_STREAM, first, hblock("/t/good/first")))
            assert c.read_until(lambda: c.of(DATA, first) or c.of(GOAWAY)), c.frames
            c.send(frame(HEADERS, END_HEADERS | END_STREAM, second, hblock("/t/good/second")))
            c.read_until(lambda: c.of(GOAWAY) and c.eof or c.of(HEADERS, second), timeout=5)
            assert not c.of(HEADERS, second), ((first, second), "answered", c.frames)
            assert c.goaway_code() == PROTOCOL_ERROR, ((first, second), c.frames)
        finally:
            c.close()


def test_bad_h2_preface_is_not_answered_as_http1():
    cases = [b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n",
             b"PRI * HTTP/2.0\r\nHost: a\r\n\r\n",
             b"PRI * HTTP/1.1\r\n\r\nSM\r\n\r\n",
             b"PRI / HTTP/2.0\r\n\r\nSM\r\n\r\n",
             b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\nGET / HTTP/1.1\r\n\r\n"]
    for data in cases:
        s = socket.create_connection(("127.0.0.1", AL.proxy_port))
        s.settimeout(5)
        out = b""
        try:
            s.sendall(data)
            while True:
                d = s.recv(65536)
                if not d:
                    break
                out += d
        except socket.timeout:
            out += b"<no close>"
        except ConnectionResetError:
            pass
        finally:
            s.close()
        assert not out.startswith(b"HTTP/"), (data, out[:200])
        assert b"<no close>" not in out, (data, "left open", out[:200])
    # a real h1 request still works on the same port
    c = H1()
    try:
        st, _, body = c.request("/t/good/after")
        assert st == 200 and json.loads(body)["path"] == "/after"
    finally:
        c.close()


run(globals())
