/* al_up_engine: airlock's own upstream engine — one per worker, on the worker's libev
 * loop, behind the same contract as the libcurl engine (upstream/al_up.h: the
 * request pipeline plugs either in through al_req_upstream_ops).
 *
 * Layers, each with a narrow header:
 *   transport  al_up_tls.h: a non-blocking socket, plain or OpenSSL TLS (ALPN, SNI,
 *              verification, session resumption per host);
 *   codec      al_up_h1.h: HTTP/1.1 request heads and response parsing, free of I/O;
 *              al_up_h2.h: HTTP/2 on nghttp2's client session, free of I/O; one
 *              connection per host carries many requests (ALPN h2);
 *   engine     this file: the connection pool keyed by (address, port, TLS name,
 *              ca_file) with a per-host limit and idle expiry, admission (per-host
 *              slots, per-client cap, queue timeout), timeouts, and the requests.
 *
 * Guarantees (the contract's, see al_up.h): the socket connects to opts->connect_addr
 * and connect_port only, and the guard installed with al_up_engine_set_guard is asked
 * about that address again unless allow_private (defence in depth); TLS always
 * verifies; a response with ambiguous framing ends AL_UPSTREAM_BAD_FRAMING and its
 * connection is closed; a pooled connection the upstream closed is found before reuse,
 * and a request is sent again at most once, only when none of it was sent or it is
 * idempotent without a body (HTTP/2: a stream the upstream did not process — GOAWAY
 * above its last stream, REFUSED_STREAM — goes again on another connection, at most 3
 * times, when none of its body was read); memory per request is bounded (a 16 KiB read
 * buffer, 64 KiB more once a large response body streams, a 16 KiB body buffer, the head; HTTP/2: the stream's receive window, 256 KiB,
 * while its agent does not read). */
#ifndef AL_UP_ENGINE_H
#define AL_UP_ENGINE_H

#include <stdint.h>
#include <sys/socket.h>

#include "al_up.h"

struct ev_loop;
typedef struct al_up_engine al_up_engine;
typedef struct al_up_req al_up_req;

/* Per worker and host: requests in flight at once (each holds one HTTP/1.1
 * connection); the rest wait in order. */
#define AL_UP_MAX_HOST_CONNECTIONS 128
#define AL_UP_MAX_IDLE_PER_HOST    64
/* Per worker and host speaking HTTP/2: requests in flight at once (streams, most on one
 * connection; the peer's SETTINGS_MAX_CONCURRENT_STREAMS queues the excess there). */
#define AL_UP_MAX_HOST_STREAMS 1024
/* on_body gets at most this many bytes at once (a large HTTP/1.1 body is read in pieces
 * of this size; the downstream's per-stream buffers are sized for it). */
#define AL_UP_MAX_BODY_CHUNK (64 * 1024)
#define AL_UP_IDLE_EXPIRY_MS       30000

int al_up_engine_new(struct ev_loop *loop, al_up_engine **out);
void al_up_engine_free(al_up_engine *e); /* cancels whatever is in flight, silently */

/* The egress guard asked about every address before connecting (unless the request
 * allows private addresses): NULL = allowed, else the refused class's name. */
typedef const char *(*al_up_guard_fn)(const struct sockaddr *sa, void *arg);
void al_up_engine_set_guard(al_up_engine *e, al_up_guard_fn fn, void *arg);

/* As al_upstream_start: AL_OK with *out (the engine's until on_done), or a negative
 * al_err without any callback. Callbacks never run inside this call. */
int al_up_start(al_up_engine *e, const al_upstream_opts *o, const al_upstream_cbs *cbs, void *arg,
                al_up_req **out);
void al_up_resume_send(al_up_req *r);
void al_up_resume_recv(al_up_req *r);
void al_up_cancel(al_up_req *r); /* no more callbacks; frees r */
uint32_t al_up_elapsed_ms(const al_up_req *r);

/* Counters for tests and metrics. */
typedef struct al_up_stats {
    uint64_t connects, reuses, retries, idle_closed;
} al_up_stats;
void al_up_engine_stats(const al_up_engine *e, al_up_stats *out);

#endif
