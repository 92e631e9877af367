"""The HTTP(S) server base the test peers share (stdlib only, /usr/bin/python3).

A threading server whose TLS handshake runs in the connection's thread, not the accept
loop, so a client that stalls its handshake cannot stop the peer from accepting.
Subclasses set `peer_name` (for stderr lines) and, for TLS, `ssl_ctx` via tls_context().
"""
import socket
import ssl
import sys
from http.server import ThreadingHTTPServer


def tls_context(cert, key):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


class PeerServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 1024
    ssl_ctx = None
    peer_name = "peer"

    def get_request(self):
        sock, addr = super().get_request()
        # BaseHTTPRequestHandler writes the head and the body in two writes: without
        # TCP_NODELAY the body waits for the client's delayed ACK (~40 ms per request).
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.ssl_ctx is not None:
            sock = self.ssl_ctx.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, addr

    def finish_request(self, request, client_address):
        if isinstance(request, ssl.SSLSocket):
            try:
                request.settimeout(10)
                request.do_handshake()
                request.settimeout(None)
            except (OSError, ssl.SSLError) as e:
                sys.stderr.write("%s: TLS handshake failed: %s\n" % (self.peer_name, e))
                return
        super().finish_request(request, client_address)

    def handle_error(self, request, client_address):
        sys.stderr.write("%s: connection error from %s: %s\n"
                         % (self.peer_name, client_address, sys.exc_info()[1]))
