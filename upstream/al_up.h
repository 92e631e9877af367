/* al_up: the upstream contract — what the request pipeline (proxy/al_request) hands
 * an upstream engine and what it hears back, whichever engine runs the request:
 * libcurl's (proxy/al_upstream.h) or airlock's own (upstream/al_up_engine.h).
 *
 * A request is described by al_upstream_opts (method, the URL's parts, headers
 * already filtered and with the credential injected, the checked address to connect
 * to) and answered through al_upstream_cbs. Bodies stream both ways: the request
 * body is pulled through read_body() as the agent sends it and response bytes are
 * pushed through on_body(); either side returns AL_ERR_AGAIN to pause and the
 * engine's resume_send / resume_recv goes on, so each engine holds only a bounded
 * buffer per direction.
 *
 * Threading: everything runs on the worker's loop thread; nothing here locks. */
#ifndef AL_UP_H
#define AL_UP_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "common/al_http.h"

/* Why a request failed before or while talking to the upstream; the data path maps
 * these to 502/504 JSON errors. */
enum al_upstream_error {
    AL_UPSTREAM_OK = 0,
    AL_UPSTREAM_CONNECT, /* refused / unreachable -> 502 upstream_connect_failed */
    AL_UPSTREAM_TLS,     /* handshake or certificate verification -> 502 upstream_tls_failed */
    AL_UPSTREAM_TIMEOUT_CONNECT,    /* -> 504 upstream_connect_timeout */
    AL_UPSTREAM_TIMEOUT_FIRST_BYTE, /* -> 504 upstream_timeout */
    AL_UPSTREAM_TIMEOUT_IDLE,       /* -> 504 upstream_timeout (or abort if headers already sent) */
    AL_UPSTREAM_RESET,          /* connection reset / malformed response -> 502 upstream_reset */
    AL_UPSTREAM_BAD_FRAMING,    /* ambiguous body framing in the response head (two
                                   Content-Length values, Content-Length with
                                   Transfer-Encoding, ...) -> 502 upstream_bad_framing; the
                                   connection is closed, never reused */
    AL_UPSTREAM_ABORTED,        /* cancelled by the caller */
    AL_UPSTREAM_TIMEOUT_CLIENT, /* the agent stalled (sent or read nothing) for idle_timeout_ms
                                   -> 408 client_timeout, or abort after the head */
    AL_UPSTREAM_BUSY,           /* no upstream slot within queue_timeout_ms -> 503 upstream_busy */
    AL_UPSTREAM_CLIENT_LIMIT,   /* the client held max_per_client slots for queue_timeout_ms
                                   -> 503 client_over_limit */
};

typedef struct al_upstream_opts {
    const char *method;       /* NUL-terminated */
    const char *scheme;       /* "http" or "https" */
    const char *path;         /* origin-form path[?query], NUL-terminated, already checked
                                 (common/al_reqtarget); sent as is */
    const al_header *headers; /* request headers to send (no hop-by-hop, no Host/:authority:
                                 the engine derives Host from connect_host/connect_port) */
    size_t header_count;
    const char *connect_host; /* the target's host: the URL's host, the Host header, the TLS
                                 name (SNI and certificate check) */
    uint16_t connect_port;    /* the URL's port; the socket must connect to it */
    const char *connect_addr; /* the checked address to connect to (egress guard), text form;
                                 the engine connects there and nowhere else (no second
                                 lookup) */
    int allow_private;        /* re-checked on the socket the engine opens (defence in depth) */
    const char *ca_file;      /* NULL = system CAs; verification is always on */
    int has_body;             /* 1 if the agent sends a body (read_body is called) */
    int64_t body_length;      /* -1 = unknown (chunked upstream / h2 DATA), else exact */
    uint32_t connect_timeout_ms, first_byte_timeout_ms, idle_timeout_ms;
    /* Fairness (per worker and upstream host): the client's address (NULL = not
     * counted), at most max_per_client of its transfers at once (0 = no cap); a
     * request waits at most queue_timeout_ms (0 = no limit) for a slot. */
    const char *client;
    uint32_t max_per_client, queue_timeout_ms;
    int protocol; /* AL_UP_PROTO_*: the target's upstream.protocol (native engine only) */
} al_upstream_opts;

/* HTTP version towards the upstream (targets[].upstream.protocol, same values as the
 * table's AL_UPSTREAM_PROTO_*): auto = ALPN offers h2 and http/1.1 over TLS, HTTP/1.1
 * on http://; h1 = HTTP/1.1 only; h2 = HTTP/2 only (h2c with prior knowledge on
 * http://). */
enum { AL_UP_PROTO_AUTO = 0, AL_UP_PROTO_H1 = 1, AL_UP_PROTO_H2 = 2 };

typedef struct al_upstream_cbs {
    /* Response head. Headers exclude hop-by-hop ones and HTTP/2 pseudo headers. */
    void (*on_head)(void *arg, int status, const al_header *headers, size_t count);
    /* Response body bytes. Return 0 to accept them all, or AL_ERR_AGAIN to pause
     * (the same bytes are offered again after resume_recv). */
    int (*on_body)(void *arg, const char *data, size_t len);
    /* Response trailers (may not be called). */
    void (*on_trailers)(void *arg, const al_header *headers, size_t count);
    /* Request body: copy up to cap bytes into buf; return the count, 0 at end of
     * body, or AL_ERR_AGAIN to pause until resume_send. */
    ssize_t (*read_body)(void *arg, char *buf, size_t cap);
    /* The end, exactly once (also after a failure; a cancel is NOT reported:
     * cancel is silent). After on_done the req is freed by its engine. */
    void (*on_done)(void *arg, enum al_upstream_error err, const char *detail);
    /* An interim (1xx) response before the head: 103 Early Hints, 102 Processing
     * (not 100 Continue, which airlock answers itself, nor 101). May be NULL; the
     * libcurl engine never calls it (curl consumes interim responses). */
    void (*on_interim)(void *arg, int status, const al_header *headers, size_t count);
} al_upstream_cbs;

#endif
