/* al_up_h2: the HTTP/2 client codec of airlock's upstream engine — one upstream
 * connection's HTTP/2 session, without I/O.
 *
 * An nghttp2 client session wrapped the way the upstream engine needs it: the owner
 * (the connection layer) feeds the bytes it read with al_up_h2_recv() and writes
 * what al_up_h2_send() hands out; requests are streams submitted with
 * al_up_h2_submit() and answered through per-stream callbacks that mirror
 * proxy/al_upstream.h's al_upstream_cbs (head, body, trailers, request body, done).
 *
 * What it adds to nghttp2:
 *  - flow control tied to the consumer: the connection window is given back as bytes
 *    arrive, a stream's window only when its consumer took them (on_body returned 0),
 *    so a paused stream holds at most its own window (stream_window) in its buffer and
 *    never stalls the others (NGHTTP2_OPT_NO_AUTO_WINDOW_UPDATE);
 *  - the peer's SETTINGS_MAX_CONCURRENT_STREAMS respected: requests above it wait in
 *    a queue of the session (FIFO) and start as streams close;
 *  - GOAWAY: streams above the peer's last_stream_id, and queued requests, end with
 *    AL_UP_H2_REFUSED ("not processed, safe to replay on another connection"); no new
 *    request is accepted (al_up_h2_can_submit() turns 0), the others finish;
 *  - an RST_STREAM from the peer ends the stream with AL_UP_H2_RESET (REFUSED_STREAM
 *    before any response byte: AL_UP_H2_REFUSED); a malformed response (missing or bad
 *    :status, a connection-specific header, content-length not matching the DATA,
 *    another pseudo-header, a head over max_header_bytes) resets the stream with
 *    PROTOCOL_ERROR and ends it with AL_UP_H2_MALFORMED; the other streams go on.
 *
 * Re-entrancy: the callbacks run inside al_up_h2_recv / al_up_h2_send / al_up_h2_run.
 * From a callback the consumer may call al_up_h2_submit, _cancel, _resume_recv and
 * _resume_send (they only record and ask for a wake-up), never _recv, _send, _run,
 * _fail or _free. The wake callback asks the owner to call al_up_h2_run() and then
 * drain al_up_h2_send() soon, from its loop (a zero-delay timer), outside every
 * callback chain. A stream is freed by the codec after on_done (or a cancel), never
 * while one of its own callbacks is on the stack.
 *
 * Secrets: request header values are copied into the stream and wiped when it is
 * freed; headers that usually carry credentials (authorization, cookie, and names
 * containing "key", "token", "secret" or "auth") are sent never-indexed, so they do
 * not stay in the HPACK dynamic table after the request.
 *
 * Threading: one session belongs to one worker's loop; nothing here locks. */
#ifndef AL_UP_H2_H
#define AL_UP_H2_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "common/al_http.h"

typedef struct al_up_h2 al_up_h2;
typedef struct al_up_h2_stream al_up_h2_stream;

/* How a stream ended (on_done). */
enum al_up_h2_end {
    AL_UP_H2_DONE = 0,  /* the whole response arrived and was delivered */
    AL_UP_H2_REFUSED,   /* the upstream did not process it (GOAWAY above its
                           last_stream_id, REFUSED_STREAM before any response, or the
                           request never left): safe to replay on another connection
                           if the request body can be sent again */
    AL_UP_H2_RESET,     /* the upstream reset the stream (detail names the code) */
    AL_UP_H2_MALFORMED, /* the response broke HTTP/2 or HTTP semantics; the stream was
                           reset with PROTOCOL_ERROR -> 502 */
    AL_UP_H2_CONN_LOST, /* the connection failed after the request was sent */
    AL_UP_H2_LOCAL,     /* airlock's side failed (allocation, read_body error) */
};

/* Static text for an al_up_h2_end; never NULL. */
const char *al_up_h2_end_str(enum al_up_h2_end e);

/* The most response body bytes one on_body call offers (an HTTP/2 DATA frame's
 * default maximum, what consumers size their buffers for). */
#define AL_UP_H2_MAX_CHUNK 16384

typedef struct al_up_h2_cbs {
    /* 1xx interim response (not 101); may be NULL. */
    void (*on_info)(void *arg, int status, const al_header *h, size_t n);
    /* The final response head (status 200..599, headers without pseudo-headers,
     * names lower case as HTTP/2 sends them); valid during the call. */
    void (*on_head)(void *arg, int status, const al_header *h, size_t n);
    /* Response body bytes, at most AL_UP_H2_MAX_CHUNK at once: return 0 when taken,
     * AL_ERR_AGAIN to pause (the same bytes are offered again after
     * al_up_h2_resume_recv). */
    int (*on_body)(void *arg, const char *data, size_t len);
    /* Response trailers; may be NULL (then dropped). */
    void (*on_trailers)(void *arg, const al_header *h, size_t n);
    /* Request body (only when the request has one): copy up to cap bytes to buf and
     * return the count, 0 at its end, AL_ERR_AGAIN to pause until
     * al_up_h2_resume_send, another negative al_err to give up (AL_UP_H2_LOCAL). */
    ssize_t (*read_body)(void *arg, char *buf, size_t cap);
    /* Exactly once per stream not cancelled; h2_code is the RST_STREAM/GOAWAY error
     * code when there was one; detail a static sentence. The stream handle is
     * invalid once this returns. */
    void (*on_done)(void *arg, enum al_up_h2_end end, uint32_t h2_code, const char *detail);
} al_up_h2_cbs;

typedef struct al_up_h2_config {
    uint32_t max_concurrent_streams; /* our own cap per connection; 0 = the peer's */
    uint32_t stream_window;          /* receive window per stream; 0 = 256 KiB */
    uint32_t connection_window;      /* receive window of the connection; 0 = 16 MiB */
    uint32_t max_header_bytes;       /* per response head or trailer block; 0 = 64 KiB */
    uint32_t max_queued;             /* requests waiting for a stream slot; 0 = 4096 */
} al_up_h2_config;

/* A request; everything is copied by al_up_h2_submit. */
typedef struct al_up_h2_req {
    const char *method, *scheme, *authority, *path; /* NUL-terminated, non-empty */
    const al_header *headers; /* hop-by-hop and Host are dropped; names lower-cased */
    size_t header_count;
    int has_body;        /* read_body is called */
    int64_t body_length; /* >= 0: sent as content-length; -1 unknown */
} al_up_h2_req;

/* wake(arg): call al_up_h2_run and drain al_up_h2_send soon, from the loop.
 * cfg may be NULL (defaults). The client preface and SETTINGS are queued at once. */
int al_up_h2_new(const al_up_h2_config *cfg, void (*wake)(void *arg), void *arg, al_up_h2 **out);
/* Ends every stream not yet ended (al_up_h2_fail(h, NULL) first if you want their
 * on_done), then frees. */
void al_up_h2_free(al_up_h2 *h);

/* Bytes read from the upstream: returns how many were used (all, on success), or
 * AL_ERR_PROTO when the session failed (send what al_up_h2_send still has — a GOAWAY —
 * then al_up_h2_fail). */
ssize_t al_up_h2_recv(al_up_h2 *h, const uint8_t *in, size_t len);
/* The next bytes to write (*out valid until the next call into the session): > 0 the
 * count, 0 nothing to send now, AL_ERR_PROTO when the session failed. Starts queued
 * requests and pulls request bodies as it goes. */
ssize_t al_up_h2_send(al_up_h2 *h, const uint8_t **out);
/* Delivers what resumed consumers can take now, starts queued requests and frees
 * ended streams. */
void al_up_h2_run(al_up_h2 *h);
/* The connection is gone (EOF, error, timeout): every stream not yet ended ends —
 * AL_UP_H2_REFUSED when its request never left, else AL_UP_H2_CONN_LOST. */
void al_up_h2_fail(al_up_h2 *h, const char *detail);

/* Queues a request (started now if a stream slot is free). Returns AL_OK with *out
 * (valid until on_done or al_up_h2_cancel), AL_ERR_AGAIN when the session takes no new
 * requests (GOAWAY, ids exhausted, failed, queue full: use another connection),
 * AL_ERR_INVAL for a header name or value HTTP/2 cannot carry, AL_ERR_NOMEM. Calls
 * nothing back before returning. */
int al_up_h2_submit(al_up_h2 *h, const al_up_h2_req *req, const al_up_h2_cbs *cbs, void *arg,
                    al_up_h2_stream **out);
/* No more callbacks for this stream; resets it (CANCEL) if it started. */
void al_up_h2_cancel(al_up_h2_stream *s);
void al_up_h2_resume_recv(al_up_h2_stream *s); /* the consumer can take more */
void al_up_h2_resume_send(al_up_h2_stream *s); /* more request body is ready */

/* 1 while new requests are accepted (no GOAWAY either way, not failed). */
int al_up_h2_can_submit(const al_up_h2 *h);
/* 1 while the session has something to do or wait for (nghttp2 wants to read or
 * write); 0 once it ended (after a GOAWAY both ways, or a fatal error). */
int al_up_h2_alive(const al_up_h2 *h);
/* 1 when bytes are waiting for al_up_h2_send. */
int al_up_h2_want_write(const al_up_h2 *h);
/* Streams started and not closed / requests waiting for a slot. */
size_t al_up_h2_active(const al_up_h2 *h);
size_t al_up_h2_queued(const al_up_h2 *h);
/* Peer's SETTINGS_MAX_CONCURRENT_STREAMS as in effect (100 until its SETTINGS came). */
uint32_t al_up_h2_peer_max_streams(const al_up_h2 *h);
/* Graceful close: GOAWAY to the upstream, no new requests; the streams finish. */
void al_up_h2_shutdown(al_up_h2 *h);

#endif
