"""altest: the shared library of airlock's Python integration tests.

Import it from a test next to it:

    import os, sys
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from altest import *

What it gives (all on 127.0.0.1, everything started is killed at exit, by pid):
    free_port(), wait_port(port, host, timeout)
    Proc(argv, ...)            a started process with a log file; .pid .stop() .alive()
    cleanup_all()              stops every Proc (also at exit and on SIGTERM/SIGINT/SIGHUP)
    tmpdir()                   a temporary directory, removed at exit (AIRLOCK_KEEP_TMP=1 keeps it)
    test_ca()                  dict(ca=, ca_key=, cert=, key=) of a test CA made once per process
    start_echo(tls=False)      -> (Proc, port, ca_file or None)   tests/peers/echo_upstream.py
    start_nginx_tls(h2=True)   -> (Proc, port, ca_file)           Debian nginx, TLS (+h2)
    start_oidc(ttl=300, ...)   -> OidcProvider                    npm oidc-provider, HTTPS
    start_resource_server(op, aud) -> (Proc, port, ca_file)       JWT-checking API + MCP server
    start_postgres()           -> Postgres: a private PostgreSQL (Debian's package) on a
                               free port and a temp data dir; .dsn_file .dsn .password
                               .stop() (fast shutdown) .start() .psql(sql) .dump()
    Airlock(table, providers, env)   the real binary on free ports with a temp state dir
    run(globals())             runs test_* functions in order
    Skip("why")                a test that could not run: a failure (CI must run every test)
    AllowedSkip("why")         a skip this machine may take (the reason says why): not a failure

Environment: AIRLOCK_BIN (the binary, default build/airlock), AIRLOCK_SOURCE_DIR
(the repository, default two levels up from here).
"""
import atexit
import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import types
import time
import traceback
import urllib.error
import urllib.parse
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE_DIR = os.environ.get("AIRLOCK_SOURCE_DIR") or os.path.abspath(os.path.join(HERE, "..", ".."))
AIRLOCK_BIN = os.environ.get("AIRLOCK_BIN") or os.path.join(SOURCE_DIR, "build", "airlock")
PEERS_DIR = os.path.join(SOURCE_DIR, "tests", "peers")
PYTHON = "/usr/bin/python3"  # Debian's, which has requests/httpx/h2


class Skip(Exception):
    """A test that could not run. run() counts it as a failure: a test CI does not run
    passes nothing, and a missing peer or binary must not read as "Passed"."""


class AllowedSkip(Skip):
    """A skip that is allowed on this machine; the reason must say why (e.g.
    AllowedSkip("needs IPv6 on this host: no ::1")). run() prints it, does not fail."""

    def __init__(self, reason):
        if not isinstance(reason, str) or not reason.strip():
            raise ValueError("AllowedSkip needs a reason saying why this machine may skip")
        super().__init__(reason)


# --- ports -------------------------------------------------------------------------

def free_port():
    """A TCP port free on 127.0.0.1 right now (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, host="127.0.0.1", timeout=10, proc=None):
    """Polls connect() until the port accepts; raises TimeoutError after `timeout` s.
    With proc, fails at once if that process has exited."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            pass
        if proc is not None and not proc.alive():
            raise RuntimeError("%s exited (status %s) before listening on %s:%d\n%s"
                               % (proc.name, proc.returncode(), host, port, proc.log_tail()))
        if time.monotonic() > deadline:
            raise TimeoutError("nothing listening on %s:%d after %ss" % (host, port, timeout))
        time.sleep(0.02)


def wait_for(cond, timeout=10, what="condition", interval=0.02):
    """Polls cond() until it returns a true value (returned); raises TimeoutError."""
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            raise TimeoutError("timed out after %ss waiting for %s" % (timeout, what))
        time.sleep(interval)


# --- temporary directories ---------------------------------------------------------

_tmpdirs = []


def tmpdir(prefix="altest-"):
    d = tempfile.mkdtemp(prefix=prefix)
    _tmpdirs.append(d)
    return d


def _remove_tmpdirs():
    if os.environ.get("AIRLOCK_KEEP_TMP") == "1":
        for d in _tmpdirs:
            sys.stderr.write("altest: kept %s\n" % d)
        return
    for d in _tmpdirs:
        shutil.rmtree(d, ignore_errors=True)
    del _tmpdirs[:]


# --- processes ---------------------------------------------------------------------

_procs = []
try:
    _prctl = ctypes.CDLL(None, use_errno=True).prctl  # loaded here, not in the forked child
except (OSError, AttributeError):
    _prctl = None


def _die_with_parent():
    # Runs in the child before exec: if the test process is killed outright (ctest
    # timeout sends SIGKILL), the kernel kills the child too, so nothing leaks.
    if _prctl is not None:
        _prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class Proc:
    """A started process; stdout and stderr go to a log file.

    Proc(argv, name=None, env=None, cwd=None, log_path=None, stdin_data=None)
    .pid .name .log_path; .alive(); .returncode(); .stop(); .log_text(); .log_tail(n)
    """

    def __init__(self, argv, name=None, env=None, cwd=None, log_path=None, stdin_data=None):
        self.argv = [str(a) for a in argv]
        self.name = name or os.path.basename(self.argv[0])
        self.log_path = log_path or os.path.join(tmpdir("altest-log-"), self.name + ".log")
        full_env = dict(os.environ)
        if env:
            full_env.update({k: str(v) for k, v in env.items()})
        self._log = open(self.log_path, "ab")
        self.popen = subprocess.Popen(
            self.argv, stdout=self._log, stderr=subprocess.STDOUT,
            stdin=subprocess.PIPE if stdin_data is not None else subprocess.DEVNULL,
            env=full_env, cwd=cwd, preexec_fn=_die_with_parent)
        self.pid = self.popen.pid
        if stdin_data is not None:
            self.popen.stdin.write(stdin_data if isinstance(stdin_data, bytes) else stdin_data.encode())
            self.popen.stdin.close()
        _procs.append(self)

    def alive(self):
        return self.popen.poll() is None

    def returncode(self):
        return self.popen.poll()

    def signal(self, sig):
        if self.alive():
            os.kill(self.pid, sig)

    def wait(self, timeout=None):
        return self.popen.wait(timeout=timeout)

    def stop(self, timeout=5, sig=None):
        """`sig` (SIGTERM), then SIGKILL if still running after `timeout` s. Returns the
        status."""
        if self.alive():
            try:
                os.kill(self.pid, sig or signal.SIGTERM)
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.popen.wait()
            except ProcessLookupError:
                pass
        if not self._log.closed:
            self._log.close()
        if self in _procs:
            _procs.remove(self)
        return self.popen.returncode

    def log_text(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, n=40):
        lines = self.log_text().splitlines()
        return "\n".join("    | " + l for l in lines[-n:])

    def rss_kb(self):
        """Resident set size in KiB (VmRSS from /proc), 0 if gone."""
        return rss_kb(self.pid)


def rss_kb(pid):
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def cleanup_all():
    """Stops every Proc still running (newest first) and removes the temp dirs."""
    for p in list(reversed(_procs)):
        try:
            p.stop()
        except Exception as e:  # keep stopping the others
            sys.stderr.write("altest: stopping %s: %s\n" % (p.name, e))
    _remove_tmpdirs()


def _on_signal(signum, frame):
    cleanup_all()
    sys.exit(128 + signum)


atexit.register(cleanup_all)
signal.signal(signal.SIGTERM, _on_signal)
signal.signal(signal.SIGINT, _on_signal)
signal.signal(signal.SIGHUP, _on_signal)  # a closed terminal: still clean up


# --- peers -------------------------------------------------------------------------

_ca = None


def test_ca():
    """A test CA and a localhost/127.0.0.1 server cert (tests/peers/make_test_ca.sh),
    made once per test process: dict(dir, ca, ca_key, cert, key)."""
    global _ca
    if _ca is None:
        d = tmpdir("altest-ca-")
        subprocess.run(["bash", os.path.join(PEERS_DIR, "make_test_ca.sh"), d], check=True,
                       stdout=subprocess.DEVNULL)
        _ca = {"dir": d, "ca": os.path.join(d, "ca.pem"), "ca_key": os.path.join(d, "ca.key"),
               "cert": os.path.join(d, "server.pem"), "key": os.path.join(d, "server.key")}
    return _ca


test_ca.__test__ = False  # not a test for run() (it only runs test_* of the test module)


def start_echo(tls=False, timeout=10):
    """Starts tests/peers/echo_upstream.py; returns (Proc, port, ca_file or None)."""
    argv = [PYTHON, os.path.join(PEERS_DIR, "echo_upstream.py"), "--port", "0"]
    ca = None
    if tls:
        c = test_ca()
        argv += ["--tls-cert", c["cert"], "--tls-key", c["key"]]
        ca = c["ca"]
    p = Proc(argv, name="echo-tls" if tls else "echo")

    def ready():
        for line in p.log_text().splitlines():
            if line.startswith("READY "):
                return int(line.split()[1])
        if not p.alive():
            raise RuntimeError("echo upstream exited:\n" + p.log_tail())
        return None

    port = wait_for(ready, timeout, "echo upstream READY")
    wait_port(port, proc=p)
    return p, port, ca


NODE = shutil.which("node") or "node"
TESTS_DIR = os.path.join(SOURCE_DIR, "tests")


def node_modules_ready(*packages):
    """True when tests/node_modules holds each npm package (installed by `npm ci`)."""
    return all(os.path.isdir(os.path.join(TESTS_DIR, "node_modules", p)) for p in packages)


class OidcProvider:
    """tests/peers/oidc_provider.js (npm oidc-provider) over HTTPS with the test CA.
    .proc .port .issuer .discovery_url .token_endpoint .jwks_uri .ca .client_id
    .client_secret; .stats() -> the provider's own count of token requests;
    .control(ttl=, delay_ms=, fail=)."""

    def __init__(self, proc, port, issuer, ca, client_id, client_secret):
        self.proc, self.port, self.issuer, self.ca = proc, port, issuer, ca
        self.client_id, self.client_secret = client_id, client_secret
        self.discovery_url = issuer + "/.well-known/openid-configuration"
        self.token_endpoint = issuer + "/token"
        self.jwks_uri = issuer + "/jwks"

    def _call(self, method, path, body=None):
        import ssl
        ctx = ssl.create_default_context(cafile=self.ca)
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.issuer + path, data=data, method=method,
                                     headers={"content-type": "application/json"})
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}),
                                             urllib.request.HTTPSHandler(context=ctx))
        with opener.open(req, timeout=10) as r:
            return json.loads(r.read())

    def stats(self):
        return self._call("GET", "/__stats")

    def control(self, **kw):
        return self._call("POST", "/__control", kw)

    def user_access_token(self, key_file, sub, aud, client="agent", ttl=600):
        """An agent's inbound access token acting for end user `sub`: signed with this
        issuer's own key (start_oidc(key_out=key_file)) by tests/peers/jwt_forge.js."""
        now = int(time.time())
        spec = {"base": {"iss": self.issuer, "aud": aud, "iat": now, "exp": now + ttl,
                         "client_id": client, "scope": "read"},
                "tokens": [{"name": "t", "kind": "issuer", "claims": {"sub": sub}}]}
        r = subprocess.run([NODE, os.path.join(PEERS_DIR, "jwt_forge.js"), key_file],
                           input=json.dumps(spec), capture_output=True, text=True,
                           cwd=TESTS_DIR, timeout=30)
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)["t"]

    def active_refresh_tokens(self, account):
        """How many refresh tokens issued to `account` the provider still honours (its
        own store: not revoked, rotated away or expired)."""
        return self._call("GET", "/__active_refresh_tokens?account="
                          + urllib.parse.quote(account))["active"]

    def stop(self):
        return self.proc.stop()

    def consent(self, authorize_url, login, redirect_prefix, approve=True, timeout=20):
        """Plays the end user in a browser: follows authorize_url (airlock's link or the
        provider's authorization URL) with a cookie jar, signs in as `login` on the
        provider's development login page (any login is accepted; the account id is
        the login name), approves (or aborts) its consent page, and returns the URL the
        provider finally redirects to under redirect_prefix (the callback with code and
        state, or error) without requesting it. Redirects elsewhere (airlock's own link
        to the provider) are followed."""
        import requests
        s = requests.Session()
        s.trust_env = False
        url, method, data = authorize_url, "GET", None
        deadline = time.time() + timeout
        for _ in range(20):
            assert time.time() < deadline, "consent took longer than %d s" % timeout
            if url.startswith(redirect_prefix):
                return url
            r = s.request(method, url, data=data, allow_redirects=False, verify=self.ca,
                          timeout=10)
            if r.status_code in (301, 302, 303, 307, 308):
                url = urllib.parse.urljoin(url, r.headers["location"])
                method, data = "GET", None
                continue
            assert r.status_code == 200, "%s %s -> %d %s" % (method, url, r.status_code,
                                                             r.text[:300])
            path = urllib.parse.urlparse(url).path
            assert path.startswith("/interaction/"), "unexpected page %s: %s" % (url,
                                                                                r.text[:300])
            if 'name="login"' in r.text:
                method, data = "POST", {"prompt": "login", "login": login, "password": "any"}
            elif approve:
                method, data = "POST", {"prompt": "consent"}
            else:
                url, method, data = url + "/abort", "GET", None
        raise AssertionError("too many redirects from " + authorize_url)


def start_oidc(ttl=300, resources=(), client_id="airlock-test", client_secret=None,
               auth_method="basic", timeout=20, user_clients=(), par_clients=(),
               require_par=False, key_out=None):
    """Starts the real OpenID provider tests/peers/oidc_provider.js on 127.0.0.1 over
    HTTPS (test CA); one confidential client allowed client_credentials; access tokens
    are RS256 JWTs for the requested (or first of `resources`) resource, living `ttl` s.
    user_clients: (id, secret, redirect_uri) clients for OAuth on behalf of a user
    (authorization_code + PKCE + refresh_token; see OidcProvider.consent); par_clients:
    the same, but required to push their authorization requests first (RFC 9126);
    require_par: PAR required for every client (and said so in discovery).
    Not run (a failure) when tests/node_modules lacks oidc-provider. Returns an OidcProvider."""
    if not node_modules_ready("oidc-provider", "jose"):
        raise Skip("tests/node_modules has no oidc-provider: run (cd tests && npm ci)")
    c = test_ca()
    secret = client_secret or ("cs-" + os.urandom(12).hex())
    argv = [NODE, os.path.join(PEERS_DIR, "oidc_provider.js"), "--cert", c["cert"], "--key",
            c["key"], "--ttl", str(ttl),
            "--client", "%s:%s%s" % (client_id, secret, ":post" if auth_method == "post" else "")]
    for r in resources:
        argv += ["--resource", r]
    for cid, csec, redirect in user_clients:
        argv += ["--user-client", "%s:%s:%s" % (cid, csec, redirect)]
    for cid, csec, redirect in par_clients:
        argv += ["--par-client", "%s:%s:%s" % (cid, csec, redirect)]
    if require_par:
        argv += ["--require-par"]
    if key_out:  # the private signing JWK, to make agents' tokens with jwt_forge.js
        argv += ["--key-out", key_out]
    p = Proc(argv, name="oidc-provider", cwd=TESTS_DIR)

    def ready():
        for line in p.log_text().splitlines():
            if line.startswith("READY "):
                parts = line.split()
                return int(parts[1]), parts[2]
        if not p.alive():
            raise RuntimeError("oidc provider exited:\n" + p.log_tail())
        return None

    port, issuer = wait_for(ready, timeout, "oidc provider READY")
    return OidcProvider(p, port, issuer, c["ca"], client_id, secret)


start_oidc.__test__ = False


def start_resource_server(op, audience, mcp_audience=None, timeout=20):
    """tests/peers/resource_server.js over HTTPS (test CA): a JSON API under /api/ and an
    MCP server at /mcp that accept only Bearer JWTs signed by OidcProvider `op` for
    `audience` (/mcp: `mcp_audience`, default the same). Returns (Proc, port, ca_file).
    GET /__stats counts requests and distinct token ids; POST /__revoke revokes every
    token seen so far."""
    if not node_modules_ready("@modelcontextprotocol/sdk", "jose"):
        raise Skip("tests/node_modules lacks the MCP SDK: run (cd tests && npm ci)")
    c = test_ca()
    argv = [NODE, os.path.join(PEERS_DIR, "resource_server.js"), "--issuer", op.issuer,
            "--jwks", op.jwks_uri, "--audience", audience, "--mcp-audience",
            mcp_audience or audience, "--cert", c["cert"], "--key", c["key"]]
    p = Proc(argv, name="resource-server", cwd=TESTS_DIR, env={"NODE_EXTRA_CA_CERTS": c["ca"]})

    def ready():
        for line in p.log_text().splitlines():
            if line.startswith("READY "):
                return int(line.split()[1])
        if not p.alive():
            raise RuntimeError("resource server exited:\n" + p.log_tail())
        return None

    port = wait_for(ready, timeout, "resource server READY")
    return p, port, c["ca"]


start_resource_server.__test__ = False


# Header values nginx echoes back (name in the JSON -> nginx variable). Values are
# inserted as they are: tests must not send a '"' or '\' in them.
NGINX_ECHO_FIELDS = [
    ("authorization", "$http_authorization"),
    ("proxy_authorization", "$http_proxy_authorization"),
    ("x_api_key", "$http_x_api_key"),
    ("connection", "$http_connection"),
    ("keep_alive", "$http_keep_alive"),
    ("te", "$http_te"),
    ("upgrade", "$http_upgrade"),
    ("transfer_encoding", "$http_transfer_encoding"),
    ("proxy_connection", "$http_proxy_connection"),
    ("x_request_id", "$http_x_request_id"),
    ("via", "$http_via"),
    ("x_forwarded_for", "$http_x_forwarded_for"),
    ("host", "$http_host"),
    ("user_agent", "$http_user_agent"),
    ("cookie", "$http_cookie"),
    ("content_length", "$content_length"),
    ("method", "$request_method"),
    ("uri", "$request_uri"),
    ("args", "$args"),
    ("protocol", "$server_protocol"),
    ("ssl_protocol", "$ssl_protocol"),
]

NGINX_STATUS_CODES = (200, 201, 204, 400, 401, 403, 404, 413, 429, 500, 502, 503, 504)
NGINX_LARGE_SIZES = {"1m.bin": 1 << 20, "10m.bin": 10 << 20, "100m.bin": 100 << 20}


def start_nginx_tls(h2=True, timeout=10):
    """Debian nginx on a free port, TLS with the test CA (+ HTTP/2 when h2), as the
    current user with its own prefix, pid and temp paths; no system config.
      any path         -> 200 JSON of NGINX_ECHO_FIELDS (the request headers it got)
      /files/NAME      -> static files 1m.bin, 10m.bin, 100m.bin (zero bytes, sparse)
      /status/NNN      -> that status with the echo JSON (NNN in NGINX_STATUS_CODES)
    Returns (Proc, port, ca_file)."""
    c = test_ca()
    d = tmpdir("altest-nginx-")
    files = os.path.join(d, "files")
    os.mkdir(files)
    for name, size in NGINX_LARGE_SIZES.items():
        with open(os.path.join(files, name), "wb") as f:
            f.truncate(size)
    for sub in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        os.mkdir(os.path.join(d, sub))
    body = "{" + ",".join('"%s":"%s"' % (k, v) for k, v in NGINX_ECHO_FIELDS) + "}\\n"
    status_locations = "\n".join(
        "        location = /status/%d { return %d '%s'; }" % (c, c, body) for c in NGINX_STATUS_CODES)
    last_err = None
    for _attempt in range(3):  # free_port() can race with another process: retry
        port = free_port()
        conf = os.path.join(d, "nginx.conf")
        with open(conf, "w") as f:
            f.write("""
daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    client_max_body_size 0;
    keepalive_requests 100000;
    http2_max_concurrent_streams 1024;
    server {{
        listen 127.0.0.1:{port} ssl{h2};
        server_name localhost;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        default_type application/json;
        location /files/ {{ alias {files}/; default_type application/octet-stream; }}
{status_locations}
        location / {{ return 200 '{body}'; }}
    }}
}}
""".format(d=d, port=port, h2=" http2" if h2 else "", cert=c["cert"], key=c["key"],
                   files=files, body=body, status_locations=status_locations))
        p = Proc(["nginx", "-e", os.path.join(d, "error.log"), "-p", d, "-c", conf],
                 name="nginx", log_path=os.path.join(d, "stdout.log"))
        try:
            wait_port(port, timeout=timeout, proc=p)
            return p, port, c["ca"]
        except RuntimeError as e:
            last_err = e
            p.stop()
            if "Address already in use" not in _read(os.path.join(d, "error.log")):
                break
    raise RuntimeError("nginx did not start: %s\n%s" % (last_err, _read(os.path.join(d, "error.log"))))


def _read(path):
    try:
        with open(path, "r", errors="replace") as f:
            return f.read()
    except FileNotFoundError:
        return ""


# --- airlock -----------------------------------------------------------------------

class Postgres:
    """A private PostgreSQL server from Debian's `postgresql` package: initdb on a
    temporary directory, `postgres` in the foreground on a free 127.0.0.1 port (no
    Unix socket outside its directory, no system service touched), password (SCRAM)
    authentication for a role `airlock` owning database `airlock`.

    initdb and postgres refuse to run as root: as root (CI) both run as the package's
    `postgres` user through setpriv (which execs, no fork, and keeps the parent-death
    signal so a killed test leaves no server behind); as another user, as that user.

    .port .dsn (libpq key=value string WITH the password: write it only to files)
    .dsn_file (0600 file holding .dsn, for `store.dsn_file`) .password .data_dir
    .start() / .stop() (fast shutdown: sessions are cut at once, like a crash of the
    connection) .psql(sql) -> stdout text .dump() -> pg_dump text of the database.
    The superuser's password goes to psql/pg_dump through PGPASSWORD, never argv."""

    def __init__(self):
        import glob, pwd, secrets
        bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                      key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0)
        if not bins:
            raise Skip("PostgreSQL is not installed (Debian package postgresql; "
                       "deploy/install-deps.sh installs it)")
        self.bin = os.path.dirname(bins[-1])
        self.root = tmpdir("altest-pg-")
        self.data_dir = os.path.join(self.root, "data")
        self.run_dir = os.path.join(self.root, "run")
        self.prefix = []
        uid = gid = None
        if os.geteuid() == 0:
            try:
                pw = pwd.getpwnam("postgres")
            except KeyError:
                raise Skip("running as root and there is no 'postgres' user to run "
                           "PostgreSQL as (the Debian package creates it)")
            uid, gid = pw.pw_uid, pw.pw_gid
            self.prefix = ["setpriv", "--reuid=%d" % uid, "--regid=%d" % gid,
                           "--init-groups", "--pdeathsig", "KILL", "--"]
        os.chmod(self.root, 0o755)
        os.mkdir(self.run_dir, 0o700)
        self.port = free_port()
        self.admin_password = secrets.token_hex(16)
        self.password = "pw-" + secrets.token_hex(12)
        pwfile = os.path.join(self.root, "pwfile")
        with open(pwfile, "w") as f:
            f.write(self.admin_password + "\n")
        os.chmod(pwfile, 0o600)
        if uid is not None:
            for d in (self.root, self.run_dir, pwfile):
                os.chown(d, uid, gid)
        r = subprocess.run(self.prefix + [os.path.join(self.bin, "initdb"), "-D", self.data_dir,
                                          "-U", "postgres", "--auth=scram-sha-256",
                                          "--pwfile=" + pwfile, "-E", "UTF8", "--no-sync",
                                          "--locale=C"],
                           capture_output=True, text=True, cwd=self.root, timeout=120)
        if r.returncode != 0:
            raise RuntimeError("initdb failed: %s" % (r.stdout + r.stderr)[-2000:])
        os.unlink(pwfile)
        with open(os.path.join(self.data_dir, "postgresql.conf"), "a") as f:
            f.write("listen_addresses = '127.0.0.1'\n"
                    "unix_socket_directories = '%s'\nfsync = off\n"
                    "shared_buffers = 16MB\nmax_connections = 60\n"
                    "log_min_messages = warning\n" % self.run_dir)
        self.proc = None
        for attempt in range(5):  # a port taken between free_port() and bind: another
            try:
                self.start()
                break
            except RuntimeError:
                if attempt == 4 or "could not bind" not in self.proc.log_text():
                    raise
                self.port = free_port()
        self.psql("CREATE ROLE airlock LOGIN PASSWORD '%s'; "
                  "CREATE DATABASE airlock OWNER airlock;" % self.password, db="postgres")
        self.dsn = ("host=127.0.0.1 port=%d dbname=airlock user=airlock password=%s"
                    % (self.port, self.password))
        self.dsn_file = os.path.join(self.root, "store.dsn")
        fd = os.open(self.dsn_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(self.dsn + "\n")

    def start(self, timeout=30):
        """Starts the server on .port (again after stop(): same data, same port)."""
        self.proc = Proc(self.prefix + [os.path.join(self.bin, "postgres"), "-D", self.data_dir,
                                        "-p", str(self.port)],
                         name="postgres", log_path=os.path.join(self.root, "postgres.log"))
        wait_for(lambda: not self.proc.alive() or self._ready(), timeout=timeout,
                 what="PostgreSQL to accept connections", interval=0.05)
        if not self.proc.alive():
            raise RuntimeError("postgres exited (port %d):\n%s" % (self.port,
                                                                 self.proc.log_tail()))
        return self

    def _ready(self):
        # OUR server's state, not whatever answers on the port: postmaster.pid names our
        # postmaster and ends with "ready" once it accepts connections.
        try:
            with open(os.path.join(self.data_dir, "postmaster.pid")) as f:
                lines = f.read().splitlines()
        except (FileNotFoundError, PermissionError):
            return False
        return (len(lines) >= 8 and lines[0].strip() == str(self.proc.pid)
                and lines[7].strip() == "ready")

    def stop(self, timeout=20):
        """Fast shutdown (SIGINT): open sessions are disconnected, as in an outage."""
        if self.proc and self.proc.alive():
            self.proc.signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        if self.proc:
            self.proc.stop()

    def _admin_env(self):
        env = dict(os.environ)
        env["PGPASSWORD"] = self.admin_password
        return env

    def psql(self, sql, db="airlock"):
        r = subprocess.run([os.path.join(self.bin, "psql"), "-X", "-q", "-At", "-v",
                            "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p", str(self.port),
                            "-U", "postgres", "-d", db],
                           input=sql, capture_output=True, text=True, env=self._admin_env(),
                           timeout=60)
        if r.returncode != 0:
            raise RuntimeError("psql failed: %s" % r.stderr.strip())
        return r.stdout

    def dump(self):
        r = subprocess.run([os.path.join(self.bin, "pg_dump"), "-h", "127.0.0.1", "-p",
                            str(self.port), "-U", "postgres", "airlock"],
                           capture_output=True, env=self._admin_env(), timeout=60)
        if r.returncode != 0:
            raise RuntimeError("pg_dump failed: %s" % r.stderr.decode("utf-8", "replace"))
        return r.stdout


def start_postgres():
    """A new private PostgreSQL server (see Postgres)."""
    return Postgres()


def http_get(url, timeout=5, headers=None):
    """(status, body bytes) of a plain GET without any proxy; HTTP errors are returned."""
    req = urllib.request.Request(url, headers=headers or {})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


class Airlock:
    """The real airlock binary on free ports with a temporary state dir.

    Airlock(table_yaml_text, providers={"name": "secret"}, env=None)
    The table text may hold "{state_dir}", "{proxy_port}", "{admin_port}", "{tls_port}":
    they are replaced by the state dir and by free ports. Attributes: .proxy_port
    .admin_port .tls_port .state_dir .table_path .audit_path (state_dir/audit.log)
    .log_path .pid (after start) .proc.
    Each provider is created with `airlock identity create-api-key-credential-provider
    --name N --api-key - --state-dir D`, the secret on stdin (never on argv)."""

    def __init__(self, table_yaml_text, providers=None, env=None):
        self.state_dir = tmpdir("altest-airlock-")
        os.chmod(self.state_dir, 0o700)
        self.proxy_port = free_port()
        self.admin_port = free_port()
        self.tls_port = free_port()
        self.table_path = os.path.join(self.state_dir, "table.yaml")
        self.audit_path = os.path.join(self.state_dir, "audit.log")
        self.log_path = os.path.join(self.state_dir, "airlock.log")
        self.env = dict(env or {})
        # The table's state_dir wins when it names one; otherwise point at ours.
        if "{state_dir}" not in table_yaml_text and "AIRLOCK_STATE_DIR" not in self.env:
            self.env["AIRLOCK_STATE_DIR"] = self.state_dir
        self.proc = None
        self.pid = None
        self.write_table(table_yaml_text)
        for name, secret in (providers or {}).items():
            self.create_provider(name, secret)

    def render(self, text):
        for k, v in (("{state_dir}", self.state_dir), ("{proxy_port}", self.proxy_port),
                     ("{admin_port}", self.admin_port), ("{tls_port}", self.tls_port)):
            text = text.replace(k, str(v))
        return text

    def write_table(self, table_yaml_text):
        """Writes the (rendered) table to .table_path atomically (for reload tests)."""
        tmp = self.table_path + ".tmp"
        with open(tmp, "w") as f:
            f.write(self.render(table_yaml_text))
        os.replace(tmp, self.table_path)

    def cli(self, *args, stdin_data=None, timeout=30):
        """Runs `airlock ARGS...`; returns CompletedProcess (text stdout/stderr)."""
        env = dict(os.environ)
        env.update(self.env)
        return subprocess.run([AIRLOCK_BIN] + [str(a) for a in args], input=stdin_data,
                              capture_output=True, text=True, env=env, timeout=timeout)

    def create_provider(self, name, secret):
        if not os.path.exists(AIRLOCK_BIN):
            raise Skip("airlock binary not built: %s" % AIRLOCK_BIN)
        r = self.cli("identity", "create-api-key-credential-provider", "--name", name,
                     "--api-key", "-", "--state-dir", self.state_dir, stdin_data=secret + "\n")
        if r.returncode != 0:
            raise RuntimeError("creating provider %s failed (exit %d): %s"
                               % (name, r.returncode, (r.stdout + r.stderr).strip()))

    def create_oauth2_provider(self, name, op, client, secret, *extra, table=False):
        """`airlock identity create-oauth2-credential-provider` for client `client` of
        OidcProvider `op` (its discovery URL and CA), the secret on stdin; the store is
        the state dir's, or (table=True) the one the written table names."""
        where = ("-c", self.table_path) if table else ("--state-dir", self.state_dir)
        r = self.cli("identity", "create-oauth2-credential-provider", "--name", name,
                     "--client-id", client, "--client-secret", "-", "--discovery-url",
                     op.discovery_url, "--ca-file", op.ca, "--allow-private-network", *where,
                     *extra, stdin_data=secret + "\n")
        assert r.returncode == 0, r.stderr

    def start(self, timeout=15, extra_args=()):
        if not os.path.exists(AIRLOCK_BIN):
            raise Skip("airlock binary not built: %s" % AIRLOCK_BIN)
        self.proc = Proc([AIRLOCK_BIN, "serve", "-c", self.table_path] + list(extra_args),
                         name="airlock", env=self.env, log_path=self.log_path)
        self.pid = self.proc.pid
        url = "http://127.0.0.1:%d/healthz" % self.admin_port
        deadline = time.monotonic() + timeout
        while True:
            if not self.proc.alive():
                raise RuntimeError("airlock serve exited with status %s:\n%s"
                                   % (self.proc.returncode(), self.proc.log_tail()))
            try:
                if http_get(url, timeout=1)[0] == 200:
                    return self
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("airlock /healthz did not answer 200 within %ss:\n%s"
                                   % (timeout, self.proc.log_tail()))
            time.sleep(0.05)

    def stop(self, timeout=5):
        """SIGINT (graceful drain at once: SIGTERM would first wait limits.drain_delay_ms
        when /readyz was asked), SIGKILL after `timeout` s; returns the exit status."""
        if self.proc is None:
            return None
        return self.proc.stop(timeout, sig=signal.SIGINT)

    def reload(self, table_yaml_text=None):
        """Optionally rewrites the table, then sends SIGHUP."""
        if table_yaml_text is not None:
            self.write_table(table_yaml_text)
        self.proc.signal(signal.SIGHUP)

    def rss_kb(self):
        return rss_kb(self.pid) if self.pid else 0

    def audit_lines(self):
        """Every complete audit line, parsed (a line that is not JSON raises: a test
        failure). A last line without its newline is still being written: left out."""
        out = []
        lines = _read(self.audit_path).split("\n")[:-1]
        for i, line in enumerate(lines, 1):
            if line.strip():
                try:
                    out.append(json.loads(line))
                except ValueError as e:
                    raise AssertionError("audit line %d is not JSON (%s): %r" % (i, e, line))
        return out

    def log_text(self):
        return _read(self.log_path)

    def proxy_url(self):
        return "http://127.0.0.1:%d" % self.proxy_port

    def gateway_url(self, target, path="/"):
        return "http://127.0.0.1:%d/t/%s%s" % (self.proxy_port, target, path)


def http_session():
    """A requests.Session that ignores the proxy environment variables."""
    import requests
    s = requests.Session()
    s.trust_env = False
    return s


# --- OAuth 2.0 on behalf of a user (3LO) -------------------------------------------

def table_head(tls=False, workers=2, limits=""):
    """The start of a table: listen on the Airlock's free proxy and admin ports (and
    tls when asked), limits.workers and the `limits` lines given (indented)."""
    return ("listen:\n  proxy: 127.0.0.1:{proxy_port}\n  admin: 127.0.0.1:{admin_port}\n"
            + ("  tls: 127.0.0.1:{tls_port}\n" if tls else "")
            + "limits:\n  workers: %d\n" % workers + limits)


def inbound_jwt(user_header=False):
    """The table's `inbound:` section taking agents' JWTs from the tests' OpenID provider
    (placeholders ISSUER, AUD, CA: see oidc_table); user_header: the end user may be
    named in X-Airlock-User by the inbound client `runtime`."""
    return ("inbound:\n  mode: jwt\n  jwt:\n"
            "    discovery_url: ISSUER/.well-known/openid-configuration\n"
            "    allowed_audiences: [\"AUD\"]\n    ca_file: CA\n    allow_private_network: true\n"
            + ("  user_header:\n    name: X-Airlock-User\n    trusted_clients: [runtime]\n"
               if user_header else ""))


def oidc_table(table, op, aud, rs_port, **more):
    """The table text with ISSUER, AUD, CA (op's CA file), RS_PORT replaced, then each
    NAME=value of `more`, in the order given."""
    text = (table.replace("ISSUER", op.issuer).replace("AUD", aud).replace("CA", op.ca)
            .replace("RS_PORT", str(rs_port)))
    for k, v in more.items():
        text = text.replace(k, str(v))
    return text


def start_3lo(table, api, aud, client, secret, par_clients=(), ttl=300, **more):
    """For a 3LO test: an Airlock (not started), the OpenID provider with the user client
    (client, secret) (and the PAR clients (id, secret) of par_clients) redirecting to
    airlock's callback, agents' tokens signed by a key written to the state dir, the
    resource server for `api`, and `table` written through oidc_table(aud, **more).
    Returns a namespace: al, op, rs, rs_port, base (airlock's proxy URL), callback,
    key_file."""
    al = Airlock("listen: {proxy: 127.0.0.1:{proxy_port}}\n")
    base = "http://127.0.0.1:%d" % al.proxy_port
    callback = base + "/oauth2/callback"
    key_file = os.path.join(al.state_dir, "issuer-key.json")
    op = start_oidc(ttl=ttl, resources=[api], user_clients=[(client, secret, callback)],
                    par_clients=[(c, s, callback) for c, s in par_clients], key_out=key_file)
    rs, rs_port, _ = start_resource_server(op, api)
    al.write_table(oidc_table(table, op, aud, rs_port, **more))
    return types.SimpleNamespace(al=al, op=op, rs=rs, rs_port=rs_port, base=base,
                                 callback=callback, key_file=key_file)


start_3lo.__test__ = False


def revoke_resource_tokens(op, rs_port):
    """POST /__revoke to the resource server on rs_port (start_resource_server for
    OidcProvider op): it refuses every token it has seen so far (an upstream 401).
    Returns its JSON answer."""
    import ssl
    import urllib.request
    ctx = ssl.create_default_context(cafile=op.ca)
    req = urllib.request.Request("https://127.0.0.1:%d/__revoke" % rs_port, data=b"",
                                 method="POST")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}),
                                         urllib.request.HTTPSHandler(context=ctx))
    with opener.open(req, timeout=10) as r:
        return json.loads(r.read())


# --- runner ------------------------------------------------------------------------

def run(ns):
    """Runs every function named test_* defined in module namespace `ns`, in definition
    order; prints "ok name", "FAIL name" (with the traceback), "FAIL name: not run: why"
    (a Skip) or "skip name (allowed): why" (an AllowedSkip), then
    "N passed, M failed[, K not run][, J skipped (allowed)]"; exits 1 if any failed or
    did not run, else 0. A test named in AIRLOCK_TEST_ONLY (comma-separated) restricts
    the run."""
    only = [s for s in os.environ.get("AIRLOCK_TEST_ONLY", "").split(",") if s]
    main_file = ns.get("__file__")
    tests = [(n, f) for n, f in ns.items()
             if n.startswith("test_") and callable(f) and getattr(f, "__test__", True)
             and getattr(getattr(f, "__code__", None), "co_filename", main_file) == main_file]
    tests.sort(key=lambda t: t[1].__code__.co_firstlineno)
    passed = failed = not_run = allowed = 0
    for name, fn in tests:
        if only and name not in only:
            continue
        t0 = time.monotonic()
        try:
            fn()
        except AllowedSkip as e:
            allowed += 1
            print("skip %s (allowed): %s" % (name, e), flush=True)
        except Skip as e:
            not_run += 1
            print("FAIL %s: not run: %s (a skip is a failure; raise AllowedSkip(\"why this "
                  "machine may skip\") if it is allowed)" % (name, e), flush=True)
        except Exception:
            failed += 1
            print("FAIL %s" % name, flush=True)
            traceback.print_exc(file=sys.stdout)
            sys.stdout.flush()
        else:
            passed += 1
            print("ok %s (%.1fs)" % (name, time.monotonic() - t0), flush=True)
    line = "%d passed, %d failed" % (passed, failed)
    if not_run:
        line += ", %d not run" % not_run
    if allowed:
        line += ", %d skipped (allowed)" % allowed
    print(line, flush=True)
    cleanup_all()
    sys.exit(1 if failed or not_run else 0)
