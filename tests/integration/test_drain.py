"""Integration: a plain SIGTERM behind a load balancer loses no request.

Two `airlock serve` replicas behind HAProxy running the repository's example
(deploy/haproxy/airlock-frontend.cfg, rewritten as test_replicas.py does; its third
server is put in maintenance). Keep-alive clients send POSTs through HAProxy all the
time; HAProxy does not replay a POST (the upstream may have acted on it), so a POST it
sent on a kept-alive connection that the replica closed at that instant is lost.

  1. limits.drain_delay_ms: 0 (the drain at once, the old behaviour): one replica is
     sent SIGTERM a few times; the failed POSTs are counted and printed (not asserted:
     the race is timing-dependent);
  2. limits.drain_delay_ms set: SIGTERM makes the replica a lame duck (/readyz 503
     "draining", listeners serving on), HAProxy's check takes it out, then it drains:
     10 repetitions, no failed request;
  3. an HTTP/2 client with requests in flight when the drain starts gets every response
     and a graceful GOAWAY: first last-stream-id 2^31-1 (the shutdown notice), then the
     final one naming its last stream.
"""
import http.client
import json
import re
import os
import signal
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from altest import *  # noqa: E402,F401
import test_replicas as TR  # noqa: E402  (its HAProxy rewrite of the example)

POST_CLIENTS = 6
OLD_REPS = int(os.environ.get("AL_DRAIN_OLD_REPS", "3"))
NEW_REPS = int(os.environ.get("AL_DRAIN_REPS", "10"))
# HAProxy's example marks a server down within ~1.3 s (inter 1s, fastinter 250ms, fall 2),
# but right after restart()'s forced "health up" its next check may still be a
# `downinter 2s` away: 3 s covers that (the default, 5 s, covers Kubernetes too).
DELAY_MS = 3000

TABLE = """
listen:
  proxy: 127.0.0.1:{proxy_port}
  admin: 127.0.0.1:{admin_port}
limits:
  workers: 1
  max_upstream_per_client: 0
  drain_delay_ms: %(delay)d
targets:
  - name: echo
    type: openapi
    url: http://127.0.0.1:%(echo_port)d
    allow_insecure_upstream: true
    allow_private_network: true
"""


class S:
    pass


def haproxy_cmd(cmd):
    return TR.haproxy_cmd(cmd)  # (its stats socket: TR.C.haproxy_sock, set up below)


def states():
    return TR.server_states()


class Load:
    """POSTs on kept-alive connections through HAProxy: (t0, t1, status, replica, err)."""

    def __init__(self):
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.results = []
        self.threads = [threading.Thread(target=self.run, args=(i,), daemon=True)
                        for i in range(POST_CLIENTS)]
        for t in self.threads:
            t.start()

    def finish(self):
        self.stop.set()
        for t in self.threads:
            t.join(30)

    def snapshot(self):
        with self.lock:
            return list(self.results)

    def run(self, i):
        conn, n = None, 0
        while not self.stop.is_set():
            n += 1
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", S.port, timeout=20)
            t0 = time.monotonic()
            status, rep, err = None, None, None
            try:
                conn.request("POST", "/t/echo/post/%d-%d" % (i, n), body=b'{"n": %d}' % n,
                             headers={"Content-Type": "application/json"})
                r = conn.getresponse()
                data = r.read()
                status, rep = r.status, r.getheader("X-Airlock-Replica")
                if status != 200:
                    err = data[:200].decode("utf-8", "replace")
                if r.getheader("Connection", "").lower() == "close":
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException) as e:
                err = "%s: %s" % (type(e).__name__, e)
                conn.close()
                conn = None
            with self.lock:
                self.results.append((t0, time.monotonic(), status, rep, err))
        if conn is not None:
            conn.close()


def served_by(name, since):
    return sum(1 for x in S.load.snapshot() if x[0] > since and x[3] == name and x[2] == 200)


def restart(a, name, delay):
    a.write_table(TABLE % {"delay": delay, "echo_port": S.echo_port})
    a.start()
    wait_for(lambda: http_get("http://127.0.0.1:%d/readyz" % a.admin_port)[0] == 200, 15,
             "%s ready" % name)
    # (without this HAProxy waits for `rise 2` checks at `downinter 2s`)
    haproxy_cmd("set server airlock/%s health up" % name)
    wait_for(lambda: states().get(name) == "UP", 10, "HAProxy marking %s UP" % name)
    t = time.monotonic()
    wait_for(lambda: served_by(name, t) >= 30, 15, "%s answering POSTs" % name)


def sigterm_reps(delay, reps):
    """SIGTERM replica 2 `reps` times under the load; returns (requests, failed list)."""
    a, name = S.replicas[1], "airlock-2"
    total, bad = 0, []
    for rep in range(reps):
        restart(a, name, delay)
        t0 = time.monotonic()
        a.proc.signal(signal.SIGTERM)
        # when HAProxy's check (GET /readyz) took it out, for the figures
        wait_for(lambda: states().get(name, "").startswith("DOWN") or not a.proc.alive(), 30,
                 "%s DOWN or gone" % name, interval=0.01)
        t_down = time.monotonic() - t0
        rc = a.proc.wait(30)
        assert rc == 0, "%s exited %s:\n%s" % (name, rc, a.proc.log_tail())
        if delay:
            log = a.log_text()
            assert "serve.lame_duck" in log, log[-2000:]
        # the requests around the stop: until the survivor has answered for a moment
        t1 = time.monotonic()
        wait_for(lambda: served_by("airlock-1", t1) >= 30, 15, "airlock-1 answering")
        # (ended after restart() returned: not the previous stop's, nor the next one's)
        end = time.monotonic()
        res = [x for x in S.load.snapshot() if x[1] >= t0 and x[0] < end]
        failed = [x for x in res if x[2] != 200]
        total += len(res)
        bad += failed
        print("drain_delay_ms %d, SIGTERM %d: HAProxy marked it down %.2f s after; %d POSTs "
              "around it, %d failed%s"
              % (delay, rep + 1, t_down, len(res), len(failed),
                 (" e.g. %r, sent %+.3f s from the SIGTERM" % (failed[0], failed[0][0] - t0))
                 if failed else ""), flush=True)
    return total, bad


def test_setup():
    S.echo, S.echo_port, _ = start_echo()
    S.replicas = [Airlock(TABLE % {"delay": 0, "echo_port": S.echo_port}) for _ in range(2)]
    for a in S.replicas:
        a.start()
    d = tmpdir("altest-drain-haproxy-")
    S.sock = TR.C.haproxy_sock = os.path.join(d, "stats.sock")
    S.port = free_port()

    class Absent:  # the example's third server, kept in maintenance
        proxy_port = free_port()
        admin_port = free_port()
    cfg = os.path.join(d, "haproxy.cfg")
    with open(cfg, "w") as f:
        f.write(TR.haproxy_config(S.port, S.replicas + [Absent], S.sock))
    S.haproxy = Proc(["haproxy", "-db", "-f", cfg], name="haproxy")
    wait_port(S.port, proc=S.haproxy)

    def ready():
        try:
            haproxy_cmd("set server airlock/airlock-3 state maint")
            st = states()
        except (FileNotFoundError, ConnectionRefusedError):
            return False
        return st.get("airlock-1") == "UP" and st.get("airlock-2") == "UP"
    wait_for(ready, 15, "HAProxy seeing both replicas UP")
    S.load = Load()
    t = time.monotonic()
    wait_for(lambda: served_by("airlock-1", t) >= 20, 15, "airlock-1 answering")


def test_sigterm_without_delay_may_lose_posts():
    S.replicas[1].stop()
    total, bad = sigterm_reps(0, OLD_REPS)
    print("drain_delay_ms 0: %d SIGTERMs, %d POSTs, %d failed" % (OLD_REPS, total, len(bad)),
          flush=True)


def test_sigterm_with_delay_loses_nothing():
    S.replicas[1].stop()
    total, bad = sigterm_reps(DELAY_MS, NEW_REPS)
    print("drain_delay_ms %d: %d SIGTERMs, %d POSTs, %d failed" % (DELAY_MS, NEW_REPS, total,
                                                                   len(bad)), flush=True)
    if bad:  # HAProxy's lines of the failed ones (server, termination state, timers)
        print("\n".join(l for l in S.haproxy.log_text().splitlines()
                        if re.search(r" (-1|5\d\d) -?\d+ - - ", l)
                        or re.search(r" (?!----)[A-Za-z-]{4} \d+/\d+/\d+/\d+/\+?\d+ ", l))[-3000:])
    assert not bad, "POSTs failed across a lame-duck SIGTERM: %r" % bad[:5]


H2_CLIENT = r"""
const http2 = require('http2');
const [port, n, ms] = process.argv.slice(1).map(Number);
const out = {goaway: [], status: [], errors: []};
const s = http2.connect('http://127.0.0.1:' + port);
s.on('goaway', (code, last) => out.goaway.push([code, last]));
s.on('error', (e) => out.errors.push(String(e)));
let left = n;
for (let i = 0; i < n; i++) {
  const r = s.request({':method': 'GET', ':path': '/t/echo/slow?ms=' + ms + '&i=' + i});
  r.on('response', (h) => out.status.push(h[':status']));
  r.on('error', (e) => out.errors.push(String(e)));
  r.resume();
  r.on('close', () => { if (--left === 0) { s.close(); } });
}
s.on('remoteSettings', () => console.log('sent'));
s.on('close', () => console.log(JSON.stringify(out)));
"""


def test_h2_in_flight_during_drain_gets_responses_and_goaway():
    a, name = S.replicas[1], "airlock-2"
    if not a.proc.alive():
        restart(a, name, DELAY_MS)
    p = subprocess.Popen(["node", "-e", H2_CLIENT, str(a.proxy_port), "3", "5000"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         cwd=os.path.join(SOURCE_DIR, "tests"))
    try:
        assert p.stdout.readline().strip() == "sent", p.stderr.read()
        # the three streams are in flight (the gauge is published once per loop turn)
        def streams():
            m = http_get("http://127.0.0.1:%d/metrics" % a.admin_port)[1]
            m = m.decode() if isinstance(m, bytes) else m
            for line in m.splitlines():
                if line.startswith("airlock_active_streams "):
                    return float(line.split()[1])
            return 0
        wait_for(lambda: streams() >= 3, 10, "the three h2 streams in flight")
        t0 = time.monotonic()
        a.proc.signal(signal.SIGTERM)  # lame duck DELAY_MS, then the drain
        line = p.stdout.readline()
        rc = a.proc.wait(30)
    finally:
        if p.poll() is None:
            p.kill()
    got = json.loads(line)
    print("h2 client across a drain: %r (%.2f s after SIGTERM)" % (got, time.monotonic() - t0),
          flush=True)
    assert rc == 0
    assert got["status"] == [200, 200, 200], got
    assert not got["errors"], got
    assert got["goaway"][0] == [0, 2**31 - 1], got
    assert got["goaway"][-1] == [0, 5], got


def test_teardown():
    S.load.finish()
    S.haproxy.stop()
    for a in S.replicas:
        a.stop()
    S.echo.stop()


if __name__ == "__main__":
    run(globals())
