/* al_request: the protocol-neutral request pipeline shared by HTTP/1.1 and HTTP/2.
 *
 * Stages (each a function in al_request.c that returns a result: go on, refused, or
 * pending with a callback that resumes it on the worker's loop):
 *
 *   route       stage_route: target + upstream path from the head (pure; refusals
 *               from the table: unknown_target, no_such_target, bad_request ...)
 *   decide      stage_decide: the policy decision point — ctx->hooks.decide (inbound
 *               auth, policy) or "allow, decided_by route"; CONNECT's intercept /
 *               passthrough / refuse decision too (al_request_connect)
 *   resolve     stage_resolve: c-ares + the egress guard (pending on DNS)
 *   credential  stage_credential: ctx->cred[method] acquire -> now / pending /
 *               error; cancelled when the request goes first
 *   prepare     stage_prepare: the header list, the injector (auth/al_auth.h) with
 *               the outgoing request, the URL; where a spooled body's SHA-256 plugs
 *               in for injectors that need it (AL_AUTH_NEEDS_BODY_SHA256)
 *   upstream    stage_upstream: ctx->upstream->start (libcurl by default)
 *   respond     up_on_head/up_on_body/up_on_done: the response to the sink, 401/403
 *               retry through the credential source, 429 rests the key and retries
 *               with another awake key of the pool (a body is replayed from the spool)
 *   audit       write_audit: one record (decision apart from outcome), then
 *               ctx->hooks.finished (metrics)
 *
 * The state (enum al_req_state, al_req_state_name) is set in one function
 * (set_state). A request freed in any state cancels what it waits for (DNS, the
 * credential, the upstream) and frees everything once.
 *
 * A protocol creates a request, sets its head (copied into the request's arena),
 * calls al_request_start(), feeds the body with al_request_body_write() while
 * al_request_body_room() allows, and receives the response through its al_req_sink.
 * The request body is held in a bounded ring (AL_REQ_BODY_BUF); when the upstream
 * takes bytes out, sink->body_consumed() tells the protocol it may read more (the
 * h2 flow-control window is consumed only then). A body that may have to be sent
 * again (a 401/403 retry) or whose SHA-256 an injector signs goes to a spool
 * (al_spool.h) instead, decided in prepare: its bytes count as consumed as soon as
 * they are kept, and each attempt reads it from the start. The response body is offered with
 * sink->body(); AL_ERR_AGAIN pauses the upstream until al_request_resume_output().
 *
 * Lifetime: sink->end() is the last sink call. The protocol frees the request with
 * al_request_free() (also to abort one in flight: the upstream is cancelled), never
 * from inside a sink callback. Every request writes exactly one audit record.
 *
 * The request sees its worker only through al_req_ctx: it never includes
 * al_worker.h or al_server.h (tests/check_includes.py checks it). */
#ifndef AL_REQUEST_H
#define AL_REQUEST_H

#include <ev.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "upstream/al_egress.h"
#include "al_errors.h"
#include "al_upstream.h"
#include "upstream/al_up_engine.h"
#include "identity/al_credsrc.h"
#include "policy/al_audit.h"
#include "targets/al_table.h"

#define AL_REQ_BODY_BUF (64 * 1024)

typedef struct al_req al_req;

enum al_req_state {
    AL_REQ_NEW,        /* the head is arriving */
    AL_REQ_RESOLVING,  /* routed and allowed; DNS + egress check */
    AL_REQ_CREDENTIAL, /* waiting for the credential source */
    AL_REQ_SPOOLING,   /* prepare waits for the whole body (an injector signs its hash) */
    AL_REQ_UPSTREAM,   /* handed to the upstream; the response streams */
    AL_REQ_LOCAL,      /* one of airlock's own endpoints works on it (hooks.local) */
    AL_REQ_REFUSING,   /* sending airlock's own refusal */
    AL_REQ_DONE,       /* ended (sink->end called, or a CONNECT handed over) */
};
const char *al_req_state_name(enum al_req_state s);

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
    /* An interim 1xx response (103 Early Hints, 102) before head(); hop-by-hop
     * headers excluded. May be NULL (they are dropped). */
    void (*interim)(void *arg, int status, const al_header *h, size_t n);
    /* 1 when body() would refuse now (AL_ERR_AGAIN): a body filter that consumes its
     * input (the zero-copy scrubber) asks first, so its output is not copied aside
     * while the agent is slow. May be NULL (never full). */
    int (*body_full)(void *arg);
} al_req_sink;

/* ---- the decide stage: the policy decision point ------------------------- */

/* What the decision point sees (all borrowed for the call). */
typedef struct al_decide_req {
    const char *method;   /* "CONNECT" for a tunnel request */
    const al_target *target; /* the route's target; NULL for a passthrough CONNECT */
    const char *host;     /* what the agent addressed (the target's host in gateway mode) */
    uint16_t port;
    const char *path;     /* the upstream path[?query]; NULL for CONNECT */
    size_t path_len;
    const al_header *headers; /* the agent's headers, Authorization and
                                 Proxy-Authorization included (they never go upstream) */
    size_t header_count;
    const char *client;   /* "ip:port" */
    const char *protocol; /* "http/1.1" or "h2" */
    int in_tunnel;        /* inside an intercepted CONNECT (the CONNECT was decided) */
    const al_table *table; /* the table the request runs on */
    int gateway;           /* gateway mode (/t/<name>/...): the token is in Authorization */
    /* Inside a tunnel: the CONNECT's Proxy-Authorization value (the tunnel's principal),
     * NULL when it had none. */
    const char *tunnel_authorization;
    size_t tunnel_authorization_len;
    /* An MCP tools/call found in the request body (second call of the hook, after the
     * body arrived, when the first answer set inspect_mcp_body); NULL at head time. */
    const char *mcp_tool;
} al_decide_req;

/* The answer. allow 0 refuses with `refusal` (from AL_REFUSALS: UNAUTHENTICATED
 * 401 with a WWW-Authenticate challenge, PROXY_AUTH_REQUIRED 407 with a
 * Proxy-Authenticate one, POLICY_DENIED 403) and `message` (what to do; no secret).
 * Strings are copied by the request before decide returns. */
typedef struct al_decision {
    int allow;
    const char *decided_by; /* "route" (the default), "policy", ... */
    const char *rule;       /* the rule that decided, NULL when none */
    const char *principal;  /* who the caller is, NULL when unknown */
    /* The authenticated principal's parts for the audit record (NULL when none). */
    const char *principal_iss, *principal_sub, *principal_client_id;
    /* The end user the request acts for (OAuth on behalf of a user): "ISS SUB" of the
     * inbound token, or the trusted client's inbound.user_header; NULL when none. */
    const char *end_user;
    enum al_refusal refusal;
    const char *message;
    const char *challenge; /* the WWW-/Proxy-Authenticate value for 401/407, or NULL */
    /* Allowed so far, but the policy limits MCP tools here: the request body (JSON-RPC,
     * up to AL_REQ_BODY_BUF) is read before anything goes upstream and each tools/call
     * name is decided by calling the hook again with q->mcp_tool. A denied call gets a
     * JSON-RPC error response; the upstream never sees it. */
    int inspect_mcp_body;
} al_decision;

/* Returns 0 with *d filled (d starts as "allow, decided_by route"). */
typedef int (*al_decide_fn)(void *arg, const al_decide_req *q, al_decision *d);

/* ---- response-body filter (echoed-secret scrubbing) ------------------------ */

/* A per-request filter over the response body, opened when the head arrives.
 * run() takes in[0..len) and appends what goes to the agent to `out`; it may hold
 * bytes back (a secret split across chunks) and must emit the rest when final is 1.
 * Over the whole body it emits exactly as many bytes as it took (replace, never
 * insert or delete: the Content-Length the agent was told holds). Nonzero = abort
 * the response. */
typedef struct al_body_filter {
    int (*run)(void *state, const char *in, size_t len, int final, al_buf *out);
    void (*free)(void *state);
    void *state;
    /* Replacements made so far (NULL: none counted); audited as "scrubbed". */
    uint64_t (*count)(void *state);
    /* Optional zero-copy form of run() for final 0 (NULL: run is used): the output is
     * given to emit() as spans (of `in` or of the filter's own memory), in order, each
     * valid during its emit call only; a nonzero emit result is returned at once. */
    int (*run_spans)(void *state, const char *in, size_t len,
                     int (*emit)(void *arg, const void *p, size_t n), void *arg);
} al_body_filter;

/* Leaves out->run NULL when this response needs no filter. sv is the injected
 * credential (NULL when none): what an upstream might echo; valid during the call
 * only (copy what you need; wipe it in free). With a filter, the response's trailers
 * are dropped (held output would come after them). Nonzero: the agent gets 500. */
typedef int (*al_body_filter_open_fn)(void *arg, const al_target *t, const al_secret_view *sv,
                                      int status, const al_header *h, size_t n,
                                      al_body_filter *out);

/* ---- the per-worker context ----------------------------------------------- */

/* The upstream engine: libcurl's al_upstream or airlock's own (upstream/al_up_engine.h),
 * as limits.upstream_engine says; tests plug a fake. */
typedef struct al_req_upstream_ops {
    int (*start)(al_upstream_pool *p, const al_upstream_opts *o, const al_upstream_cbs *cb,
                 void *arg, al_upstream_req **out);
    void (*cancel)(al_upstream_req *u);
    void (*resume_send)(al_upstream_req *u);
    void (*resume_recv)(al_upstream_req *u);
    uint32_t (*elapsed_ms)(const al_upstream_req *u);
} al_req_upstream_ops;
extern const al_req_upstream_ops al_req_upstream_curl;
/* The native engine through the same ops: its pool argument is an al_up_engine and its
 * requests al_up_reqs (converted back in the wrappers). */
extern const al_req_upstream_ops al_req_upstream_native;

/* What the request may use of its worker; the worker fills it (owner = worker). */
typedef struct al_req_ctx_ops {
    /* The current table with a hold the request keeps until it ends (no atomics). */
    al_table *(*table_hold)(void *owner, void **hold);
    void (*table_release)(void *owner, void *hold);
    /* 16 unpredictable bytes for a request id (zeroes + nonzero on CSPRNG failure). */
    int (*random_id)(void *owner, unsigned char out[16]);
} al_req_ctx_ops;

/* ---- airlock's own endpoints (OAuth on behalf of a user: /oauth2/...) -------- */

/* A request for one of airlock's own paths on the proxy listeners: origin-form (or
 * addressed to a listen address) outside gateway mode's /t/. No inbound
 * authentication: a browser opens these, and the path's single-use link id or state
 * is the capability. */
typedef struct al_local_req {
    const char *method;
    const char *path; /* origin-form path[?query] */
    size_t path_len;
    const al_table *table; /* the request's (held until it ends) */
    const char *client;
    const al_header *headers; /* the agent's headers (POST /oauth2/sessions/complete
                                 authenticates its caller with them) */
    size_t header_count;
} al_local_req;

typedef struct al_local_resp {
    int status;
    const char *content_type; /* NULL: text/html; charset=utf-8 */
    const char *location;     /* a redirect's target, else NULL */
    const char *body;
    size_t body_len;
    const char *reason;     /* the audit record's reason (static), NULL for none */
    const char *audit_path; /* the path the audit shows (static; a link id left out) */
    const char *www_authenticate; /* a 401's challenge (RFC 6750), else NULL */
} al_local_resp;

/* done(req, resp) answers a pending local request on the loop; resp is copied. */
typedef void (*al_local_done_fn)(void *req, const al_local_resp *resp);
/* 0: not one of its paths (the request goes on as usual); 1: answered now (*resp
 * filled, copied before the next call); 2: pending, done(req, ...) later on the loop
 * unless local_cancel(arg, *pending) came first. */
typedef int (*al_local_fn)(void *arg, const al_local_req *q, al_local_resp *resp,
                           al_local_done_fn done, void *req, void **pending);

typedef struct al_req_hooks {
    al_decide_fn decide; /* NULL: every routed request is allowed (decided_by route) */
    void *decide_arg;
    /* Once per request, after its final audit record (metrics). */
    void (*finished)(void *arg, const al_audit_request *rec);
    void *finished_arg;
    al_body_filter_open_fn body_filter; /* NULL: none */
    void *body_filter_arg;
    al_local_fn local; /* NULL: no endpoints of airlock's own on the proxy listeners */
    void (*local_cancel)(void *arg, void *pending);
    void *local_arg;
} al_req_hooks;

typedef struct al_req_ctx {
    struct ev_loop *loop;
    al_resolver *resolver;
    al_upstream_pool *pool;
    const al_req_upstream_ops *upstream; /* NULL: by limits.upstream_engine */
    al_up_engine *native;                /* the native engine (NULL: curl only) */
    al_audit *audit;                     /* NULL: no audit log */
    /* The credential source per auth method (the worker sets the store's for all;
     * OAuth/IAM put theirs in their row). */
    al_credsrc cred[AL_AUTH_COUNT];
    al_req_hooks hooks;
    const al_req_ctx_ops *ops;
    void *owner;
    const al_table *table; /* the owner's current table (audit.start_record_after_ms) */

    /* Owned by al_request.c (start zeroed; al_req_ctx_release frees them). */
    size_t in_flight;
    void *free_reqs; /* ended requests kept for reuse */
    size_t free_count;
    al_req *audit_wait_head, *audit_wait_tail;
    ev_timer audit_start_timer;
    int audit_timer_ready;
} al_req_ctx;

/* A TLS handshake that failed before any request: one audit record (protocol "tls",
 * no decision, outcome error, reason tls_handshake_failed) and the finished hook.
 * host: the intercepted CONNECT's host, or NULL. */
void al_request_note_tls_failure(al_req_ctx *ctx, const char *client, const char *host);

/* Frees what al_request.c keeps in ctx (the reuse list, the start-record timer). */
void al_req_ctx_release(al_req_ctx *ctx);

/* Creates a request in ctx; `protocol` is "http/1.1" or "h2", `client` the peer
 * "ip:port" (copied). */
al_req *al_request_new(al_req_ctx *ctx, const al_req_sink *sink, void *arg, const char *protocol,
                       const char *client);
void al_request_free(al_req *r);
enum al_req_state al_request_state(const al_req *r);

/* CONNECT host:port (the head is set; the request is not started): route and decide.
 * INTERCEPT: a target lives there (the caller answers 200 and starts TLS; the
 * request is done). PASSTHROUGH: an egress.passthrough entry allows a blind tunnel
 * (the caller hands the request to al_tunnel). REFUSED: answered through the sink.
 * nested: the CONNECT came inside a tunnel or over TLS; can_intercept: a CA is
 * loaded. */
enum al_connect_verdict { AL_CONNECT_REFUSED, AL_CONNECT_INTERCEPT, AL_CONNECT_PASSTHROUGH };
enum al_connect_verdict al_request_connect(al_req *r, const char *authority, size_t len,
                                           int nested, int can_intercept);

/* The head, as the protocol saw it. For HTTP/1.1, `target` is the request target
 * (absolute-form or origin-form) and scheme/authority are NULL; for HTTP/2 they are
 * :scheme, :authority and :path. `implied_authority` (CONNECT tunnels) may be NULL. */
int al_request_set_head(al_req *r, const char *method, size_t method_len, const char *scheme,
                        size_t scheme_len, const char *authority, size_t authority_len,
                        const char *target, size_t target_len);
/* Inside an intercepted CONNECT tunnel: requests may only address host:port (the
 * CONNECT authority); another host -> 403 tunnel_host_mismatch. host is copied. */
int al_request_set_tunnel(al_req *r, const char *host, uint16_t port);
/* Inside a tunnel: the CONNECT's Proxy-Authorization value (copied), so requests in the
 * tunnel are decided as the tunnel's principal. */
int al_request_set_tunnel_auth(al_req *r, const char *value, size_t len);
/* Records a request that ended without a response body of its own (a CONNECT that
 * was accepted): status for the audit, decision allow. No sink call. */
void al_request_note_done(al_req *r, int status);
/* The checked address ("ip", as the resolver wrote it) and port a blind tunnel
 * connects to, for the audit record's upstream_addr. */
void al_request_note_upstream(al_req *r, const char *addr, uint16_t port);
/* Bytes a blind tunnel carried, for the audit record. */
void al_request_note_bytes(al_req *r, uint64_t in, uint64_t out);
/* The table this request runs on. */
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
/* Refuses the request with airlock's refusal `ref` (AL_REFUSALS: status, code,
 * Proxy-Status) and a printf message saying what to do (protocol-level errors, a
 * tunnel that could not open). */
void al_request_refuse(al_req *r, enum al_refusal ref, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

size_t al_request_body_room(const al_req *r);
/* Appends body bytes (len <= room). AL_ERR_TOOBIG when the bytes were not taken and
 * the request is refused: past limits.max_body_bytes (413), a kept body past its
 * bound (413/400) or that the disk could not hold (500 body_spool_failed). */
int al_request_body_write(al_req *r, const char *data, size_t len);
void al_request_body_end(al_req *r);
/* The downstream can take more response bytes. */
void al_request_resume_output(al_req *r);
/* 1 once sink->end has been called. */
int al_request_finished(const al_req *r);
/* The status sent (0 before the head). */
int al_request_status(const al_req *r);

#endif
