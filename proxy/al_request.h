/* al_request: the protocol-neutral request path shared by HTTP/1.1 and HTTP/2 —
 * addressing (forward proxy or gateway), header filtering, credential injection,
 * the egress guard, the upstream exchange, the response and the audit record.
 *
 * A protocol creates a request, sets its head (copied into the request's arena),
 * calls al_request_start(), feeds the body with al_request_body_write() while
 * al_request_body_room() allows, and receives the response through its al_req_sink.
 * The request body is held in a bounded ring (AL_REQ_BODY_BUF); when the upstream
 * takes bytes out, sink->body_consumed() tells the protocol it may read more (the
 * h2 flow-control window is consumed only then). The response body is offered with
 * sink->body(); AL_ERR_AGAIN pauses the upstream until al_request_resume_output().
 *
 * Lifetime: sink->end() is the last sink call. The protocol frees the request with
 * al_request_free() (also to abort one in flight: the upstream is cancelled), never
 * from inside a sink callback. Every request writes exactly one audit record. */
#ifndef AL_REQUEST_H
#define AL_REQUEST_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "al_upstream.h"

#define AL_REQ_BODY_BUF (64 * 1024)

struct al_worker;
typedef struct al_req al_req;

typedef struct al_req_sink {
    /* The response head; content_length -1 when unknown. Headers exclude hop-by-hop.
     * A refused CONNECT ends the list with the pseudo-header ":reason" (the refusal
     * code): HTTP/1.1 shows it in the reason phrase, others drop ':' names. */
    void (*head)(void *arg, int status, const al_header *h, size_t n, int64_t content_length);
    /* Response body bytes: 0 taken, AL_ERR_AGAIN to pause (offered again later). */
    int (*body)(void *arg, const char *data, size_t len);
    /* The end: ok 1 = complete response, 0 = aborted after the head (reset/close). */
    void (*end)(void *arg, int ok);
    /* n request-body bytes left the ring: room to read more. May be NULL. */
    void (*body_consumed)(void *arg, size_t n);
    /* Response trailers, before end(). May be NULL (they are dropped). */
    void (*trailers)(void *arg, const al_header *h, size_t n);
} al_req_sink;

/* Creates a request on worker w; `protocol` is "http/1.1" or "h2", `client` the
 * peer "ip:port" (copied). */
al_req *al_request_new(struct al_worker *w, const al_req_sink *sink, void *arg,
                       const char *protocol, const char *client);
void al_request_free(al_req *r);

/* The head, as the protocol saw it. For HTTP/1.1, `target` is the request target
 * (absolute-form or origin-form) and scheme/authority are NULL; for HTTP/2 they are
 * :scheme, :authority and :path. `implied_authority` (CONNECT tunnels) may be NULL. */
int al_request_set_head(al_req *r, const char *method, size_t method_len, const char *scheme,
                        size_t scheme_len, const char *authority, size_t authority_len,
                        const char *target, size_t target_len);
/* Inside an intercepted CONNECT tunnel: requests may only address host:port (the
 * CONNECT authority); another host -> 403 tunnel_host_mismatch. host is copied. */
int al_request_set_tunnel(al_req *r, const char *host, uint16_t port);
/* Records a request that ended without a response body of its own (a CONNECT that
 * was accepted): status for the audit, decision allow. No sink call. */
void al_request_note_done(al_req *r, int status);
/* The checked address ("ip", as the resolver wrote it) and port a blind tunnel
 * connects to, for the audit record's upstream_addr. */
void al_request_note_upstream(al_req *r, const char *addr, uint16_t port);
/* Bytes a blind tunnel carried, for the audit record. */
void al_request_note_bytes(al_req *r, uint64_t in, uint64_t out);
/* The route-only lookups CONNECT needs (the worker's current table). */
struct al_table;
struct al_table *al_request_table(const al_req *r);

/* HTTP/2 pseudo-headers, one at a time (copied into the arena). */
enum al_req_field { AL_REQ_METHOD, AL_REQ_SCHEME, AL_REQ_AUTHORITY, AL_REQ_PATH };
int al_request_set_field(al_req *r, enum al_req_field f, const char *v, size_t n);
/* 1 when the field has been set. */
int al_request_has_field(const al_req *r, enum al_req_field f);
/* Adds an agent header (copied). Cookie headers are joined with "; ". */
int al_request_add_header(al_req *r, const char *name, size_t name_len, const char *value,
                          size_t value_len);
/* The request is complete as far as its head; has_body / body_length (-1 unknown).
 * A refusal is answered through the sink before this returns. */
void al_request_start(al_req *r, int has_body, int64_t body_length);
/* Refuses the request with a JSON error before start (protocol-level errors). */
void al_request_refuse(al_req *r, int status, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

size_t al_request_body_room(const al_req *r);
/* Appends body bytes (len <= room). AL_ERR_TOOBIG past limits.max_body_bytes (the
 * request is then answered 413). */
int al_request_body_write(al_req *r, const char *data, size_t len);
void al_request_body_end(al_req *r);
/* The downstream can take more response bytes. */
void al_request_resume_output(al_req *r);
/* 1 once sink->end has been called. */
int al_request_finished(const al_req *r);
/* The status sent (0 before the head). */
int al_request_status(const al_req *r);

#endif
