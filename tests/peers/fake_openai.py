#!/usr/bin/python3
"""fake_openai: a small OpenAI-compatible HTTPS upstream for the agent tests (stdlib only,
/usr/bin/python3).

    fake_openai.py --port N [--host 127.0.0.1] [--tls-cert C --tls-key K]
                   [--record FILE] [--stream-interval-ms 100]

Prints "READY <port>" on stdout once listening (--port 0 picks a free port). Without
--tls-cert it speaks plain HTTP (for forward-proxy tests of http:// targets).

Endpoints (paths as the official SDKs send them under baseURL .../v1):
  GET  /v1/models             {"object":"list","data":[model objects]}
  GET  /v1/models/ID          one model object
  POST /v1/chat/completions   a chat.completion; with "stream": true a text/event-stream
                              of chat.completion.chunk events ("data: {...}"), one every
                              --stream-interval-ms, then "data: [DONE]"
  anything else               404 with an OpenAI-shaped error
A request without Authorization gets 401 (as the real API does).

What arrived, for the test to assert:
  - every response carries X-Received-Authorization-SHA256 (hex SHA-256 of the
    Authorization value received, "none" without one), and JSON bodies carry the same in
    "received_authorization_sha256". Only a hash goes back to the client: the agent must
    be able to prove which key arrived without the key itself ever reaching the agent
    (the tests grep the agent's output for the secret).
  - with --record FILE, one JSON line per request {"method","path","headers":{lower-name:
    [values]},"body"} is appended, raw, for the test process (not the agent) to read.

Limits: a request body above 1 MiB gets 413; header lines are bounded by http.server.
"""
import argparse
import hashlib
import json
import os
import socket
import ssl
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler
from urllib.parse import urlsplit

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from peerserver import PeerServer, tls_context  # noqa: E402

MAX_BODY = 1 << 20
MODELS = ("gpt-4o-mini", "gpt-4o", "text-embedding-3-small")
CREATED = 1700000000  # a fixed timestamp keeps responses deterministic
REPLY_WORDS = ["Hello", " from", " the", " fake", " upstream", "."]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "fake-openai/1"

    def log_message(self, fmt, *args):
        sys.stderr.write("fake_openai: %s %s\n" % (self.address_string(), fmt % args))

    # --- helpers -----------------------------------------------------------------
    def _auth_sha(self):
        v = self.headers.get("Authorization")
        return hashlib.sha256(v.encode("utf-8", "surrogateescape")).hexdigest() if v is not None else "none"

    def _record(self, body):
        path = self.server.record_path
        if not path:
            return
        headers = {}
        for k, v in self.headers.items():
            headers.setdefault(k.lower(), []).append(v)
        line = json.dumps({"method": self.command, "path": self.path, "headers": headers,
                           "body": body.decode("utf-8", "replace")}) + "\n"
        with self.server.record_lock, open(path, "a") as f:
            f.write(line)

    def _read_body(self):
        """The request body (Content-Length only: the SDKs send JSON with a length).
        Returns bytes, or None after answering 411/413."""
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            self._error(411, "chunked request bodies are not supported here", "length_required")
            return None
        try:
            n = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            n = -1
        if n < 0 or n > MAX_BODY:
            self.close_connection = True
            self._error(413, "request body too large", "body_too_large")
            return None
        return self.rfile.read(n) if n else b""

    def _send_json(self, status, obj):
        obj["received_authorization_sha256"] = self._auth_sha()
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("X-Received-Authorization-SHA256", self._auth_sha())
        self.send_header("X-Request-Id", "req_fake_%d" % self.server.next_id())
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _error(self, status, message, code, etype="invalid_request_error"):
        self._send_json(status, {"error": {"message": message, "type": etype, "param": None, "code": code}})

    def _chunk(self, data):
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    # --- endpoints ---------------------------------------------------------------
    def _models(self, path):
        def model(mid):
            return {"id": mid, "object": "model", "created": CREATED, "owned_by": "fake-openai"}
        if path == "/v1/models":
            self._send_json(200, {"object": "list", "data": [model(m) for m in MODELS]})
        elif path[len("/v1/models/"):] in MODELS:
            self._send_json(200, model(path[len("/v1/models/"):]))
        else:
            self._error(404, "The model does not exist", "model_not_found")

    def _chat(self, body):
        try:
            req = json.loads(body or b"{}")
            if not isinstance(req, dict):
                raise ValueError("not an object")
        except ValueError as e:
            self._error(400, "We could not parse the JSON body of your request: %s" % e, None)
            return
        model = req.get("model")
        if not isinstance(model, str) or not isinstance(req.get("messages"), list):
            self._error(400, "'model' and 'messages' are required", "missing_required_parameter")
            return
        cid = "chatcmpl-fake%06d" % self.server.next_id()
        usage = {"prompt_tokens": 9, "completion_tokens": len(REPLY_WORDS),
                 "total_tokens": 9 + len(REPLY_WORDS)}
        if not req.get("stream"):
            self._send_json(200, {
                "id": cid, "object": "chat.completion", "created": CREATED, "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(REPLY_WORDS),
                                                     "refusal": None},
                             "logprobs": None, "finish_reason": "stop"}],
                "usage": usage, "system_fingerprint": "fp_fake"})
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("X-Received-Authorization-SHA256", self._auth_sha())
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

        def event(delta, finish=None, extra=None):
            obj = {"id": cid, "object": "chat.completion.chunk", "created": CREATED, "model": model,
                   "system_fingerprint": "fp_fake",
                   "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
            obj.update(extra or {})
            self._chunk(b"data: " + json.dumps(obj).encode() + b"\n\n")

        interval = self.server.stream_interval_ms / 1000.0
        event({"role": "assistant", "content": "", "refusal": None})
        for w in REPLY_WORDS:
            time.sleep(interval)  # paced, so a test can see the chunks arrive one by one
            event({"content": w})
        event({}, "stop", {"received_authorization_sha256": self._auth_sha()})
        self._chunk(b"data: [DONE]\n\n")
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _handle(self):
        body = self._read_body()
        if body is None:
            return
        self._record(body)
        path = urlsplit(self.path).path
        if self.headers.get("Authorization") is None:
            self._error(401, "You didn't provide an API key.", None)
            return
        if path == "/v1/models" or path.startswith("/v1/models/"):
            if self.command != "GET":
                self._error(405, "Method not allowed", None)
                return
            self._models(path)
        elif path == "/v1/chat/completions":
            if self.command != "POST":
                self._error(405, "Method not allowed", None)
                return
            self._chat(body)
        else:
            self._error(404, "Unknown request URL: %s %s" % (self.command, path), "unknown_url")

    def do_GET(self):
        self._handle()

    def do_POST(self):
        self._handle()

    def do_DELETE(self):
        self._handle()

    def handle_one_request(self):
        try:
            super().handle_one_request()
        except (ConnectionError, ssl.SSLError, socket.timeout, BrokenPipeError):
            self.close_connection = True


class Server(PeerServer):
    peer_name = "fake_openai"
    record_path = None
    stream_interval_ms = 100

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.record_lock = threading.Lock()
        self._id_lock = threading.Lock()
        self._id = 0

    def next_id(self):
        with self._id_lock:
            self._id += 1
            return self._id


def main():
    ap = argparse.ArgumentParser(description="OpenAI-compatible fake upstream for airlock tests")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--tls-cert")
    ap.add_argument("--tls-key")
    ap.add_argument("--record", help="append one JSON line per request (raw headers) to this file")
    ap.add_argument("--stream-interval-ms", type=int, default=100)
    a = ap.parse_args()
    if bool(a.tls_cert) != bool(a.tls_key):
        ap.error("--tls-cert and --tls-key go together")
    srv = Server((a.host, a.port), Handler)
    srv.record_path = a.record
    srv.stream_interval_ms = max(0, a.stream_interval_ms)
    if a.tls_cert:
        srv.ssl_ctx = tls_context(a.tls_cert, a.tls_key)
    print("READY %d" % srv.server_address[1], flush=True)
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
