/* al_fetch: the control plane's HTTP client — one thread with its own libcurl multi
 * handle that runs the requests airlock makes for itself (OpenID discovery, JWKS,
 * OAuth token requests), so no worker loop ever waits on an identity provider.
 *
 * Used through al_oidc.h (discovery / JWKS documents) and al_token.h (tokens); call
 * it directly only for a new kind of control-plane request.
 *
 * Rules every request follows (al_fetch_opts):
 *  - https only, verified against the system CAs, or against `ca_file` alone when
 *    given; http only with allow_insecure (the caller warns); no redirects, no proxy
 *    from the environment, no other protocol;
 *  - the egress guard: each address curl is about to connect to is checked with the
 *    guard set by al_fetch_set_guard() (serve installs upstream/al_egress's classifier);
 *    a refused address fails the request with AL_ERR_EGRESS unless
 *    allow_private_network. Without a guard, only allow_private_network requests may
 *    connect (fail closed);
 *  - bounded: the answer body is capped (max_body, default 1 MiB: AL_ERR_TOOBIG), the
 *    whole exchange has a deadline (timeout_ms, default 10 s: AL_ERR_TIMEOUT).
 *
 * Threading: al_fetch_start() may be called from any thread; the callback runs on the
 * fetch thread, exactly once, unless al_fetch_cancel() removed it first. After
 * al_fetch_cancel() returns, the callback is not running and will not run. A callback
 * may start new requests; it must not call al_fetch_free(). */
#ifndef AL_FETCH_H
#define AL_FETCH_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

typedef struct al_fetch al_fetch;

typedef struct al_fetch_opts {
    const char *ca_file;       /* NULL = system CAs */
    int allow_insecure;        /* http:// allowed */
    int allow_private_network; /* skip the egress guard */
    long timeout_ms;           /* 0 = 10000 */
    size_t max_body;           /* 0 = 1 MiB */
} al_fetch_opts;

typedef struct al_fetch_request {
    const char *url;
    /* POST with this body (application/x-www-form-urlencoded) when non-NULL, else GET.
     * Copied, and wiped after the request (it may hold a client secret). */
    const char *form;
    size_t form_len;
    /* HTTP basic credentials (client_secret_basic) or NULL: "user:password" as the
     * header value before base64. Copied and wiped. */
    const char *basic_auth;
    const char *accept; /* NULL = application/json */
} al_fetch_request;

typedef struct al_fetch_response {
    int err;          /* AL_OK when an HTTP answer arrived (any status) */
    long status;      /* HTTP status, 0 without an answer */
    const char *body; /* NUL-terminated, may be empty */
    size_t body_len;
    long max_age_s; /* Cache-Control max-age, -1 when absent */
    int no_store;   /* Cache-Control no-store / no-cache */
    int64_t elapsed_ms;
    const char *errmsg; /* err != AL_OK: what failed (curl's text, the refused address) */
    const char *host;   /* the URL's host */
} al_fetch_response;

typedef void (*al_fetch_cb)(void *arg, const al_fetch_response *res);

/* Address guard: returns 1 when the address may be connected to. */
typedef int (*al_fetch_guard_fn)(const struct sockaddr *sa, void *arg);

int al_fetch_new(al_fetch **out);
/* Stops the thread; requests in flight are dropped without their callbacks (their
 * owners free what they passed as `arg`). Idempotent; al_fetch_free() stops too. */
void al_fetch_stop(al_fetch *f);
void al_fetch_free(al_fetch *f);
void al_fetch_set_guard(al_fetch *f, al_fetch_guard_fn guard, void *arg);

/* Checks the URL against opts (scheme rules) without fetching: AL_ERR_INVAL with a
 * sentence in errbuf when it is not https (or http with allow_insecure). */
int al_fetch_check_url(const char *url, const al_fetch_opts *opts, char *errbuf, size_t errlen);

/* Queues a request. Returns AL_OK and *id (for cancel), or an error at once (bad URL:
 * AL_ERR_INVAL, message in errbuf). */
int al_fetch_start(al_fetch *f, const al_fetch_request *req, const al_fetch_opts *opts,
                   al_fetch_cb cb, void *arg, uint64_t *id, char *errbuf, size_t errlen);
/* Returns 1 if removed before its callback, 0 otherwise (already called, or running on
 * another thread: then it waits until that call has returned). */
int al_fetch_cancel(al_fetch *f, uint64_t id);

/* Runs one request and waits for its answer (the CLI, tests, start-up). Never on a
 * worker loop. res fields point into *buf_out (free with free()). */
int al_fetch_wait(al_fetch *f, const al_fetch_request *req, const al_fetch_opts *opts,
                  al_fetch_response *res, char **buf_out);

#endif
