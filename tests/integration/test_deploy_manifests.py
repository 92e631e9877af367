"""Integration: the deployment files of deploy/ agree with each other and with the binary.

No Kubernetes cluster can run here (Debian 12 packages neither kind nor k3s nor
minikube) and no container image can be built (no registry to pull debian:12-slim
from), so this test checks what can be checked without them:
  - every YAML file under deploy/ parses (python3-yaml), every Kubernetes object has
    apiVersion/kind/name, kustomization.yaml lists the manifests that exist, and every
    field of every object exists in the Kubernetes API with the right type (the API
    models of Debian's python3-kubernetes);
  - deploy/k8s: the ConfigMap's table is accepted by `airlock check`, and `airlock
    serve` on it (listen addresses moved to free 127.0.0.1 ports, paths to a temporary
    directory, the store a private PostgreSQL) answers the probes' paths on the admin
    port, and the table-reload container's script (run as it is, on this table) reloads
    an edited table and reports a refused one while the old one keeps serving; the Deployment's ports, probe paths and ports, `-c` path, mount paths, env and
    secret file paths are the ones the table and the image use; the Service,
    PodDisruptionBudget and NetworkPolicies select the pods and ports they mean; the
    placeholder master key of secrets.example.yaml is refused by airlock;
  - deploy/Containerfile: its build commands are README's, its build packages are
    deploy/install-deps.sh's, its runtime packages hold every library the built binary
    needs (readelf + dpkg), and its user, ports, volume and health check match the
    manifests;
  - deploy/haproxy/airlock-frontend.cfg: `haproxy -c` accepts it, its health check is
    /readyz on the admin port;
  - deploy/airlock.service and the replica drop-in: `systemd-analyze verify` accepts them.
"""
import glob
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from altest import *  # noqa: E402,F401

try:
    import yaml
except ImportError:  # python3-yaml: deploy/install-deps.sh
    yaml = None

DEPLOY = os.path.join(SOURCE_DIR, "deploy")
K8S = os.path.join(DEPLOY, "k8s")


def need_yaml():
    if yaml is None:
        raise Skip("python3-yaml is not installed (deploy/install-deps.sh)")


def load_all(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def k8s_objects():
    objs = {}
    for path in sorted(glob.glob(os.path.join(K8S, "*.yaml"))):
        if os.path.basename(path) == "kustomization.yaml":
            continue
        for d in load_all(path):
            objs[(d["kind"], d["metadata"]["name"])] = (d, os.path.basename(path))
    return objs


def obj(kind, name):
    o = k8s_objects().get((kind, name))
    assert o is not None, "deploy/k8s has no %s %s" % (kind, name)
    return o[0]


def hostport(addr):
    m = re.fullmatch(r"(.+):(\d+)", addr)
    assert m, addr
    return m.group(1), int(m.group(2))


def table():
    cm = obj("ConfigMap", "airlock-table")
    assert list(cm["data"]) == ["airlock.yaml"], cm["data"].keys()
    return yaml.safe_load(cm["data"]["airlock.yaml"]), cm["data"]["airlock.yaml"]


def deployment():
    return obj("Deployment", "airlock")


def container(dep, name, init=False):
    spec = dep["spec"]["template"]["spec"]
    for c in spec["initContainers" if init else "containers"]:
        if c["name"] == name:
            return c
    raise AssertionError("no container %s" % name)


def mount(c, volume):
    ms = [m for m in c.get("volumeMounts", []) if m["name"] == volume]
    assert len(ms) == 1, "%s mounts volume %s %d times" % (c["name"], volume, len(ms))
    return ms[0]


def volume(dep, name):
    for v in dep["spec"]["template"]["spec"]["volumes"]:
        if v["name"] == name:
            return v
    raise AssertionError("no volume %s" % name)


def port_of(c, name):
    for p in c["ports"]:
        if p["name"] == name:
            return p["containerPort"]
    raise AssertionError("container %s has no port %s" % (c["name"], name))


def env_of(c, name):
    for e in c.get("env", []):
        if e["name"] == name:
            return e["value"]
    raise AssertionError("container %s has no env %s" % (c["name"], name))


def init_copies(dep):
    """{destination: source} of the init container's `install -m MODE SRC DEST` lines."""
    script = container(dep, "secrets", init=True)["command"][-1]
    out = {}
    for line in script.splitlines():
        w = shlex.split(line)
        if w and w[0] == "install":
            assert w[1] == "-m", line
            out[w[4]] = (w[3], w[2])
    assert out, "the init container copies nothing"
    return out


def test_every_yaml_under_deploy_parses():
    need_yaml()
    files = sorted(glob.glob(os.path.join(DEPLOY, "**", "*.y*ml"), recursive=True))
    assert len(files) >= 10, files
    for path in files:
        docs = load_all(path)
        assert docs, "%s is empty" % path
    objs = k8s_objects()
    kinds = sorted({k for k, _ in objs})
    for want in ("ConfigMap", "Deployment", "Namespace", "NetworkPolicy",
                 "PodDisruptionBudget", "Secret", "Service"):
        assert want in kinds, "deploy/k8s has no %s" % want
    for (kind, name), (d, f) in objs.items():
        assert d.get("apiVersion"), "%s: %s %s has no apiVersion" % (f, kind, name)
        if kind != "Namespace":
            assert d["metadata"].get("namespace") in ("airlock", "agents"), (f, kind, name)
    kust = load_all(os.path.join(K8S, "kustomization.yaml"))[0]
    listed = set(kust["resources"])
    present = {os.path.basename(p) for p in glob.glob(os.path.join(K8S, "*.yaml"))}
    assert listed <= present, "kustomization lists missing files: %s" % (listed - present)
    # Everything but the Secret example (values never committed) and the agents' policy
    # (another namespace, applied by the agents' owners) is applied by `kubectl apply -k`.
    assert present - listed == {"kustomization.yaml", "secrets.example.yaml",
                                "networkpolicy-agents.yaml"}, present - listed
    print("parsed %d YAML files, %d Kubernetes objects" % (len(files), len(objs)))


def check_schema(value, typ, where, models):
    """Checks `value` (parsed YAML) against the Kubernetes API type `typ` of the
    python3-kubernetes client's models: every field must exist (by its JSON name) and
    hold the right kind of value. Returns the number of fields checked."""
    if typ.startswith("list["):
        assert isinstance(value, list), "%s: a list expected" % where
        return sum(check_schema(v, typ[5:-1], "%s[%d]" % (where, i), models)
                   for i, v in enumerate(value))
    if typ.startswith("dict("):
        assert isinstance(value, dict), "%s: a map expected" % where
        inner = typ[5:-1].split(", ", 1)[1]
        return sum(check_schema(v, inner, "%s.%s" % (where, k), models) for k, v in value.items())
    basic = {"str": str, "int": int, "bool": bool, "float": (int, float)}
    if typ in basic:
        ok = isinstance(value, basic[typ]) and not (typ == "int" and isinstance(value, bool))
        assert ok, "%s: %s expected, got %r" % (where, typ, value)
        return 1
    if typ in ("object", "datetime", "date"):  # IntOrString, Quantity, times: any scalar
        return 1
    cls = getattr(models, typ)
    assert isinstance(value, dict), "%s: a %s map expected" % (where, typ)
    fields = {json_name: attr for attr, json_name in cls.attribute_map.items()}
    n = 0
    for k, v in value.items():
        assert k in fields, "%s: %s has no field %r" % (where, typ, k)
        n += check_schema(v, cls.openapi_types[fields[k]], "%s.%s" % (where, k), models)
    return n + 1


def test_manifests_match_the_kubernetes_api_schema():
    """Every field of every object is one the Kubernetes API has, with the right type
    (the API models of Debian's python3-kubernetes, Kubernetes 1.22): a misspelt or
    misplaced key (readinessprobe, a probe under the pod spec) fails here, as
    `kubectl apply` would fail on a cluster."""
    need_yaml()
    try:
        from kubernetes.client import models
    except ImportError:
        raise Skip("python3-kubernetes is not installed (deploy/install-deps.sh)")
    total = 0
    for (kind, name), (d, f) in k8s_objects().items():
        assert d["apiVersion"] in ("v1", "apps/v1", "policy/v1", "networking.k8s.io/v1"), \
            "%s: %s %s: apiVersion %s" % (f, kind, name, d["apiVersion"])
        total += check_schema(d, "V1" + kind, "%s:%s/%s" % (f, kind, name), models)
    assert total > 300, total
    # The checker finds what it should.
    bad = obj("Deployment", "airlock")
    bad["spec"]["template"]["spec"]["containers"][0]["readinessprobe"] = {}
    try:
        check_schema(bad, "V1Deployment", "mutated", models)
    except AssertionError as e:
        assert "readinessprobe" in str(e), e
    else:
        raise AssertionError("a misspelt field passed the schema check")
    print("checked %d fields against the Kubernetes 1.22 API models" % total)


def test_deployment_matches_the_table():
    need_yaml()
    t, _ = table()
    dep = deployment()
    spec = dep["spec"]["template"]["spec"]
    al = container(dep, "airlock")
    proxy_host, proxy_port = hostport(t["listen"]["proxy"])
    admin_host, admin_port = hostport(t["listen"]["admin"])
    assert proxy_host == admin_host == "0.0.0.0", "listeners must bind all addresses in a pod"
    assert port_of(al, "proxy") == proxy_port
    assert port_of(al, "admin") == admin_port
    assert "tls" not in t["listen"] or port_of(al, "tls") == hostport(t["listen"]["tls"])[1]
    # Probes: the admin port, the paths /readyz and /healthz (probed for real below).
    assert al["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
    assert al["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
    assert al["startupProbe"]["httpGet"]["port"] == "admin"
    ann = dep["spec"]["template"]["metadata"]["annotations"]
    assert int(ann["prometheus.io/port"]) == admin_port and ann["prometheus.io/path"] == "/metrics"
    # The table: `serve -c PATH`, PATH in the ConfigMap's directory mount (no subPath:
    # a subPath mount never sees an update).
    assert al["args"][:2] == ["serve", "-c"] and len(al["args"]) == 3, al["args"]
    cpath = al["args"][2]
    m = mount(al, "table")
    assert "subPath" not in m and m.get("readOnly") is True
    assert os.path.dirname(cpath) == m["mountPath"], (cpath, m)
    assert volume(dep, "table")["configMap"]["name"] == "airlock-table"
    assert os.path.basename(cpath) in obj("ConfigMap", "airlock-table")["data"]
    reload_c = container(dep, "table-reload")
    assert mount(reload_c, "table")["mountPath"] == m["mountPath"]
    script = reload_c["command"][-1]
    assert cpath in script, "table-reload does not watch %s" % cpath
    assert "http://127.0.0.1:%d/reload" % admin_port in script
    # State dir: table, env and volume agree; the audit-log container follows its log.
    state = t["state_dir"]
    assert env_of(al, "AIRLOCK_STATE_DIR") == state
    assert mount(al, "state")["mountPath"] == state
    audit_file = t.get("audit", {}).get("file", os.path.join(state, "audit.log"))
    audit_c = container(dep, "audit-log")
    assert audit_c["command"][-1] == audit_file
    assert os.path.dirname(audit_file) == mount(audit_c, "state")["mountPath"]
    # Secrets: each file the table or env names is one the init container writes from
    # a Secret item, into a volume the airlock container mounts (read-only, in memory).
    copies = init_copies(dep)
    secret_mount = mount(al, "secrets")
    assert secret_mount.get("readOnly") is True
    assert volume(dep, "secrets")["emptyDir"].get("medium") == "Memory"
    needed = {env_of(al, "AIRLOCK_MASTER_KEY_FILE"): "0400",
              os.path.join(state, "ca.key"): "0600", os.path.join(state, "ca.crt"): "0644"}
    store = t.get("store", {})
    if store.get("backend") == "postgres":
        assert "dsn_file" in store, "the DSN (with its password) must come from a file"
        needed[store["dsn_file"]] = "0400"
    assert set(copies) == set(needed), (sorted(copies), sorted(needed))
    items = {}
    proj = volume(dep, "secrets-in")["projected"]
    init = container(dep, "secrets", init=True)
    src_dir = mount(init, "secrets-in")["mountPath"]
    for s in proj["sources"]:
        for it in s["secret"]["items"]:
            items[os.path.join(src_dir, it["path"])] = (s["secret"]["name"], it["key"])
    for dest, mode in needed.items():
        src, got_mode = copies[dest]
        assert got_mode == mode, "%s copied with mode %s, want %s" % (dest, got_mode, mode)
        assert src in items, "%s comes from %s, which no Secret item provides" % (dest, src)
        mounted = [mm["mountPath"] for mm in init["volumeMounts"]]
        assert os.path.dirname(dest) in mounted, "init container cannot write %s" % dest
        in_main = [mm["mountPath"] for mm in al["volumeMounts"]]
        assert os.path.dirname(dest) in in_main, "airlock does not mount %s" % dest
    assert not any(mm["name"] == "secrets-in" for mm in al["volumeMounts"]), \
        "the airlock container must not mount the group-readable Secret files"
    ex = {(d["metadata"]["name"], k) for d in load_all(os.path.join(K8S, "secrets.example.yaml"))
          for k in d["stringData"]}
    assert set(items.values()) == ex, (sorted(items.values()), sorted(ex))
    # Workers = the CPU request (limits.workers 0 would count the node's cores).
    assert str(t["limits"]["workers"]) == str(al["resources"]["requests"]["cpu"])
    # Non-root as the image's user, read-only root filesystem, $TMPDIR writable.
    sc = spec["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["runAsUser"] == image_user()[0]
    assert mount(al, "tmp")["mountPath"] == "/tmp"
    for c in spec["containers"] + spec["initContainers"]:
        assert c["securityContext"]["readOnlyRootFilesystem"] is True, c["name"]
        assert c["securityContext"]["allowPrivilegeEscalation"] is False, c["name"]
        assert c["image"] == al["image"], c["name"]
        assert "resources" in c and "requests" in c["resources"], c["name"]
    # SIGTERM: the lame duck (drain_delay_ms), then the drain, then a margin; the delay
    # replaces a preStop pause (which would come before SIGTERM, inside the same period).
    assert spec["terminationGracePeriodSeconds"] * 1000 >= t["limits"].get(
        "drain_delay_ms", 5000) + t["limits"].get("drain_timeout_ms", 10000) + 5000
    pre = al.get("lifecycle", {}).get("preStop")
    assert pre is None, "a preStop pause adds to limits.drain_delay_ms: %r" % pre


def test_service_pdb_and_network_policies_select_airlock():
    need_yaml()
    t, _ = table()
    dep = deployment()
    labels = dep["spec"]["template"]["metadata"]["labels"]
    _, proxy_port = hostport(t["listen"]["proxy"])
    _, admin_port = hostport(t["listen"]["admin"])

    def selects(sel):
        return all(labels.get(k) == v for k, v in sel.items())
    assert selects(dep["spec"]["selector"]["matchLabels"])
    svc = obj("Service", "airlock")
    assert selects(svc["spec"]["selector"])
    assert [p["targetPort"] for p in svc["spec"]["ports"]] == ["proxy"]
    assert svc["spec"]["ports"][0]["port"] == proxy_port
    pdb = obj("PodDisruptionBudget", "airlock")
    assert selects(pdb["spec"]["selector"]["matchLabels"])
    assert pdb["spec"]["maxUnavailable"] < dep["spec"]["replicas"]
    np = obj("NetworkPolicy", "airlock")
    assert selects(np["spec"]["podSelector"]["matchLabels"])
    assert sorted(np["spec"]["policyTypes"]) == ["Egress", "Ingress"]
    ports = sorted(p["port"] for rule in np["spec"]["ingress"] for p in rule["ports"])
    assert ports == [proxy_port, admin_port], ports
    agent_rule = [r for r in np["spec"]["ingress"] if r["ports"][0]["port"] == proxy_port][0]
    agent_label = agent_rule["from"][0]["podSelector"]["matchLabels"]
    # The agents' side: agent pods reach only airlock's pods on the proxy port, and DNS.
    ag = obj("NetworkPolicy", "agents-egress-only-via-airlock")
    assert ag["spec"]["podSelector"]["matchLabels"] == agent_label
    assert ag["spec"]["policyTypes"] == ["Egress"]
    to_airlock, dns = ag["spec"]["egress"]
    assert [p["port"] for p in to_airlock["ports"]] == [proxy_port]
    peer = to_airlock["to"][0]
    assert peer["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": dep["metadata"]["namespace"]}
    assert selects(peer["podSelector"]["matchLabels"])
    assert sorted(p["port"] for p in dns["ports"]) == [53, 53]
    assert all("ipBlock" not in p for r in ag["spec"]["egress"] for p in r["to"]), \
        "an ipBlock would let agents around airlock"


def test_example_master_key_is_refused():
    need_yaml()
    docs = {d["metadata"]["name"]: d for d in load_all(os.path.join(K8S, "secrets.example.yaml"))}
    d = tmpdir("altest-deploy-mk-")
    mk = os.path.join(d, "master.key")
    fd = os.open(mk, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, docs["airlock-master-key"]["stringData"]["master.key"].encode())
    os.close(fd)
    env = dict(os.environ, AIRLOCK_STATE_DIR=os.path.join(d, "state"), AIRLOCK_MASTER_KEY_FILE=mk)
    r = subprocess.run([AIRLOCK_BIN, "identity", "create-api-key-credential-provider", "--name",
                        "x", "--api-key", "-"], input="k", capture_output=True, text=True,
                       env=env, timeout=30)
    assert r.returncode != 0 and "64 hex" in r.stderr, (r.returncode, r.stderr)


def image_user():
    with open(os.path.join(DEPLOY, "Containerfile")) as f:
        text = f.read()
    m = re.search(r"^USER (\d+):(\d+)$", text, re.M)
    assert m, "Containerfile: USER uid:gid (numeric, for runAsNonRoot)"
    return int(m.group(1)), int(m.group(2))


def containerfile_runs():
    """The RUN commands of each stage: {stage index: [command text]} (continuations joined)."""
    with open(os.path.join(DEPLOY, "Containerfile")) as f:
        text = re.sub(r"\\\n", " ", f.read())
    stages, out = -1, {}
    for line in text.splitlines():
        if line.startswith("FROM "):
            stages += 1
        elif line.startswith("RUN "):
            out.setdefault(stages, []).append(line[4:])
    return text, out


def apt_packages(cmd):
    m = re.search(r"apt-get install ([^&]*)", cmd)
    return [w for w in m.group(1).split() if not w.startswith("-")]


def install_deps_groups():
    with open(os.path.join(DEPLOY, "install-deps.sh")) as f:
        body = re.search(r"packages=\(\n(.*?)\n\)", f.read(), re.S).group(1)
    groups, cur = {}, None
    for line in body.splitlines():
        line = line.strip()
        if line.startswith("#"):
            cur = line[1:].strip().split(":")[0]
        elif line:
            groups.setdefault(cur, []).extend(line.split())
    return groups


def test_containerfile_agrees_with_readme_deps_and_binary():
    need_yaml()
    text, runs = containerfile_runs()
    with open(os.path.join(SOURCE_DIR, "README.md")) as f:
        readme = f.read()
    # The build: README's configure and build commands.
    m = re.search(r"^(cmake -S \. -B build -DCMAKE_BUILD_TYPE=Release) && (cmake --build build) ",
                  readme, re.M)
    assert m, "README lost its Release build line"
    build_cmd = [r for r in runs[0] if "cmake -S" in r]
    assert len(build_cmd) == 1 and m.group(1) in build_cmd[0] and m.group(2) in build_cmd[0], \
        build_cmd
    # Build packages: install-deps.sh's build tools (without clang, the fuzzers') and
    # every library; nothing it does not install.
    groups = install_deps_groups()
    build_pkgs = set(apt_packages(runs[0][0]))
    want = set(groups["libraries"]) | (set(groups["build"]) - {"clang", "libclang-rt-14-dev"})
    assert build_pkgs == want, "Containerfile build packages differ from install-deps.sh: " \
        "missing %s, extra %s" % (sorted(want - build_pkgs), sorted(build_pkgs - want))
    # Runtime packages: the owner of every library the binary links (the sanitizer
    # runtimes of this ASan build aside; libc6 is in the base image).
    runtime = set(apt_packages(runs[1][0]))
    needed = re.findall(r"\(NEEDED\)\s+Shared library: \[(.+?)\]",
                        subprocess.run(["readelf", "-d", AIRLOCK_BIN], capture_output=True,
                                       text=True, check=True).stdout)
    assert "libcurl.so.4" in needed, needed
    ldd = subprocess.run(["ldd", AIRLOCK_BIN], capture_output=True, text=True).stdout
    paths = dict(re.findall(r"^\s*(\S+) => (\S+)", ldd, re.M))
    owners = set()
    for lib in needed:
        if re.match(r"lib(asan|ubsan|tsan|lsan)\.", lib):
            continue
        path = os.path.realpath(paths[lib])
        r = subprocess.run(["dpkg", "-S", path], capture_output=True, text=True)
        if r.returncode != 0:  # /lib is a symlink to /usr/lib on Debian 12 (merged /usr)
            r = subprocess.run(["dpkg", "-S", path.replace("/usr/lib/", "/lib/", 1)],
                               capture_output=True, text=True)
        assert r.returncode == 0, "no package owns %s (%s)" % (lib, path)
        owners.add(r.stdout.split(":")[0])
    owners -= {"libc6"}
    assert owners <= runtime, "the runtime image lacks %s" % sorted(owners - runtime)
    # The image's user, ports, state volume and health check match the manifests.
    t, _ = table()
    dep = deployment()
    al = container(dep, "airlock")
    assert image_user() == (dep["spec"]["template"]["spec"]["securityContext"]["runAsUser"],
                            dep["spec"]["template"]["spec"]["securityContext"]["runAsGroup"])
    _, proxy_port = hostport(t["listen"]["proxy"])
    _, admin_port = hostport(t["listen"]["admin"])
    expose = [int(p) for p in re.search(r"^EXPOSE (.+)$", text, re.M).group(1).split()]
    assert expose == [proxy_port, admin_port], expose
    assert re.search(r'^VOLUME \["%s"\]$' % re.escape(t["state_dir"]), text, re.M)
    assert re.search(r"^ENV AIRLOCK_STATE_DIR=%s$" % re.escape(t["state_dir"]), text, re.M)
    hc = re.search(r"^HEALTHCHECK .*CMD (\[.*\])$", text, re.M)
    assert hc and "http://127.0.0.1:%d/readyz" % admin_port in hc.group(1), hc
    cmd = re.search(r"^CMD (\[.*\])$", text, re.M).group(1)
    assert cmd == '["serve", "-c", "%s"]' % al["args"][2], cmd
    print("Containerfile: runtime packages %s hold %s" % (sorted(runtime), sorted(owners)))


def test_haproxy_example_is_valid_and_checks_readyz():
    need_yaml()
    path = os.path.join(DEPLOY, "haproxy", "airlock-frontend.cfg")
    r = subprocess.run(["haproxy", "-c", "-f", path], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    with open(path) as f:
        text = f.read()
    assert re.search(r"^\s*option httpchk GET /readyz$", text, re.M)
    t, _ = table()
    _, proxy_port = hostport(t["listen"]["proxy"])
    _, admin_port = hostport(t["listen"]["admin"])
    servers = re.findall(r"^\s*server \S+ \S+:(\d+) port (\d+)$", text, re.M)
    assert len(servers) >= 2 and all(s == (str(proxy_port), str(admin_port)) for s in servers), \
        servers


def test_systemd_units_verify():
    if not shutil.which("systemd-analyze"):
        raise Skip("systemd-analyze is not installed (package systemd, deploy/install-deps.sh)")
    d = tmpdir("altest-deploy-systemd-")
    unitdir = os.path.join(d, "airlock.service.d")
    os.mkdir(unitdir)
    # The unit and drop-in as installed, with the binary at the path of this build.
    for src, dst in ((os.path.join(DEPLOY, "airlock.service"), os.path.join(d, "airlock.service")),
                     (os.path.join(DEPLOY, "airlock-replica.conf"),
                      os.path.join(unitdir, "replica.conf"))):
        with open(src) as f:
            text = f.read().replace("/usr/local/bin/airlock", os.path.abspath(AIRLOCK_BIN))
        with open(dst, "w") as f:
            f.write(text)
    r = subprocess.run(["systemd-analyze", "verify", "--man=no", os.path.join(d, "airlock.service")],
                       capture_output=True, text=True, env=dict(os.environ, SYSTEMD_UNIT_PATH=d + ":"))
    out = "\n".join(l for l in (r.stdout + r.stderr).splitlines()
                    if "network-online.target" not in l and "multi-user.target" not in l)
    assert r.returncode == 0 and not out.strip(), out


def test_configmap_table_checks_and_serves():
    """`airlock check` and `airlock serve` on the ConfigMap's table, moved to this
    machine: listeners on free 127.0.0.1 ports, state dir and secret files in a
    temporary directory, the store a private PostgreSQL; /readyz and /healthz (the
    probes' paths) answer 200 on the admin port, the proxy port accepts."""
    need_yaml()
    t, text = table()
    d = tmpdir("altest-deploy-serve-")
    os.chmod(d, 0o700)
    proxy_port, admin_port = free_port(), free_port()
    moved = {
        t["listen"]["proxy"]: "127.0.0.1:%d" % proxy_port,
        t["listen"]["admin"]: "127.0.0.1:%d" % admin_port,
        t["state_dir"]: os.path.join(d, "state"),
    }
    env = {"AIRLOCK_STATE_DIR": os.path.join(d, "state"),
           "AIRLOCK_MASTER_KEY_FILE": os.path.join(d, "master.key")}
    fd = os.open(env["AIRLOCK_MASTER_KEY_FILE"], os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, os.urandom(32).hex().encode())
    os.close(fd)
    store = t.get("store", {})
    if store.get("backend") == "postgres":
        moved[store["dsn_file"]] = start_store_for(d)
    for old, new in moved.items():
        assert text.count(old) == 1, "%s appears %d times in the table" % (old, text.count(old))
        text = text.replace(old, new)
    a = Airlock(text, env=env)
    for tgt in yaml.safe_load(text)["targets"]:
        prov = tgt.get("auth", {}).get("provider")
        if prov:
            r = a.cli("identity", "create-api-key-credential-provider", "--name", prov,
                      "--api-key", "-", "-c", a.table_path, stdin_data="sk-deploy-test")
            assert r.returncode == 0, r.stdout + r.stderr
    r = a.cli("check", "-c", a.table_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "warning" not in r.stdout + r.stderr, r.stdout + r.stderr
    a.admin_port, a.proxy_port = admin_port, proxy_port
    a.start()
    for path in (deployment_probe_paths()):
        st, body = http_get("http://127.0.0.1:%d%s" % (admin_port, path))
        assert st == 200, (path, st, body)
    st, body = http_get("http://127.0.0.1:%d/readyz" % admin_port)
    assert b'"ready"' in body, body
    wait_port(proxy_port)
    # The table-reload container's script, run as it is but on this table and admin
    # port (and polling faster): an edited table is reloaded, a refused one is reported
    # and the old one keeps serving.
    cpath = container(deployment(), "airlock")["args"][2]
    script = container(deployment(), "table-reload")["command"][-1]
    assert script.count(cpath) == 2 and script.count("127.0.0.1:%d" % 8081) == 1
    assert script.count("sleep 5") == 1
    script = (script.replace(cpath, a.table_path).replace("sleep 5", "sleep 0.2")
              .replace("127.0.0.1:8081", "127.0.0.1:%d" % admin_port))
    watcher = Proc(["/bin/sh", "-c", script], name="table-reload")

    def generation():
        st, body = http_get("http://127.0.0.1:%d/status.json" % admin_port)
        assert st == 200, body
        return json.loads(body)["table"]["generation"]
    assert generation() == 1
    time.sleep(0.5)  # the script has read the first hash (it polls every 0.2 s)
    with open(a.table_path) as f:
        good = f.read()
    a.write_table(good + "\n# edited\n")
    wait_for(lambda: generation() == 2, 10, "the table-reload script reloading an edit")
    a.write_table(good.replace("targets:", "targets: [", 1))  # broken YAML
    wait_for(lambda: "table_invalid" in watcher.log_text(), 10, "the refusal in its log")
    assert generation() == 2, "a refused table replaced the one in use"
    st, _ = http_get("http://127.0.0.1:%d/readyz" % admin_port)
    assert st == 200
    watcher.stop()
    a.stop()


def deployment_probe_paths():
    al = container(deployment(), "airlock")
    return sorted({al[p]["httpGet"]["path"] for p in ("readinessProbe", "livenessProbe",
                                                      "startupProbe")})


def start_store_for(d):
    """A private PostgreSQL (altest); returns the path of its DSN file (0600)."""
    return start_postgres().dsn_file


if __name__ == "__main__":
    run(globals())
