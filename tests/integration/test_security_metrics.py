"""For security teams (issue 16, items 4, 5, 7) with the real binary and real peers:
- GET /metrics on the admin listener counts what the agents did (requests by target,
  method class, status class, decision; refusals; latency histograms; credential age
  and last use), is accepted by Prometheus' own `promtool check metrics`, and carries
  no path, client or secret;
- GET /status.json keeps the table status and adds targets, providers (fingerprint,
  never the secret), recent refusals;
- GET /status is an HTML page that a real headless browser (Debian's chromium via
  npm puppeteer-core, JavaScript off) shows with its providers and targets, an old
  credential highlighted, no request for any other resource, and no secret anywhere;
- a real Prometheus (Debian's) scrapes airlock and the error-rate rule of
  deploy/prometheus/airlock-rules.yml fires for a target answering 20 % errors, and not
  for a healthy one (windows shortened from 5 minutes to seconds so it runs in CI)."""
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

SECRET = "sk-sec-9f3b1d7c5a2e4f60b8d1"
OLD_SECRET = "sk-old-4c8e2a6f1b9d3e7a5c0f"
TESTS_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
S = {}

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
      provider: sec-key
  - name: calm
    type: openapi
    url: http://127.0.0.1:ECHO_PORT/calm
    allow_insecure_upstream: true
    allow_private_network: true
    auth:
      method: api_key
      provider: old-key
"""


def airlock():
    if "al" not in S:
        _, port, _ = start_echo()
        al = Airlock(TABLE.replace("ECHO_PORT", str(port)), providers={"sec-key": SECRET})
        # old-key must rotate every second: it is overdue by the time anyone looks
        r = al.cli("identity", "create-api-key-credential-provider", "--name", "old-key",
                   "--api-key", "-", "--rotation-max-age", "1s", "--state-dir", al.state_dir,
                   stdin_data=OLD_SECRET + "\n")
        assert r.returncode == 0, r.stdout + r.stderr
        got = json.loads(r.stdout)
        assert got["rotationMaxAge"] == 1, got
        al.start()
        S["al"] = al
    return S["al"]


def admin_get(al, path, timeout=10):
    with urllib.request.urlopen("http://127.0.0.1:%d%s" % (al.admin_port, path),
                                timeout=timeout) as r:
        return r.status, r.headers, r.read().decode()


def gw(al, target, path):
    """GET through gateway mode; returns the status (errors included)."""
    try:
        with urllib.request.urlopen(al.gateway_url(target, path), timeout=10) as r:
            r.read()
            return r.status
    except urllib.error.HTTPError as e:
        e.read()
        return e.code


def sample(text, name, **labels):
    """The value of one sample of the exposition, None when absent."""
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        m = re.match(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$', line)
        if not m or m.group(1) != name:
            continue
        got = dict(re.findall(r'([a-zA-Z_]+)="((?:[^"\\]|\\.)*)"', m.group(3) or ""))
        if got == {k: str(v) for k, v in labels.items()}:
            return float(m.group(4))
    return None


def traffic(al):
    """8 good requests and 2 upstream 500s to api, 1 to calm, 1 to a target that does
    not exist (refused: no_such_target)."""
    if S.get("traffic"):
        return
    for i in range(10):
        assert gw(al, "api", "/status/500" if i % 5 == 4 else "/v1/ok") in (200, 500)
    assert gw(al, "calm", "/v1/x") == 200
    assert gw(al, "nope", "/v1/x") == 404
    S["traffic"] = True


def test_metrics_count_what_agents_did_and_promtool_accepts_them():
    al = airlock()
    traffic(al)
    # the count is made when the audit record is written: wait for the last one
    def counted():
        t = admin_get(al, "/metrics")[2]
        return t if sample(t, "airlock_requests_total", target="_none", method="read",
                           status="4xx", decision="deny") == 1 else None
    text = wait_for(counted, 10, "the refused request counted")
    st, headers, _ = admin_get(al, "/metrics")
    assert st == 200 and headers["content-type"].startswith("text/plain; version=0.0.4"), headers
    assert sample(text, "airlock_requests_total", target="api", method="read", status="2xx",
                  decision="allow") == 8, text
    assert sample(text, "airlock_requests_total", target="api", method="read", status="5xx",
                  decision="allow") == 2, text
    assert sample(text, "airlock_requests_total", target="calm", method="read", status="2xx",
                  decision="allow") == 1, text
    assert sample(text, "airlock_refusals_total", reason="no_such_target") == 1, text
    assert sample(text, "airlock_upstream_duration_seconds_count", target="api") == 10, text
    assert sample(text, "airlock_request_duration_seconds_bucket", target="api", le="+Inf") == 10
    assert sample(text, "airlock_credential_uses_total", provider="sec-key") == 10, text
    assert sample(text, "airlock_credential_version", provider="sec-key") == 1, text
    assert sample(text, "airlock_credential_age_seconds", provider="sec-key") is not None, text
    assert sample(text, "airlock_credential_rotation_max_age_seconds", provider="old-key") == 1
    assert sample(text, "airlock_credential_rotation_max_age_seconds", provider="sec-key") is None
    assert (sample(text, "airlock_active_connections") or 0) >= 0, text
    assert sample(text, "airlock_table_generation") == 1, text
    # what must never be there: paths, hosts, clients, secrets
    for bad in (SECRET, OLD_SECRET, "/v1/ok", "/status/500", "127.0.0.1", "path=", "client="):
        assert bad not in text, bad
    r = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr


def test_status_json_keeps_the_table_and_adds_activity():
    al = airlock()
    traffic(al)
    st, _, body = admin_get(al, "/status.json")
    j = json.loads(body)
    assert st == 200 and j["status"] == "ready" and j["table"]["generation"] == 1, j
    api = [t for t in j["targets"] if t["name"] == "api"][0]
    assert api["requests"] == 10 and api["errors"] == 2 and api["error_rate"] == 0.2, api
    prov = {p["name"]: p for p in j["providers"]}
    assert set(prov) == {"sec-key", "old-key"}, prov
    assert re.match(r"^sha256:[0-9a-f]{12}$", prov["sec-key"]["fingerprint"]), prov
    assert prov["sec-key"]["version"] == 1 and prov["sec-key"]["last_used"], prov
    assert prov["sec-key"]["flag"] is None and prov["sec-key"]["rotation_max_age"] is None
    assert prov["old-key"]["rotation_max_age"] == 1, prov
    assert any(r["reason"] == "no_such_target" and r["status"] == 404
               for r in j["recent_refusals"]), j["recent_refusals"]
    assert j["audit"]["written"] >= 1, j
    assert SECRET not in body and OLD_SECRET not in body


def test_status_page_in_a_real_browser():
    al = airlock()
    traffic(al)
    if not os.path.isdir(os.path.join(TESTS_DIR, "node_modules", "puppeteer-core")):
        raise AssertionError("tests/node_modules is missing: run `(cd tests && npm ci)` first")
    # old-key's rotation_max_age is 1 s: wait until it is overdue
    wait_for(lambda: [p for p in json.loads(admin_get(al, "/status.json")[2])["providers"]
                      if p["name"] == "old-key" and p["flag"] == "old"], 10, "old-key overdue")
    url = "http://127.0.0.1:%d/status" % al.admin_port
    t0 = time.monotonic()
    r = subprocess.run(["node", os.path.join(TESTS_DIR, "integration", "node", "status_page.mjs"),
                        url], capture_output=True, text=True, timeout=60, cwd=TESTS_DIR)
    took = time.monotonic() - t0
    assert r.returncode == 0, r.stdout + r.stderr
    page = json.loads(r.stdout.strip().splitlines()[-1])
    print("  chromium loaded the status page in %.1f s" % took)
    assert page["status"] == 200 and page["title"] == "airlock status", page["title"]
    assert "default-src 'none'" in (page["csp"] or ""), page["csp"]
    targets = {row[0]: row for row in page["targets"]}
    assert set(targets) == {"api", "calm"}, page["targets"]
    assert targets["api"][1:4] == ["10", "2", "20.0 %"], targets["api"]
    providers = {row[0]: row for row in page["providers"]}
    assert set(providers) == {"sec-key", "old-key"}, page["providers"]
    assert re.match(r"^sha256:[0-9a-f]{12}$", providers["sec-key"][4]), providers
    assert providers["old-key"][-1] == "rotation overdue", providers["old-key"]
    assert providers["sec-key"][-1] == "", providers["sec-key"]
    assert any(row[1:3] == ["_none", "no_such_target"] for row in page["refusals"]), page
    # self-contained: the page itself is the only thing the browser fetched
    assert page["requests"] == [url], page["requests"]
    for where in ("text", "html"):
        assert SECRET not in page[where] and OLD_SECRET not in page[where], where
    assert took < 60, took


def test_active_connections_and_streams_gauges():
    al = airlock()
    import socket
    idle = socket.create_connection(("127.0.0.1", al.proxy_port), timeout=5)
    done = threading.Event()
    # a request that stays in flight for a while: a stream in the gauge
    th = threading.Thread(target=lambda: (gw(al, "api", "/slow?ms=3000"), done.set()),
                          daemon=True)
    th.start()
    try:
        def seen():
            t = admin_get(al, "/metrics")[2]
            c, s = sample(t, "airlock_active_connections"), sample(t, "airlock_active_streams")
            return (c, s) if c is not None and c >= 2 and s is not None and s >= 1 else None
        wait_for(seen, 10, "one idle connection and one request in flight counted")
    finally:
        idle.close()
        th.join(10)
    assert done.is_set()

    def back_to_zero():
        t = admin_get(al, "/metrics")[2]
        return sample(t, "airlock_active_streams") == 0 and \
            sample(t, "airlock_active_connections") == 0
    wait_for(back_to_zero, 10, "the gauges back at 0")


# --- a real Prometheus -------------------------------------------------------------

def fast_rules(src, dst):
    """airlock-rules.yml with 5-minute windows made seconds long (same expressions)."""
    with open(src) as f:
        text = f.read()
    text = text.replace("[5m]", "[10s]").replace("for: 5m", "for: 2s")
    text = text.replace("* 300 >= 10", "* 10 >= 10")
    with open(dst, "w") as f:
        f.write(text)


def prom_alerts(port):
    """Prometheus' alerts; [] while it is still starting (its API answers 503 then)."""
    try:
        with urllib.request.urlopen("http://127.0.0.1:%d/api/v1/alerts" % port, timeout=5) as r:
            return json.loads(r.read())["data"]["alerts"]
    except (urllib.error.URLError, ConnectionError):
        return []


def test_prometheus_scrapes_and_the_error_rate_rule_fires():
    al = airlock()
    if not os.path.exists("/usr/bin/prometheus"):
        raise AssertionError("Debian's prometheus is not installed (deploy/install-deps.sh)")
    d = tmpdir("altest-prom-")
    fast_rules(os.path.join(SOURCE_DIR, "deploy", "prometheus", "airlock-rules.yml"),
               os.path.join(d, "rules.yml"))
    with open(os.path.join(d, "prometheus.yml"), "w") as f:
        f.write("""global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files: [rules.yml]
scrape_configs:
  - job_name: airlock
    static_configs: [{targets: ["127.0.0.1:%d"]}]
""" % al.admin_port)
    port = free_port()
    prom = Proc(["/usr/bin/prometheus", "--config.file", os.path.join(d, "prometheus.yml"),
                 "--storage.tsdb.path", os.path.join(d, "data"),
                 "--web.listen-address", "127.0.0.1:%d" % port], name="prometheus", cwd=d)
    stop = threading.Event()

    def agent():  # 1 request in 5 to api fails; calm always works
        i = 0
        while not stop.is_set():
            gw(al, "api", "/status/502" if i % 5 == 0 else "/v1/ok")
            gw(al, "calm", "/v1/ok")
            i += 1
            stop.wait(0.05)

    th = threading.Thread(target=agent, daemon=True)
    th.start()
    try:
        wait_port(port, timeout=20, proc=prom)

        def firing():
            a = [x for x in prom_alerts(port) if x["labels"]["alertname"] ==
                 "AirlockTargetErrorRateHigh" and x["state"] == "firing"]
            return a or None
        alerts = wait_for(firing, 45, "AirlockTargetErrorRateHigh firing", interval=0.5)
        assert [a["labels"]["target"] for a in alerts] == ["api"], alerts
        # the share Prometheus computed is about 20 % (the calm target is not there)
        assert 0.1 < float(alerts[0]["value"]) < 0.35, alerts
        with urllib.request.urlopen("http://127.0.0.1:%d/api/v1/targets" % port,
                                    timeout=5) as r:
            tg = json.loads(r.read())["data"]["activeTargets"]
        assert tg and tg[0]["health"] == "up", tg
    finally:
        stop.set()
        th.join(10)
        prom.stop()


if __name__ == "__main__":
    run(globals())
