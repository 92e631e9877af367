#!/usr/bin/python3
"""Idle HTTP/2 connections give memory back (issue 15, bench/RESULTS.md run 10).

After AL_CONN_TRIM_IDLE_MS (500 ms) without a stream, airlock hands the pages of
nghttp2's frame buffer and of its empty stream map back to the kernel (MADV_DONTNEED:
they read as zeros afterwards). The connection must stay exactly as usable as before:
on the real binary, with a real HPACK client (python3-h2), every exchange below comes
after a trim the debug log reported (event h2.trim), on one connection:
  - the same custom headers again: the client's encoder now sends them as references
    to its dynamic table, which only decode if airlock's decoder state survived;
  - a 200 KB response: many DATA frames written into the given-back frame buffer;
  - a PING: a frame nghttp2 answers on its own;
  - several rounds of the above, each after a new trim, then many streams at once.
Every answer is checked byte for byte. The old code never trims (no h2.trim line)."""
import json
import os
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from altest import *  # noqa: E402,F401,F403

import h2.config  # noqa: E402
import h2.connection  # noqa: E402
import h2.events  # noqa: E402

SECRET = "sk-trim-0a1b2c3d4e5f60718293a4b5"
DEADLINE = 20.0  # generous for a loaded machine

TABLE = """
listen:
  proxy: 127.0.0.1:{proxy_port}
  admin: 127.0.0.1:{admin_port}
limits:
  workers: 1
  client_keepalive_timeout_ms: 600000
targets:
  - name: demo
    type: openapi
    url: http://127.0.0.1:ECHO_PORT
    allow_insecure_upstream: true
    allow_private_network: true
    auth:
      method: api_key
      provider: trim-key
      name: X-Api-Key
"""

AL = None
HEADERS = [("x-trace-alpha", "alpha-" * 12), ("x-trace-beta", "beta-" * 12),
           ("user-agent", "h2-idle-trim-test/1.0")]


def test_start():
    global AL
    _, echo, _ = start_echo()
    AL = Airlock(TABLE.replace("ECHO_PORT", str(echo)), providers={"trim-key": SECRET},
                 env={"AIRLOCK_LOG_LEVEL": "debug"})
    AL.start()


class Conn:
    def __init__(self, port):
        self.s = socket.create_connection(("127.0.0.1", port), timeout=DEADLINE)
        self.c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.c.initiate_connection()
        self.s.sendall(self.c.data_to_send())
        self.pings = 0

    def pump(self, until, what):
        t0 = time.monotonic()
        while not until():
            assert time.monotonic() - t0 < DEADLINE, "%s: no answer" % what
            d = self.s.recv(65536)
            assert d, "%s: connection closed" % what
            for e in self.c.receive_data(d):
                self.event(e, what)
            out = self.c.data_to_send()
            if out:
                self.s.sendall(out)

    def event(self, e, what):
        st = self.streams.get(getattr(e, "stream_id", None))
        if isinstance(e, h2.events.ResponseReceived):
            st["status"] = dict(e.headers)[b":status"]
        elif isinstance(e, h2.events.DataReceived):
            st["body"] += e.data
            self.c.acknowledge_received_data(e.flow_controlled_length, e.stream_id)
        elif isinstance(e, h2.events.StreamEnded):
            st["done"] = True
        elif isinstance(e, h2.events.StreamReset):
            raise AssertionError("%s: stream %d reset (%s)" % (what, e.stream_id, e.error_code))
        elif isinstance(e, h2.events.PingAckReceived):
            self.pings += 1
        elif isinstance(e, h2.events.ConnectionTerminated):
            raise AssertionError("%s: GOAWAY %s" % (what, e.error_code))

    def requests(self, paths, what):
        """Sends one GET per path at once; returns [(status, body)] in order."""
        self.streams = {}
        ids = []
        for path in paths:
            sid = self.c.get_next_available_stream_id()
            self.c.send_headers(sid, [(":method", "GET"), (":scheme", "http"),
                                      (":authority", "a"), (":path", path)] + HEADERS,
                                end_stream=True)
            self.streams[sid] = {"status": None, "body": b"", "done": False}
            ids.append(sid)
        self.s.sendall(self.c.data_to_send())
        self.pump(lambda: all(st["done"] for st in self.streams.values()), what)
        return [(self.streams[i]["status"], self.streams[i]["body"]) for i in ids]

    def ping(self, what):
        want = self.pings + 1
        self.c.ping(b"trimtest")
        self.s.sendall(self.c.data_to_send())
        self.streams = {}
        self.pump(lambda: self.pings >= want, what)


def trims():
    return AL.log_text().count("h2.trim")


def wait_trim(after, what):
    wait_for(lambda: trims() > after, DEADLINE, "%s: an h2.trim line" % what)


def check_echo(resp, what):
    status, body = resp
    assert status == b"200", "%s: status %r %r" % (what, status, body[:200])
    got = json.loads(body)["headers"]
    for name, value in HEADERS[:2]:
        assert got.get(name) == [value], "%s: %s arrived as %r" % (what, name, got.get(name))


def check_bytes(resp, n, what):
    status, body = resp
    assert status == b"200", "%s: status %r" % (what, status)
    assert body == b"x" * n, "%s: %d bytes, not %d x's" % (what, len(body), n)


def test_connection_works_after_each_trim():
    c = Conn(AL.proxy_port)
    check_echo(c.requests(["/t/demo/echo"], "first request")[0], "first request")
    for rnd in range(3):
        what = "round %d" % rnd
        n = trims()
        wait_trim(n, what)
        c.ping(what + " ping")  # (a PING alone does not end the idle period: no new trim)
        # headers the client's HPACK encoder now sends as dynamic-table references
        check_echo(c.requests(["/t/demo/echo?r=%d" % rnd], what)[0], what + " echo")
        n = trims()
        wait_trim(n, what + " (before the large response)")
        check_bytes(c.requests(["/t/demo/bytes?n=200000"], what)[0], 200000, what + " 200 KB")
    n = trims()
    wait_trim(n, "before the burst")
    paths = ["/t/demo/echo?i=%d" % i if i % 2 else "/t/demo/bytes?n=%d" % (1000 * i)
             for i in range(40)]
    for i, resp in enumerate(c.requests(paths, "burst of 40 streams")):
        if i % 2:
            check_echo(resp, "burst stream %d" % i)
        else:
            check_bytes(resp, 1000 * i, "burst stream %d" % i)
    c.s.close()


def test_trim_line_reports_both_buffers():
    line = [ln for ln in AL.log_text().splitlines() if "h2.trim" in ln][-1]
    assert "frame_buffer=1" in line and "stream_map=1" in line, line


def test_stop():
    assert AL.stop() == 0, AL.log_text()[-2000:]


if __name__ == "__main__":
    run(globals())
