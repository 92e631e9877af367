#!/usr/bin/python3
"""idle_conns.py: opens N client connections to a proxy, makes each a real one (one
request answered), then holds them all idle until stdin closes.

  idle_conns.py --port P --count N --proto h1|h2 [--path /t/bench/small]

h2: the client preface, an empty SETTINGS, one GET on stream 1 (one HPACK block
encoded once: every connection starts with a fresh table), SETTINGS ACK when the
proxy's SETTINGS arrive; a connection counts as ready once stream 1 ended. h1: one
keep-alive GET, ready once the whole answer (Content-Length) arrived. Connections are
opened in batches of 200 so the listen backlog never overflows.

Prints "READY <n ready> <n failed>" on stdout once every connection is ready or
failed (or after --timeout seconds), then waits for stdin to close (the benchmark
script samples the proxy's memory meanwhile), then closes everything. Memory per
connection on this side does not matter: only the proxy is measured."""
import argparse
import selectors
import socket
import struct
import sys
import time

import hpack

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def frame(ftype, flags, stream, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([ftype, flags]) + struct.pack(">I", stream) + payload


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--count", type=int, required=True)
    ap.add_argument("--proto", choices=("h1", "h2"), required=True)
    ap.add_argument("--path", default="/t/bench/small")
    ap.add_argument("--timeout", type=float, default=120)
    a = ap.parse_args()

    if a.proto == "h2":
        block = hpack.Encoder().encode([(":method", "GET"), (":scheme", "http"),
                                        (":authority", "127.0.0.1"), (":path", a.path)])
        hello = PREFACE + frame(4, 0, 0) + frame(1, 0x5, 1, block)  # END_STREAM|END_HEADERS
    else:
        hello = f"GET {a.path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()

    sel = selectors.DefaultSelector()
    state = {}  # sock -> [buffer, ready]
    ready = failed = 0
    started = 0
    deadline = time.monotonic() + a.timeout

    def h2_progress(s, st):
        nonlocal ready
        buf = st[0]
        while len(buf) >= 9:
            ln = int.from_bytes(buf[0:3], "big")
            if len(buf) < 9 + ln:
                break
            ftype, flags = buf[3], buf[4]
            sid = int.from_bytes(buf[5:9], "big") & 0x7FFFFFFF
            if ftype == 4 and not flags & 1:
                s.sendall(frame(4, 1, 0))  # SETTINGS ACK
            if sid == 1 and ftype in (0, 1) and flags & 1 and not st[1]:
                st[1] = True
                ready += 1
            if ftype == 3 and sid == 1 and not st[1]:  # RST_STREAM: failed
                raise OSError("stream reset")
            buf = buf[9 + ln:]
        st[0] = buf

    def h1_progress(s, st):
        nonlocal ready
        buf = st[0]
        end = buf.find(b"\r\n\r\n")
        if end < 0 or st[1]:
            return
        clen = 0
        for line in buf[:end].split(b"\r\n")[1:]:
            k, _, v = line.partition(b":")
            if k.strip().lower() == b"content-length":
                clen = int(v.strip())
        if len(buf) >= end + 4 + clen:
            st[1] = True
            ready += 1
            st[0] = b""

    while (ready + failed < a.count) and time.monotonic() < deadline:
        # open the next batch once the previous one is mostly answered
        if started < a.count and started - ready - failed < 200:
            for _ in range(min(200, a.count - started)):
                s = socket.socket()
                try:
                    s.connect(("127.0.0.1", a.port))
                    s.sendall(hello)
                except OSError:
                    failed += 1
                    s.close()
                    started += 1
                    continue
                s.setblocking(False)
                state[s] = [b"", False]
                sel.register(s, selectors.EVENT_READ)
                started += 1
        for key, _ in sel.select(timeout=0.2):
            s = key.fileobj
            st = state[s]
            try:
                data = s.recv(65536)
                if not data:
                    raise OSError("closed")
                st[0] += data
                (h2_progress if a.proto == "h2" else h1_progress)(s, st)
            except OSError:
                if not st[1]:
                    failed += 1
                else:
                    ready -= 1
                    failed += 1
                sel.unregister(s)
                s.close()
                del state[s]
    print(f"READY {ready} {failed}", flush=True)
    sys.stdin.read()  # hold until the script is done measuring
    for s in list(state):
        s.close()


if __name__ == "__main__":
    main()
