/* al_auth: outbound authentication — how airlock puts a target's credential on the
 * request it sends upstream. One injector per auth method, looked up by
 * al_auth_injector_for(target->auth.method); the data path never switches on a
 * method name.
 *
 * An injector is an engine without I/O. Before the request goes, the data path
 *   1. asks needs(t): what must be ready first (AL_AUTH_NEEDS_* flags: a credential,
 *      the body's SHA-256, ...); the credential stage and the body spool provide it;
 *   2. builds the outgoing request (al_auth_req: method, scheme, authority, path,
 *      query, the headers that will go, the time, the body digest when asked for);
 *   3. calls prepare(t, req, secret, out): the injector adds the headers it sets
 *      (several if it needs: SigV4 sets Authorization, X-Amz-Date,
 *      X-Amz-Content-Sha256, X-Amz-Security-Token) and may rewrite the request
 *      target (api_key in the query). An agent header with the same name as one the
 *      injector set is dropped; drops_header() drops more (the agent's own
 *      credential).
 *
 * Secrets: every value buffer in al_auth_out holds secret bytes; al_auth_out_free()
 * wipes them. Injectors reserve a value's whole size before copying the first secret
 * byte (al_auth_reserve), so al_buf never leaves a partial copy in freed memory.
 * Nothing here logs.
 *
 * Adding a method: a file auth/al_auth_<method>.c that defines a const
 * al_auth_injector, declared below, and one row in the table of al_auth.c. */
#ifndef AL_AUTH_H
#define AL_AUTH_H

#include <stddef.h>
#include <stdint.h>

#include "common/al_buf.h"
#include "common/al_http.h"
#include "common/al_secret.h"
#include "targets/al_table.h"

/* What an injector needs before prepare() can run. */
enum {
    AL_AUTH_NEEDS_CREDENTIAL = 1u << 0,  /* a secret from the credential stage */
    AL_AUTH_NEEDS_BODY_SHA256 = 1u << 1, /* req->body_sha256 (the body is spooled first) */
};

/* The outgoing request as the injector sees it (all borrowed for the call). */
typedef struct al_auth_req {
    const char *method;
    const char *scheme;    /* "http" or "https" (the target's) */
    const char *host;      /* the upstream host (the target's), as in Host */
    uint16_t port;         /* its port */
    const char *target;    /* "path[?query]" as it will be sent (before any rewrite) */
    size_t target_len;
    const char *path;      /* its path, no query ("/v1/items"): a prefix of target */
    size_t path_len;
    const char *query;     /* after the '?' (inside target), NULL when there is none */
    size_t query_len;
    const al_header *headers; /* the headers that will go (filtered, before ours) */
    size_t header_count;
    int64_t now_ms;        /* wall clock, ms since the epoch (SigV4's X-Amz-Date) */
    int64_t body_length;   /* -1 unknown, 0 none */
    /* AL_AUTH_NEEDS_BODY_SHA256: the 32-byte SHA-256 of the whole body (of "" when
     * there is none); NULL when the injector did not ask for it. */
    const unsigned char *body_sha256;
} al_auth_req;

#define AL_AUTH_MAX_HEADERS 6

/* What prepare() sets. name[i] is a literal or lives as long as the table snapshot;
 * value[i] holds the value (secret: wiped). target: the rewritten request target
 * "path?query", empty when it is sent unchanged. */
typedef struct al_auth_out {
    const char *name[AL_AUTH_MAX_HEADERS];
    size_t name_len[AL_AUTH_MAX_HEADERS];
    al_buf value[AL_AUTH_MAX_HEADERS]; /* [0, count) are set up */
    size_t count;
    size_t value_max; /* a value's limit; 0 = 16 KiB */
    al_buf target;
} al_auth_out;

void al_auth_out_init(al_auth_out *o);
/* Wipes and frees every buffer; o can be reused after al_auth_out_init. */
void al_auth_out_free(al_auth_out *o);
/* A new header `name` (borrowed) to set; returns its empty value buffer, NULL when
 * AL_AUTH_MAX_HEADERS are set. */
al_buf *al_auth_out_add(al_auth_out *o, const char *name);
/* 1 when o sets header name[0..len) (any case). */
int al_auth_out_sets(const al_auth_out *o, const char *name, size_t len);

typedef struct al_auth_injector {
    enum al_auth_method method;
    const char *name; /* as in YAML: "api_key", ... */

    /* AL_AUTH_NEEDS_* for a request to t. */
    unsigned (*needs)(const al_target *t);

    /* Adds what the method sets to `out` (see al_auth_out). s is the credential
     * (NULL when needs() did not ask for one). AL_ERR_INVAL when the credential
     * holds bytes that cannot be sent (CR, LF, NUL in a header value...),
     * AL_ERR_TOOBIG when a buffer's limit is too small. On error, out is left for
     * the caller to free. */
    int (*prepare)(const al_target *t, const al_auth_req *req, const al_secret_view *s,
                   al_auth_out *out);

    /* 1 when the agent's header `name` must not reach the upstream because this
     * method owns it; may be NULL. (Headers prepare() sets are dropped anyway.) */
    int (*drops_header)(const al_target *t, const char *name, size_t len);
} al_auth_injector;

/* The injector for method m, or NULL when that method is not built yet. */
const al_auth_injector *al_auth_injector_for(enum al_auth_method m);

/* 1 when the agent's request header `name` (len bytes, any case) must be dropped
 * before the request goes upstream: hop-by-hop headers (common/al_http's list plus
 * Proxy-Authorization, Proxy-Authenticate, Trailer, HTTP2-Settings), Authorization
 * whenever the target injects auth, and whatever the target's injector drops. The
 * names listed inside a Connection header are the caller's job. t may be NULL
 * (hop-by-hop only). */
int al_auth_drop_request_header(const al_target *t, const char *name, size_t len);

/* Grows b so that `total` bytes fit without another reallocation (before copying a
 * secret into it). */
int al_auth_reserve(al_buf *b, size_t total);

/* Appends the RFC 3986 percent-encoding of p[0..n) to b (unreserved characters
 * kept, everything else %XX). */
int al_auth_percent_encode(al_buf *b, const unsigned char *p, size_t n);

/* ---- api_key (al_auth_api_key.c) ---- */
extern const al_auth_injector al_auth_api_key_injector;
/* Its two parts, for tests: the header value (out->count 0 for a key in the query)
 * and the rewritten request target (empty for a key in a header). */
int al_auth_api_key_header(const al_target *t, const al_secret_view *s, al_auth_out *out);
int al_auth_api_key_target(const al_target *t, const al_secret_view *s, const char *target,
                           size_t len, al_buf *out);

/* ---- oauth2_2lo (al_auth_oauth2.c): Authorization: Bearer <token> ---- */
extern const al_auth_injector al_auth_oauth2_injector;

/* ---- iam: AWS SigV4 (al_auth_sigv4.c) ---- */
extern const al_auth_injector al_auth_sigv4_injector;
/* The access key id of an `aws` credential (config_json's accessKeyId) as a view
 * into it; AL_ERR_INVAL when there is none. */
int al_auth_sigv4_access_key(const al_secret_view *s, const char **p, size_t *n);

#endif
