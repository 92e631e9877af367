#!/usr/bin/python3
"""fake_openai: a small OpenAI-compatible HTTPS upstream for the agent tests (stdlib only,
/usr/bin/python3).

    fake_openai.py --port N [--host 127.0.0.1] [--tls-cert C --tls-key K]
                   [--record FILE] [--stream-interval-ms 100] [--stream-ack-timeout-s 0]

Prints "READY <port>" on stdout once listening (--port 0 picks a free port). Without
--tls-cert it speaks plain HTTP (for forward-proxy tests of http:// targets).

Endpoints (paths as the official SDKs send them under baseURL .../v1):
  GET  /v1/models             {"object":"list","data":[model objects]}
  GET  /v1/models/ID          one model object
  POST /v1/chat/completions   a chat.completion; with "stream": true a text/event-stream
                              of chat.completion.chunk events ("data: {...}"), one every
                              --stream-interval-ms, then "data: [DONE]"
  GET  /_lockstep/ack?id=CID&n=I   lock-step mode (below): the client saw chunk I of the
                              stream CID; 200 {"acked": count}, 404 for an unknown stream
  anything else               404 with an OpenAI-shaped error
A request without Authorization gets 401 (as the real API does); the ack endpoint needs
none (it is a side channel straight from the client, not through the proxy under test).

Lock-step streaming (--stream-ack-timeout-s T, T > 0): instead of pacing chunks by a
timer, the upstream sends chunk I+1 only after the client acknowledged chunk I on the
ack endpoint. A proxy that streams delivers every chunk while the upstream waits for its
ack, however slow the machine; a proxy that buffers holds chunk 0 back until the upstream
gives up after T seconds, and then the stream ends with an OpenAI-shaped error event
({"error": {"code": "lockstep_timeout", ...}}, which the SDKs raise) instead of the rest.
The finish chunk carries "lockstep_acked": how many chunks were acknowledged before it
was sent. No timing decides the outcome, so CPU load cannot make the test flaky.

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
from urllib.parse import parse_qs, urlsplit

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
        lockstep = self.server.stream_ack_timeout_s > 0
        events = [({"role": "assistant", "content": "", "refusal": None}, None, None)]
        events += [({"content": w}, None, None) for w in REPLY_WORDS]
        events.append(({}, "stop", {"received_authorization_sha256": self._auth_sha()}))
        if lockstep:
            self.server.lockstep_open(cid)
        try:
            for i in range(len(events) + 1):
                if i and lockstep:
                    # Chunk i-1 must have reached the client before chunk i (or [DONE]) is sent.
                    if not self.server.lockstep_wait(cid, i, self.server.stream_ack_timeout_s):
                        failure = {"message": "lockstep: chunk %d was not acknowledged within %g s: it was not "
                                              "delivered before the upstream needed its ack (the proxy buffered "
                                              "the stream)" % (i - 1, self.server.stream_ack_timeout_s),
                                   "type": "lockstep_timeout", "param": None, "code": "lockstep_timeout"}
                        self.server.lockstep_fail(cid, failure)
                        self._chunk(b"data: " + json.dumps({"error": failure}).encode() + b"\n\n")
                        break
                elif 0 < i <= len(REPLY_WORDS):
                    time.sleep(interval)  # paced, so a test can see the chunks arrive one by one
                if i == len(events):
                    self._chunk(b"data: [DONE]\n\n")
                    break
                delta, finish, extra = events[i]
                if lockstep and finish:
                    extra = dict(extra, lockstep_acked=self.server.lockstep_acked(cid))
                event(delta, finish, extra)
        finally:
            if lockstep:
                self.server.lockstep_close(cid)
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _ack(self, query):
        q = parse_qs(query)
        try:
            cid, n = q["id"][0], int(q["n"][0])
        except (KeyError, ValueError):
            self._error(400, "id and n are required", None)
            return
        count = self.server.lockstep_ack(cid, n)
        failure = self.server.lockstep_failure(cid)
        if failure:  # the late ack of a stream that gave up: the client learns why
            self._send_json(409, {"error": failure})
        elif count is None:
            self._error(404, "no lock-step stream %s is open" % cid, "unknown_stream")
        else:
            self._send_json(200, {"acked": count})

    def _handle(self):
        body = self._read_body()
        if body is None:
            return
        url = urlsplit(self.path)
        path = url.path
        if path == "/_lockstep/ack" and self.command == "GET":
            self._ack(url.query)  # not recorded: the record is what came through the proxy
            return
        self._record(body)
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
    stream_ack_timeout_s = 0.0

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.record_lock = threading.Lock()
        self._id_lock = threading.Lock()
        self._id = 0
        self._acks = {}  # open lock-step stream id -> the set of chunk indexes acknowledged
        self._failed = {}  # lock-step stream id -> the error it ended with (for late acks)
        self._ack_cond = threading.Condition()

    def lockstep_open(self, cid):
        with self._ack_cond:
            self._acks[cid] = set()

    def lockstep_fail(self, cid, failure):
        with self._ack_cond:
            self._failed[cid] = failure

    def lockstep_failure(self, cid):
        with self._ack_cond:
            return self._failed.get(cid)

    def lockstep_close(self, cid):
        with self._ack_cond:
            self._acks.pop(cid, None)

    def lockstep_ack(self, cid, n):
        """Records the client's ack of chunk n; returns how many chunks are acked, or None
        for a stream that is not open."""
        with self._ack_cond:
            acked = self._acks.get(cid)
            if acked is None:
                return None
            acked.add(n)
            self._ack_cond.notify_all()
            return len(acked)

    def lockstep_acked(self, cid):
        with self._ack_cond:
            return len(self._acks.get(cid, ()))

    def lockstep_wait(self, cid, n, timeout):
        """True once chunks 0..n-1 of stream cid are all acked; False after timeout s."""
        with self._ack_cond:
            return self._ack_cond.wait_for(lambda: all(i in self._acks[cid] for i in range(n)), timeout)

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
    ap.add_argument("--stream-ack-timeout-s", type=float, default=0,
                    help="lock-step streaming: send chunk i+1 only after chunk i was acked (0: paced)")
    a = ap.parse_args()
    if bool(a.tls_cert) != bool(a.tls_key):
        ap.error("--tls-cert and --tls-key go together")
    srv = Server((a.host, a.port), Handler)
    srv.record_path = a.record
    srv.stream_interval_ms = max(0, a.stream_interval_ms)
    srv.stream_ack_timeout_s = max(0.0, a.stream_ack_timeout_s)
    if a.tls_cert:
        srv.ssl_ctx = tls_context(a.tls_cert, a.tls_key)
    print("READY %d" % srv.server_address[1], flush=True)
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
