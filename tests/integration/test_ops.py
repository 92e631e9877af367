"""Operations (issue 9, items 6, 7, 10, 12) with the real binary and real clients:
- every refusal carries an RFC 9209 Proxy-Status header beside its JSON body, so a
  refused CONNECT says why to curl (-v) and Python requests (its reason phrase);
- POST /reload on the admin listener reloads synchronously and answers with the result
  (file:line:column diagnostics on failure, the old table keeps serving; generation up
  on success), `airlock reload` exits non-zero on failure, GET /status shows the loaded
  table (path, SHA-256, generation, targets whose provider is missing), /readyz lists
  degraded targets;
- a second `serve` on the same address exits non-zero naming the address and the pid of
  the airlock holding it (same or another state dir), and the first keeps every
  connection;
- after a key rotation, a 401/403 from an upstream that knows only the old key is retried
  once with the previous version during --grace (audited as such), and not after."""
import hashlib
import http.server
import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from altest import *  # noqa: E402,F401,F403

SECRET = "sk-ops-7d1c9a4e2b6f8035"
STATE = {}

TABLE = """
listen:
  proxy: 127.0.0.1:{proxy_port}
  admin: 127.0.0.1:{admin_port}
limits:
  workers: 2
targets:
  - name: api
    type: openapi
    url: http://127.0.0.1:ECHO_PORT
    allow_insecure_upstream: true
    allow_private_network: true
    auth:
      method: api_key
      provider: ops-key
"""


def clean_env():
    e = dict(os.environ)
    for k in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY",
              "all_proxy", "NO_PROXY", "no_proxy"):
        e.pop(k, None)
    return e


def airlock():
    if "al" not in STATE:
        if not os.path.exists(AIRLOCK_BIN):
            raise Skip("airlock binary not built: %s" % AIRLOCK_BIN)
        echo, port, _ = start_echo()
        STATE["echo_port"] = port
        STATE["table"] = TABLE.replace("ECHO_PORT", str(port))
        al = Airlock(STATE["table"], providers={"ops-key": SECRET})
        al.start()
        STATE["al"] = al
    return STATE["al"]


def admin(al, method, path, timeout=10):
    """(status, parsed JSON body) from the admin listener."""
    req = urllib.request.Request("http://127.0.0.1:%d%s" % (al.admin_port, path), method=method,
                                 data=b"" if method == "POST" else None)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        body = e.read()
        return e.code, json.loads(body) if body else None


def parse_proxy_status(v):
    """A Proxy-Status value -> (proxy name, {param: value}) for the tests' own values
    (token or sf-string parameters)."""
    name, _, rest = v.partition(";")
    params = {}
    for m in re.finditer(r'\s*([a-z][a-z0-9_.*-]*)=("((?:[^"\\]|\\.)*)"|[^;]*)\s*;?', rest):
        params[m.group(1)] = (re.sub(r'\\(.)', r'\1', m.group(3)) if m.group(3) is not None
                              else m.group(2).strip())
    return name.strip(), params


# --- item 6: Proxy-Status -----------------------------------------------------------

def test_refused_connect_has_proxy_status_for_curl():
    al = airlock()
    r = subprocess.run(["curl", "-sv", "--max-time", "20", "-x", al.proxy_url(),
                        "https://api.unknown-target.example/v1/models"],
                       capture_output=True, text=True, timeout=30, env=clean_env())
    assert r.returncode != 0, r.stderr  # the tunnel is refused
    assert "CONNECT tunnel failed, response 403" in r.stderr, r.stderr
    hdr = [ln[2:] for ln in r.stderr.splitlines() if ln.lower().startswith("< proxy-status:")]
    assert len(hdr) == 1, r.stderr
    name, p = parse_proxy_status(hdr[0].split(":", 1)[1])
    assert name == "airlock", hdr
    assert p["error"] == "destination_not_found", hdr
    assert p["error_code"] == "unknown_target", hdr
    assert "api.unknown-target.example:443" in p["details"], hdr
    # The reason phrase names the code too (what Python's http.client shows).
    assert re.search(r"< HTTP/1.1 403 Forbidden \(airlock: unknown_target\)", r.stderr), r.stderr


def test_refused_connect_reason_reaches_python_requests():
    al = airlock()
    code = r"""
import requests, sys
try:
    requests.get("https://api.unknown-target.example/", timeout=20,
                 proxies={"https": sys.argv[1]})
except requests.exceptions.ProxyError as e:
    print(str(e))
"""
    r = subprocess.run([PYTHON, "-c", code, al.proxy_url()], capture_output=True, text=True,
                       timeout=60, env=clean_env())
    assert "403 Forbidden (airlock: unknown_target)" in r.stdout, r.stdout + r.stderr


def test_forward_and_gateway_refusals_have_proxy_status_requests_h2():
    al = airlock()
    code = r"""
import json, requests, sys
out = []
r = requests.get("http://api.unknown-target.example/x?secret=1", timeout=20,
                 proxies={"http": sys.argv[1]})
out.append([r.status_code, r.headers.get("Proxy-Status"), r.json()])
r = requests.get(sys.argv[2], timeout=20)
out.append([r.status_code, r.headers.get("Proxy-Status"), r.json()])
print(json.dumps(out))
"""
    r = subprocess.run([PYTHON, "-c", code, al.proxy_url(), al.gateway_url("nope", "/x")],
                       capture_output=True, text=True, timeout=60, env=clean_env())
    assert r.returncode == 0, r.stderr
    (s1, h1, b1), (s2, h2, b2) = json.loads(r.stdout)
    assert s1 == 403 and b1["error"] == "unknown_target", (s1, b1)
    n, p = parse_proxy_status(h1)
    assert n == "airlock" and p["error"] == "destination_not_found", h1
    assert p["error_code"] == "unknown_target" and "secret" not in h1, h1
    assert s2 == 404 and b2["error"] == "no_such_target", (s2, b2)
    n, p = parse_proxy_status(h2)
    assert p["error"] == "destination_not_found" and p["error_code"] == "no_such_target", h2
    # HTTP/2 (prior knowledge) too.
    r = subprocess.run(["curl", "-sS", "-D", "-", "-o", "/dev/null", "--http2-prior-knowledge",
                        al.gateway_url("nope", "/x")], capture_output=True, text=True,
                       timeout=30, env=clean_env())
    assert r.stdout.startswith("HTTP/2 404"), r.stdout + r.stderr
    hdr = [ln for ln in r.stdout.splitlines() if ln.startswith("proxy-status:")]
    assert len(hdr) == 1 and 'error_code="no_such_target"' in hdr[0], r.stdout


def test_proxy_status_never_carries_agent_bytes_raw():
    """A hostile host name (quotes, backslashes, bytes past ASCII) stays inside the
    sf-string: the header still parses and holds no raw quote or control byte."""
    al = airlock()
    import socket
    with socket.create_connection(("127.0.0.1", al.proxy_port), timeout=10) as s:
        s.sendall(b'GET http://a\\"b\xc3\xa9.example/ HTTP/1.1\r\nHost: x\r\n\r\n')
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    head = data.split(b"\r\n\r\n")[0].decode("latin-1")
    ps = [ln for ln in head.split("\r\n") if ln.lower().startswith("proxy-status:")]
    assert len(ps) == 1, head
    v = ps[0].split(":", 1)[1].strip()
    assert all(0x20 <= ord(c) < 0x7f for c in v), v
    n, p = parse_proxy_status(v)
    assert n == "airlock" and "error" in p and "error_code" in p, v


# --- item 7: observable reloads ----------------------------------------------------

def sha256_file(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def test_status_shows_the_loaded_table():
    al = airlock()
    st, body = admin(al, "GET", "/status.json")
    assert st == 200, body
    t = body["table"]
    assert t["path"] == os.path.realpath(al.table_path), t
    assert t["sha256"] == sha256_file(al.table_path), t
    assert t["generation"] >= 1 and t["targets"] == 1, t
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$", t["loaded_at"]), t
    assert body["status"] == "ready" and "degraded_targets" not in body, body
    assert admin(al, "GET", "/readyz") == (200, {"status": "ready"})


def test_reload_refuses_a_bad_table_with_diagnostics_and_keeps_the_old_one():
    al = airlock()
    gen = admin(al, "GET", "/status.json")[1]["table"]["generation"]
    good = al.render(STATE["table"])
    bad = good + "    bogus_key: 1\n"
    bad_line = len(bad.split("\n")) - 1
    try:
        al.write_table(bad)
        st, body = admin(al, "POST", "/reload")
        assert st == 422 and body["ok"] is False and body["error"] == "table_invalid", body
        assert "stays in use" in body["message"], body
        d = [x for x in body["diagnostics"] if "bogus_key" in x["message"]]
        assert d and d[0]["file"] == os.path.realpath(al.table_path), body
        assert (d[0]["line"], d[0]["column"]) == (bad_line, 5), (bad_line, d)
        assert body["table"]["generation"] == gen, body
        # The old table keeps working.
        assert http_get(al.gateway_url("api", "/still"))[0] == 200
        assert admin(al, "GET", "/status.json")[1]["last_reload"] == "failed"
        # The CLI exits non-zero and prints FILE:LINE:COLUMN, via -c and via --admin.
        r = al.cli("reload", "-c", al.table_path)
        assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
        assert "%s:%d:5:" % (al.table_path, bad_line) in r.stderr, r.stderr
        r = al.cli("reload", "--admin", "http://127.0.0.1:%d/" % al.admin_port)
        assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
        assert "%s:%d:5:" % (os.path.realpath(al.table_path), bad_line) in r.stderr, r.stderr
        assert "stays in use" in r.stderr, r.stderr
        assert admin(al, "GET", "/status.json")[1]["table"]["generation"] == gen
    finally:
        al.write_table(STATE["table"])
    # A good table: applied, generation up, hash of the new file.
    newer = STATE["table"] + """  - name: api2
    type: openapi
    url: http://127.0.0.1:%d/two
    allow_insecure_upstream: true
    allow_private_network: true
""" % STATE["echo_port"]
    al.write_table(newer)
    st, body = admin(al, "POST", "/reload")
    assert st == 200 and body["ok"] is True, body
    assert body["table"]["generation"] == gen + 1, body
    assert body["table"]["sha256"] == sha256_file(al.table_path) and body["table"]["targets"] == 2
    assert http_get(al.gateway_url("api2", "/x"))[0] == 200  # applied at once
    al.write_table(STATE["table"])
    r = al.cli("reload", "-c", al.table_path)
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert "generation %d" % (gen + 2) in r.stdout, r.stdout
    assert admin(al, "GET", "/status.json")[1]["table"]["generation"] == gen + 2
    assert http_get(al.gateway_url("api2", "/x"))[0] == 404


def test_missing_provider_is_visible_in_readiness_status_and_log():
    al = airlock()
    ghost = STATE["table"] + """  - name: ghostly
    type: openapi
    url: http://127.0.0.1:%d/g
    allow_insecure_upstream: true
    allow_private_network: true
    auth:
      method: api_key
      provider: ghost-key
""" % STATE["echo_port"]
    al.write_table(ghost)
    try:
        st, body = admin(al, "POST", "/reload")
        assert st == 200 and body["ok"] is True, body
        want = [{"target": "ghostly", "provider": "ghost-key", "reason": "provider_missing"}]
        assert body["degraded_targets"] == want, body
        st, body = admin(al, "GET", "/readyz")
        assert st == 200 and body["status"] == "degraded", body
        assert body["degraded_targets"] == want, body
        assert admin(al, "GET", "/status.json")[1]["degraded_targets"] == want
        assert re.search(r'"table.provider_missing".*ghost-key', al.log_text()), al.log_text()
        r = al.cli("reload", "-c", al.table_path)
        assert r.returncode == 0 and "provider 'ghost-key' is not in the store" in r.stderr, r
        # Created later: picked up live, readiness is back to plain ready.
        al.create_provider("ghost-key", "sk-ghost-" + os.urandom(6).hex())
        wait_for(lambda: admin(al, "GET", "/readyz") == (200, {"status": "ready"}), timeout=10,
                 what="/readyz ready once the provider exists")
    finally:
        al.write_table(STATE["table"])
        assert admin(al, "POST", "/reload")[1]["ok"] is True


def test_reload_refuses_browser_requests_and_unknown_paths():
    al = airlock()
    gen = admin(al, "GET", "/status.json")[1]["table"]["generation"]
    req = urllib.request.Request("http://127.0.0.1:%d/reload" % al.admin_port, method="POST",
                                 data=b"", headers={"Origin": "http://evil.example"})
    try:
        urllib.request.urlopen(req, timeout=10)
        raise AssertionError("POST /reload with an Origin was accepted")
    except urllib.error.HTTPError as e:
        assert e.code == 403, e.code
    assert admin(al, "GET", "/status.json")[1]["table"]["generation"] == gen
    st, body = admin(al, "GET", "/reload")
    assert st == 404 and "POST /reload" in body["message"], body
    r = al.cli("reload", "--admin", "127.0.0.1:%d" % free_port())
    assert r.returncode == 1 and "cannot reach the admin listener" in r.stderr, r.stderr


# --- item 10: one airlock per listen address ----------------------------------------

def second_serve(al, same_state_dir):
    """Starts another `airlock serve` on al's proxy port (its own admin port); returns
    (exit status, its output). Fails if it is still running after 30 s."""
    table = STATE["table"].replace("{proxy_port}", str(al.proxy_port))
    other = Airlock(table, env={"AIRLOCK_STATE_DIR": al.state_dir} if same_state_dir else None)
    p = Proc([AIRLOCK_BIN, "serve", "-c", other.table_path], name="airlock-second",
             env=other.env, log_path=other.log_path)
    try:
        wait_for(lambda: not p.alive(), timeout=30, what="the second serve to exit")
    finally:
        p.stop()
    return p.returncode(), p.log_text()


def test_second_serve_on_the_same_port_is_refused():
    al = airlock()
    for same in (False, True):
        status, out = second_serve(al, same)
        assert status not in (0, None), (status, out)
        assert "127.0.0.1:%d is already served by another airlock" % al.proxy_port in out, out
        assert "pid %d" % al.pid in out, out
    # The first one still takes every new connection.
    before = len(al.audit_lines())
    for _ in range(30):
        assert http_get(al.gateway_url("api", "/one"))[0] == 200
    wait_for(lambda: len(al.audit_lines()) >= before + 30, timeout=10,
             what="30 audit records in the first airlock")


def test_port_held_by_another_program_is_refused():
    al = airlock()
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    port = s.getsockname()[1]
    try:
        other = Airlock(STATE["table"].replace("{proxy_port}", str(port)))
        p = Proc([AIRLOCK_BIN, "serve", "-c", other.table_path], name="airlock-busy",
                 env=other.env, log_path=other.log_path)
        wait_for(lambda: not p.alive(), timeout=30, what="serve on a busy port to exit")
        assert p.returncode() not in (0, None)
        assert "127.0.0.1:%d is already in use" % port in p.log_text(), p.log_text()
    finally:
        s.close()
    assert al.proc.alive()


# --- item 12: the previous key version during --grace --------------------------------

class OldKeyOnly(http.server.BaseHTTPRequestHandler):
    """An upstream that still knows only the old key: 401 for any other."""
    protocol_version = "HTTP/1.1"
    accepted = None
    seen = []

    def log_message(self, *a):
        pass

    def do_GET(self):
        n = int(self.headers.get("Content-Length") or 0)
        if n:
            self.rfile.read(n)
        auth = self.headers.get("Authorization")
        OldKeyOnly.seen.append(auth)
        ok = auth == OldKeyOnly.accepted
        body = json.dumps({"ok": ok}).encode()
        self.send_response(200 if ok else 401)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_POST = do_GET


def test_grace_retry_with_previous_version():
    if not os.path.exists(AIRLOCK_BIN):
        raise Skip("airlock binary not built")
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), OldKeyOnly)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        old, new = "sk-old-" + os.urandom(8).hex(), "sk-new-" + os.urandom(8).hex()
        OldKeyOnly.accepted = "Bearer " + old
        al = Airlock(TABLE.replace("ECHO_PORT", str(srv.server_address[1]))
                     .replace("ops-key", "rot-key"), providers={"rot-key": old})
        al.start()
        url = al.gateway_url("api", "/models")
        assert http_get(url)[0] == 200
        grace_s = 8
        r = al.cli("identity", "update-api-key-credential-provider", "--name", "rot-key",
                   "--api-key", "-", "--grace", "%ds" % grace_s, "--state-dir", al.state_dir,
                   stdin_data=new + "\n")
        assert r.returncode == 0, r.stderr
        t_rot = time.monotonic()
        # The new key reaches serve within a second: the upstream then sees it first.
        OldKeyOnly.seen.clear()

        def new_key_tried():
            OldKeyOnly.seen.clear()
            st = http_get(url)[0]
            return st if ("Bearer " + new) in OldKeyOnly.seen else None
        st = wait_for(new_key_tried, timeout=5, what="the new key injected")
        assert time.monotonic() - t_rot < grace_s - 1, "too slow to test inside the grace"
        assert st == 200, st  # retried with the old key, which the upstream knows
        assert OldKeyOnly.seen == ["Bearer " + new, "Bearer " + old], OldKeyOnly.seen

        def grace_record():
            for rec in al.audit_lines():
                if rec.get("retry") == "grace_previous_version":
                    return rec
        rec = wait_for(grace_record, timeout=10, what="the grace retry's audit record")
        assert rec["provider"] == "rot-key" and rec["provider_version"] == 1, rec
        assert rec["status"] == 200 and rec["decision"] == "allow", rec
        text = open(al.audit_path).read() + al.log_text()
        assert old not in text and new not in text
        # A request with a (small, Content-Length) body is replayed too: airlock kept
        # it (limits.retry_body_max_bytes; tests/integration/test_proxy_spool.py).
        OldKeyOnly.seen.clear()
        req = urllib.request.Request(url, data=b"{}", method="POST")
        try:
            urllib.request.urlopen(req, timeout=10)
            code = 200
        except urllib.error.HTTPError as e:
            code = e.code
        assert code == 200 and OldKeyOnly.seen == ["Bearer " + new, "Bearer " + old], \
            (code, OldKeyOnly.seen)
        # After the grace period the old version is gone: the 401 reaches the agent.
        wait_for(lambda: time.monotonic() - t_rot > grace_s + 1.5, timeout=grace_s + 5)
        OldKeyOnly.seen.clear()
        assert http_get(url)[0] == 401
        assert OldKeyOnly.seen == ["Bearer " + new], OldKeyOnly.seen
        al.stop()
    finally:
        srv.shutdown()


run(globals())
