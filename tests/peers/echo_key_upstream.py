#!/usr/bin/python3
"""echo_key_upstream: an upstream that echoes the credential it was sent, the way some
APIs put the key in an error message (stdlib only, /usr/bin/python3). For airlock's
echoed-secret scrubbing tests.

    echo_key_upstream.py --port N [--host 127.0.0.1]

Prints "READY <port>" once listening. The last path segment picks the endpoint (so a
target's base path does not matter). KEY below is the token of the request's
Authorization header ("Bearer KEY" -> KEY; the whole value without a scheme), or of its
X-Api-Key header. Endpoints (any method; HTTP/1.1 keep-alive):
  /header        200, KEY in response headers X-Echo-Key: KEY and
                 WWW-Authenticate: Bearer error="invalid_token", key="KEY"; body "ok\\n"
  /json          401 JSON {"error":{"message":"Incorrect API key provided: KEY. ..."}}
                 with Content-Length
  /split?at=N    200 chunked: the body "echo:KEY:end\\n" cut into two chunks at N bytes
                 into KEY (default half), flushed 50 ms apart
  /bytes         200 chunked: KEY sent one byte per chunk, 5 ms apart, between text
  /sse           text/event-stream: three events, KEY split across the first two
                 ("data: ...sk-li" / "data: ve..."), then one with KEY whole
  /near          200 with every proper prefix of KEY and KEY with its last byte
                 changed, but never KEY itself (nothing to scrub)
  /big?n=N       200 with Content-Length N (default 2 MiB): big_body(KEY, N), KEY every
                 97 bytes, so airlock's 64 KiB upstream reads and its h2 frames cut
                 through copies of it
"""
import argparse
import json
import os
import sys
import time
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qs, urlsplit

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from peerserver import PeerServer  # noqa: E402


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "echo-key/1"

    def log_message(self, fmt, *args):
        sys.stderr.write("echo-key: %s %s\n" % (self.address_string(), fmt % args))

    def _key(self):
        v = self.headers.get("Authorization") or self.headers.get("X-Api-Key") or ""
        return v.split(" ", 1)[1] if " " in v else v

    def _chunk(self, b):
        self.wfile.write(b"%x\r\n%s\r\n" % (len(b), b))
        self.wfile.flush()

    def _start_chunked(self, status=200, ctype="text/plain"):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

    def _handle(self):
        n = int(self.headers.get("Content-Length") or 0)
        if n:
            self.rfile.read(n)
        u = urlsplit(self.path)
        q = parse_qs(u.query)
        key = self._key().encode()
        p = "/" + u.path.rstrip("/").rsplit("/", 1)[-1]  # any base path: its last segment
        if p == "/header":
            body = b"ok\n"
            self.send_response(200)
            self.send_header("X-Echo-Key", key.decode("latin-1"))
            self.send_header("WWW-Authenticate",
                             'Bearer error="invalid_token", key="%s"' % key.decode("latin-1"))
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        elif p == "/json":
            body = json.dumps({"error": {
                "message": "Incorrect API key provided: %s. You can find your API key at "
                           "https://example.invalid/keys." % key.decode("latin-1"),
                "type": "invalid_request_error", "code": "invalid_api_key"}}).encode()
            self.send_response(401)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        elif p == "/split":
            at = int(q.get("at", [len(key) // 2])[0])
            body = b"echo:" + key + b":end\n"
            cut = 5 + at
            self._start_chunked()
            self._chunk(body[:cut])
            time.sleep(0.05)
            self._chunk(body[cut:])
            self.wfile.write(b"0\r\n\r\n")
        elif p == "/bytes":
            self._start_chunked()
            self._chunk(b"before ")
            for i in range(len(key)):
                self._chunk(key[i:i + 1])
                time.sleep(0.005)
            self._chunk(b" after\n")
            self.wfile.write(b"0\r\n\r\n")
        elif p == "/sse":
            self._start_chunked(ctype="text/event-stream")
            h = len(key) // 2
            self._chunk(b'data: {"delta": "your key is ' + key[:h])
            time.sleep(0.05)
            self._chunk(key[h:] + b'"}\n\n')
            time.sleep(0.05)
            self._chunk(b'data: {"again": "' + key + b'"}\n\ndata: [DONE]\n\n')
            self.wfile.write(b"0\r\n\r\n")
        elif p == "/near":
            parts = [key[:i] for i in range(1, len(key))]
            parts.append(key[:-1] + (b"X" if key[-1:] != b"X" else b"Y"))
            body = b"\n".join(parts) + b"\n"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        elif p == "/big":
            body = big_body(key, int(q.get("n", [2 * 1024 * 1024])[0]))
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            for i in range(0, len(body), 100000):  # several writes: boundaries move
                self.wfile.write(body[i:i + 100000])
        else:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _handle


def big_body(key, n):
    """n bytes: KEY, a space, KEY's first half, filler, every 97 bytes (also imported by
    the tests to build the expected body)."""
    unit = key + b" " + key[:len(key) // 2]
    unit += b"." * (97 - len(unit)) if len(unit) < 97 else b""
    return (unit * (n // len(unit) + 1))[:n]


class Server(PeerServer):
    peer_name = "echo-key"


def main():
    ap = argparse.ArgumentParser(description="echo-key upstream for airlock tests")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--host", default="127.0.0.1")
    a = ap.parse_args()
    srv = Server((a.host, a.port), Handler)
    print("READY %d" % srv.server_address[1], flush=True)
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
