"""Request bodies kept for a retry (issue 10, item 3): the real airlock binary, real
curl clients, and an upstream here that accepts only some keys and records, for every
attempt, the key it got and the length and SHA-256 of the body it read.

- a 401 to the first key is retried with the fallback provider, or with the previous
  key version during a rotation's grace period, and the retry carries the very same
  body (HTTP/1.1 and h2c agents; also when the upstream answers before reading the
  body, so the retry reads behind an agent still sending);
- a body larger than limits.spool_memory_bytes goes to an unnamed file in $TMPDIR
  while the request runs, and nothing is left there (no name, no open descriptor)
  when it ends;
- a body larger than limits.retry_body_max_bytes, or of unknown length (chunked), is
  streamed and not retried: the 401 reaches the agent;
- a 429 to one key of a pool is retried with the other key, with the same body;
- a body whose first attempt succeeds goes upstream once."""
import hashlib
import http.server
import json
import os
import subprocess
import sys
import threading

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from altest import *  # noqa: E402,F401,F403

MAIN = "sk-spool-main-4b1d9e7a2c"
POOL_A = "sk-spool-pool-a-5c2e8b0d7f"
POOL_B = "sk-spool-pool-b-1e9a4c6f3b"
SPARE = "sk-spool-spare-8f3e0a6c1d"
OLD = "sk-spool-old-2a7c9e1b5d"
NEW = "sk-spool-new-6d0b3f8a4e"
MEMORY = 64 * 1024          # limits.spool_memory_bytes
BOUND = 2 * 1024 * 1024     # limits.retry_body_max_bytes

TABLE = """
listen:
  proxy: 127.0.0.1:{proxy_port}
  admin: 127.0.0.1:{admin_port}
limits:
  workers: 2
  spool_memory_bytes: %d
  retry_body_max_bytes: %d
targets:
  - name: fb
    type: openapi
    url: http://127.0.0.1:UP_PORT/fb
    allow_insecure_upstream: true
    allow_private_network: true
    auth:
      method: api_key
      provider: main-key
      fallback_provider: spare-key
  - name: pool
    type: openapi
    url: http://127.0.0.1:UP_PORT/pool
    allow_insecure_upstream: true
    allow_private_network: true
    auth:
      method: api_key
      provider: [pool-a, pool-b]
  - name: rot
    type: openapi
    url: http://127.0.0.1:UP_PORT/rot
    allow_insecure_upstream: true
    allow_private_network: true
    auth:
      method: api_key
      provider: rot-key
""" % (MEMORY, BOUND)

S = {}  # al, spool_dir, bodies dir


class Upstream(http.server.BaseHTTPRequestHandler):
    """Accepts the Authorization values in `accepted`; 401 for any other. /early/...
    answers 401 before reading the body (then closes). With `fail_429` set, the next
    request gets 429 (Retry-After: 1) whatever its key. Every attempt is recorded as
    (authorization, body bytes, body sha256, spool files airlock had open)."""
    protocol_version = "HTTP/1.1"
    accepted = set()
    fail_429 = False
    seen = []
    lock = threading.Lock()

    def log_message(self, *a):
        pass

    def read_body(self):
        h, n = hashlib.sha256(), 0
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                data = self.rfile.read(size)
                h.update(data)
                n += len(data)
                self.rfile.readline()
        else:
            left = int(self.headers.get("Content-Length") or 0)
            while left:
                data = self.rfile.read(min(left, 65536))
                if not data:
                    break
                h.update(data)
                n += len(data)
                left -= len(data)
        return n, h.hexdigest()

    def answer(self, ok, obj, close=False, status=None):
        body = json.dumps(obj).encode()
        self.send_response(status or (200 if ok else 401))
        if status == 429:
            self.send_header("Retry-After", "1")
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        auth = self.headers.get("Authorization")
        ok = auth in Upstream.accepted
        if self.path.endswith("/early") and not ok:
            with Upstream.lock:
                Upstream.seen.append((auth, None, None, None))
            self.answer(False, {"early": True}, close=True)
            return
        n, sha = self.read_body()
        files = spool_files()
        with Upstream.lock:
            Upstream.seen.append((auth, n, sha, files))
            status, Upstream.fail_429 = (429 if Upstream.fail_429 else None), False
        self.answer(ok, {"ok": ok, "body_bytes": n, "body_sha256": sha}, status=status)

    do_PUT = do_POST


def spool_files():
    """Descriptors airlock holds on files in its $TMPDIR (the spool's): their targets."""
    al = S.get("al")
    if not al or not al.pid:
        return []
    out = []
    fd_dir = "/proc/%d/fd" % al.pid
    try:
        names = os.listdir(fd_dir)
    except OSError:
        return []
    for fd in names:
        try:
            target = os.readlink(os.path.join(fd_dir, fd))
        except OSError:
            continue
        if target.startswith(S["spool_dir"] + "/"):
            out.append(target)
    return out


def setup():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Upstream)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    S["srv"] = srv
    S["spool_dir"] = tmpdir("altest-spool-")
    S["bodies"] = tmpdir("altest-bodies-")
    al = Airlock(TABLE.replace("UP_PORT", str(srv.server_address[1])),
                 providers={"main-key": MAIN, "spare-key": SPARE, "rot-key": OLD,
                            "pool-a": POOL_A, "pool-b": POOL_B},
                 env={"TMPDIR": S["spool_dir"]})
    S["al"] = al
    al.start()


def body_file(n, name):
    path = os.path.join(S["bodies"], name)
    data = os.urandom(n)
    with open(path, "wb") as f:
        f.write(data)
    return path, hashlib.sha256(data).hexdigest()


def post(target, path, body_path, *extra, timeout=60):
    """curl POST of the file; (status, parsed body, request id)."""
    rid = "spool-" + os.urandom(6).hex()
    r = subprocess.run(["curl", "-sS", "--noproxy", "", "-w", "\n%{http_code}", "-X", "POST",
                        "--data-binary", "@" + body_path, "-H", "Content-Type: application/octet-stream",
                        "-H", "X-Request-Id: " + rid] + list(extra)
                       + [S["al"].gateway_url(target, path)],
                       capture_output=True, timeout=timeout)
    body, _, code = r.stdout.rpartition(b"\n")
    assert MAIN.encode() not in body and SPARE.encode() not in body
    try:
        j = json.loads(body)
    except ValueError:
        j = body
    return int(code or 0), j, rid


def audit_of(rid):
    def find():
        for rec in S["al"].audit_lines():
            if rec.get("client_request_id") == rid:
                return rec
    return wait_for(find, 10, "the audit record of " + rid)


def reset(accepted):
    Upstream.accepted = set("Bearer " + k for k in accepted)
    with Upstream.lock:
        del Upstream.seen[:]


def seen():
    with Upstream.lock:
        return [s[:3] for s in Upstream.seen]


def assert_nothing_left():
    wait_for(lambda: not spool_files(), 10, "airlock to close its spool files")
    assert os.listdir(S["spool_dir"]) == [], os.listdir(S["spool_dir"])


def test_fallback_retry_replays_a_200k_body():
    setup()
    path, sha = body_file(200 * 1024, "b200k")
    for proto in ([], ["--http2-prior-knowledge"]):
        reset([SPARE])
        code, j, rid = post("fb", "/v1/upload", path, *proto)
        assert code == 200, (proto, code, j)
        assert j["body_sha256"] == sha and j["body_bytes"] == 200 * 1024, j
        assert seen() == [("Bearer " + MAIN, 200 * 1024, sha),
                          ("Bearer " + SPARE, 200 * 1024, sha)], (proto, seen())
        rec = audit_of(rid)
        assert rec["retry"] == "fallback_provider" and rec["provider"] == "spare-key", rec
        assert rec["status"] == 200, rec
    assert_nothing_left()


def test_retry_while_the_agent_is_still_sending():
    # The upstream refuses the first key before reading the body; the retry starts
    # while curl is still uploading (rate-limited) and reads behind it.
    path, sha = body_file(300 * 1024, "b300k")
    reset([SPARE])
    code, j, rid = post("fb", "/early", path, "--limit-rate", "400k")
    assert code == 200, (code, j)
    assert j["body_sha256"] == sha, j
    s = seen()
    assert s[0] == ("Bearer " + MAIN, None, None) and \
        s[1] == ("Bearer " + SPARE, 300 * 1024, sha) and len(s) == 2, s
    assert_nothing_left()


def test_a_body_past_memory_goes_to_an_unnamed_file_and_is_gone_after():
    n = 1536 * 1024  # > spool_memory_bytes, < retry_body_max_bytes
    path, sha = body_file(n, "b1536k")
    reset([SPARE])
    code, j, rid = post("fb", "/big", path)
    assert code == 200 and j["body_sha256"] == sha, (code, j)
    with Upstream.lock:
        files = [s[3] for s in Upstream.seen]
    # while the first attempt ran, airlock held one file in $TMPDIR, without a name
    assert len(files[0]) == 1 and files[0][0].endswith(" (deleted)"), files
    assert seen() == [("Bearer " + MAIN, n, sha), ("Bearer " + SPARE, n, sha)], seen()
    assert_nothing_left()


def test_grace_retry_replays_the_body():
    al = S["al"]
    r = al.cli("identity", "update-api-key-credential-provider", "--name", "rot-key",
               "--api-key", "-", "--grace", "10m", "--state-dir", al.state_dir,
               stdin_data=NEW + "\n")
    assert r.returncode == 0, r.stderr
    path, sha = body_file(200 * 1024, "b200k-grace")
    reset([OLD])

    def retried():
        # the new version reaches serve within a second; until then OLD goes first
        reset([OLD])
        code, j, rid = post("rot", "/v1/upload", path)
        return (code, j, rid) if seen()[0][0] == "Bearer " + NEW else None
    code, j, rid = wait_for(retried, 10, "the new key version injected", interval=0.2)
    assert code == 200 and j["body_sha256"] == sha, (code, j)
    assert seen() == [("Bearer " + NEW, 200 * 1024, sha), ("Bearer " + OLD, 200 * 1024, sha)], \
        seen()
    rec = audit_of(rid)
    assert rec["retry"] == "grace_previous_version" and rec["provider_version"] == 1, rec
    assert_nothing_left()


def test_429_retry_with_the_other_pool_key_replays_the_body():
    path, sha = body_file(200 * 1024, "b200k-pool")
    reset([POOL_A, POOL_B])
    Upstream.fail_429 = True  # whichever key goes first gets the 429 and rests
    code, j, rid = post("pool", "/v1/upload", path)
    assert code == 200 and j["body_sha256"] == sha, (code, j)
    s = seen()
    assert len(s) == 2 and {s[0][0], s[1][0]} == {"Bearer " + POOL_A, "Bearer " + POOL_B}, s
    assert s[0][1:] == s[1][1:] == (200 * 1024, sha), s
    rec = audit_of(rid)
    assert rec["retry"] == "another_pool_key" and rec["status"] == 200, rec
    assert_nothing_left()


def test_body_past_the_retry_bound_is_streamed_not_retried():
    n = BOUND + 1
    path, sha = body_file(n, "bbound")
    reset([SPARE])
    code, j, rid = post("fb", "/v1/upload", path)
    assert code == 401, (code, j)
    assert seen() == [("Bearer " + MAIN, n, sha)], seen()
    assert "retry" not in audit_of(rid)
    # exactly the bound is kept and retried
    path, sha = body_file(BOUND, "bexact")
    reset([SPARE])
    code, j, rid = post("fb", "/v1/upload", path)
    assert code == 200 and j["body_sha256"] == sha, (code, j)
    assert len(seen()) == 2, seen()
    assert_nothing_left()


def test_body_of_unknown_length_is_streamed_not_retried():
    path, sha = body_file(10 * 1024, "bchunked")
    reset([SPARE])
    code, j, rid = post("fb", "/v1/upload", path, "-H", "Transfer-Encoding: chunked")
    assert code == 401, (code, j)
    assert seen() == [("Bearer " + MAIN, 10 * 1024, sha)], seen()
    assert_nothing_left()


def test_accepted_first_time_goes_once():
    path, sha = body_file(200 * 1024, "bonce")
    reset([MAIN])
    code, j, rid = post("fb", "/v1/upload", path)
    assert code == 200 and j["body_sha256"] == sha, (code, j)
    assert seen() == [("Bearer " + MAIN, 200 * 1024, sha)], seen()
    assert "retry" not in audit_of(rid)
    assert_nothing_left()
    text = open(S["al"].audit_path).read() + S["al"].log_text()
    for k in (MAIN, SPARE, OLD, NEW, POOL_A, POOL_B):
        assert k not in text


run(globals())
