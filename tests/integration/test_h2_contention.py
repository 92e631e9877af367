"""HTTP/2 streams must not stall under CPU contention (issue 8, finding 7).

20 requests for 1 MiB responses, 10 concurrent streams on one h2c connection,
through a gateway target to the tests' echo upstream, while three busy loops
compete for the cores. A lost wake-up between pausing an upstream (the stream's
output buffer is full) and resuming it (nghttp2 framed the buffer down) once left
two streams waiting forever at "90% done". h2load gives up on a connection that
is silent for 10 s (-N; a healthy run under load is never that quiet), so a stall
is a failed run, not a hang.

The runs repeat until a time budget is spent or MAX_RUNS are done (at least
MIN_RUNS): before the fix the stall came in about one run of 30 (a run takes ~0.1 s
on an idle machine, so the budget holds a few hundred)."""
import os
import re
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from altest import *  # noqa: E402,F401,F403

TABLE = """
listen:
  proxy: 127.0.0.1:{proxy_port}
  admin: 127.0.0.1:{admin_port}
limits:
  connect_timeout_ms: 3000
  first_byte_timeout_ms: 10000
  idle_timeout_ms: 30000
  workers: 1
targets:
  - name: root
    type: openapi
    url: http://127.0.0.1:ECHO_PORT
    allow_insecure_upstream: true
    allow_private_network: true
"""

BUDGET_S = float(os.environ.get("AIRLOCK_CONTENTION_BUDGET_S", "40"))
MIN_RUNS = 20
MAX_RUNS = 400
HOGS = 3


def one_run(url):
    r = subprocess.run(["h2load", "-n", "20", "-c", "1", "-m", "10", "-N", "10", url],
                       capture_output=True, text=True, timeout=60)
    ok = "20 succeeded" in r.stdout and "20 2xx" in r.stdout
    m = re.search(r"\((\d+)\) data", r.stdout)
    ok = ok and m is not None and int(m.group(1)) >= 20 * 1048576
    return ok, r.stdout


def test_h2_large_responses_under_cpu_contention():
    _, port, _ = start_echo()
    al = Airlock(TABLE.replace("ECHO_PORT", str(port)))
    al.start()
    url = al.gateway_url("root", "/bytes?n=1048576")
    ok, out = one_run(url)  # warm-up, without the hogs
    assert ok, out[-800:]
    hogs = [Proc(["/usr/bin/python3", "-c", "while 1: pass"], name="cpu-hog")
            for _ in range(HOGS)]
    try:
        runs = 0
        t0 = time.monotonic()
        while runs < MIN_RUNS or time.monotonic() - t0 < BUDGET_S:
            ok, out = one_run(url)
            runs += 1
            assert ok, "run %d of 20 x 1 MiB on 10 h2 streams stalled:\n%s" % (runs, out[-800:])
            if runs >= MAX_RUNS:
                break
        print("  %d runs in %.1fs under %d busy loops" % (runs, time.monotonic() - t0, HOGS))
    finally:
        for h in hogs:
            h.stop(timeout=2)


run(globals())
