#!/usr/bin/python3
"""echo_upstream: the tests' own HTTP/1.1 upstream (stdlib only, /usr/bin/python3).

    echo_upstream.py --port N [--host 127.0.0.1] [--tls-cert C --tls-key K] [--plain]

Prints "READY <port>" on stdout once listening (--port 0 picks a free port, and the
line says which). Keep-alive HTTP/1.1, one thread per connection.

Endpoints (any method):
  /sse?n=5&interval_ms=200  text/event-stream, n events, flushed one by one
  /bytes?n=N[&cl=1]          N bytes streamed (chunked; with cl=1 Content-Length)
  /status/NNN                that status with a JSON body (Retry-After: 1 for 429, or
                             ?retry_after=S)
  /slow?ms=N                 waits N ms, then the echo response
  /reset                     closes the socket (RST) without answering
  /trailers                  chunked response with a trailer (X-Checksum)
  anything else              200 JSON {"method","path","query","headers":{lower-name:[values]},
                             "body_bytes","body_sha256","http_version"}
                             query and header values: every character a JSON
                             \\u escape: the same strings once parsed, but the raw bytes
                             never hold the credential airlock injected, which airlock
                             would otherwise scrub from the response (echoed-secret
                             scrubbing; tests/peers/echo_key_upstream.py echoes raw).
                             --plain writes them as they are (the quickstart's demo, whose
                             target turns scrubbing off to show the key it injected).

Request bodies (Content-Length or chunked) are read in 64 KiB pieces and hashed as
they arrive, so a 100 MB upload never sits in memory.
"""
import argparse
import hashlib
import json
import os
import socket
import ssl
import struct
import sys
import time
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qs, urlsplit

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from peerserver import PeerServer, tls_context  # noqa: E402

PIECE = 64 * 1024
MAX_LINE = 8 * 1024  # a chunk-size or trailer line longer than this is a broken peer


class BadRequest(Exception):
    pass


def opaque_json(obj):
    """json.dumps(obj), with "query" and the values under "headers" written as
    \\u escapes only."""
    hdrs = obj.get("headers") if isinstance(obj, dict) else None
    if not isinstance(hdrs, dict):
        return json.dumps(obj)
    lits = []

    def mark(v):
        lits.append('"' + "".join("\\u%04x" % ord(c) if ord(c) < 0x10000 else json.dumps(c)[1:-1]
                                  for c in v) + '"')
        return "\x00echo-header-%d\x00" % (len(lits) - 1)
    o = dict(obj)
    o["headers"] = {k: [mark(v) for v in vs] for k, vs in hdrs.items()}
    for k in ("query",):  # a key in the query string (location: query)
        if isinstance(o.get(k), str):
            o[k] = mark(o[k])
    text = json.dumps(o)
    for i, lit in enumerate(lits):
        text = text.replace('"\\u0000echo-header-%d\\u0000"' % i, lit, 1)
    return text


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "echo-upstream/1"

    def log_message(self, fmt, *args):
        sys.stderr.write("echo: %s %s\n" % (self.address_string(), fmt % args))

    # --- request body, streamed --------------------------------------------------
    def _read_body(self):
        """Consumes the request body; returns (byte count, sha256 hex)."""
        h = hashlib.sha256()
        total = 0
        te = ",".join(self.headers.get_all("Transfer-Encoding") or []).lower()
        if "chunked" in te:
            while True:
                line = self.rfile.readline(MAX_LINE + 1)
                if not line or len(line) > MAX_LINE:
                    raise BadRequest("bad chunk size line")
                size = int(line.split(b";", 1)[0].strip() or b"x", 16)
                if size == 0:
                    # trailers until the empty line
                    while True:
                        t = self.rfile.readline(MAX_LINE + 1)
                        if not t or len(t) > MAX_LINE:
                            raise BadRequest("bad trailer")
                        if t in (b"\r\n", b"\n"):
                            break
                    break
                left = size
                while left:
                    data = self.rfile.read(min(PIECE, left))
                    if not data:
                        raise BadRequest("body ended early")
                    h.update(data)
                    total += len(data)
                    left -= len(data)
                self.rfile.readline(MAX_LINE)  # CRLF after the chunk
        else:
            left = int(self.headers.get("Content-Length") or 0)
            while left > 0:
                data = self.rfile.read(min(PIECE, left))
                if not data:
                    raise BadRequest("body ended early")
                h.update(data)
                total += len(data)
                left -= len(data)
        return total, h.hexdigest()

    # --- responses ---------------------------------------------------------------
    def _send_json(self, status, obj, extra=None):
        body = (json.dumps(obj) if self.server.plain else opaque_json(obj)).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        if status in (204, 304) or (100 <= status < 200):
            body = b""
        else:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)

    def _chunk(self, data):
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def _echo_obj(self, nbytes, digest):
        u = urlsplit(self.path)
        headers = {}
        for k, v in self.headers.items():
            headers.setdefault(k.lower(), []).append(v)
        return {
            "method": self.command,
            "path": u.path,
            "query": u.query,
            "headers": headers,
            "body_bytes": nbytes,
            "body_sha256": digest,
            "http_version": self.request_version,
        }

    def _handle(self):
        try:
            nbytes, digest = self._read_body()
        except (BadRequest, ValueError) as e:
            self.close_connection = True
            self._send_json(400, {"error": "bad_request", "message": str(e)},
                            {"Connection": "close"})
            return
        u = urlsplit(self.path)
        q = parse_qs(u.query)

        def qint(name, default):
            try:
                return int(q.get(name, [default])[0])
            except ValueError:
                return default

        p = u.path
        if p == "/reset":
            # SO_LINGER 0: close() sends RST, the proxy sees "connection reset".
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                       struct.pack("ii", 1, 0))
            # (over TLS too: no close_notify, the TCP connection just drops)
            self.close_connection = True
            self.connection.close()
            return
        if p == "/sse":
            n, interval = qint("n", 5), qint("interval_ms", 200)
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i in range(n):
                if i:
                    time.sleep(interval / 1000.0)
                ev = "id: %d\nevent: tick\ndata: {\"i\": %d, \"t\": %.3f}\n\n" % (i, i, time.time())
                self._chunk(ev.encode())
            self.wfile.write(b"0\r\n\r\n")
            return
        if p == "/bytes":
            n = max(0, qint("n", 0))
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            cl = q.get("cl", ["0"])[0] == "1"
            if cl:
                self.send_header("Content-Length", str(n))
            else:
                self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            if self.command == "HEAD":
                return
            piece = b"x" * PIECE
            left = n
            while left:
                data = piece[:min(PIECE, left)]
                if cl:
                    self.wfile.write(data)
                else:
                    self._chunk(data)
                left -= len(data)
            if not cl:
                self.wfile.write(b"0\r\n\r\n")
            return
        if p.startswith("/status/"):
            try:
                code = int(p[len("/status/"):])
            except ValueError:
                code = 400
            if not 200 <= code <= 599:
                code = 400
            extra = {"Retry-After": str(qint("retry_after", 1))} if code == 429 else None
            obj = self._echo_obj(nbytes, digest)
            obj["status"] = code
            self._send_json(code, obj, extra)
            return
        if p == "/slow":
            time.sleep(max(0, qint("ms", 1000)) / 1000.0)
        if p == "/trailers":
            body = b'{"trailers": true}\n'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Transfer-Encoding", "chunked")
            self.send_header("Trailer", "X-Checksum")
            self.end_headers()
            self._chunk(body)
            self.wfile.write(b"0\r\nX-Checksum: sha256=%s\r\n\r\n"
                             % hashlib.sha256(body).hexdigest().encode())
            return
        self._send_json(200, self._echo_obj(nbytes, digest))

    def handle_one_request(self):
        try:
            super().handle_one_request()
        except (ConnectionError, ssl.SSLError, socket.timeout, BrokenPipeError):
            self.close_connection = True

    def __getattr__(self, name):
        # every method (GET, POST, PATCH, custom ones) goes to the one handler
        if name.startswith("do_"):
            return self._handle
        raise AttributeError(name)


class Server(PeerServer):
    peer_name = "echo"
    plain = False  # --plain: header values echoed as they are


def main():
    ap = argparse.ArgumentParser(description="echo upstream for airlock tests")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--tls-cert")
    ap.add_argument("--tls-key")
    ap.add_argument("--plain", action="store_true",
                    help="echo header values as they are (not \\u-escaped)")
    a = ap.parse_args()
    if bool(a.tls_cert) != bool(a.tls_key):
        ap.error("--tls-cert and --tls-key go together")
    srv = Server((a.host, a.port), Handler)
    srv.plain = a.plain
    if a.tls_cert:
        srv.ssl_ctx = tls_context(a.tls_cert, a.tls_key)
    print("READY %d" % srv.server_address[1], flush=True)
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
