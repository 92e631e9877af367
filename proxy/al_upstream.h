/* al_upstream: the upstream client — one request to an upstream over libcurl's
 * multi interface, driven by the worker's libev loop, streamed both ways.
 *
 * Each worker owns one al_upstream_pool (a CURLM with its connection cache, so
 * connections to an upstream are reused per worker; HTTP/2 is used with upstreams
 * that offer it over TLS). A request is an al_upstream_req: the caller hands over
 * the method, the URL's parts (scheme, host, port, path: the URL is assembled with
 * libcurl's CURLU part by part, never re-parsed from a string), headers (already filtered and with the credential injected),
 * the checked address to connect to, and callbacks. Bodies stream: the request
 * body is pulled through read_body() as the agent sends it, and response bytes are
 * pushed through on_body() as they arrive; either side returns AL_ERR_AGAIN to
 * pause and calls al_upstream_resume_*() when it can go on, so at most one curl
 * buffer (CURL_MAX_WRITE_SIZE, 16 KiB) plus the caller's own bounded buffer is
 * held per direction.
 *
 * Threading: everything runs on the worker's loop thread; nothing here locks. */
#ifndef AL_UPSTREAM_H
#define AL_UPSTREAM_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "common/al_http.h"

struct ev_loop;
typedef struct al_upstream_pool al_upstream_pool;
typedef struct al_upstream_req al_upstream_req;

/* Why a request failed before or while talking to the upstream; the data path maps
 * these to 502/504 JSON errors. */
enum al_upstream_error {
    AL_UPSTREAM_OK = 0,
    AL_UPSTREAM_CONNECT,           /* refused / unreachable -> 502 upstream_connect_failed */
    AL_UPSTREAM_TLS,               /* handshake or certificate verification -> 502 upstream_tls_failed */
    AL_UPSTREAM_TIMEOUT_CONNECT,   /* -> 504 upstream_connect_timeout */
    AL_UPSTREAM_TIMEOUT_FIRST_BYTE,/* -> 504 upstream_timeout */
    AL_UPSTREAM_TIMEOUT_IDLE,      /* -> 504 upstream_timeout (or abort if headers already sent) */
    AL_UPSTREAM_RESET,             /* connection reset / malformed response -> 502 upstream_reset */
    AL_UPSTREAM_BAD_FRAMING,       /* ambiguous body framing in the response head (two
                                      Content-Length values, Content-Length with
                                      Transfer-Encoding, ...) -> 502 upstream_bad_framing; the
                                      connection is closed, never reused */
    AL_UPSTREAM_ABORTED,           /* cancelled by the caller */
    AL_UPSTREAM_TIMEOUT_CLIENT,    /* the agent stalled (sent or read nothing) for idle_timeout_ms
                                      -> 408 client_timeout, or abort after the head */
    AL_UPSTREAM_BUSY,              /* no upstream slot within queue_timeout_ms -> 503 upstream_busy */
    AL_UPSTREAM_CLIENT_LIMIT,      /* the client held max_per_client slots for queue_timeout_ms
                                      -> 503 client_over_limit */
};

typedef struct al_upstream_opts {
    const char *method;            /* NUL-terminated */
    const char *scheme;            /* "http" or "https" */
    const char *path;              /* origin-form path[?query], NUL-terminated, already checked
                                      (common/al_reqtarget); sent as is */
    const al_header *headers;      /* request headers to send (no hop-by-hop, no Host/:authority:
                                      curl derives Host from the URL) */
    size_t header_count;
    const char *connect_host;      /* the target's host: the URL's host, the Host header, the TLS
                                      name (SNI and certificate check) */
    uint16_t connect_port;         /* the URL's port; the socket must connect to it */
    const char *connect_addr;      /* the checked address to connect to (egress guard), text form;
                                      pinned with CURLOPT_RESOLVE so there is no second lookup */
    int allow_private;             /* re-checked on the socket curl opens (defence in depth) */
    const char *ca_file;           /* NULL = system CAs; verification is always on */
    int has_body;                  /* 1 if the agent sends a body (read_body is called) */
    int64_t body_length;           /* -1 = unknown (chunked upstream / h2 DATA), else exact */
    uint32_t connect_timeout_ms, first_byte_timeout_ms, idle_timeout_ms;
    /* Fairness (per worker and upstream host): the client's address (NULL = not
     * counted), at most max_per_client of its transfers at once (0 = no cap); a
     * request waits at most queue_timeout_ms (0 = no limit) for a slot. */
    const char *client;
    uint32_t max_per_client, queue_timeout_ms;
} al_upstream_opts;

typedef struct al_upstream_cbs {
    /* Response head. Headers exclude hop-by-hop ones and HTTP/2 pseudo headers.
     * 1xx interim responses are not reported (curl consumes them). */
    void (*on_head)(void *arg, int status, const al_header *headers, size_t count);
    /* Response body bytes. Return 0 to accept them all, or AL_ERR_AGAIN to pause
     * (the same bytes are offered again after al_upstream_resume_recv). */
    int (*on_body)(void *arg, const char *data, size_t len);
    /* Response trailers (may not be called). */
    void (*on_trailers)(void *arg, const al_header *headers, size_t count);
    /* Request body: copy up to cap bytes into buf; return the count, 0 at end of
     * body, or AL_ERR_AGAIN to pause until al_upstream_resume_send. */
    ssize_t (*read_body)(void *arg, char *buf, size_t cap);
    /* The end, exactly once (also after a failure or cancel is NOT reported:
     * al_upstream_cancel is silent). After on_done the req is freed by al_upstream. */
    void (*on_done)(void *arg, enum al_upstream_error err, const char *detail);
} al_upstream_cbs;

int al_upstream_pool_new(struct ev_loop *loop, al_upstream_pool **out);
void al_upstream_pool_free(al_upstream_pool *p); /* cancels whatever is in flight */

/* Starts a request; the strings in opts are copied. Returns AL_OK with *out set
 * (owned by the pool until on_done), or a negative al_err without calling anything. */
int al_upstream_start(al_upstream_pool *p, const al_upstream_opts *opts, const al_upstream_cbs *cbs,
                      void *arg, al_upstream_req **out);
/* Per worker and upstream host: transfers in curl at once (the rest wait). */
#define AL_UPSTREAM_MAX_HOST_CONNECTIONS 128
void al_upstream_resume_send(al_upstream_req *r); /* more request body is ready */
void al_upstream_resume_recv(al_upstream_req *r); /* the agent can take more */
void al_upstream_cancel(al_upstream_req *r);      /* no more callbacks; frees r */

/* 1 if HTTP/2 streams to one upstream share a connection with this libcurl; 0 when
 * each HTTP/2 connection carries one stream at a time (libcurl older than 8.14,
 * whose pause of one multiplexed stream stalls the others). */
int al_upstream_multiplexes(void);

/* Milliseconds from start to the first response byte (for audit); 0 if none yet. */
uint32_t al_upstream_elapsed_ms(const al_upstream_req *r);

#endif
