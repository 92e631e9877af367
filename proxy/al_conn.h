/* al_conn: one downstream connection — socket (or TLS) transport, input and output
 * buffers, and the protocol (HTTP/1.1 or HTTP/2) that interprets the bytes.
 *
 * Transport abstraction: every byte goes through c->transport (read/write/close),
 * so a TLS session (SSL*) can replace the plain fd after a CONNECT or on listen.tls
 * without the protocol code knowing. Protocols see only c->in (received bytes not
 * yet consumed) and al_conn_send() (queued output).
 *
 * Output backpressure: al_conn_send() always queues (up to a hard cap); protocols
 * check al_conn_out_full() (above AL_CONN_OUT_HIGH, 64 KiB) before producing more,
 * and get proto->on_drain() when the queue has gone below the mark again.
 *
 * Ownership: the worker owns its connections (a list); al_conn_close() frees one
 * at the end of the current event, never in the middle of a callback chain. */
#ifndef AL_CONN_H
#define AL_CONN_H

#include <ev.h>
#include <netinet/in.h>
#include <stddef.h>
#include <sys/socket.h>
#include <sys/types.h>

#include "common/al_buf.h"

#define AL_CONN_OUT_HIGH   (64 * 1024)
#define AL_CONN_READ_CHUNK (16 * 1024)

struct al_worker;
typedef struct al_conn al_conn;

/* Which client-side clock governs a connection now (limits.client_*_timeout_ms).
 * NONE while a request is in flight: the upstream's clocks (al_upstream) govern it. */
enum al_conn_timeout {
    AL_CT_NONE,
    AL_CT_HANDSHAKE, /* TLS handshake; HTTP/2 preface and first SETTINGS */
    AL_CT_HEADER,    /* a complete request head (counted from its first byte / accept) */
    AL_CT_BODY,      /* the next request body byte (restarts on each read) */
    AL_CT_KEEPALIVE, /* between requests (h1) / no stream open (h2) */
    AL_CT_CLOSING,   /* output to flush and nothing else to do: before a close, or h2
                        streams whose requests all ended (restarts on each write) */
};

typedef struct al_transport {
    const char *name; /* "tcp", "tls" */
    /* > 0 bytes, 0 end of stream, AL_ERR_AGAIN would block, other negative: error. */
    ssize_t (*read)(al_conn *c, void *buf, size_t n);
    ssize_t (*write)(al_conn *c, const void *buf, size_t n);
    /* Frees transport state (not the fd). */
    void (*release)(al_conn *c);
    /* Bytes already decrypted and waiting (no socket event will announce them). */
    size_t (*pending)(al_conn *c);
} al_transport;

typedef struct al_proto {
    const char *name; /* "http/1.1", "h2" */
    /* New bytes are in c->in; consume what can be used. Nonzero: close now. */
    int (*on_read)(al_conn *c);
    /* The peer closed its sending side (or the read failed). */
    void (*on_eof)(al_conn *c);
    /* Output fell below AL_CONN_OUT_HIGH. */
    void (*on_drain)(al_conn *c);
    /* 1 while the protocol wants more input (h1 stops reading during a request). */
    int (*wants_read)(al_conn *c);
    /* 1 when no request is in flight (draining may close the connection). */
    int (*idle)(al_conn *c);
    /* Server is draining: stop taking new requests (h2 GOAWAY, h1 Connection: close). */
    void (*drain)(al_conn *c);
    void (*free)(al_conn *c);
    /* The client clock that applies now (enum al_conn_timeout); NULL = NONE. */
    int (*timeout_kind)(al_conn *c);
    /* That clock ran out (HEADER, BODY or KEEPALIVE); NULL = close at once. */
    void (*on_timeout)(al_conn *c, int kind);
    /* The connection has been idle (KEEPALIVE) for AL_CONN_TRIM_IDLE_MS: give back
     * memory that costs a system call to give back (h2: nghttp2's buffers); NULL none. */
    void (*trim)(al_conn *c);
} al_proto;

/* How long a connection stays idle before proto->trim: a connection between two
 * requests of a busy client never pays its system calls and page faults. */
#define AL_CONN_TRIM_IDLE_MS 500

struct al_conn {
    struct al_worker *worker;
    int fd;
    const al_transport *transport;
    void *tls;       /* SSL* when transport is TLS (the innermost session) */
    void *outer_tls; /* SSL* of listen.tls under an intercepted CONNECT: TLS in TLS */
    ev_io io;
    /* queued for a continuation at the end of this loop pass (al_conn_kick): the
     * worker's kick list, run by its ev_prepare watcher before the loop polls again */
    struct al_conn *kick_prev, *kick_next;
    int kick_queued;
    int io_events;

    char *in; /* received, not yet consumed: in[0..in_len) */
    size_t in_len, in_cap;
    /* Received before TLS began (a ClientHello right behind the CONNECT head): the
     * TLS session reads pre[pre_off..pre_len) before the socket. */
    char *pre;
    size_t pre_len, pre_off;

    al_buf out; /* queued output out.data[out_off..out.len) */
    size_t out_off;

    const al_proto *proto; /* NULL until the first bytes pick one */
    void *proto_state;

    char peer[64]; /* "ip:port" */
    /* TLS: set by al_conn_start_tls, switched to once the plain output is flushed. */
    void *start_tls_ctx; /* SSL_CTX* (borrowed) */
    int tls_handshaking; /* SSL_do_handshake not finished yet */
    int tls_want_write;  /* the handshake waits for the socket to be writable */
    /* Inside an intercepted CONNECT tunnel: the only host requests may address; ""
     * (a static string) outside one, else malloc'd (inline, it was 256 of the 712
     * bytes every connection held, idle or not). */
    const char *tunnel_host;
    uint16_t tunnel_port;
    /* The CONNECT's Proxy-Authorization value (malloc'd, NULL if none): requests in the
     * tunnel are decided as its principal (inbound JWT). */
    char *tunnel_auth;
    size_t tunnel_auth_len;
    /* Client-side clock: one lazy timer; ct_kind and ct_since say which and from when. */
    ev_timer ct_timer;
    int ct_kind; /* enum al_conn_timeout */
    int trimmed; /* proto->trim ran in this KEEPALIVE period */
    ev_tstamp ct_since, last_read, last_write;
    int closing; /* close once the output is flushed */
    int drain_wanted; /* proto->on_drain when the queue goes below the mark, even if it was
                         not above it (the protocol stopped with more to write) */
    int dead;    /* closed; freed at the end of the event */
    al_conn *prev, *next;
};

/* Accepted fd (non-blocking) -> new connection registered with the worker. */
int al_conn_new(struct al_worker *w, int fd, const struct sockaddr *peer, socklen_t peer_len,
                al_conn **out);
/* Queues bytes; tries to write at once. AL_ERR_TOOBIG past the hard cap. */
int al_conn_send(al_conn *c, const void *data, size_t len);
/* Zero-copy output: `len` bytes at `p` (borrowed: valid during the call only) that go
 * out right before queue byte `at` (an offset into c->out.data, >= c->out_off and
 * <= c->out.len; spans in order, nondecreasing `at`). */
typedef struct al_conn_span {
    size_t at;
    const void *p;
    size_t len;
} al_conn_span;
#define AL_CONN_SPANS_MAX 64
/* Sends the queue with the spans inserted: on a plain socket that is not waiting to be
 * writable, one writev of queue and spans straight from the callers' memory; only what
 * the socket did not take is copied into the queue (in order). On TLS everything is
 * queued first (SSL_write copies anyway). At most AL_CONN_SPANS_MAX spans. Returns
 * AL_OK, AL_ERR_TOOBIG past the hard cap, AL_ERR_IO when the connection is dead. */
int al_conn_send_spans(al_conn *c, const al_conn_span *sp, size_t n);
/* Queues bytes without writing (batch a head, then al_conn_flush: one syscall). */
int al_conn_queue(al_conn *c, const void *data, size_t len);
void al_conn_flush(al_conn *c);
int al_conn_out_full(const al_conn *c);
size_t al_conn_out_pending(const al_conn *c);
/* Drops the first n bytes of c->in. */
void al_conn_consume(al_conn *c, size_t n);
/* Re-evaluates read/write interest (after the protocol's wants_read changed). */
void al_conn_update(al_conn *c);
/* Draining: an idle kept-alive connection (or one that has sent nothing yet) is closed
 * only after AL_CONN_DRAIN_IDLE_MS more without a request (or its own limit, if
 * shorter), not at once: a request a client (a load balancer's pooled connection) sent
 * just before it could know is answered, with Connection: close, instead of being cut. */
#define AL_CONN_DRAIN_IDLE_MS 1000
void al_conn_drain_idle(al_conn *c);
/* Runs proto->on_read again at the end of this loop pass, after every other event of
 * the pass (pipelined input already buffered, h2 frames to send): the responses that
 * finished in one pass leave in one write. */
void al_conn_kick(al_conn *c);
/* The worker's ev_prepare runs the connections kicked so far (worker only). */
void al_conn_run_kicks(struct al_worker *w);
/* Close after flushing (graceful) or at once. The memory goes at the end of the event. */
void al_conn_close(al_conn *c, int flush_first);
/* Frees a dead connection (worker calls this). */
void al_conn_free(al_conn *c);

/* After the current protocol call returns: drop the protocol, switch the transport
 * to TLS with ctx (server side) and pick h2 or HTTP/1.1 by ALPN after the handshake.
 * intercept_host (may be NULL) is the CONNECT host: the leaf is issued for it. */
void al_conn_start_tls(al_conn *c, void *ssl_ctx, const char *intercept_host);

extern const al_transport al_transport_tcp;
extern const al_transport al_transport_tls;

#endif
