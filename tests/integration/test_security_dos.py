"""One agent must not deny service to others (issue 8, findings 3 and 4), with real
sockets against the real binary.

Client-side timeouts: an idle TCP connection, a partial request head (and one
trickled a byte at a time), a partial h2 preface, the h2 preface without SETTINGS, an
h2 connection with no stream, half a TLS ClientHello on listen.tls and on an
intercepted CONNECT, and a keep-alive connection left idle are each closed within a
few times the configured limit (408 JSON where a request had begun).
Descriptor exhaustion: airlock under a low RLIMIT_NOFILE with more idle connections
than descriptors stays cool (CPU time, a handful of accept.failed lines) and serves
again once they go.
Slow agents: many requests whose body never comes, and h2 streams whose window is 0,
hold at most limits.max_upstream_per_client upstream slots: another client is served
at once, the same client gets a fast 503 client_over_limit with Retry-After, and the
stalled ones get 408 body_timeout / a reset when their clocks run out."""
import json
import os
import socket
import ssl
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from altest import *  # noqa: E402,F401,F403

import h2.config  # noqa: E402
import h2.connection  # noqa: E402
import h2.events  # noqa: E402
import h2.settings  # noqa: E402

SECRET = "sk-dos-6f1e2d3c4b5a69788796a5b4"
ECHO = None
AL = None    # short client timeouts
FAIR = None  # long timeouts: only fairness can help a victim there
CA = None

TARGET = """
targets:
  - name: demo
    type: openapi
    url: http://127.0.0.1:ECHO_PORT
    allow_insecure_upstream: true
    allow_private_network: true
    auth:
      method: api_key
      provider: dos-key
      name: X-Api-Key
"""

TABLE_TIMEOUTS = """
listen:
  proxy: 127.0.0.1:{proxy_port}
  admin: 127.0.0.1:{admin_port}
  tls: 127.0.0.1:{tls_port}
limits:
  workers: 1
  client_handshake_timeout_ms: 1000
  client_header_timeout_ms: 1000
  client_body_timeout_ms: 1000
  client_keepalive_timeout_ms: 1000
  idle_timeout_ms: 1500
""" + TARGET

TABLE_FAIR = """
listen:
  proxy: 127.0.0.1:{proxy_port}
  admin: 127.0.0.1:{admin_port}
limits:
  workers: 1
  client_body_timeout_ms: 60000
  idle_timeout_ms: 60000
  max_upstream_per_client: 8
  queue_timeout_ms: 1000
""" + TARGET

LIMIT = 1.0     # the timeouts of TABLE_TIMEOUTS, seconds
DEADLINE = 8.0  # "closed within the timeout": generous for a loaded machine, far below never


def test_start():
    global ECHO, AL, FAIR, CA
    _, ECHO, _ = start_echo()
    AL = Airlock(TABLE_TIMEOUTS.replace("ECHO_PORT", str(ECHO)), providers={"dos-key": SECRET})
    AL.start()
    CA = os.path.join(AL.state_dir, "ca.crt")
    wait_for(lambda: os.path.exists(CA), 5, "serve created the CA")
    FAIR = Airlock(TABLE_FAIR.replace("ECHO_PORT", str(ECHO)), providers={"dos-key": SECRET})
    FAIR.start()


# --- helpers -------------------------------------------------------------------------

def connect(port, source="127.0.0.1"):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind((source, 0))
    s.settimeout(DEADLINE)
    s.connect(("127.0.0.1", port))
    return s


def recv_some(s, timeout):
    """Bytes received, b"" at the peer's close (or reset), None when none came in time."""
    s.settimeout(timeout)
    try:
        return s.recv(65536)
    except socket.timeout:
        return None
    except ConnectionResetError:
        return b""


def wait_closed(s, deadline=DEADLINE):
    """Reads until the peer closes; returns (seconds, bytes received). Fails if the
    socket is still open after `deadline` seconds."""
    t0 = time.monotonic()
    got = b""
    while True:
        left = deadline - (time.monotonic() - t0)
        if left <= 0:
            raise AssertionError("still open after %.1fs (got %r)" % (deadline, got[:200]))
        d = recv_some(s, left)
        if d is None:
            continue
        if not d:
            s.close()
            return time.monotonic() - t0, got
        got += d


def assert_closed_by_timeout(s, what, sent_at):
    """sent_at: time.monotonic() taken before the client did what starts airlock's clock
    (before connect() for the clocks that run from accept). airlock's clock cannot start
    before it, so el >= the limit; taken after it (after connect, after reading a
    response), a test process descheduled for a few hundred ms under load saw an
    on-time close as early ("closed after 0.57s, before the 1.0s limit")."""
    el, got = wait_closed(s)
    el = time.monotonic() - sent_at
    # a timer never fires early: closing much sooner means something else closed it
    assert el >= LIMIT * 0.8, "%s: closed after %.2fs, before the %.1fs limit" % (what, el, LIMIT)
    return el, got


def json_refusal(raw):
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, head.decode("latin-1").lower(), json.loads(body.decode())


def http_request(port, raw, source="127.0.0.1", timeout=DEADLINE):
    """Sends raw bytes, reads one response (Content-Length framed); returns bytes."""
    s = connect(port, source)
    s.settimeout(timeout)
    s.sendall(raw)
    buf = b""
    t0 = time.monotonic()
    while True:
        if b"\r\n\r\n" in buf:
            head, _, body = buf.partition(b"\r\n\r\n")
            cl = [l for l in head.split(b"\r\n") if l.lower().startswith(b"content-length:")]
            if cl and len(body) >= int(cl[0].split(b":")[1]):
                s.close()
                return buf
        if time.monotonic() - t0 > timeout:
            s.close()
            raise AssertionError("no complete response within %ss: %r" % (timeout, buf[:300]))
        d = s.recv(65536)
        if not d:
            s.close()
            return buf
        buf += d


def client_hello_prefix(n):
    """The first n bytes of a real TLS ClientHello (made with a memory BIO)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(inc, out, server_hostname="localhost")
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    hello = out.read()
    assert hello[0] == 0x16 and len(hello) > n, hello[:8]
    return hello[:n]


H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def h2_open(port, streams=(), zero_window=False):
    """An h2c connection (python3-h2) that sent its preface, SETTINGS (INITIAL_WINDOW_SIZE
    0 when zero_window) and one request per (method, path, body) in `streams` (body
    None: END_STREAM with the head; bytes: a content-length of 100 and those bytes,
    then nothing). Returns (socket, connection, stream ids)."""
    s = connect(port)
    c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    if zero_window:
        c.local_settings = h2.settings.Settings(client=True, initial_values={
            h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0})
    c.initiate_connection()
    ids = []
    for method, path, body in streams:
        sid = c.get_next_available_stream_id()
        head = [(":method", method), (":scheme", "http"), (":authority", "a"), (":path", path)]
        if body is None:
            c.send_headers(sid, head, end_stream=True)
        else:
            c.send_headers(sid, head + [("content-length", "100")])
            if body:
                c.send_data(sid, body)
        ids.append(sid)
    s.sendall(c.data_to_send())
    return s, c, ids


def h2_events(s, c, until, what):
    """Feeds received frames to c until until(seen) is true, seen being {stream id:
    [ResponseReceived / StreamReset events]}; returns seen."""
    seen = {}
    t0 = time.monotonic()
    while not until(seen):
        assert time.monotonic() - t0 < DEADLINE + 2, "%s: only %s" % (what, seen)
        d = recv_some(s, 1)
        if d is None:
            continue
        assert d, "%s: connection closed (%s)" % (what, seen)
        for e in c.receive_data(d):
            if isinstance(e, (h2.events.ResponseReceived, h2.events.StreamReset)):
                seen.setdefault(e.stream_id, []).append(e)
        out = c.data_to_send()
        if out:
            s.sendall(out)
    return seen


def reset_count(seen):
    return sum(1 for evs in seen.values() if any(isinstance(e, h2.events.StreamReset) for e in evs))


# --- client-side timeouts ------------------------------------------------------------

def test_idle_tcp_connection_is_closed():
    for port in (AL.proxy_port,):
        t0 = time.monotonic()
        s = connect(port)
        assert_closed_by_timeout(s, "idle connection", sent_at=t0)


def test_partial_heads_get_408_and_close():
    spellings = [
        b"GET /t/demo/x HTTP/1.1\r\nHost: a\r\n",   # no blank line
        b"GET /t/demo/x HTT",                         # half a request line
        b"POST /t/demo/x HTTP/1.1\r\nContent-Len",   # half a header name
        b"\r\n\r\nGET / HTTP/1.1\r\n",               # leading empty lines, then a start
    ]
    for raw in spellings:
        t0 = time.monotonic()  # the header clock runs from accept
        s = connect(AL.proxy_port)
        s.sendall(raw)
        _, got = assert_closed_by_timeout(s, repr(raw), sent_at=t0)
        if got:  # a partial head is answered 408 before the close
            status, _, body = json_refusal(got)
            assert status == 408 and body["error"] == "request_timeout", (raw, got)


def test_trickled_head_does_not_extend_the_header_clock():
    # slowloris: one byte every 200 ms never completes a head; the clock counts from
    # the first byte, so the connection goes within the limit whatever the trickle
    t0 = time.monotonic()
    s = connect(AL.proxy_port)
    line = b"GET /t/demo/x HTTP/1.1\r\nX-Slow: " + b"a" * 200
    got = b""
    closed = False
    for b in line:
        if time.monotonic() - t0 > DEADLINE:
            break
        try:
            s.send(bytes([b]))
        except (BrokenPipeError, ConnectionResetError):
            closed = True
            break
        d = recv_some(s, 0.2)
        if d is None:
            continue
        got += d
        if not d or got.startswith(b"HTTP/1.1 408"):
            closed = True
            break
    el = time.monotonic() - t0
    s.close()
    assert closed and LIMIT * 0.8 <= el < DEADLINE, "trickled head: closed=%s after %.1fs" % (
        closed, el)
    assert not got or got.startswith(b"HTTP/1.1 408"), got[:200]


def test_partial_h2_preface_is_closed():
    t0 = time.monotonic()
    s = connect(AL.proxy_port)
    s.sendall(H2_PREFACE[:14])  # "PRI * HTTP/2.0": could still be the preface
    assert_closed_by_timeout(s, "partial h2 preface", sent_at=t0)


def test_h2_preface_without_settings_is_closed():
    t0 = time.monotonic()
    s = connect(AL.proxy_port)
    s.sendall(H2_PREFACE)
    assert_closed_by_timeout(s, "h2 preface without SETTINGS", sent_at=t0)


def test_h2_connection_without_streams_gets_goaway():
    t0 = time.monotonic()  # the no-stream clock may start before h2_open returns
    s, c, _ = h2_open(AL.proxy_port)
    _, got = assert_closed_by_timeout(s, "idle h2 connection", sent_at=t0)
    events = c.receive_data(got)
    assert any(isinstance(e, h2.events.ConnectionTerminated) for e in events), events


def test_half_client_hello_on_tls_listener_is_closed():
    for n in (0, 5, 60):
        hello = client_hello_prefix(n)  # made first: the CA bundle loads slowly under load
        t0 = time.monotonic()  # the handshake clock runs from accept
        s = connect(AL.tls_port)
        if n:
            s.sendall(hello)
        assert_closed_by_timeout(s, "TLS listener, %d bytes of ClientHello" % n, sent_at=t0)


def test_half_client_hello_inside_connect_is_closed():
    hello = client_hello_prefix(40)
    s = connect(AL.proxy_port)
    t0 = time.monotonic()  # the handshake clock starts as the 200 goes out
    s.sendall(b"CONNECT 127.0.0.1:%d HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n" % (ECHO, ECHO))
    buf = b""
    while b"\r\n\r\n" not in buf:
        d = s.recv(4096)
        assert d, buf
        buf += d
    assert buf.startswith(b"HTTP/1.1 200"), buf
    s.sendall(hello)
    assert_closed_by_timeout(s, "half ClientHello after CONNECT", sent_at=t0)


def test_keepalive_idle_connection_is_closed():
    s = connect(AL.proxy_port)
    t0 = time.monotonic()  # the keep-alive clock starts once the response is written
    s.sendall(b"GET /t/demo/ka HTTP/1.1\r\nHost: a\r\n\r\n")
    buf = b""
    while True:
        d = s.recv(65536)
        assert d, buf
        buf += d
        head, _, body = buf.partition(b"\r\n\r\n")
        cl = [l for l in head.split(b"\r\n") if l.lower().startswith(b"content-length:")]
        if cl and len(body) >= int(cl[0].split(b":")[1]):
            break
    assert buf.startswith(b"HTTP/1.1 200"), buf[:200]
    el, got = assert_closed_by_timeout(s, "keep-alive idle", sent_at=t0)
    assert got == b"", got


def test_stalled_bodies_get_408():
    socks = []
    for i in range(20):
        s = connect(AL.proxy_port)
        s.sendall(b"POST /t/demo/x HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n" +
                  (b"x" * (i % 3)))  # none, or part of the body, then nothing
        socks.append(s)
    t0 = time.monotonic()
    for s in socks:
        _, got = wait_closed(s, DEADLINE - (time.monotonic() - t0) + 2)
        status, _, body = json_refusal(got)
        assert status == 408 and body["error"] == "body_timeout", got
    assert time.monotonic() - t0 < DEADLINE


def test_h2_stalled_bodies_get_408():
    # no DATA, or part of the body and then nothing
    s, c, ids = h2_open(AL.proxy_port, [("POST", "/t/demo/h2body", b"x" * (i % 2) * 10)
                                        for i in range(6)])
    t0 = time.monotonic()
    seen = h2_events(s, c, lambda seen: len(seen) == len(ids), "408 on every stalled stream")
    s.close()
    assert time.monotonic() - t0 >= LIMIT * 0.8
    for sid, evs in seen.items():
        assert isinstance(evs[0], h2.events.ResponseReceived), (sid, evs)
        assert dict(evs[0].headers)[b":status"] == b"408", (sid, evs[0].headers)


# --- descriptor exhaustion -----------------------------------------------------------

def cpu_seconds(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_fd_exhaustion_pauses_accepting():
    table = TABLE_FAIR.replace("ECHO_PORT", str(ECHO)).replace(
        "client_body_timeout_ms: 60000", "client_header_timeout_ms: 60000")
    al = Airlock(table, providers={"dos-key": SECRET})
    nofile = 96
    al.proc = Proc(["prlimit", "--nofile=%d:%d" % (nofile, nofile), "--", AIRLOCK_BIN, "serve",
                    "-c", al.table_path], name="airlock-nofile", env=al.env, log_path=al.log_path)
    al.pid = al.proc.pid
    wait_for(lambda: http_get("http://127.0.0.1:%d/healthz" % al.admin_port, 1)[0] == 200
             if _port_open(al.admin_port) else None, 20, "airlock under prlimit answers /healthz")
    idle = []
    try:
        for _ in range(nofile + 60):
            idle.append(connect(al.proxy_port))  # the kernel's backlog takes what airlock does not
        # wait until airlock ran out of descriptors (it logs that once)
        wait_for(lambda: "accept.failed" in al.log_text(), 15, "accept.failed logged")
        c0 = cpu_seconds(al.pid)
        t0 = time.monotonic()
        time.sleep(3)  # measuring: CPU burnt over a window
        used = cpu_seconds(al.pid) - c0
        wall = time.monotonic() - t0
        assert used < 0.15 * wall, "airlock burnt %.2fs CPU in %.1fs while out of descriptors" % (
            used, wall)
        lines = [l for l in al.log_text().splitlines() if "accept.failed" in l]
        assert 1 <= len(lines) <= 2 + int(wall) + 15, "%d accept.failed lines" % len(lines)
    finally:
        for s in idle:
            s.close()
    # the idle ones are gone: a real request and the health check are served again
    def served():
        try:
            st, body = http_get(al.gateway_url("demo", "/after"), timeout=3)
            return st == 200 and json.loads(body)["headers"]["x-api-key"] == [SECRET]
        except OSError:
            return False
    wait_for(served, 20, "a request served after the idle connections closed")
    assert http_get("http://127.0.0.1:%d/healthz" % al.admin_port, 3)[0] == 200
    assert al.proc.alive()
    al.stop()


def _port_open(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


# --- fairness --------------------------------------------------------------------------

GET_DEMO = b"GET /t/demo/victim HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"


def refused_503(source, code):
    """GETs from `source` until the answer is 503 `code` (a 200 only means airlock has
    not yet read every staller's head: try again); each answer must come fast."""
    def attempt():
        t0 = time.monotonic()
        raw = http_request(FAIR.proxy_port, GET_DEMO, source=source, timeout=6)
        el = time.monotonic() - t0
        assert el < 5, "an answer took %.1fs" % el
        if raw.startswith(b"HTTP/1.1 200"):
            time.sleep(0.1)
            return None
        status, head, body = json_refusal(raw)
        assert status == 503 and body["error"] == code, raw[:400]
        assert "retry-after: 1" in head, head
        assert "proxy-status: airlock; error=connection_limit_reached" in head, head
        return True
    wait_for(attempt, 20, "503 %s for %s" % (code, source))


def victims_after():
    """With the stallers holding what they can: another client is served at once,
    the stalling client gets a fast, clear 503 (never silence)."""
    t0 = time.monotonic()
    raw = http_request(FAIR.proxy_port, GET_DEMO, source="127.0.0.2", timeout=6)
    el = time.monotonic() - t0
    assert raw.startswith(b"HTTP/1.1 200"), raw[:300]
    assert el < 5, "another client waited %.1fs" % el
    refused_503("127.0.0.1", "client_over_limit")
    raw = http_request(FAIR.proxy_port, GET_DEMO, source="127.0.0.2", timeout=6)
    assert raw.startswith(b"HTTP/1.1 200"), raw[:300]


def test_stalled_bodies_do_not_lock_out_other_clients():
    stallers = []
    try:
        for _ in range(150):  # more than the host's 128 slots per worker
            s = connect(FAIR.proxy_port)
            s.sendall(b"POST /t/demo/x HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n")
            stallers.append(s)
        victims_after()
    finally:
        for s in stallers:
            s.close()


def test_full_host_gives_newcomers_a_fast_503():
    # 17 addresses x 8 stalled bodies: every one of the host's 128 slots is held, none
    # over its client's cap; a newcomer waits limits.queue_timeout_ms, then 503
    stallers = []
    try:
        for i in range(17):
            for _ in range(8):
                s = connect(FAIR.proxy_port, source="127.0.1.%d" % (i + 1))
                s.sendall(b"POST /t/demo/x HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n")
                stallers.append(s)
        refused_503("127.0.0.3", "upstream_busy")
    finally:
        for s in stallers:
            s.close()
    # their slots come back: the newcomer is served again
    wait_for(lambda: http_request(FAIR.proxy_port, GET_DEMO, source="127.0.0.3").startswith(
        b"HTTP/1.1 200"), 10, "served once the stallers left")


BIG = ("GET", "/t/demo/bytes?n=2000000", None)  # more than airlock and curl buffer


def test_h2_zero_window_streams_do_not_lock_out_other_clients():
    conns = [h2_open(FAIR.proxy_port, [BIG] * 100, zero_window=True) for _ in range(2)]
    try:
        victims_after()
    finally:
        for s, _, _ in conns:
            s.close()


def test_h2_zero_window_streams_are_reset_after_idle_timeout():
    s, c, ids = h2_open(AL.proxy_port, [BIG] * 10, zero_window=True)
    h2_events(s, c, lambda seen: reset_count(seen) == len(ids), "every stalled stream reset")
    s.close()
    # the audit writer is a thread of its own: the line follows the resets, it is not
    # written by the time they arrive
    try:
        wait_for(lambda: any(a.get("reason") == "client_timeout" for a in AL.audit_lines()), 10)
    except TimeoutError:
        raise AssertionError("no client_timeout in the audit: %r" % [
            (a.get("status"), a.get("reason")) for a in AL.audit_lines()][-12:])


def test_h2_zero_window_with_finished_responses_is_closed():
    # small responses: the upstream is done at once, only the agent's window of 0
    # keeps the streams open; the output clock (limits.idle_timeout_ms) ends it
    t0 = time.monotonic()  # before the clock can start (see assert_closed_by_timeout)
    s, c, ids = h2_open(AL.proxy_port, [("GET", "/t/demo/small", None)] * 5, zero_window=True)
    _, got = wait_closed(s, DEADLINE + 2)
    el = time.monotonic() - t0
    assert el >= LIMIT, "closed after %.2fs" % el
    heads = [e for e in c.receive_data(got) if isinstance(e, h2.events.ResponseReceived)]
    assert len(heads) == len(ids), heads


def test_airlock_still_serves():
    for al in (AL, FAIR):
        st, body = http_get(al.gateway_url("demo", "/end"), timeout=5)
        assert st == 200, (st, body)
        assert al.proc.alive()


if __name__ == "__main__":
    run(globals())
