"""README.md works as printed on a fresh clone (issue 9, item 1).

What it does, without touching the system or the network:
1. copies the parts of the repository the quickstart uses (deploy/, tests/peers/) into
   a temporary "clone" and gives it free ports: 8080 (proxy), 8443 (TLS listener), 8081
   (admin) and 9090 (echo upstream) are replaced, as whole numbers, in the quickstart
   table, deploy/quickstart.sh and every README block;
2. runs the clone's `deploy/quickstart.sh --no-install --no-build` against this build
   (AIRLOCK_BUILD_DIR) with DESTDIR set, so its `cmake --install` lands in a temporary
   directory, and checks what was installed (binary, examples, systemd unit, man page);
3. with that install first on PATH (and /usr/local/bin left out), runs every ```sh and
   ```python block of README.md in order, in one bash session in the clone's root, the
   way a reader types them into a second terminal; curl gets --fail-with-body so a
   refusal fails the block. A block right after a `<!-- norun: why -->` comment is
   skipped; every norun marker must name its reason and sit right above a block;
4. stops the quickstart as a user would (SIGINT) and checks it stopped airlock and the
   echo upstream.
"""
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from altest import *  # noqa: E402,F401,F403

README = os.path.join(SOURCE_DIR, "README.md")
BUILD_DIR = os.path.dirname(os.path.abspath(AIRLOCK_BIN))
PORTS = {}
CLONE = STAGE = HOME = None
QS = None
ENV = None

DROP_VARS = ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "all_proxy",
             "NO_PROXY", "no_proxy", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE",
             "NODE_EXTRA_CA_CERTS", "AIRLOCK_STATE_DIR", "AIRLOCK_BIN", "AIRLOCK_MASTER_KEY_FILE",
             "AIRLOCK_AUDIT_FILE", "XDG_CACHE_HOME", "DESTDIR")


def substitute(text):
    return re.sub(r"(?<![0-9])(8080|8443|8081|9090)(?![0-9])", lambda m: str(PORTS[m.group(1)]), text)


def readme_blocks():
    """[(line, lang, text, norun_reason or None)] for every fenced block of README.md;
    raises on a norun marker that does not sit right above a block or names no reason."""
    lines = open(README).read().split("\n")
    blocks, i, pending = [], 0, None
    while i < len(lines):
        line = lines[i]
        m = re.match(r"^<!--\s*norun\b(.*?)-->\s*$", line)
        if m:
            reason = m.group(1).lstrip(":").strip()
            assert reason, "README.md:%d: a norun marker must say why" % (i + 1)
            assert i + 1 < len(lines) and lines[i + 1].startswith("```"), \
                "README.md:%d: a norun marker must sit right above a code block" % (i + 1)
            pending = reason
            i += 1
            continue
        if line.startswith("```"):
            lang, start, body = line[3:].strip(), i + 1, []
            i += 1
            while i < len(lines) and not lines[i].startswith("```"):
                body.append(lines[i])
                i += 1
            assert i < len(lines), "README.md:%d: unclosed code block" % start
            blocks.append((start, lang, "\n".join(body) + "\n", pending))
            pending = None
        elif "norun" in line and line.lstrip().startswith("<!--"):
            raise AssertionError("README.md:%d: malformed norun marker: %r" % (i + 1, line))
        i += 1
    return blocks


def test_markers_and_blocks():
    blocks = readme_blocks()
    runnable = [b for b in blocks if b[1] in ("sh", "python") and b[3] is None]
    assert len(runnable) >= 8, "only %d runnable blocks: the README test would prove little" % len(runnable)
    # The two set-up commands the README promises stay the first two blocks.
    assert blocks[0][2].strip() == "./deploy/quickstart.sh", blocks[0]
    assert blocks[1][2].strip() == "tests/run.sh", blocks[1]
    for line, lang, text, _ in blocks:
        assert lang in ("", "sh", "python", "js", "yaml", "json"), \
            "README.md:%d: unknown block language %r (the README test would not know it)" % (line, lang)


def test_quickstart_installs_and_runs():
    global CLONE, STAGE, HOME, QS, ENV
    if not os.path.exists(os.path.join(BUILD_DIR, "cmake_install.cmake")):
        raise Skip("no CMake build directory next to %s" % AIRLOCK_BIN)
    for name in ("8080", "8443", "8081", "9090"):
        PORTS[name] = free_port()
    CLONE = tmpdir("altest-readme-clone-")
    STAGE = os.path.join(tmpdir("altest-readme-stage-"), "root")
    HOME = tmpdir("altest-readme-home-")
    shutil.copytree(os.path.join(SOURCE_DIR, "deploy"), os.path.join(CLONE, "deploy"))
    shutil.copytree(os.path.join(SOURCE_DIR, "tests", "peers"), os.path.join(CLONE, "tests", "peers"),
                    ignore=shutil.ignore_patterns("__pycache__"))
    for rel in ("deploy/examples/quickstart.yaml", "deploy/quickstart.sh"):
        path = os.path.join(CLONE, rel)
        with open(path) as f:
            text = f.read()
        with open(path, "w") as f:
            f.write(substitute(text))
    ENV = {k: v for k, v in os.environ.items() if k not in DROP_VARS}
    ENV.update(HOME=HOME, PATH=os.path.join(STAGE, "usr/local/bin") + ":/usr/sbin:/usr/bin:/sbin:/bin")
    qs_env = dict(ENV, DESTDIR=STAGE, AIRLOCK_BUILD_DIR=BUILD_DIR)
    # Proc() merges into os.environ: drop what must not leak through it.
    for k in DROP_VARS:
        os.environ.pop(k, None)
    QS = Proc(["bash", os.path.join(CLONE, "deploy", "quickstart.sh"), "--no-install", "--no-build"],
              name="quickstart", env=qs_env, cwd=CLONE)

    def running():
        if not QS.alive():
            raise AssertionError("quickstart exited (%s):\n%s" % (QS.returncode(), QS.log_tail(60)))
        return "airlock is running" in QS.log_text()

    wait_for(running, timeout=120, what="quickstart: 'airlock is running'")
    status, body = http_get("http://127.0.0.1:%d/readyz" % PORTS["8081"])
    assert status == 200, (status, body)


def test_install_layout():
    prefix = os.path.join(STAGE, "usr", "local")
    binary = os.path.join(prefix, "bin", "airlock")
    assert os.access(binary, os.X_OK), os.listdir(STAGE)
    r = subprocess.run(["bash", "-c", "command -v airlock && airlock version"], env=ENV,
                       capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.split("\n")[0] == binary, r
    examples = sorted(os.listdir(os.path.join(prefix, "share", "airlock", "examples")))
    assert examples == sorted(f for f in os.listdir(os.path.join(SOURCE_DIR, "deploy", "examples"))
                              if f.endswith(".yaml")), examples
    with open(os.path.join(prefix, "lib", "systemd", "system", "airlock.service")) as f:
        unit = f.read()
    assert "ExecStart=/usr/local/bin/airlock serve " in unit, unit
    man = os.path.join(prefix, "share", "man", "man1", "airlock.1")
    r = subprocess.run(["groff", "-man", "-Tutf8", "-ww", "-z", man], capture_output=True, text=True)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    r = subprocess.run(["groff", "-man", "-Tascii", man], capture_output=True, text=True)
    text = re.sub(r".\x08", "", r.stdout)
    for needle in ("airlock env -c FILE", "--ca-file", "airlock ca init", "create-api-key-credential-provider"):
        assert needle in text, needle
    assert os.path.exists(os.path.join(prefix, "share", "doc", "airlock", "README.md"))


def test_readme_blocks_run_as_printed():
    if QS is None:
        raise Skip("the quickstart did not start")
    script = ["set -euo pipefail",
              # a refusal must fail the block, not just print JSON
              'curl() {',
              '  local a fail=--fail-with-body',
              '  for a in "$@"; do case $a in --fail | --fail-with-body | -[!-]*f* | -f*) fail= ;; esac; done',
              '  command curl $fail --max-time 30 "$@"',
              '}']
    n = 0
    for line, lang, text, norun in readme_blocks():
        if norun is not None or lang not in ("sh", "python"):
            continue
        n += 1
        script.append("printf '\\n### README.md:%d (%s)\\n'" % (line, lang))
        text = substitute(text)
        if lang == "sh":
            script.append(text)
        else:
            assert "AIRLOCK_README_PY" not in text
            script.append("/usr/bin/python3 - <<'AIRLOCK_README_PY'\n%sAIRLOCK_README_PY" % text)
    script.append("printf '\\n### all %d blocks ran\\n'" % n)
    r = subprocess.run(["bash", "-c", "\n".join(script)], cwd=CLONE, env=ENV, capture_output=True,
                       text=True, timeout=240)
    out = r.stdout + r.stderr
    assert r.returncode == 0 and ("### all %d blocks ran" % n) in r.stdout, \
        "a README block failed (exit %d):\n%s" % (r.returncode, out[-6000:])
    # Every request the blocks sent through airlock got the demo key.
    assert '"Bearer demo-' in r.stdout, out[-3000:]
    assert '"error"' not in r.stdout, out[-3000:]


def test_quickstart_stops_on_ctrl_c():
    if QS is None:
        raise Skip("the quickstart did not start")
    m = re.search(r"airlock is running \(pid (\d+),", QS.log_text())
    m2 = re.search(r"the echo upstream\s+\(pid (\d+)\)", QS.log_text())
    pids = [int(x.group(1)) for x in (m, m2) if x]
    QS.signal(signal.SIGINT)
    QS.wait(timeout=30)

    def gone(pid):
        try:
            with open("/proc/%d/stat" % pid) as f:
                return f.read().split(") ")[-1].startswith("Z")  # exited, not yet reaped
        except FileNotFoundError:
            return True

    try:
        wait_for(lambda: all(gone(p) for p in pids), timeout=15, what="airlock and echo to stop")
    finally:
        for p in pids:  # started by this test's quickstart: never leave them behind
            if not gone(p):
                os.kill(p, signal.SIGKILL)
    assert len(pids) == 2, QS.log_tail()


run(globals())
