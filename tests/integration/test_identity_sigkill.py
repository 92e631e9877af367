"""Integration: SIGKILL in the middle of many store updates.

Runs `airlock identity update-...` (and a few `rotate-master-key`) in a loop and kills
each one with SIGKILL at a random moment. Afterwards every provider must still open
(verify-store decrypts every usable version and checks it against its fingerprint),
with either the last version known to be committed or one of the versions whose
update was in flight when it was killed — never a mix, never garbage."""
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from altest import *  # noqa: E402,F401

STATE = tmpdir("altest-identity-kill-")
PROVIDERS = ["p%d" % i for i in range(4)]
ROUNDS = int(os.environ.get("AIRLOCK_KILL_ROUNDS", "60"))


def fp(s):
    return "sha256:" + hashlib.sha256(s.encode()).hexdigest()[:12]


def env():
    e = dict(os.environ)
    e.pop("AIRLOCK_MASTER_KEY_FILE", None)
    e.pop("AIRLOCK_AUDIT_FILE", None)
    e["AIRLOCK_STATE_DIR"] = STATE
    return e


def cli(*args, stdin=None):
    return subprocess.run([AIRLOCK_BIN, "identity"] + list(args), input=stdin,
                          capture_output=True, text=True, env=env(), timeout=30)


def verify():
    r = cli("verify-store")
    assert r.returncode == 0, "store does not open after kills: %s %s" % (r.stdout, r.stderr)
    return json.loads(r.stdout)["credentialProviders"]


def test_sigkill_during_updates_leaves_old_or_new():
    if not os.path.exists(AIRLOCK_BIN):
        raise Skip("airlock binary not built: %s" % AIRLOCK_BIN)
    rnd = random.Random(int(os.environ.get("AIRLOCK_KILL_SEED", "0")) or None)
    # candidates[p]: fingerprints the current version may legitimately have.
    candidates = {}
    for p in PROVIDERS:
        s = "%s-v0-%s" % (p, os.urandom(6).hex())
        r = cli("create-api-key-credential-provider", "--name", p, "--api-key", "-", stdin=s)
        assert r.returncode == 0, r.stderr
        candidates[p] = {fp(s)}
    killed = completed = rotations = 0
    for i in range(ROUNDS):
        if i % 10 == 9:
            argv = [AIRLOCK_BIN, "identity", "rotate-master-key"]
            p, s = None, None
            rotations += 1
        else:
            p = rnd.choice(PROVIDERS)
            s = "%s-v%d-%s" % (p, i + 1, os.urandom(6).hex())
            argv = [AIRLOCK_BIN, "identity", "update-api-key-credential-provider", "--name", p,
                    "--api-key", "-", "--grace", rnd.choice(["0", "1h"])]
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, env=env(), preexec_fn=None)
        if s is not None:
            proc.stdin.write(s.encode())
        proc.stdin.close()
        # Kill at a random moment inside the command's life (it takes a few ms).
        time.sleep(rnd.uniform(0, 0.06))
        try:
            os.kill(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        rc = proc.wait(timeout=30)
        if p is not None:
            if rc == 0:
                candidates[p] = {fp(s)}  # committed for sure
                completed += 1
            else:
                candidates[p].add(fp(s))  # may or may not have committed
                killed += 1
        # Every few rounds, check the store between kills too.
        if i % 15 == 14:
            for entry in verify():
                if entry["current"]:
                    assert entry["fingerprint"] in candidates[entry["name"]], entry
                    candidates[entry["name"]] = {entry["fingerprint"]}
    print("rounds=%d killed=%d completed=%d rotations=%d" % (ROUNDS, killed, completed,
                                                             rotations), flush=True)
    assert killed > 0, "no update was killed mid-way: the test proved nothing"
    current = {e["name"]: e for e in verify() if e["current"]}
    assert sorted(current) == PROVIDERS, current
    for p, e in current.items():
        assert e["ok"], e
        assert e["fingerprint"] in candidates[p], (p, e, candidates[p])
    # And the store still takes writes.
    r = cli("update-api-key-credential-provider", "--name", "p0", "--api-key", "-",
            stdin="final-%s" % os.urandom(4).hex())
    assert r.returncode == 0, r.stderr


run(globals())
