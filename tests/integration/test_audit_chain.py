"""The tamper-evident audit log (issue 16, items 1-3) with the real binary and real
clients: `airlock audit verify` passes on the log airlock wrote (after load, a restart,
a store change from the CLI while serving, size rotation, a SIGUSR1 reopen), and on
copies names the first bad line and why: one line edited, one removed, two swapped,
one inserted, the tail cut, the whole file rewritten with recomputed hashes (only the
signature, checked with the key from `airlock audit export-key`, catches that).
A full disk (a 64 KiB tmpfs): with audit.on_failure: deny the agent gets 503
audit_unavailable and nothing reaches the upstream unaudited; with continue requests
flow, the failure is logged and counted, and the held records land once there is room."""
import hashlib
import http.server
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from altest import *  # noqa: E402,F401,F403

SECRET = "sk-chain-3b1f9e7d5c2a4e6f8a0c1e3d"

TABLE = """
listen:
  proxy: 127.0.0.1:{proxy_port}
  admin: 127.0.0.1:{admin_port}
limits:
  workers: 2
audit:
  checkpoint_interval_ms: 300
AUDIT_EXTRA
targets:
  - name: api
    type: openapi
    url: http://127.0.0.1:UP_PORT
    allow_insecure_upstream: true
    allow_private_network: true
    auth:
      method: api_key
      provider: chain-key
"""


class Upstream:
    """A counting upstream: every request's path, in arrival order."""

    def __init__(self):
        self.paths = []
        lock = threading.Lock()
        owner = self

        class H(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):
                with lock:
                    owner.paths.append(self.path)
                body = b'{"ok":true}'
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def table(up, extra=""):
    return TABLE.replace("UP_PORT", str(up.port)).replace("AUDIT_EXTRA", extra)


def get(al, path):
    """(status, parsed JSON body or None) of a gateway GET."""
    st, body = http_get(al.gateway_url("api", path), timeout=10)
    try:
        return st, json.loads(body)
    except ValueError:
        return st, None


def verify(al, *files, key=None, live=False):
    args = ["audit", "verify", "--format", "json"]
    if key:
        args += ["--key", key]
    if live:
        args.append("--live")
    r = al.cli(*(args + list(files)))
    assert r.returncode in (0, 1), (r.returncode, r.stdout, r.stderr)
    out = json.loads(r.stdout)
    assert (r.returncode == 0) == out["ok"], (r.returncode, out)
    return out


def export_key(al):
    r = al.cli("audit", "export-key", "--state-dir", al.state_dir)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("-----BEGIN PUBLIC KEY-----"), r.stdout
    path = os.path.join(al.state_dir, "audit-pub.pem")
    with open(path, "w") as f:
        f.write(r.stdout)
    return path


def lines_of(path):
    with open(path, "rb") as f:
        return f.read().split(b"\n")[:-1]


def write_lines(path, lines):
    with open(path, "wb") as f:
        f.write(b"".join(l + b"\n" for l in lines))


CLEAN = {}  # the clean log of test_clean_log_verifies, for the tampering tests


def test_clean_log_verifies_after_load_and_restart():
    up = Upstream()
    al = Airlock(table(up), providers={"chain-key": SECRET})
    try:
        al.start()
        for i in range(25):
            assert get(al, "/a/%d" % i)[0] == 200
        # a store change from the CLI while serving joins the same chain (flock)
        al.create_provider("second-key", "sk-second-0123456789abcdef")
        for i in range(5):
            assert get(al, "/b/%d" % i)[0] == 200
        # a periodic checkpoint appears while serving, and --live accepts the open tail
        wait_for(lambda: any(b'"reason":"interval"' in l for l in lines_of(al.audit_path)),
                 10, "an interval checkpoint")
        key = export_key(al)
        live = verify(al, al.audit_path, key=key, live=True)
        assert live["ok"] and live["signatures_checked"] >= 1, live
        assert al.stop() == 0
        # the restart reads the chain's end and goes on from it
        al.start()
        for i in range(10):
            assert get(al, "/c/%d" % i)[0] == 200
        assert al.stop() == 0
        assert os.stat(os.path.join(al.state_dir, "audit-signing.key")).st_mode & 0o777 == 0o600
        out = verify(al, al.audit_path, key=key)
        assert out["ok"], out
        lines = lines_of(al.audit_path)
        recs = [json.loads(l) for l in lines]
        assert out["records"] == len(lines) and out["first_seq"] == 0, out
        assert [r["seq"] for r in recs] == list(range(len(recs)))
        assert all(l.startswith(b'{"seq":') for l in lines)
        # every line names the one before; the CLI's line is in the chain too
        for a, b in zip(lines, recs[1:]):
            assert b["prev"] == hashlib.sha256(a).hexdigest()
        assert any(r.get("event") == "identity.create" and r.get("provider") == "second-key"
                   for r in recs), [r.get("event") for r in recs]
        reasons = [r["reason"] for r in recs if r.get("event") == "audit.checkpoint"]
        assert reasons.count("shutdown") == 2 and "interval" in reasons, reasons
        assert recs[-1]["event"] == "audit.checkpoint" and recs[-1]["reason"] == "shutdown"
        assert sum(1 for r in recs if r.get("event") == "request") == 40
        # text output and exit status
        r = al.cli("audit", "verify", "--key", key, al.audit_path)
        assert r.returncode == 0 and r.stdout.startswith("ok: "), r.stdout
        assert SECRET not in open(al.audit_path).read()
        CLEAN.update(al=al, key=key, lines=lines)
    finally:
        al.stop()
        up.close()


def tampered(name, lines):
    al = CLEAN["al"]
    path = os.path.join(al.state_dir, "tampered-%s.log" % name)
    write_lines(path, lines)
    return path


def expect_bad(name, lines, line, reason, key=True):
    al = CLEAN["al"]
    path = tampered(name, lines)
    out = verify(al, path, key=CLEAN["key"] if key else None)
    assert not out["ok"], (name, out)
    assert (out["line"], out["reason"]) == (line, reason), (name, out)
    assert out["file"] == path, out
    # the text form names FILE:LINE: reason, exit 1
    r = al.cli("audit", "verify", "--key", CLEAN["key"], path) if key else \
        al.cli("audit", "verify", path)
    assert r.returncode == 1 and r.stdout.startswith("%s:%d: %s:" % (path, line, reason)), \
        (name, r.stdout)
    return out


def request_line_index(lines, nth=10):
    """Index of the nth request record (0-based lines)."""
    seen = 0
    for i, l in enumerate(lines):
        if b'"event":"request"' in l:
            seen += 1
            if seen == nth:
                return i
    raise AssertionError("fewer than %d request lines" % nth)


def test_tampering_is_named_with_line_and_reason():
    if not CLEAN:
        raise Skip("needs the clean log of the first test")
    L = list(CLEAN["lines"])
    k = request_line_index(L)  # line k+1 in 1-based numbers
    # one line edited (a status changed): its hash no longer matches the next line's prev
    edited = list(L)
    assert b'"status":200' in edited[k]
    edited[k] = edited[k].replace(b'"status":200', b'"status":201')
    expect_bad("edited", edited, k + 1, "edited")
    # the same edit spelt differently: whitespace only, and a changed seq
    spaced = list(L)
    spaced[k] = spaced[k].replace(b'","', b'", "', 1)
    expect_bad("spaced", spaced, k + 1, "edited")
    reseq = list(L)
    rec = json.loads(reseq[k])
    reseq[k] = reseq[k].replace(b'"seq":%d,' % rec["seq"], b'"seq":%d,' % (rec["seq"] + 7))
    expect_bad("reseq", reseq, k + 1, "edited")
    # one removed
    removed = L[:k] + L[k + 1:]
    expect_bad("removed", removed, k + 1, "removed")
    # two swapped
    swapped = list(L)
    swapped[k], swapped[k + 1] = swapped[k + 1], swapped[k]
    expect_bad("swapped", swapped, k + 1, "reordered")
    # one inserted (a copy of an earlier, genuine line)
    inserted = L[:k] + [L[3]] + L[k:]
    expect_bad("inserted", inserted, k + 1, "inserted")
    # an unchained line inserted (what a naive forger appends)
    plain = L[:k] + [b'{"event":"request","status":200}'] + L[k:]
    expect_bad("plain", plain, k + 1, "not_chained")
    # garbage
    junk = L[:k] + [b'not json at all'] + L[k:]
    expect_bad("junk", junk, k + 1, "malformed")
    # the tail cut: the last 3 records gone, including the shutdown checkpoint
    cut = L[:-3]
    out = expect_bad("cut", cut, len(cut) + 1, "truncated")
    assert "checkpoint" in out["message"], out
    # cut exactly after an interval checkpoint: still not sealed
    last_interval = max(i for i, l in enumerate(L) if b'"reason":"interval"' in l)
    expect_bad("cut-at-interval", L[:last_interval + 1], last_interval + 2, "truncated")
    # cut mid-line (no newline at the end)
    path = tampered("midline", L)
    with open(path, "ab") as f:
        f.write(L[5][:40])
    out = verify(CLEAN["al"], path, key=CLEAN["key"])
    assert (out["ok"], out["line"], out["reason"]) == (False, len(L) + 1, "truncated"), out
    # an emptied log
    out = verify(CLEAN["al"], tampered("empty", []), key=CLEAN["key"])
    assert (out["ok"], out["reason"]) == (False, "empty"), out
    # --live accepts a tail that is merely not yet signed (documented), not a broken chain
    assert verify(CLEAN["al"], tampered("cut2", cut), key=CLEAN["key"], live=True)["ok"]
    assert not verify(CLEAN["al"], tampered("rm2", removed), key=CLEAN["key"], live=True)["ok"]


def rechain(lines):
    """What a forger with write access does: edit, then recompute every seq and prev."""
    out, prev = [], "0" * 64
    for seq, l in enumerate(lines):
        rec = json.loads(l)
        rest = l[l.index(b'","', l.index(b'"prev":')) + 2:]  # from the field after prev
        new = b'{"seq":%d,"prev":"%s",' % (seq, prev.encode()) + rest
        assert json.loads(new)["event"] == rec["event"]
        out.append(new)
        prev = hashlib.sha256(new).hexdigest()
    return out


def test_rewritten_file_caught_only_by_the_signature():
    if not CLEAN:
        raise Skip("needs the clean log of the first test")
    L = list(CLEAN["lines"])
    k = request_line_index(L)
    forged = list(L)
    forged[k] = forged[k].replace(b'"status":200', b'"status":404')
    del forged[k + 2]
    forged = rechain(forged)
    # the hashes and sequence hold: without the key nothing is wrong ...
    path = tampered("rewritten", forged)
    assert verify(CLEAN["al"], path)["ok"]
    # ... with it, the first checkpoint after the edit does not verify
    first_cp = next(i for i, l in enumerate(forged) if i > k and b'audit.checkpoint' in l)
    expect_bad("rewritten", forged, first_cp + 1, "bad_signature")
    # checkpoints dropped altogether: nothing sealed, the end is "truncated"
    nocp = rechain([l for l in L if b"audit.checkpoint" not in l])
    expect_bad("nocp", nocp, len(nocp) + 1, "truncated")
    # another airlock's key does not vouch for this log
    other = Airlock("listen:\n  proxy: 127.0.0.1:{proxy_port}\n")
    r = other.cli("audit", "export-key", "--state-dir", other.state_dir)
    assert r.returncode == 0
    okey = os.path.join(other.state_dir, "other.pem")
    with open(okey, "w") as f:
        f.write(r.stdout)
    out = verify(CLEAN["al"], CLEAN["al"].audit_path, key=okey)
    assert (out["ok"], out["reason"]) == (False, "unknown_key"), out
    # a key file that is not a key: usage error, exit 2
    r = CLEAN["al"].cli("audit", "verify", "--key", CLEAN["al"].audit_path, path)
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)


def writer_quiet(al, needles):
    """Every needle is in the live log or audit.log.1, and the newest line is a
    checkpoint (the live log is empty just after a rotation: then audit.log.1's last)."""
    files = [al.audit_path + ".1", al.audit_path]
    lines = [l for f in files if os.path.exists(f) for l in lines_of(f)]
    return bool(lines) and b'"event":"audit.checkpoint"' in lines[-1] and \
        all(any(n in l for l in lines) for n in needles)


def test_rotation_by_size_and_reopen_keep_the_chain():
    up = Upstream()
    al = Airlock(table(up, "  max_file_bytes: 6000\n  max_files: 100\n"),
                 providers={"chain-key": SECRET})
    try:
        al.start()
        for i in range(40):
            assert get(al, "/rot/%d" % i)[0] == 200
        wait_for(lambda: os.path.exists(al.audit_path + ".3"), 15, "three rotations")
        # logrotate-style: move the live file away, SIGUSR1, more requests
        moved = al.audit_path + ".moved"
        for i in range(5):
            assert get(al, "/pre/%d" % i)[0] == 200
        # the writer quiet first (every record written, then sealed by a checkpoint: it
        # writes nothing more until the next record), so its own size rotation cannot run
        # between our rename and the reopen: a rename in the instant between its
        # audit.log -> audit.log.1 and the new audit.log found no file
        wait_for(lambda: writer_quiet(al, [b'"path":"/pre/%d"' % i for i in range(5)]), 10,
                 "the /pre/ records written and sealed")
        os.rename(al.audit_path, moved)
        al.proc.signal(signal.SIGUSR1)
        wait_for(lambda: os.path.exists(al.audit_path), 10, "the reopened log")
        for i in range(5):
            assert get(al, "/post/%d" % i)[0] == 200
        assert al.stop() == 0
        key = export_key(al)
        rotated = sorted((f for f in os.listdir(al.state_dir)
                          if f.startswith("audit.log.") and f[10:].isdigit()),
                         key=lambda f: -int(f[10:]))
        assert len(rotated) >= 3, rotated
        series = [os.path.join(al.state_dir, f) for f in rotated] + [moved, al.audit_path]
        for f in series[:-1]:
            assert os.path.getsize(f) <= 6000, (f, os.path.getsize(f))
            last = json.loads(lines_of(f)[-1])
            assert last["event"] == "audit.checkpoint" and last["reason"] in ("rotate", "reopen")
        # each file's first line names the previous file's last
        for a, b in zip(series, series[1:]):
            assert json.loads(lines_of(b)[0])["prev"] == \
                hashlib.sha256(lines_of(a)[-1]).hexdigest(), (a, b)
        out = verify(al, *series, key=key)
        assert out["ok"] and out["first_seq"] == 0, out
        recs = [json.loads(l) for f in series for l in lines_of(f)]
        paths = [r["path"] for r in recs if r.get("event") == "request"]
        assert len(paths) == 50 and len(set(paths)) == 50, paths
        # one rotated file alone verifies (sealed by its rotate checkpoint) ...
        assert verify(al, series[1], key=key)["ok"]
        # ... a file left out or out of order does not
        out = verify(al, series[0], series[2], key=key)
        assert (out["ok"], out["line"], out["reason"]) == (False, 1, "removed"), out
        out = verify(al, series[1], series[0], key=key)
        assert not out["ok"] and out["line"] == 1, out
    finally:
        al.stop()
        up.close()


def test_reload_says_which_audit_keys_wait_for_a_restart():
    up = Upstream()
    al = Airlock(table(up), providers={"chain-key": SECRET})
    try:
        al.start()
        al.reload(table(up, "  max_file_bytes: 100000\n  on_failure: deny\n"))
        wait_for(lambda: "change only on restart" in al.log_text(), 10, "the reload warning")
        assert get(al, "/x")[0] == 200
        assert al.stop() == 0
        key = export_key(al)
        recs = [json.loads(l) for l in lines_of(al.audit_path)]
        assert any(r.get("event") == "table.reload" for r in recs)
        assert verify(al, al.audit_path, key=key)["ok"]
    finally:
        al.stop()
        up.close()


def mount_tmpfs(size="64k"):
    d = tmpdir("altest-auditfs-")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=%s,mode=0700" % size, "tmpfs", d],
                       capture_output=True, text=True)
    if r.returncode != 0:
        why = r.stderr.strip()
        if os.geteuid() != 0 or "not permitted" in why or "ermission denied" in why:
            # a container or a user without CAP_SYS_ADMIN: allowed, said why
            raise AllowedSkip("mounting a tmpfs needs CAP_SYS_ADMIN, which this machine does "
                              "not give the test (%s)" % why)
        raise Skip("cannot mount a tmpfs here (%s)" % why)
    return d


def umount(d):
    subprocess.run(["umount", "-l", d], capture_output=True)


def fill(d):
    """Fills the file system with a filler file; returns its path."""
    path = os.path.join(d, "filler")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (4096, 512, 1):
            try:
                while True:
                    os.write(fd, b"\0" * size)
            except OSError:
                pass
    finally:
        os.close(fd)
    return path


def full_disk_run(mode):
    up = Upstream()
    fs = mount_tmpfs()
    al = None
    try:
        log = os.path.join(fs, "audit.log")
        al = Airlock(table(up, "  file: %s\n  on_failure: %s\n" % (log, mode)),
                     providers={"chain-key": SECRET})
        al.start()
        for i in range(3):
            assert get(al, "/before/%d" % i)[0] == 200
        wait_for(lambda: sum(b"/before/" in l for l in lines_of(log)) == 3, 10, "3 records")
        filler = fill(fs)
        results = []
        # requests until the writer has met the full disk (and, with deny, refuses)
        deadline = time.monotonic() + 20
        i = 0
        while time.monotonic() < deadline:
            st, body = get(al, "/during/%d" % i)
            results.append((i, st, body))
            i += 1
            if "audit.write_failed" in al.log_text() and i >= 30:
                break
            time.sleep(0.02)
        assert "audit.write_failed" in al.log_text(), al.log_text()
        return al, up, fs, log, filler, results
    except BaseException:
        if al:
            al.stop()
        up.close()
        umount(fs)
        raise


def test_disk_full_deny_refuses_and_forwards_nothing_unaudited():
    al, up, fs, log, filler, results = full_disk_run("deny")
    try:
        refused = [(i, b) for i, st, b in results if st == 503]
        assert refused, results
        for _, b in refused:
            assert b and b["error"] == "audit_unavailable" and b["message"], b
        # once refusing starts, every later request is refused while the disk is full
        first = refused[0][0]
        assert all(st == 503 for i, st, b in results if i >= first), results
        # the upstream saw exactly the requests the agent got a 200 for, none refused
        ok = set("/during/%d" % i for i, st, b in results if st == 200)
        assert set(p for p in up.paths if "/during/" in p) == ok, (sorted(ok), up.paths)
        # the refusal says so in Proxy-Status too, with Retry-After
        r = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-D", "-", "--noproxy", "*",
                            al.gateway_url("api", "/probe")], capture_output=True, text=True)
        assert " 503" in r.stdout.split("\n")[0], r.stdout
        assert 'error_code="audit_unavailable"' in r.stdout and "retry-after: 1" in \
            r.stdout.lower(), r.stdout
        # room again: the held records land, then requests flow again
        os.unlink(filler)
        wait_for(lambda: get(al, "/after/0")[0] == 200, 15, "requests flowing again")
        assert al.stop() == 0
        lines = [json.loads(l) for l in lines_of(log)]
        audited = set(r["path"] for r in lines if r.get("event") == "request" and
                      r.get("status") == 200)
        sent = set(p for p in up.paths if "/during/" in p)
        assert sent, up.paths
        for p in sent:
            assert any(a.endswith(p) for a in audited), (p, sorted(audited))
        assert any(r.get("event") == "audit.write_failed" for r in lines), lines[-5:]
        # the refusals are records too (held in the queue until there was room)
        denied = [r for r in lines if r.get("reason") == "audit_unavailable"]
        assert denied and all(r["decision"] == "deny" and r["decided_by"] == "audit" and
                              r["status"] == 503 for r in denied), denied[:3]
        key = export_key(al)
        assert verify(al, log, key=key)["ok"]
    finally:
        al.stop()
        up.close()
        umount(fs)


def test_disk_full_continue_serves_and_counts():
    al, up, fs, log, filler, results = full_disk_run("continue")
    try:
        assert all(st == 200 for i, st, b in results), results
        assert len([p for p in up.paths if "/during/" in p]) == len(results)
        os.unlink(filler)
        assert get(al, "/after/0")[0] == 200
        assert al.stop() == 0
        lines = [json.loads(l) for l in lines_of(log)]
        fails = [r for r in lines if r.get("event") == "audit.write_failed"]
        assert fails and fails[0]["failed_writes"] >= 1, lines[-5:]
        key = export_key(al)
        assert verify(al, log, key=key)["ok"]
    finally:
        al.stop()
        up.close()
        umount(fs)


if __name__ == "__main__":
    run(globals())
