#!/usr/bin/env python3
"""The include rules of design.md, over the #include lines of the sources.

1. No cycle between folders (common, targets, identity, policy, auth, proxy, cli, ...):
   a folder's files never include, directly or through other folders, a header of a
   folder that includes them back.
2. The request pipeline does not reach into its worker: from proxy/al_request.{c,h},
   following includes, neither al_worker.h nor al_server.h nor al_request.h itself is
   reached (the request sees the worker only through al_req_ctx).

Usage: check_includes.py [SOURCE_DIR]. Exit 0 when both hold, 1 with the cycles or
paths that break them."""
import os
import re
import sys

FOLDERS = ("common", "targets", "identity", "policy", "auth", "proxy", "upstream", "cli")
INC = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.M)


def scan(root):
    """{relpath: [included relpath, ...]} for every .c/.h in FOLDERS."""
    files = {}
    for folder in FOLDERS:
        d = os.path.join(root, folder)
        if not os.path.isdir(d):
            continue
        for name in sorted(os.listdir(d)):
            if name.endswith((".c", ".h")):
                files[f"{folder}/{name}"] = None
    for rel in files:
        folder = rel.split("/")[0]
        with open(os.path.join(root, rel), encoding="utf-8", errors="replace") as f:
            text = f.read()
        deps = []
        for inc in INC.findall(text):
            if "/" in inc:
                target = inc
            else:
                target = f"{folder}/{inc}"  # beside the including file
            if target in files:
                deps.append(target)
        files[rel] = deps
    return files


def folder_cycles(files):
    edges = {}
    why = {}
    for src, deps in files.items():
        a = src.split("/")[0]
        for dep in deps:
            b = dep.split("/")[0]
            if a != b:
                edges.setdefault(a, set()).add(b)
                why.setdefault((a, b), f"{src} includes {dep}")
    # Tarjan's strongly connected components
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    problems = []
    for comp in out:
        lines = [why[(a, b)] for a in comp for b in comp if (a, b) in why]
        problems.append("folder cycle " + " <-> ".join(comp) + ":\n    " + "\n    ".join(lines))
    return problems


def request_reach(files):
    module = {"proxy/al_request.c", "proxy/al_request.h"}
    forbidden = {"proxy/al_worker.h", "proxy/al_server.h"}
    parent = {m: None for m in module if m in files}
    todo = list(parent)
    while todo:
        v = todo.pop()
        for w in files.get(v, ()):
            if w in module and v not in module:
                forbidden.add(w)  # a loop: something the request includes includes it back
            if w in parent:
                continue
            parent[w] = v
            todo.append(w)
    problems = []
    for bad in sorted(forbidden & set(parent)):
        if bad in module and not any(bad in files[v] for v in parent if v not in module):
            continue
        path = [bad]
        while parent[path[-1]] is not None:
            path.append(parent[path[-1]])
        problems.append("the request reaches its worker: " + " -> ".join(reversed(path)))
    return problems


def main():
    root = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..")
    files = scan(root)
    if "proxy/al_request.c" not in files:
        print(f"check_includes: no proxy/al_request.c under {root}", file=sys.stderr)
        return 1
    problems = folder_cycles(files) + request_reach(files)
    for p in problems:
        print(p)
    if not problems:
        print(f"check_includes: {len(files)} files, no folder cycle, the request does not "
              "reach al_worker/al_server")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
