"""Integration: three `airlock serve` replicas sharing one store, HAProxy in front.

Run twice: with the PostgreSQL store (a private server from altest's start_postgres;
the replicas as on several machines, each with its own state dir holding a copy of
one CA) and with the SQLite store shared through one state dir (replicas on one
machine; each has its own listeners and audit file: `serve` refuses a second airlock on
the same address). All replicas use one master key file. HAProxy runs the repository's
own example, deploy/haproxy/airlock-frontend.cfg, with only its addresses rewritten to
127.0.0.1 (and a header naming the replica that answered, a stats socket, logs on
stdout and a lower maxconn), so the health checks, retries and redispatch under test
are the ones operators copy. The upstream is tests/peers/echo_upstream.py, which echoes
the header airlock injected: the client checks every answer carries exactly the old or
the new key.

Under load from a pool of keep-alive clients (GETs, plus a few POSTs):
  1. a key rotation through the CLI (`identity update-api-key-credential-provider`,
     another process than the replicas) is used by every replica within a second,
     measured per replica from the CLI's exit, and printed; no request fails;
  2. one replica is taken out of HAProxy, drained (SIGTERM), started again and put
     back: no request fails;
  3. one replica is killed with SIGKILL: HAProxy routes around it; no GET fails (each
     one in flight on the dead replica is replayed by HAProxy); a POST in flight on it
     may fail — the example deliberately does not replay non-idempotent requests (the
     upstream may have acted on it) — and each such failure must have been in flight
     between the kill and HAProxy marking the replica down;
  4. the keys, the master key and the database password appear in none of the
     replicas' logs and audit files, HAProxy's and PostgreSQL's logs, or any process's
     command line (`ps`); the database dump holds no plaintext key.
"""
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from altest import *  # noqa: E402,F401

REPLICAS = 3
GET_CLIENTS = 8
POST_CLIENTS = 2
LOAD_PHASE_S = 2.0  # seconds of load before the rotation, between it and the kill, after
KEY1 = "repl-old-" + os.urandom(16).hex()
KEY2 = "repl-new-" + os.urandom(16).hex()
HAPROXY_EXAMPLE = os.path.join(SOURCE_DIR, "deploy", "haproxy", "airlock-frontend.cfg")

TABLE = """
listen:
  proxy: 127.0.0.1:{proxy_port}
  admin: 127.0.0.1:{admin_port}
state_dir: {state_dir}
%(store)s
audit:
  file: {state_dir}/audit.log
limits:
  workers: 1
  # Every agent reaches airlock from HAProxy's address: the per-client cap would
  # otherwise count all of them as one client (README "Running several replicas").
  max_upstream_per_client: 0
targets:
  - name: echo
    type: openapi
    url: http://127.0.0.1:%(echo_port)d
    allow_insecure_upstream: true
    allow_private_network: true
    auth:
      method: api_key
      provider: echo-key
"""


class Cluster:
    pass


C = Cluster()  # the scenario running now (setup() makes a new one)


def sh(argv, env=None, stdin=None, timeout=60):
    e = dict(os.environ)
    e.update(env or {})
    return subprocess.run([str(a) for a in argv], input=stdin, capture_output=True, text=True,
                          env=e, timeout=timeout)


def store_env():
    """Environment of the replicas: the master key, and for SQLite the shared state dir."""
    env = {"AIRLOCK_MASTER_KEY_FILE": C.master_key}
    if C.backend == "sqlite":
        env["AIRLOCK_STATE_DIR"] = C.state
    return env


def store_cli(*args, stdin=None):
    """An operator's `airlock ARGS` against the shared store (PostgreSQL: the store of
    the operator's table, `-c`; SQLite: the shared state dir)."""
    extra = ["-c", C.op_table] if C.backend == "postgres" else []
    env = dict(store_env(), AIRLOCK_STATE_DIR=C.state)
    return sh([AIRLOCK_BIN] + list(args) + extra, env=env, stdin=stdin)


def haproxy_config(frontend_port, replicas, sock):
    """The example with addresses rewritten; every rewrite must match exactly once (or
    once per server), so a reshaped example fails here instead of testing something else."""
    with open(HAPROXY_EXAMPLE) as f:
        text = f.read()

    def sub(pattern, repl, count=1):
        nonlocal text
        text, n = re.subn(pattern, repl, text, flags=re.M)
        assert n == count, "%s: expected %d match(es) of %r, found %d" % (
            HAPROXY_EXAMPLE, count, pattern, n)

    sub(r"^(\s*)log /dev/log local0 info$", r"\1log stdout format raw local0 info")
    sub(r"^(\s*stats socket) /run/haproxy/admin.sock ", r"\1 %s " % sock)
    # 20000 connections need 40k descriptors: more than a test machine may grant.
    sub(r"^(\s*)maxconn 20000$", r"\1maxconn 2000")
    sub(r"^(\s*)bind 10\.0\.0\.10:8080$", r"\1bind 127.0.0.1:%d" % frontend_port)
    servers = iter(replicas)

    def server(m):
        a = next(servers)
        return "%sserver %s 127.0.0.1:%d port %d" % (m.group(1), m.group(2), a.proxy_port,
                                                      a.admin_port)
    text, n = re.subn(r"^(\s*)server (airlock-\d+) 10\.0\.0\.\d+:8080 port 8081$", server,
                      text, flags=re.M)
    assert n == len(replicas), "%s: %d server lines, want %d" % (HAPROXY_EXAMPLE, n,
                                                                 len(replicas))
    sub(r"^(backend airlock)$", r"\1\n    http-response set-header X-Airlock-Replica %s")
    return text


def haproxy_cmd(cmd):
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(5)
        s.connect(C.haproxy_sock)
        s.sendall(cmd.encode() + b"\n")
        out = b""
        while True:
            b = s.recv(65536)
            if not b:
                return out.decode()
            out += b


def server_stats():
    """{server name: stats row} of backend airlock from HAProxy's `show stat`."""
    lines = haproxy_cmd("show stat").splitlines()
    head = lines[0].lstrip("# ").split(",")
    out = {}
    for line in lines[1:]:
        row = dict(zip(head, line.split(",")))
        if row.get("pxname") == "airlock" and row.get("svname", "").startswith("airlock-"):
            out[row["svname"]] = row
    return out


def server_states():
    """{server name: status} ('UP', 'DOWN', 'MAINT', ...)."""
    return {k: v["status"] for k, v in server_stats().items()}


class Load:
    """Keep-alive clients through HAProxy; every answer recorded as
    (t_start, t_end, method, status, replica, injected key or error)."""

    def __init__(self, port):
        self.port = port
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.results = []
        self.threads = [threading.Thread(target=self.run, args=("GET", i), daemon=True)
                        for i in range(GET_CLIENTS)]
        self.threads += [threading.Thread(target=self.run, args=("POST", i), daemon=True)
                         for i in range(POST_CLIENTS)]

    def start(self):
        for t in self.threads:
            t.start()

    def finish(self):
        self.stop.set()
        for t in self.threads:
            t.join(30)
            assert not t.is_alive(), "a load client is stuck"

    def snapshot(self):
        with self.lock:
            return list(self.results)

    def run(self, method, i):
        conn = None
        n = 0
        while not self.stop.is_set():
            n += 1
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=20)
            t0 = time.monotonic()
            status, replica, key, err = None, None, None, None
            try:
                body = b'{"n": %d}' % n if method == "POST" else None
                conn.request(method, "/t/echo/load/%s-%d-%d" % (method, i, n), body=body,
                             headers={"Content-Type": "application/json"} if body else {})
                r = conn.getresponse()
                data = r.read()
                status, replica = r.status, r.getheader("X-Airlock-Replica")
                if status == 200:
                    auth = json.loads(data)["headers"].get("authorization", [None])
                    key = auth[0]
                else:
                    err = data[:300].decode("utf-8", "replace")
                if r.getheader("Connection", "").lower() == "close":
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException, ValueError) as e:
                err = "%s: %s" % (type(e).__name__, e)
                conn.close()
                conn = None
            with self.lock:
                self.results.append((t0, time.monotonic(), method, status, replica, key, err))
        if conn is not None:
            conn.close()


def wait_served(load, since, what, per_replica=20, timeout=20):
    names = ["airlock-%d" % (i + 1) for i in range(REPLICAS)]

    def enough():
        counts = {n: 0 for n in names}
        for t0, _t1, _m, st, rep, key, _e in load.snapshot():
            if t0 >= since and st == 200 and rep in counts and key == what:
                counts[rep] += 1
        return all(c >= per_replica for c in counts.values())
    wait_for(enough, timeout, "every replica answering with %s" % what[:15])


def failures(results):
    return [r for r in results if r[3] != 200 or r[5] not in ("Bearer " + KEY1, "Bearer " + KEY2)]


def setup(backend):
    global C
    C = Cluster()
    C.backend = backend
    if not os.path.exists(AIRLOCK_BIN):
        raise Skip("airlock binary not built: %s" % AIRLOCK_BIN)
    for tool in ("haproxy",):
        if not shutil.which(tool) and not os.path.exists("/usr/sbin/" + tool):
            raise Skip("%s not installed (deploy/install-deps.sh)" % tool)
    secrets = tmpdir("altest-repl-secrets-")
    os.chmod(secrets, 0o700)
    C.master_key = os.path.join(secrets, "master.key")
    C.master_key_hex = os.urandom(32).hex()
    fd = os.open(C.master_key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, (C.master_key_hex + "\n").encode())
    os.close(fd)
    # C.state: SQLite, the state dir every replica shares; PostgreSQL, the operator's
    # (the CA made once, the CLI's audit log), each replica having its own.
    C.state = tmpdir("altest-repl-state-")
    os.chmod(C.state, 0o700)
    C.pg = None
    store = ""
    if backend == "postgres":
        C.pg = start_postgres()
        store = "store:\n  backend: postgres\n  dsn_file: %s\n" % C.pg.dsn_file
        C.op_table = os.path.join(C.state, "operator.yaml")
        with open(C.op_table, "w") as f:
            f.write("state_dir: %s\n%s" % (C.state, store))
    # What an operator does once before starting replicas: the CA and the provider.
    r = sh([AIRLOCK_BIN, "ca", "init"], env={"AIRLOCK_STATE_DIR": C.state})
    assert r.returncode == 0, r.stdout + r.stderr
    r = store_cli("identity", "create-api-key-credential-provider", "--name", "echo-key",
                  "--api-key", "-", stdin=KEY1)
    assert r.returncode == 0, r.stdout + r.stderr
    C.echo, C.echo_port, _ = start_echo()
    C.replicas = []
    for _ in range(REPLICAS):
        a = Airlock(TABLE % {"store": store, "echo_port": C.echo_port}, env=store_env())
        if backend == "postgres":  # one CA for all: agents trust one bundle
            for name in ("ca.crt", "ca.key"):
                shutil.copy(os.path.join(C.state, name), os.path.join(a.state_dir, name))
        C.replicas.append(a)
    for a in C.replicas:
        a.start()
        wait_for(lambda: http_get("http://127.0.0.1:%d/readyz" % a.admin_port)[0] == 200, 15,
                 "replica /readyz 200")
    cas = {http_get("http://127.0.0.1:%d/ca.crt" % a.admin_port)[1] for a in C.replicas}
    assert len(cas) == 1, "the replicas use %d different CAs" % len(cas)
    d = tmpdir("altest-repl-haproxy-")
    C.haproxy_sock = os.path.join(d, "stats.sock")
    C.haproxy_port = free_port()
    cfg = os.path.join(d, "haproxy.cfg")
    with open(cfg, "w") as f:
        f.write(haproxy_config(C.haproxy_port, C.replicas, C.haproxy_sock))
    r = sh(["haproxy", "-c", "-f", cfg])
    assert r.returncode == 0, r.stdout + r.stderr
    C.haproxy = Proc(["haproxy", "-db", "-f", cfg], name="haproxy")
    wait_port(C.haproxy_port, proc=C.haproxy)
    def all_up():
        try:
            st = server_states()
        except (FileNotFoundError, ConnectionRefusedError):  # socket not listening yet
            return False
        return set(st.values()) == {"UP"} and len(st) == REPLICAS
    wait_for(all_up, 15, "haproxy seeing every replica UP")
    C.load = Load(C.haproxy_port)
    C.t_load = time.monotonic()
    C.load.start()
    wait_served(C.load, C.t_load, "Bearer " + KEY1)
    # Under load for a while before the rotation.
    wait_for(lambda: time.monotonic() - C.t_load > LOAD_PHASE_S, LOAD_PHASE_S + 5, "load phase")


def rotation():
    t_cli = time.monotonic()
    r = store_cli("identity", "update-api-key-credential-provider", "--name", "echo-key",
                  "--api-key", "-", stdin=KEY2)
    t_done = time.monotonic()
    assert r.returncode == 0, r.stdout + r.stderr
    wait_served(C.load, t_done, "Bearer " + KEY2, per_replica=20, timeout=10)
    wait_for(lambda: time.monotonic() - t_done > LOAD_PHASE_S, LOAD_PHASE_S + 5, "load phase")
    res = [x for x in C.load.snapshot() if x[0] >= C.t_load]
    bad = failures(res)
    assert not bad, "%d requests failed during the rotation, e.g. %r" % (len(bad), bad[:5])
    worst = -1e9
    for i in range(REPLICAS):
        name = "airlock-%d" % (i + 1)
        mine = sorted((x for x in res if x[4] == name), key=lambda x: x[0])
        # The replica has switched once every request it answered that started later
        # carries the new key: the start of the first such run, after the CLI exited.
        last_old = max((x[0] for x in mine if x[5] == "Bearer " + KEY1), default=None)
        first_new = min((x[1] for x in mine if x[5] == "Bearer " + KEY2 and
                         (last_old is None or x[0] > last_old)))
        old_after = [x for x in mine if x[5] == "Bearer " + KEY1 and x[0] > first_new]
        assert not old_after, "%s went back to the old key after using the new one" % name
        prop = first_new - t_done  # < 0: in use before the CLI had even exited
        stale = (last_old - t_done) if last_old is not None else float("nan")
        print("%s rotation: %s answers with the new key %+.3f s from the CLI's exit (last "
              "request with the old key started %+.3f s from it; CLI ran %.3f s)"
              % (C.backend, name, prop, stale, t_done - t_cli), flush=True)
        worst = max(worst, prop)
    print("%s rotation propagation (worst replica, from the CLI's exit): %+.3f s; %d "
          "requests, 0 failed" % (C.backend, worst, len(res)), flush=True)
    assert worst < 1.0, "a replica took %.3f s to use the rotated key" % worst


def notify_during_a_read():
    """PostgreSQL delivers a NOTIFY to a session only between its transactions, so one
    committed while a replica's credential watcher is inside its read transaction
    arrives with that transaction's last answer, and libpq keeps it in its own queue:
    the socket the watcher then polls stays quiet. Made to happen here: a psql session
    locks `versions`, a first change (generation bump + NOTIFY) sends the watcher into
    its read, which waits on the lock; the session then commits a second change with
    the lock's release. The replica must load that second generation at once, not at
    its next 1 s fallback read (before the fix: 0.9-1.0 s)."""
    pg = C.pg
    env = pg._admin_env()
    x = subprocess.Popen([os.path.join(pg.bin, "psql"), "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1",
                          "-h", "127.0.0.1", "-p", str(pg.port), "-U", "postgres", "-d",
                          "airlock"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, env=env)
    try:
        x.stdin.write("BEGIN; LOCK TABLE versions IN ACCESS EXCLUSIVE MODE; SELECT 'locked';\n")
        x.stdin.flush()
        assert x.stdout.readline().strip() == "locked"
        bump = ("UPDATE meta SET v = (v::bigint + 1)::text WHERE k = 'generation' "
                "RETURNING v; NOTIFY airlock_store;")
        g1 = int(pg.psql(bump).split()[0])

        def reader_waiting():
            return int(pg.psql("SELECT count(*) FROM pg_stat_activity WHERE usename = "
                               "'airlock' AND wait_event_type = 'Lock' AND query LIKE "
                               "'%versions%'").strip()) >= REPLICAS
        wait_for(reader_waiting, 10, "the replicas' watchers waiting on the lock")
        x.stdin.write(bump + " COMMIT; SELECT 'committed';\n")
        x.stdin.flush()
        g2 = int(x.stdout.readline().strip())
        assert g2 == g1 + 1 and x.stdout.readline().strip() == "committed"
        t0 = time.monotonic()
    finally:
        x.stdin.close()
        x.wait(10)
    took = {}

    def loaded():
        for r in C.replicas:
            if r.pid not in took and ("generation=%d " % g2) in r.log_text():
                took[r.pid] = time.monotonic() - t0
        return len(took) == len(C.replicas)
    wait_for(loaded, 5, "every replica loading generation %d" % g2, interval=0.005)
    worst = max(took.values())
    print("postgres: a change committed while the watchers were reading reached every "
          "replica in %.3f s (worst)" % worst, flush=True)
    assert worst < 0.8, "a NOTIFY that arrived during a read waited for the fallback " \
        "read: %.3f s" % worst


def sigterm():
    """A rolling restart of one replica, as README "Running several replicas" says to do
    it behind HAProxy: take it out of HAProxy (`set server ... state maint` on the stats
    socket: no new request goes to it, those in flight finish), wait until it has no
    session, SIGTERM (it drains and exits 0), start it again, put it back (`state
    ready`); HAProxy sends it traffic once its checks pass. No request fails. (Since
    limits.drain_delay_ms a SIGTERM alone is safe too: test_drain.py.)"""
    a = C.replicas[2]
    name = "airlock-3"
    t0 = time.monotonic()
    haproxy_cmd("set server airlock/%s state maint" % name)
    wait_for(lambda: server_stats()[name]["scur"] == "0", 10, "%s without sessions" % name)
    a.proc.signal(signal.SIGTERM)
    status = a.proc.wait(30)
    assert status == 0, "the drained replica exited with %s:\n%s" % (status, a.proc.log_tail())
    a.start()
    wait_for(lambda: http_get("http://127.0.0.1:%d/readyz" % a.admin_port)[0] == 200, 15,
             "the restarted replica ready")
    haproxy_cmd("set server airlock/%s state ready" % name)
    wait_for(lambda: server_states().get(name) == "UP", 15, "haproxy marking %s UP" % name)
    t_up = time.monotonic()
    wait_for(lambda: sum(1 for x in C.load.snapshot() if x[0] > t_up and x[4] == name
                         and x[3] == 200) >= 50, 10, "the restarted replica answering")
    C.t_term_end = time.monotonic()
    res = [x for x in C.load.snapshot() if t0 <= x[0] <= C.t_term_end]
    bad = failures(res)
    print("%s sigterm: %d requests while %s was taken out, drained, restarted and put back "
          "(%.2f s), %d failed" % (C.backend, len(res), name, C.t_term_end - t0, len(bad)),
          flush=True)
    assert not bad, "requests failed during a drain: %r" % bad[:5]


def sigkill():
    victim = C.replicas[1]
    vname = "airlock-2"
    t_kill = time.monotonic()
    os.kill(victim.pid, signal.SIGKILL)
    victim.proc.wait(10)
    wait_for(lambda: server_states().get(vname) == "DOWN", 10, "haproxy marking %s DOWN" % vname)
    t_down = time.monotonic()
    # Keep loading the two survivors for a while after HAProxy gave up on the victim.
    survivors = ["airlock-1", "airlock-3"]

    def enough():
        n = {s: 0 for s in survivors}
        for x in C.load.snapshot():
            if x[0] > t_down and x[3] == 200 and x[4] in n:
                n[x[4]] += 1
        return all(v >= 50 for v in n.values()) and time.monotonic() - t_down > LOAD_PHASE_S
    wait_for(enough, 20, "the survivors answering after the kill")
    C.load.finish()
    every = [x for x in C.load.snapshot() if x[0] >= C.t_load]
    res = [x for x in every if x[0] > C.t_term_end]
    after = [x for x in res if x[1] >= t_kill]
    bad = failures(res)
    bad_get = [x for x in bad if x[2] == "GET"]
    bad_post = [x for x in bad if x[2] == "POST"]
    answered_by_victim_late = [x for x in res if x[4] == vname and x[0] > t_down]
    hlog = C.haproxy.log_text()
    print("%s sigkill: %d requests after the kill (%d GET, %d POST), %d failed GET, %d failed "
          "POST; HAProxy marked the replica DOWN %.3f s after the kill"
          % (C.backend, len(after), sum(1 for x in after if x[2] == "GET"),
             sum(1 for x in after if x[2] == "POST"), len(bad_get), len(bad_post),
             t_down - t_kill), flush=True)
    assert not bad_get, "GET requests lost though HAProxy could replay them: %r" % bad_get[:5]
    assert not answered_by_victim_late, "answers from a dead replica?"
    # A POST the victim had taken may fail: HAProxy does not replay it (the example's
    # disable-l7-retry; airlock may have sent it upstream already). HAProxy answers 502
    # when it was the client connection's first request; on a kept-alive connection it
    # closes the connection without an answer and without a log line, as a server
    # closing an idle keep-alive connection would ("http-reuse safe": the client decides
    # whether to retry). Either way the request was in flight at the kill, or sent on
    # one of the victim's idle connections (whose reset HAProxy had not seen yet) before
    # HAProxy marked it down.
    for x in bad_post:
        assert x[3] == 502 or (x[3] is None and "RemoteDisconnected" in x[6]), (
            "a POST failed otherwise than a 502 or a closed keep-alive connection: %r" % (x,))
        assert x[1] >= t_kill and x[0] <= t_down, (
            "a POST failed that was not in flight between the kill and DOWN: %r" % (x,))
    # GETs HAProxy replayed: the retries field (actconn/feconn/beconn/srv_conn/retries,
    # "+N" when redispatched) of the log lines.
    replayed = sum(1 for m in re.finditer(r" \d+/\d+/\d+/\d+/\+?(\d+) \d+/\d+ \"GET ", hlog)
                   if int(m.group(1)) > 0)
    print("%s sigkill: %d GET replayed by HAProxy on another replica, %d POST not replayed "
          "(failed: in flight on the killed replica)" % (C.backend, replayed, len(bad_post)), flush=True)
    print("%s load: %d requests in all (%.0f/s), %d failed (%d GET, %d POST)" % (
        C.backend, len(every), len(every) / (time.monotonic() - C.t_load), len(failures(every)),
        len(bad_get), len(bad_post)), flush=True)


def secret_found(data, secrets, where):
    """None, or where a secret is in `data`: its name, the place and some context with
    every secret masked (a failure must be diagnosable from the output alone)."""
    for name, s in secrets:
        s = s.encode() if isinstance(data, bytes) else s
        i = data.find(s)
        if i < 0:
            continue
        ctx = data[max(0, i - 160):i + len(s) + 160]
        if isinstance(ctx, bytes):
            ctx = ctx.decode("utf-8", "replace")
        for n2, s2 in secrets:
            ctx = ctx.replace(s2, "<%s>" % n2)
        return "%s is in %s at offset %d: ...%s..." % (name, where, i, ctx)
    return None


def no_secret():
    secrets = [("KEY1", KEY1), ("KEY2", KEY2), ("the master key", C.master_key_hex)]
    files = []
    for a in C.replicas:
        files += [a.log_path, a.audit_path]
    files += [C.haproxy.log_path, C.echo.log_path, os.path.join(C.state, "audit.log")]
    if C.pg is not None:
        secrets += [("the database password", C.pg.password)]
        files += [C.pg.proc.log_path]
        dump = C.pg.dump()
        dump = dump if isinstance(dump, bytes) else dump.encode()
        assert b"echo-key" in dump, "the dump does not hold the provider?"
        for s in (KEY1, KEY2, C.master_key_hex):
            assert s.encode() not in dump, "the database holds a plaintext secret"
    else:
        files += [os.path.join(C.state, "identity.db")]
    for path in files:
        assert os.path.exists(path), "expected %s to exist" % path
        with open(path, "rb") as f:
            data = f.read()
        found = secret_found(data, secrets, path)
        assert not found, found
    # The replicas' audit files hold their requests (a check that reads nothing finds nothing).
    for a in C.replicas:
        assert any(x.get("target") == "echo" for x in a.audit_lines()), a.audit_path
    ps = sh(["ps", "-eo", "pid,args", "--no-headers", "-ww"]).stdout
    assert str(C.replicas[0].pid) in ps, "ps does not show the replicas?"
    found = secret_found(ps, secrets, "ps output")
    assert not found, found


def teardown():
    if getattr(C, "load", None) is not None:
        C.load.stop.set()  # (a failed step may have left it running)
    C.haproxy.stop()
    for a in C.replicas:
        a.stop()
    C.echo.stop()
    if C.pg is not None:
        C.pg.stop()


# The scenario twice: replicas on several machines share PostgreSQL (the altest helper
# starts a private server); replicas on one machine may share the SQLite state dir.
def test_postgres_setup():
    setup("postgres")


def test_postgres_rotation_reaches_every_replica_within_a_second():
    rotation()


def test_postgres_notify_during_a_read_is_not_missed():
    notify_during_a_read()


def test_postgres_sigterm_drains_one_replica_and_it_rejoins():
    sigterm()


def test_postgres_sigkill_one_replica_under_load():
    sigkill()


def test_postgres_no_secret_in_logs_audit_database_or_ps():
    no_secret()


def test_postgres_teardown():
    teardown()


def test_sqlite_setup():
    setup("sqlite")


def test_sqlite_rotation_reaches_every_replica_within_a_second():
    rotation()


def test_sqlite_sigterm_drains_one_replica_and_it_rejoins():
    sigterm()


def test_sqlite_sigkill_one_replica_under_load():
    sigkill()


def test_sqlite_no_secret_in_logs_audit_or_ps():
    no_secret()


def test_sqlite_teardown():
    teardown()


if __name__ == "__main__":
    run(globals())
