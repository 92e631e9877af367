"""The native upstream engine after a stalled worker (issue 15; a flake seen under CI-like
load): when the worker loop is starved past a request's first-byte or connect timeout
while the upstream's answer is already waiting on the socket, libev may run the expired
timer before the same pass's I/O callback. The answer arrived in time and must be
delivered (200), not reported as 504 upstream_timeout.

The stall is made deterministic with SIGSTOP/SIGCONT on the airlock process: the
request is in flight (airlock_active_streams), the upstream answers after 300 ms while
airlock is stopped for longer than first_byte_timeout_ms, then airlock continues."""
import os
import re
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from altest import *  # noqa: E402,F401,F403

AL = None
ECHO = None

TABLE = """
listen:
  proxy: 127.0.0.1:{proxy_port}
  admin: 127.0.0.1:{admin_port}
limits:
  upstream_engine: native
  workers: 1
  first_byte_timeout_ms: 1000
targets:
  - name: up
    type: openapi
    url: http://127.0.0.1:ECHO_PORT
    allow_insecure_upstream: true
    allow_private_network: true
"""


def test_start():
    global AL, ECHO
    ECHO = start_echo()
    AL = Airlock(TABLE.replace("ECHO_PORT", str(ECHO[1])))
    AL.start()


def in_flight():
    code, m = http_get("http://127.0.0.1:%d/metrics" % AL.admin_port)
    return code == 200 and re.search(rb"^airlock_active_streams [1-9]", m, re.M) is not None


def test_an_answer_waiting_after_a_stall_is_delivered():
    results = []
    for i in range(5):
        p = subprocess.Popen(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--noproxy",
                              "*", AL.gateway_url("up", "/slow?ms=300")], stdout=subprocess.PIPE)
        wait_for(in_flight, 10, "the request in flight")
        time.sleep(0.05)  # past the loopback connect: the request waits for its first byte
        os.kill(AL.pid, signal.SIGSTOP)
        try:
            time.sleep(1.6)  # the upstream answers at 300 ms; the 1 s timeout expires
        finally:
            os.kill(AL.pid, signal.SIGCONT)
        out = p.communicate(timeout=20)[0].decode()
        results.append(out)
        wait_for(lambda: not in_flight(), 10, "the request to end")
    assert results == ["200"] * 5, results


def test_a_real_first_byte_timeout_is_still_504():
    code, _ = curl_status(AL.gateway_url("up", "/slow?ms=2500"))
    assert code == 504, code


def curl_status(url):
    r = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--noproxy", "*",
                        url], capture_output=True, text=True, timeout=20)
    return int(r.stdout or 0), r.stderr


def test_stop():
    AL.stop()
    ECHO[0].stop()


run(globals())
