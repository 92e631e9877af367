"""HTTP/2 towards the upstream with the native engine (issue 15).

The upstream is Debian nginx over TLS with ALPN h2 (the tests' CA), one worker with
a master (so it can be reloaded), logging each request's connection ($connection:
nginx's serial number of the connection). airlock runs with
limits.upstream_engine: native and one worker.

- 100 concurrent streams (h2load -c 1 -m 100) share one upstream connection; the same
  load through a target with upstream.protocol: h1 needs many (the count can fail);
- 1,000 concurrent streams on one agent connection, one of which the agent never
  reads (its window stays shut): the 999 others complete, the paused one completes
  once read, and one upstream connection carried them all;
- nginx reloaded mid-load (its old worker sends GOAWAY and closes): no request is
  lost; an upstream whose GOAWAY names an earlier stream as the last it processed:
  the streams above it are sent again on a new connection, every request answered;
- an HTTP/2 upstream that answers with a malformed response (connection-specific
  header, bad :status) gets the agent a 502 and the worker serves the next request;
- a connection that went silent gets no new streams after one of its streams timed
  out (the next request opens another connection)."""
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from altest import *  # noqa: E402,F401,F403

import h2.config  # noqa: E402
import h2.connection  # noqa: E402
import h2.events  # noqa: E402

NGINX_CONF = """
daemon off;
master_process on;
worker_processes 1;
worker_shutdown_timeout 10s;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    log_format conn '$connection $server_protocol $status $request_uri';
    access_log {d}/access.log conn;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    keepalive_requests 1000000;
    http2_max_concurrent_streams 1024;
    http2_max_requests 1000000;
    server {{
        listen 127.0.0.1:{port} ssl http2;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        location = /small {{ default_type text/plain; return 200 "small\\n"; }}
        location = /h1/small {{ default_type text/plain; return 200 "small\\n"; }}
        location /files/ {{ alias {d}/files/; default_type application/octet-stream; }}
    }}
}}
"""

TABLE = """
listen:
  proxy: 127.0.0.1:{proxy_port}
  admin: 127.0.0.1:{admin_port}
limits:
  workers: 1
  upstream_engine: native
  connect_timeout_ms: 5000
  first_byte_timeout_ms: 30000
  idle_timeout_ms: 60000
targets:
  - name: up
    type: openapi
    url: https://127.0.0.1:UP_PORT
    ca_file: CA_FILE
    allow_private_network: true
  - name: up1
    type: openapi
    url: https://127.0.0.1:UP_PORT/h1
    ca_file: CA_FILE
    allow_private_network: true
    upstream: {protocol: h1}
  - name: bad
    type: openapi
    url: https://127.0.0.1:BAD_PORT
    ca_file: CA_FILE
    allow_private_network: true
    upstream: {protocol: h2}
"""

BIG = 10 << 20


def start_upstream():
    c = test_ca()
    d = tmpdir("altest-h2up-")
    os.chmod(d, 0o755)  # the worker runs as nobody: it reads the files, writes temp
    os.mkdir(os.path.join(d, "files"))
    os.chmod(os.path.join(d, "files"), 0o755)
    with open(os.path.join(d, "files", "10m.bin"), "wb") as f:
        f.truncate(BIG)
    os.chmod(os.path.join(d, "files", "10m.bin"), 0o644)
    for sub in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        os.mkdir(os.path.join(d, sub))
        os.chmod(os.path.join(d, sub), 0o777)
    port = free_port()
    conf = os.path.join(d, "nginx.conf")
    with open(conf, "w") as f:
        f.write(NGINX_CONF.format(d=d, port=port, cert=c["cert"], key=c["key"]))
    p = Proc(["nginx", "-e", os.path.join(d, "error.log"), "-p", d, "-c", conf], name="nginx-h2",
             log_path=os.path.join(d, "stdout.log"))
    wait_port(port, proc=p)
    return p, port, c["ca"], d


def log_lines(d):
    with open(os.path.join(d, "access.log")) as f:
        return [ln.split() for ln in f.read().splitlines() if ln.strip()]


def conns_for(lines, prefix):
    return {ln[0] for ln in lines if len(ln) >= 4 and ln[3].startswith(prefix)}


class BadH2Upstream:
    """A TLS server with ALPN h2 (python3-h2) that answers every request with a
    malformed response chosen by its path: /conn -> a connection-specific header,
    /status -> :status 2000, anything else -> a plain 200 "fine". /goaway requests:
    the first connection holds them until it has 4, then sends GOAWAY naming the
    second one's stream as the last it processed, answers those up to it, ignores the
    rest (counted in .refused) and closes; later connections answer them all.
    /freeze: the connection goes silent for good (no byte read or sent)."""

    refused = 0
    goaway_done = False

    def __init__(self, ca):
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(ca["cert"], ca["key"])
        self.ctx.set_alpn_protocols(["h2"])
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self):
        while True:
            try:
                s, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self.serve, args=(s,), daemon=True).start()

    def serve(self, raw):
        try:
            s = self.ctx.wrap_socket(raw, server_side=True)
            cfg = h2.config.H2Configuration(client_side=False, validate_outbound_headers=False,
                                            normalize_outbound_headers=False)
            conn = h2.connection.H2Connection(cfg)
            conn.initiate_connection()
            s.sendall(conn.data_to_send())
            held, last = [], None
            goaway_here = not BadH2Upstream.goaway_done
            while True:
                data = s.recv(65536)
                if not data:
                    return
                for ev in conn.receive_data(data):
                    if isinstance(ev, h2.events.RequestReceived):
                        path = dict(ev.headers).get(b":path", b"/")
                        if b"/goaway" in path and goaway_here:
                            if last is not None:
                                BadH2Upstream.refused += 1
                                continue
                            held.append(ev.stream_id)
                            if len(held) < 4:
                                continue
                            BadH2Upstream.goaway_done = True
                            last = held[1]
                            for sid in held:
                                if sid > last:
                                    BadH2Upstream.refused += 1
                                    continue
                                conn.send_headers(sid, [(":status", "200")])
                                conn.send_data(sid, b"fine\n", end_stream=True)
                            conn.close_connection(last_stream_id=last)
                            s.sendall(conn.data_to_send())
                            time.sleep(0.2)  # what the client sends meanwhile is ignored
                            s.close()
                            return
                        if path.endswith(b"/freeze"):
                            time.sleep(3600)  # the connection goes silent for good
                        if path.endswith(b"/conn"):
                            hdrs = [(":status", "200"), ("connection", "close")]
                        elif path.endswith(b"/status"):
                            hdrs = [(":status", "2000")]
                        else:
                            hdrs = [(":status", "200"), ("content-length", "5")]
                        conn.send_headers(ev.stream_id, hdrs)
                        conn.send_data(ev.stream_id, b"fine\n", end_stream=True)
                s.sendall(conn.data_to_send())
        except Exception:
            return


NGINX, UP_PORT, CA, UP_DIR = start_upstream()
BAD = BadH2Upstream(test_ca())
AL = Airlock(TABLE.replace("UP_PORT", str(UP_PORT)).replace("BAD_PORT", str(BAD.port))
             .replace("CA_FILE", CA))
AL.start()


FREEZE_TABLE = """
listen:
  proxy: 127.0.0.1:{proxy_port}
  admin: 127.0.0.1:{admin_port}
limits:
  workers: 1
  upstream_engine: native
  first_byte_timeout_ms: 1000
targets:
  - name: bad
    type: openapi
    url: https://127.0.0.1:BAD_PORT
    ca_file: CA_FILE
    allow_private_network: true
"""


def h2load(target, path, n, m, timeout=60):
    r = subprocess.run(["h2load", "-n", str(n), "-c", "1", "-m", str(m), "-N", "20",
                        AL.gateway_url(target, path)],
                       capture_output=True, text=True, timeout=timeout)
    return r.stdout + r.stderr


def test_100_concurrent_streams_share_one_upstream_connection():
    before = len(log_lines(UP_DIR))
    out = h2load("up", "/small", 2000, 100)
    assert "2000 succeeded" in out and "2000 2xx" in out, out[-800:]
    new = log_lines(UP_DIR)[before:]
    assert len(new) == 2000, len(new)
    assert {ln[1] for ln in new} == {"HTTP/2.0"}, {ln[1] for ln in new}
    assert len(conns_for(new, "/small")) == 1, conns_for(new, "/small")
    # the same load with upstream.protocol: h1 takes one connection per request in
    # flight: the count above means something
    before = len(log_lines(UP_DIR))
    out = h2load("up1", "/small", 1000, 100)
    assert "1000 succeeded" in out, out[-800:]
    new = log_lines(UP_DIR)[before:]
    assert {ln[1] for ln in new} == {"HTTP/1.1"}, {ln[1] for ln in new}
    assert len(conns_for(new, "/h1/small")) > 10, len(conns_for(new, "/h1/small"))


def test_1000_streams_one_paused_reader_others_flow():
    before = len(log_lines(UP_DIR))
    s = socket.create_connection(("127.0.0.1", AL.proxy_port))
    s.settimeout(30)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    conn.increment_flow_control_window(1 << 30)  # only the paused stream's window shuts
    hdr = [(":method", "GET"), (":scheme", "http"), (":authority", "127.0.0.1")]
    conn.send_headers(1, hdr + [(":path", "/t/up/files/10m.bin")], end_stream=True)
    ids = list(range(3, 3 + 2 * 999, 2))
    for sid in ids:
        conn.send_headers(sid, hdr + [(":path", "/t/up/small")], end_stream=True)
    s.sendall(conn.data_to_send())
    ended, status, got_big, big_ended, unacked = set(), {}, 0, False, [0]

    def pump(ack_big):
        nonlocal got_big, big_ended
        data = s.recv(1 << 20)
        assert data, "airlock closed the connection"
        for ev in conn.receive_data(data):
            if isinstance(ev, h2.events.ResponseReceived):
                status[ev.stream_id] = dict(ev.headers)[b":status"]
            elif isinstance(ev, h2.events.DataReceived):
                if ev.stream_id == 1:  # (the connection's window is 1 GiB: not acked)
                    got_big += len(ev.data)
                    unacked[0] += ev.flow_controlled_length
                    if ack_big:
                        conn.acknowledge_received_data(unacked[0], 1)
                        unacked[0] = 0
                else:
                    conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, h2.events.StreamEnded):
                if ev.stream_id == 1:
                    big_ended = True
                else:
                    ended.add(ev.stream_id)
            elif isinstance(ev, h2.events.StreamReset):
                raise AssertionError("stream %d reset (code %s)" % (ev.stream_id, ev.error_code))
        s.sendall(conn.data_to_send())

    deadline = time.monotonic() + 40
    while len(ended) < len(ids):
        assert time.monotonic() < deadline, "%d of 999 streams ended" % len(ended)
        pump(False)
    assert all(status[sid] == b"200" for sid in ids)
    # the paused stream holds what its window let through, no more
    assert not big_ended and got_big <= 65535, got_big
    # read, it completes
    conn.acknowledge_received_data(unacked[0], 1)
    unacked[0] = 0
    s.sendall(conn.data_to_send())
    while not big_ended:
        assert time.monotonic() < deadline, "the paused stream got %d bytes" % got_big
        pump(True)
    assert got_big == BIG, got_big
    s.close()
    new = log_lines(UP_DIR)[before:]
    assert len(new) == 1000, len(new)
    # one connection carried them all (the pool's h2 connection from the test before)
    assert len(conns_for(new, "/")) == 1, conns_for(new, "/")


def test_goaway_mid_load_loses_no_request():
    before = len(log_lines(UP_DIR))
    p = subprocess.Popen(["h2load", "-n", "6000", "-c", "2", "-m", "50", "-N", "20",
                          AL.gateway_url("up", "/small")],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_for(lambda: len(log_lines(UP_DIR)) - before > 1000, timeout=30, what="load under way")
    NGINX.signal(signal.SIGHUP)  # reload: the old worker sends GOAWAY and goes
    out, _ = p.communicate(timeout=60)
    assert "6000 succeeded" in out and "6000 2xx" in out, out[-800:]
    new = log_lines(UP_DIR)[before:]
    conns = conns_for(new, "/small")
    # the reload landed mid-load: the requests after it went on another connection
    assert len(conns) >= 2, conns
    served = len([ln for ln in new if ln[2] == "200"])
    assert served >= 6000, served  # (a replayed stream is logged once: nginx refused it)


def test_goaway_streams_not_processed_are_sent_again():
    # a GOAWAY that names an earlier stream as the last one processed: the streams
    # above it reached the upstream but were not processed; airlock sends them again on
    # a new connection (GET, no body), so the agent sees every answer
    out = h2load("bad", "/goaway", 40, 10)
    assert "40 succeeded" in out and "40 2xx" in out, out[-800:]
    assert BadH2Upstream.goaway_done and BadH2Upstream.refused >= 2, BadH2Upstream.refused


def test_silent_connection_is_not_given_new_streams():
    # the upstream's connection goes silent (no byte either way): the stream times out
    # (504), and the next request goes to a new connection instead of joining the dead
    # one (where it would time out too)
    al = Airlock(FREEZE_TABLE.replace("BAD_PORT", str(BAD.port)).replace("CA_FILE", CA)).start()
    try:
        code, body = http_get(al.gateway_url("bad", "/freeze"), timeout=10)
        assert code == 504, (code, body)
        t0 = time.monotonic()
        code, body = http_get(al.gateway_url("bad", "/fine"), timeout=10)
        assert code == 200 and body == b"fine\n", (code, body)
        assert time.monotonic() - t0 < 0.9, "the request waited on the silent connection"
    finally:
        al.stop()


def test_malformed_h2_response_is_502_and_worker_unharmed():
    for path, word in (("/conn", "connection"), ("/status", "status")):
        code, body = http_get(AL.gateway_url("bad", path), timeout=10)[:2]
        assert code == 502, (path, code, body)
        assert b"upstream_reset" in body, body
    code, body = http_get(AL.gateway_url("bad", "/fine"), timeout=10)[:2]
    assert code == 200 and body == b"fine\n", (code, body)
    out = h2load("up", "/small", 100, 10)
    assert "100 succeeded" in out, out[-800:]


run(globals())
