"""An agent that goes away while its HTTP/1.1 request is in flight (an SSE stream that
is quiet, a response still awaited from the upstream) is noticed at once: airlock closes
its side of the connection (no socket left in CLOSE-WAIT, the upstream exchange is
cancelled), and SIGTERM then stops `serve` at once instead of waiting out
limits.drain_timeout_ms for a connection nobody is at. This is what an MCP SDK client
(Streamable HTTP: a long GET for server events) did when it closed its session.

Checked on the real binary with raw sockets; airlock's side of each connection is read
from /proc/net/tcp (state 08 = CLOSE_WAIT). Pipelined requests behind an in-flight one
are still answered: airlock does not read them away while it watches for the close."""
import os
import signal
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from altest import *  # noqa: E402,F401,F403

ECHO = None
AL = None

TABLE = """
listen:
  proxy: 127.0.0.1:{proxy_port}
  admin: 127.0.0.1:{admin_port}
limits:
  first_byte_timeout_ms: 120000
  idle_timeout_ms: 120000
  drain_timeout_ms: 60000
  workers: 1
targets:
  - name: echo
    type: openapi
    url: http://127.0.0.1:ECHO_PORT
    allow_insecure_upstream: true
    allow_private_network: true
"""

# (request, bytes that show it reached the upstream and is now in flight or None)
IN_FLIGHT = [
    # an SSE stream after its first event: the next one is a minute away
    (b"GET /t/echo/sse?n=2&interval_ms=60000 HTTP/1.1\r\nHost: x\r\n\r\n", b"event: tick"),
    # an SSE stream, HTTP/1.0 spelling, no Host
    (b"GET /t/echo/sse?n=2&interval_ms=60000 HTTP/1.0\r\n\r\n", b"event: tick"),
    # nothing answered yet: the upstream takes a minute for the head
    (b"GET /t/echo/slow?ms=60000 HTTP/1.1\r\nHost: x\r\n\r\n", None),
    # a complete POST body, the response awaited
    (b"POST /t/echo/slow?ms=60000 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello", None),
    # a chunked body, the response awaited
    (b"POST /t/echo/slow?ms=60000 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
     b"5\r\nhello\r\n0\r\n\r\n", None),
]


def airlock_side_states(client_port):
    """TCP states (hex strings) of the sockets whose local port is the proxy's and whose
    remote port is client_port: airlock's end of that client's connection."""
    states = []
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(path) as f:
                lines = f.read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            lport = int(f[1].rsplit(":", 1)[1], 16)
            rport = int(f[2].rsplit(":", 1)[1], 16)
            if lport == AL.proxy_port and rport == client_port:
                states.append(f[3])
    return states


def open_in_flight(req, marker):
    s = socket.create_connection(("127.0.0.1", AL.proxy_port), timeout=10)
    s.sendall(req)
    got = b""
    if marker:
        deadline = time.monotonic() + 10
        while marker not in got:
            assert time.monotonic() < deadline, "no %r in %r" % (marker, got)
            chunk = s.recv(4096)
            assert chunk, "closed early: %r" % got
            got += chunk
    else:
        # the upstream has the request when airlock's upstream connection exists
        wait_for(lambda: in_flight_requests() >= 1, 10, "the request at the upstream")
    return s


def in_flight_requests():
    """Established connections from airlock to the echo upstream (its port is remote)."""
    n = 0
    with open("/proc/net/tcp") as f:
        for line in f.read().splitlines()[1:]:
            x = line.split()
            if int(x[2].rsplit(":", 1)[1], 16) == ECHO[1] and x[3] == "01":
                n += 1
    return n


def assert_closed_by_airlock(port, what):
    def gone():
        st = airlock_side_states(port)
        return not st or all(s not in ("01", "08") for s in st)
    try:
        wait_for(gone, 8, "airlock closing its side")
    except Exception:
        raise AssertionError("%s: airlock's side of the connection still in state %s "
                             "(08 = CLOSE_WAIT) after the client closed"
                             % (what, airlock_side_states(port)))


def test_client_gone_mid_request_is_closed():
    for req, marker in IN_FLIGHT:
        for how in ("close", "shutdown"):
            s = open_in_flight(req, marker)
            port = s.getsockname()[1]
            if how == "close":
                s.close()
            else:
                s.shutdown(socket.SHUT_WR)  # the agent's FIN, its socket still open
            assert_closed_by_airlock(port, "%s %r" % (how, req[:40]))
            if how == "shutdown":
                s.close()
            # the upstream exchange is cancelled, not left running for nobody
            wait_for(lambda: in_flight_requests() == 0, 8, "the upstream exchange cancelled")
    # each one audited as the agent's close
    want = 2 * len(IN_FLIGHT)
    wait_for(lambda: sum(1 for r in AL.audit_lines() if r.get("outcome") == "client_closed")
             >= want, 8, "%d audit records with outcome client_closed" % want)


def test_pipelined_request_behind_in_flight_one_is_answered():
    s = socket.create_connection(("127.0.0.1", AL.proxy_port), timeout=10)
    s.sendall(b"GET /t/echo/slow?ms=300 HTTP/1.1\r\nHost: x\r\n\r\n"
              b"GET /t/echo/second HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    got = b""
    deadline = time.monotonic() + 15
    while True:
        assert time.monotonic() < deadline, got
        chunk = s.recv(65536)
        if not chunk:
            break
        got += chunk
    s.close()
    assert got.count(b"HTTP/1.1 200") == 2, got
    assert b"/second" in got, got


def test_sigterm_with_only_a_dead_stream_left_stops_at_once():
    s = open_in_flight(IN_FLIGHT[0][0], IN_FLIGHT[0][1])
    s.close()
    # an idle keep-alive connection too: draining closes it at once
    k = socket.create_connection(("127.0.0.1", AL.proxy_port), timeout=10)
    k.sendall(b"GET /t/echo/a HTTP/1.1\r\nHost: x\r\n\r\n")
    got = b""
    while b"body_sha256" not in got:
        chunk = k.recv(65536)
        assert chunk, got
        got += chunk
    t0 = time.monotonic()
    AL.proc.signal(signal.SIGTERM)
    try:
        rc = AL.proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        rc = None
    took = time.monotonic() - t0
    k.close()
    # drain_timeout_ms is 60 s: a wait anywhere near it is the bug
    assert rc is not None, "serve still running %.1f s after SIGTERM (drain_timeout_ms 60000)" % took
    assert rc == 0, rc
    assert "drain.timeout" not in AL.log_text(), AL.proc.log_tail()


def setup():
    global ECHO, AL
    p, port, _ = start_echo()
    ECHO = (p, port)
    AL = Airlock(TABLE.replace("ECHO_PORT", str(port)))
    AL.start()


if __name__ == "__main__":
    setup()
    run(globals())
