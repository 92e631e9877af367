/* al_request: the request path shared by HTTP/1.1 and HTTP/2 (see al_request.h).
 *
 * Memory: one arena per request (a 4 KiB block inside the request, then chained
 * blocks) holds the copied head, the upstream header list and the URL; it dies
 * with the request. The request body ring is AL_REQ_BODY_BUF bytes, allocated on
 * the first body byte. Buffers holding the injected secret are wiped when freed.
 *
 * Body spool: prepare decides whether the body must be kept (al_spool): when a
 * 401/403 to this credential could be retried (al_credsrc_may_retry) and the body's
 * length is known and at most limits.retry_body_max_bytes, or when the injector
 * signs the body's SHA-256 (then the request waits in SPOOLING until the body has
 * ended). What the ring holds by then moves into the spool; later bytes go straight
 * there and count as consumed at once. Every other body streams through the ring
 * as before: no copy, no hash.
 *
 * States (al_request.h): NEW -> RESOLVING -> CREDENTIAL [-> SPOOLING] -> UPSTREAM ->
 * DONE, or REFUSING -> DONE from any of them. Callbacks from the resolver and the upstream
 * may run synchronously inside the call that starts them; `state` is checked after
 * each such call. A credential source answers later only through its callback (never
 * inside acquire).
 *
 * Audit: one final record per request (write_audit), and a "request_start" record
 * for a request still running after audit.start_record_after_ms: requests wait for
 * it on a per-worker list in start order, so one timer on the worker's loop (armed
 * for the oldest) serves them all, and a request that ends first just leaves the
 * list. The request id is airlock's own, made when the request is; the agent's
 * X-Request-Id is recorded apart (client_request_id) and not forwarded. */
#include "al_request.h"
#include "al_scrub.h"
#include "upstream/al_egress.h"
#include "al_errors.h"
#include "al_spool.h"
#include "auth/al_auth.h"
#include "common/al_err.h"
#include "common/al_hex.h"
#include "common/al_fmt.h"
#include "common/al_http.h"
#include "common/al_log.h"
#include "common/al_reqtarget.h"
#include "identity/al_credsrc.h"
#include "policy/al_audit.h"
#include "policy/al_mcp.h"
#include "targets/al_router.h"

#include <errno.h>
#include <jansson.h>
#include <openssl/crypto.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

const char *al_req_state_name(enum al_req_state s)
{
    static const char *const names[] = {"new",      "resolving", "credential", "spooling",
                                        "upstream", "local",     "refusing",   "done"};
    return (unsigned)s < sizeof names / sizeof names[0] ? names[s] : "?";
}

typedef struct arena_blk {
    struct arena_blk *next;
    size_t used, cap;
    char data[];
} arena_blk;

struct al_req {
    al_req_ctx *ctx;
    al_table *table; /* held through ctx->ops->table_hold until the request ends */
    void *table_hold;
    const al_target *t;
    const al_req_sink *sink;
    void *arg;
    const char *protocol;
    char client[64];
    enum al_req_state state; /* set only by set_state() */

    /* head, in the arena */
    char *method, *scheme, *authority, *target;
    size_t target_len;
    al_header *hdrs;
    size_t hdr_count, hdr_cap;
    char *cookie; /* joined h2 cookie crumbs */
    size_t cookie_len;
    char *host;        /* for audit: the host the agent addressed */
    char *tunnel_host; /* intercepted CONNECT tunnel: the only host allowed */
    uint16_t tunnel_port;
    char *tunnel_auth; /* the CONNECT's Proxy-Authorization (arena copy) or NULL */
    size_t tunnel_auth_len;
    int gateway; /* routed as /t/<name>/...: the agent's Authorization was for airlock */
    int mcp_inspect, mcp_wait; /* the policy reads the JSON-RPC body before going on */
    char *mcp_error;           /* a JSON-RPC error body to answer a refusal with (malloc) */
    const char *mcp_tool_now;  /* the tools/call name being decided (body check) */
    int mcp_list;              /* a tools/list under limited tools: filter the answer */
    const json_t *mcp_id;      /* its JSON-RPC id (borrowed during the check) */
    char *up_path; /* path[?query] to send upstream (before injection) */
    size_t up_path_len;

    /* body */
    char *ring;
    size_t ring_head, ring_len;
    al_spool *spool;          /* a body kept for a retry or its hash; NULL: the ring */
    al_spool_reader spool_rd; /* the current attempt's place in it */
    int spool_signed;         /* kept for its SHA-256 (bound: auth.max_body_bytes) */
    int has_body, body_ended, send_paused;
    int64_t body_length;
    uint64_t bytes_in, bytes_out;

    /* decide */
    const char *decided_by; /* static or from the table; NULL before the decision */
    const char *rule;       /* arena copy */
    const char *principal;  /* arena copy */
    const char *principal_iss, *principal_sub, *principal_client_id; /* arena copies */
    const char *end_user;   /* arena copy: who an oauth2_3lo request acts for, or NULL */
    void *local_pending;    /* hooks.local works on it (AL_REQ_LOCAL) */
    int denied;             /* a denial (decision deny), not an outcome */

    /* credential */
    const al_credsrc *src;
    al_cred_query cq; /* cq.attempt: AL_CRED_FIRST, or the one retry after 401/403 */
    al_cred_grant grant;
    void *cred_pending; /* the source's handle while it works */
    int have_secret;
    al_auth_out inj;
    /* the upstream path with its NUL, in the arena (no allocation of its own); wiped
     * (it may carry a query secret) once the engine has its copy, or at the end */
    char *url;
    size_t url_len;
    int retrying; /* the retry's query is in `retry` until the response is dropped */
    int lambda_gateway; /* gateway call of a lambda target: POST .../invocations */
    al_cred_query retry;
    const char *retry_name; /* the audit's "retry", once retried */
    char aws_akid[129];     /* iam: the access key id that signed (audit), "" = none */

    /* upstream */
    void *resolve_handle;
    al_upstream_req *up;
    char addr[64];      /* the checked upstream address airlock connects to, "" = none */
    uint16_t addr_port; /* its port */
    const char *provider_wanted; /* the provider a credential was looked up for */
    int out_paused;
    uint32_t upstream_ms;

    /* response */
    int status;
    int head_sent, finished, audited;
    int aborted;     /* ended after the head without the whole response */
    al_body_filter filter; /* the response-body filter, run NULL when none */
    al_buf filt_out;       /* its output not yet taken by the sink */
    size_t filt_off;
    uint64_t filt_in, filt_emitted;
    int filt_finish; /* the upstream ended; finish once filt_out is delivered */
    uint32_t head_scrubbed, body_scrubbed; /* echoed credentials replaced (audited) */
    al_header *held_trailers; /* arena; trailers waiting for the filter's last output */
    size_t held_trailer_n;
    int client_gone; /* freed before its end: the agent left */
    int64_t resp_length; /* Content-Length the agent was told, -1 none (or no body) */
    uint64_t resp_sent;  /* body bytes passed to the sink */
    const char *reason;
    const char *retry_after; /* a refusal's Retry-After (seconds), or NULL */
    char retry_after_buf[12];
    const char *challenge_name, *challenge; /* WWW-/Proxy-Authenticate of a 401/407 */
    al_buf refuse_body;
    size_t refuse_off;
    const char *refuse_extra; /* JSON members added to the next refusal's body, or NULL */
    /* lambda: X-Amz-Function-Error came back; the body is kept (bounded) for the 502 */
    int fn_error;
    char fn_kind[32]; /* its value: "Unhandled", "Handled" */
    al_buf fn_body;
    char request_id[48];
    struct timespec t0;
    int64_t wall_ms;
    al_req *audit_prev, *audit_next; /* on ctx->audit_wait_* until a start or final record */
    int audit_waiting;

    arena_blk *blocks;
    union {
        arena_blk blk;
        char bytes[4096];
    } first;
};

static void set_state(al_req *r, enum al_req_state s)
{
    r->state = s;
}

enum al_req_state al_request_state(const al_req *r)
{
    return r->state;
}

/* ---- arena -------------------------------------------------------------- */

/* The longest upstream path (what the URL buffer allowed: 64 KiB). */
#define URL_MAX (64 * 1024)

static void *arena_alloc(al_req *r, size_t n)
{
    n = (n + 7) & ~(size_t)7;
    arena_blk *b = r->blocks;
    if (b->used + n > b->cap) {
        size_t cap = n > 8192 ? n : 8192;
        arena_blk *nb = malloc(sizeof *nb + cap);
        if (!nb)
            return NULL;
        nb->next = r->blocks;
        nb->used = 0;
        nb->cap = cap;
        r->blocks = nb;
        b = nb;
    }
    void *p = b->data + b->used;
    b->used += n;
    return p;
}

static char *arena_dup(al_req *r, const char *s, size_t n)
{
    char *p = arena_alloc(r, n + 1);
    if (p) {
        memcpy(p, s, n);
        p[n] = '\0';
    }
    return p;
}

/* ---- lifecycle ---------------------------------------------------------- */

/* Bounded copy, always NUL-terminated (snprintf "%s" cost ~600 instructions). */
static void copy_str(char *dst, size_t cap, const char *src)
{
    size_t n = src ? strnlen(src, cap - 1) : 0;
    memcpy(dst, src ? src : "", n);
    dst[n] = '\0';
}

static int64_t now_wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static uint32_t elapsed_ms(const struct timespec *t0)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    int64_t ms = (ts.tv_sec - t0->tv_sec) * 1000 + (ts.tv_nsec - t0->tv_nsec) / 1000000;
    return ms < 0 ? 0 : (uint32_t)ms;
}

static void make_request_id(al_req *r);
/* filter_run_spans' emit: a span goes to the sink straight from where it lies (the
 * upstream's read buffer, mostly) unless output already waits in filt_out or the sink
 * is full; then it is copied there, behind what waits (filter_flush delivers it). A span
 * that would break the filter's length promise is refused before the sink sees it. */
static int filter_emit(void *arg, const void *p, size_t n)
{
    al_req *r = arg;
    if (n == 0)
        return 0;
    if (r->filt_emitted + n > r->filt_in)
        return AL_ERR_PROTO;
    r->filt_emitted += n;
    if (r->filt_off == r->filt_out.len) {
        int rc = r->sink->body(r->arg, p, n);
        if (rc == 0) {
            r->bytes_out += n;
            return 0;
        }
        if (rc != AL_ERR_AGAIN)
            return rc;
    }
    return al_buf_append(&r->filt_out, p, n);
}

/* filter_run (final 0) without the copy into filt_out: filt_out must be empty (flushed). */
static int filter_run_spans(al_req *r, const char *in, size_t len)
{
    r->filt_in += len;
    if (r->filter.run_spans(r->filter.state, in, len, filter_emit, r))
        return AL_ERR_PROTO;
    if (r->filter.count)
        r->body_scrubbed = (uint32_t)r->filter.count(r->filter.state);
    return 0;
}

static void filter_close(al_req *r);

/* The response-body filter's output buffer (a few curl chunks and what it holds back). */
#define FILTER_BUF_MAX (256 * 1024)

const al_req_upstream_ops al_req_upstream_curl = {
    .start = al_upstream_start,
    .cancel = al_upstream_cancel,
    .resume_send = al_upstream_resume_send,
    .resume_recv = al_upstream_resume_recv,
    .elapsed_ms = al_upstream_elapsed_ms,
};

/* The native engine behind the same ops: the opaque pool and request pointers are
 * the engine's own types, converted back here (and only here). */
static int native_start(al_upstream_pool *p, const al_upstream_opts *o, const al_upstream_cbs *cb,
                        void *arg, al_upstream_req **out)
{
    return al_up_start((al_up_engine *)(void *)p, o, cb, arg, (al_up_req **)(void *)out);
}
static void native_cancel(al_upstream_req *u)
{
    al_up_cancel((al_up_req *)(void *)u);
}
static void native_resume_send(al_upstream_req *u)
{
    al_up_resume_send((al_up_req *)(void *)u);
}
static void native_resume_recv(al_upstream_req *u)
{
    al_up_resume_recv((al_up_req *)(void *)u);
}
static uint32_t native_elapsed_ms(const al_upstream_req *u)
{
    return al_up_elapsed_ms((const al_up_req *)(const void *)u);
}

const al_req_upstream_ops al_req_upstream_native = {
    .start = native_start,
    .cancel = native_cancel,
    .resume_send = native_resume_send,
    .resume_recv = native_resume_recv,
    .elapsed_ms = native_elapsed_ms,
};

/* The request's engine: fixed for its life (its table is). */
static const al_req_upstream_ops *up_ops(const al_req *r)
{
    if (r->ctx->upstream)
        return r->ctx->upstream;
    if (r->ctx->native && r->table->limits.upstream_engine == AL_UPSTREAM_ENGINE_NATIVE)
        return &al_req_upstream_native;
    return &al_req_upstream_curl;
}
static void audit_wait_add(al_req *r);
static void audit_wait_remove(al_req *r);

struct free_req {
    struct free_req *next;
};
#define FREE_REQS_MAX 64

al_req *al_request_new(al_req_ctx *ctx, const al_req_sink *sink, void *arg, const char *protocol,
                       const char *client)
{
    /* A request is ~5 KiB (its first arena block inline): past malloc's small-size
     * caches, so malloc + free of it cost ~3k instructions; reuse ended ones. */
    al_req *r;
    if (ctx->free_reqs) {
        struct free_req *f = ctx->free_reqs;
        ctx->free_reqs = f->next;
        ctx->free_count--;
        r = (al_req *)(void *)f;
    } else if (!(r = malloc(sizeof *r))) {
        return NULL;
    }
    memset(r, 0, offsetof(al_req, first));
    r->first.blk.next = NULL;
    r->first.blk.used = 0;
    r->first.blk.cap = sizeof r->first - sizeof(arena_blk);
    r->blocks = &r->first.blk;
    r->ctx = ctx;
    r->table = ctx->ops->table_hold(ctx->owner, &r->table_hold);
    r->sink = sink;
    r->arg = arg;
    r->protocol = protocol;
    r->body_length = -1;
    r->resp_length = -1;
    copy_str(r->client, sizeof r->client, client);
    al_auth_out_init(&r->inj);
    r->url = NULL;
    r->url_len = 0;
    al_buf_init(&r->refuse_body, 4096);
    al_buf_init(&r->fn_body, 64 * 1024);
    clock_gettime(CLOCK_MONOTONIC, &r->t0);
    r->wall_ms = now_wall_ms();
    make_request_id(r);
    audit_wait_add(r);
    ctx->in_flight++;
    return r;
}

void al_req_ctx_release(al_req_ctx *ctx)
{
    while (ctx->free_reqs) {
        struct free_req *f = ctx->free_reqs;
        ctx->free_reqs = f->next;
        free(f);
    }
    ctx->free_count = 0;
    if (ctx->audit_timer_ready && ctx->loop)
        ev_timer_stop(ctx->loop, &ctx->audit_start_timer);
}

/* airlock's own id for every request (also those refused before their head is
 * complete): 32 hex digits from the CSPRNG. */
static void make_request_id(al_req *r)
{
    unsigned char rnd[16];
    r->ctx->ops->random_id(r->ctx->owner, rnd); /* zeroes on a CSPRNG failure */
    al_hex_encode(rnd, sizeof rnd, r->request_id); /* 32 digits and the NUL */
}

/* Wipes what holds the secret and gives the credential back to its source (or
 * cancels the source's pending answer). */
/* Wipes the URL (arena memory, so it is not freed here). */
static void url_wipe(al_req *r)
{
    if (r->url)
        OPENSSL_cleanse(r->url, r->url_len + 1);
    r->url = NULL;
    r->url_len = 0;
}

static void release_secret(al_req *r)
{
    al_auth_out_free(&r->inj);
    url_wipe(r);
    if (r->cred_pending)
        al_credsrc_cancel(r->src, r->cred_pending);
    r->cred_pending = NULL;
    if (r->src)
        al_credsrc_release(r->src, &r->grant);
    r->have_secret = 0;
}

static const al_header *find_header(const al_req *r, const char *name);

/* Buffers a record's derived strings live in while it is encoded. */
typedef struct audit_bufs {
    char path[2048];
    char host[256];
    char upstream[80];
} audit_bufs;

/* The host, port and path the agent addressed, as the record shows them: the
 * authority never in `path` (CONNECT: none; absolute-form: only what follows the
 * authority), query values removed. Derived from the head here rather than in the
 * routing code, so refused requests get the same fields as forwarded ones. */
static void audit_addressing(al_req *r, al_audit_request *rec, audit_bufs *b)
{
    const char *auth = NULL, *tg = r->target;
    size_t alen = 0, tl = tg ? r->target_len : 0;
    uint16_t dport = 80;
    int is_connect = r->method && strcmp(r->method, "CONNECT") == 0;
    if (is_connect) {
        auth = tg;
        alen = tl;
        tl = 0;
    } else if (tl > 7 &&
               (al_http_caseeq(tg, "http://", 7) || al_http_caseeq(tg, "https://", 8))) {
        size_t skip = tg[4] == ':' ? 7 : 8;
        dport = skip == 7 ? 80 : 443;
        auth = tg + skip;
        const char *e = auth;
        while (e < tg + tl && *e != '/' && *e != '?' && *e != '#')
            e++;
        alen = (size_t)(e - auth);
        tl -= (size_t)(e - tg);
        tg = e;
    } else if (r->authority) {
        auth = r->authority;
        alen = strlen(auth);
        if (r->scheme && strcmp(r->scheme, "https") == 0)
            dport = 443;
    } else if (!r->tunnel_host) {
        const al_header *h = find_header(r, "host");
        if (h) {
            auth = h->value;
            alen = h->value_len;
        }
    }
    if (r->tunnel_host) {
        rec->host = r->tunnel_host;
        rec->port = r->tunnel_port;
    } else if (r->t && r->host == r->t->host) { /* gateway mode: the target's */
        rec->host = r->t->host;
        rec->port = r->t->port;
    } else if (auth && alen) {
        /* user information ("user:password@host") is never recorded */
        const char *at = NULL;
        for (const char *p = auth; p < auth + alen; p++)
            if (*p == '@')
                at = p;
        if (at) {
            alen -= (size_t)(at + 1 - auth);
            auth = at + 1;
        }
        const char *h;
        size_t hl;
        uint16_t port;
        if (al_reqtarget_authority(auth, alen, dport, &h, &hl, &port) == AL_OK) {
            copy_str(b->host, hl + 1 < sizeof b->host ? hl + 1 : sizeof b->host, h);
            rec->host = b->host;
            rec->port = port;
        } else { /* not host[:port]: recorded as sent (escaped), no port */
            copy_str(b->host, alen + 1 < sizeof b->host ? alen + 1 : sizeof b->host, auth);
            rec->host = b->host;
        }
    }
    /* The path that went upstream once routed (gateway: the target's), else what the
     * agent sent after the authority; a CONNECT has none. */
    if (r->up_path) {
        al_audit_redact_query(r->up_path, r->up_path_len, b->path, sizeof b->path);
        rec->path = b->path;
    } else if (tl && tg[0] != '?') {
        al_audit_redact_query(tg, tl, b->path, sizeof b->path);
        rec->path = b->path;
    } else if (tl) { /* "http://host?q": the path is "/" */
        b->path[0] = '/';
        al_audit_redact_query(tg, tl, b->path + 1, sizeof b->path - 1);
        rec->path = b->path;
    } else if (!is_connect && auth && tg != r->target) {
        rec->path = "/"; /* "http://host" */
    }
}

/* Fills rec from the request as it stands (the strings stay valid while r and b do). */
static void audit_fill(al_req *r, al_audit_request *rec, audit_bufs *b)
{
    const al_header *crid = find_header(r, "x-request-id");
    memset(rec, 0, sizeof *rec);
    rec->time_ms = now_wall_ms();
    rec->start_ms = r->wall_ms;
    rec->request_id = r->request_id[0] ? r->request_id : NULL;
    rec->client_request_id = crid ? crid->value : NULL;
    rec->client = r->client;
    rec->target = r->t ? r->t->name : NULL;
    rec->type = r->t ? al_target_type_name(r->t->type) : NULL;
    rec->auth_method = r->t ? al_auth_method_name(r->t->auth.method) : NULL;
    /* the provider that served, else the one that was wanted (missing, store closed) */
    rec->provider = r->grant.sv.provider ? r->grant.sv.provider : r->provider_wanted;
    rec->provider_version = r->grant.sv.provider ? r->grant.sv.version : 0;
    if (r->t && r->t->auth.method == AL_AUTH_IAM) { /* never the secret, token or signature */
        rec->aws_access_key_id = r->aws_akid[0] ? r->aws_akid : NULL;
        rec->aws_region = r->t->auth.region;
        rec->aws_service = r->t->auth.service;
    }
    rec->method = r->method;
    audit_addressing(r, rec, b);
    if (r->addr[0]) {
        /* "[v6]:port" or "v4:port" by appends (snprintf: ~1k instructions a request);
         * addr is at most 63 characters, so this fits upstream[80] */
        size_t al = strnlen(r->addr, sizeof r->addr - 1), n = 0;
        int v6 = memchr(r->addr, ':', al) != NULL;
        if (v6)
            b->upstream[n++] = '[';
        memcpy(b->upstream + n, r->addr, al);
        n += al;
        if (v6)
            b->upstream[n++] = ']';
        b->upstream[n++] = ':';
        n += al_fmt_u64(b->upstream + n, r->addr_port);
        b->upstream[n] = '\0';
        rec->upstream_addr = b->upstream;
    }
    rec->protocol = r->protocol;
    rec->status = r->status;
    rec->bytes_in = r->bytes_in;
    rec->bytes_out = r->bytes_out;
    rec->upstream_ms = r->upstream_ms;
    rec->total_ms = elapsed_ms(&r->t0);
    rec->decision = r->denied ? "deny" : r->decided_by ? "allow" : NULL;
    rec->decided_by = r->decided_by;
    rec->rule = r->rule;
    rec->principal = r->principal;
    rec->outcome = r->denied                                          ? "refused"
                   : r->client_gone ? "client_closed"
                   : r->aborted     ? "aborted"
                   : r->reason      ? "error"
                   : r->finished    ? "ok"
                                    : NULL;
    rec->reason = r->reason;
    rec->retry = r->retry_name;
    rec->token_fingerprint = r->grant.sv.fingerprint;
    rec->principal_iss = r->principal_iss;
    rec->principal_sub = r->principal_sub;
    rec->principal_client_id = r->principal_client_id;
    rec->end_user = r->end_user;
    rec->scrubbed = r->head_scrubbed + r->body_scrubbed;
}

static void write_audit(al_req *r)
{
    if (r->audited)
        return;
    r->audited = 1;
    audit_wait_remove(r);
    al_audit *a = r->ctx->audit;
    const al_req_hooks *hk = &r->ctx->hooks;
    if (!a && !hk->finished)
        return;
    al_audit_request rec;
    audit_bufs b;
    audit_fill(r, &rec, &b);
    if (a)
        al_audit_submit(a, &rec);
    if (hk->finished)
        hk->finished(hk->finished_arg, &rec);
}

void al_request_note_tls_failure(al_req_ctx *ctx, const char *client, const char *host)
{
    al_audit_request rec = {
        .time_ms = now_wall_ms(),
        .client = client,
        .host = host,
        .protocol = "tls",
        .outcome = "error", /* no request yet, so no decision */
        .reason = "tls_handshake_failed",
    };
    if (ctx->audit)
        al_audit_submit(ctx->audit, &rec);
    if (ctx->hooks.finished)
        ctx->hooks.finished(ctx->hooks.finished_arg, &rec);
}

/* ---- start records ------------------------------------------------------ */

static uint32_t start_record_after_ms(const al_req_ctx *ctx)
{
    return ctx->table ? ctx->table->audit.start_record_after_ms : 0;
}

static void on_audit_start_timer(struct ev_loop *loop, ev_timer *t, int revents);

static void arm_start_timer(al_req_ctx *w, uint32_t in_ms)
{
    if (!w->audit_timer_ready) {
        ev_init(&w->audit_start_timer, on_audit_start_timer);
        w->audit_start_timer.data = w;
        w->audit_timer_ready = 1;
    }
    w->audit_start_timer.repeat = in_ms / 1000.0 + 0.001;
    ev_timer_again(w->loop, &w->audit_start_timer);
}

static void audit_wait_add(al_req *r)
{
    al_req_ctx *w = r->ctx;
    uint32_t after = start_record_after_ms(w);
    if (!after || !w->loop)
        return;
    r->audit_waiting = 1;
    r->audit_next = NULL;
    r->audit_prev = w->audit_wait_tail;
    if (w->audit_wait_tail)
        w->audit_wait_tail->audit_next = r;
    else
        w->audit_wait_head = r;
    w->audit_wait_tail = r;
    if (!w->audit_timer_ready || !ev_is_active(&w->audit_start_timer))
        arm_start_timer(w, after);
}

static void audit_wait_remove(al_req *r)
{
    al_req_ctx *w = r->ctx;
    if (!r->audit_waiting)
        return;
    r->audit_waiting = 0;
    if (r->audit_prev)
        r->audit_prev->audit_next = r->audit_next;
    else
        w->audit_wait_head = r->audit_next;
    if (r->audit_next)
        r->audit_next->audit_prev = r->audit_prev;
    else
        w->audit_wait_tail = r->audit_prev;
    r->audit_prev = r->audit_next = NULL;
    /* an empty list leaves the timer to fire once and find nothing: no re-arm cost */
}

/* The oldest waiting requests that passed the threshold get their start record;
 * the timer is re-armed for the next one. */
static void on_audit_start_timer(struct ev_loop *loop, ev_timer *t, int revents)
{
    al_req_ctx *w = t->data;
    al_audit *a = w->audit;
    uint32_t after = start_record_after_ms(w);
    (void)revents;
    ev_timer_stop(loop, t);
    while (w->audit_wait_head) {
        al_req *r = w->audit_wait_head;
        uint32_t age = elapsed_ms(&r->t0);
        if (after && age < after) {
            arm_start_timer(w, after - age);
            return;
        }
        audit_wait_remove(r);
        if (!after || !a)
            continue; /* turned off by a reload: the list just empties */
        al_audit_request rec;
        audit_bufs b;
        audit_fill(r, &rec, &b);
        rec.event = "request_start";
        al_audit_submit(a, &rec);
    }
}

void al_request_free(al_req *r)
{
    if (!r)
        return;
    al_req_ctx *ctx = r->ctx;
    if (r->resolve_handle)
        al_resolver_cancel(ctx->resolver, r->resolve_handle);
    r->resolve_handle = NULL;
    if (r->up)
        up_ops(r)->cancel(r->up);
    r->up = NULL;
    if (r->local_pending && ctx->hooks.local_cancel)
        ctx->hooks.local_cancel(ctx->hooks.local_arg, r->local_pending);
    r->local_pending = NULL;
    r->client_gone = !r->finished;
    if (!r->finished && !r->reason && r->status == 0)
        r->reason = "client_closed";
    write_audit(r);
    filter_close(r);
    release_secret(r);
    al_buf_free(&r->refuse_body, 0);
    al_buf_free(&r->fn_body, 0);
    free(r->mcp_error);
    free(r->ring);
    al_spool_free(r->spool);
    r->spool = NULL;
    arena_blk *b = r->blocks;
    while (b && b != &r->first.blk) {
        arena_blk *next = b->next;
        free(b);
        b = next;
    }
    ctx->ops->table_release(ctx->owner, r->table_hold);
    if (ctx->in_flight)
        ctx->in_flight--;
    if (ctx->free_count < FREE_REQS_MAX) {
        struct free_req *f = (struct free_req *)(void *)r;
        f->next = ctx->free_reqs;
        ctx->free_reqs = f;
        ctx->free_count++;
        return;
    }
    free(r);
}

int al_request_finished(const al_req *r)
{
    return r->finished;
}

int al_request_status(const al_req *r)
{
    return r->status;
}

static void finish(al_req *r, int ok)
{
    if (r->finished)
        return;
    r->finished = 1;
    r->aborted = !ok;
    set_state(r, AL_REQ_DONE);
    al_spool_free(r->spool); /* no attempt reads it any more: memory and file go now */
    r->spool = NULL;
    filter_close(r);
    write_audit(r);
    release_secret(r);
    r->sink->end(r->arg, ok);
}

/* ---- refusals ----------------------------------------------------------- */

static void deliver_refusal(al_req *r)
{
    while (r->refuse_off < r->refuse_body.len) {
        int rc = r->sink->body(r->arg, r->refuse_body.data + r->refuse_off,
                               r->refuse_body.len - r->refuse_off);
        if (rc == AL_ERR_AGAIN)
            return;
        if (rc < 0)
            break;
        r->bytes_out += r->refuse_body.len - r->refuse_off;
        r->refuse_off = r->refuse_body.len;
    }
    finish(r, 1);
}

/* Answers the request with airlock's refusal `ref` (AL_REFUSALS: status, code,
 * Proxy-Status type, and whether it is a denial or an outcome) unless it has
 * ended; after the response head it can only abort. Cancels whatever the request
 * waits for. */
static void vrefuse(al_req *r, enum al_refusal ref, const char *fmt, va_list ap)
{
    const al_refusal_info *ri = al_refusal(ref);
    const char *code = ri->code;
    int status = ri->status;
    char msg[1024];
    vsnprintf(msg, sizeof msg, fmt, ap);
    if (r->resolve_handle) {
        al_resolver_cancel(r->ctx->resolver, r->resolve_handle);
        r->resolve_handle = NULL;
    }
    if (r->cred_pending) {
        al_credsrc_cancel(r->src, r->cred_pending);
        r->cred_pending = NULL;
    }
    if (r->up) {
        up_ops(r)->cancel(r->up);
        r->up = NULL;
    }
    if (r->local_pending && r->ctx->hooks.local_cancel) {
        r->ctx->hooks.local_cancel(r->ctx->hooks.local_arg, r->local_pending);
        r->local_pending = NULL;
    }
    r->reason = code;
    if (ri->denied_by && !r->finished) {
        r->denied = 1;
        if (!r->decided_by || strcmp(r->decided_by, "policy") != 0)
            r->decided_by = ri->denied_by;
    }
    if (r->finished)
        return;
    if (r->head_sent) { /* too late for a JSON body: abort the response */
        finish(r, 0);
        return;
    }
    r->status = status;
    set_state(r, AL_REQ_REFUSING);
    if (r->mcp_error) { /* an MCP client understands a JSON-RPC error, not ours */
        status = r->status = 200;
        al_buf_append(&r->refuse_body, r->mcp_error, strlen(r->mcp_error));
    } else {
        al_error_json(&r->refuse_body, code, "%s", msg);
        if (r->refuse_extra && r->refuse_body.len >= 2 &&
            !memcmp(r->refuse_body.data + r->refuse_body.len - 2, "}\n", 2)) {
            r->refuse_body.len -= 2; /* {"error":..,"message":..}\n + ,extra}\n */
            if (al_buf_append(&r->refuse_body, ",", 1) ||
                al_buf_append(&r->refuse_body, r->refuse_extra, strlen(r->refuse_extra)) ||
                al_buf_append(&r->refuse_body, "}\n", 2)) {
                al_buf_reset(&r->refuse_body);
                al_error_json(&r->refuse_body, code, "%s", msg);
            }
        }
    }
    /* RFC 9209 Proxy-Status: the reason reaches clients that never show the body of a
     * refused CONNECT (curl -v, requests' ProxyError). */
    al_buf ps;
    al_buf_init(&ps, 2048);
    int ps_ok = al_proxy_status(&ps, code, status, msg) == AL_OK;
    al_header h[7] = {
        {"content-type", 12, "application/json", 16},
        {"cache-control", 13, "no-store", 8},
    };
    size_t hn = 2;
    if (ps_ok)
        h[hn++] = (al_header){"proxy-status", 12, ps.data, ps.len};
    if (r->request_id[0])
        h[hn++] = (al_header){"x-request-id", 12, r->request_id, strlen(r->request_id)};
    if (r->retry_after)
        h[hn++] = (al_header){"retry-after", 11, r->retry_after, strlen(r->retry_after)};
    if (r->challenge && r->challenge_name && (status == 401 || status == 407))
        h[hn++] = (al_header){r->challenge_name, strlen(r->challenge_name), r->challenge,
                              strlen(r->challenge)};
    /* A refused CONNECT: HTTP/1.1 also puts the code in the reason phrase, the one part
     * some clients show ("Tunnel connection failed: 403 Forbidden (airlock: ...)"). */
    if (r->method && strcmp(r->method, "CONNECT") == 0)
        h[hn++] = (al_header){":reason", 7, code, strlen(code)};
    r->head_sent = 1;
    r->sink->head(r->arg, status, h, hn, (int64_t)r->refuse_body.len);
    al_buf_free(&ps, 0);
    al_log(AL_LOG_DEBUG, "request.refused", "status=%d code=%s", status, code);
    deliver_refusal(r);
}

static void refuse(al_req *r, enum al_refusal ref, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void refuse(al_req *r, enum al_refusal ref, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vrefuse(r, ref, fmt, ap);
    va_end(ap);
}

void al_request_refuse(al_req *r, enum al_refusal ref, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vrefuse(r, ref, fmt, ap);
    va_end(ap);
}

/* ---- head --------------------------------------------------------------- */

int al_request_set_head(al_req *r, const char *method, size_t method_len, const char *scheme,
                        size_t scheme_len, const char *authority, size_t authority_len,
                        const char *target, size_t target_len)
{
    r->method = arena_dup(r, method, method_len);
    r->scheme = scheme ? arena_dup(r, scheme, scheme_len) : NULL;
    r->authority = authority ? arena_dup(r, authority, authority_len) : NULL;
    r->target = arena_dup(r, target, target_len);
    r->target_len = target_len;
    if (!r->method || (scheme && !r->scheme) || (authority && !r->authority) || !r->target)
        return AL_ERR_NOMEM;
    return AL_OK;
}

int al_request_set_field(al_req *r, enum al_req_field f, const char *v, size_t n)
{
    char *p = arena_dup(r, v, n);
    if (!p)
        return AL_ERR_NOMEM;
    switch (f) {
    case AL_REQ_METHOD:
        r->method = p;
        break;
    case AL_REQ_SCHEME:
        r->scheme = p;
        break;
    case AL_REQ_AUTHORITY:
        r->authority = p;
        break;
    case AL_REQ_PATH:
        r->target = p;
        r->target_len = n;
        break;
    }
    return AL_OK;
}

int al_request_set_tunnel(al_req *r, const char *host, uint16_t port)
{
    r->tunnel_host = arena_dup(r, host, strlen(host));
    r->tunnel_port = port;
    return r->tunnel_host ? AL_OK : AL_ERR_NOMEM;
}

int al_request_set_tunnel_auth(al_req *r, const char *value, size_t len)
{
    if (!value || !len)
        return AL_OK;
    r->tunnel_auth = arena_dup(r, value, len);
    r->tunnel_auth_len = len;
    return r->tunnel_auth ? AL_OK : AL_ERR_NOMEM;
}

void al_request_note_done(al_req *r, int status)
{
    r->status = status;
    r->finished = 1;
    set_state(r, AL_REQ_DONE);
}

void al_request_note_upstream(al_req *r, const char *addr, uint16_t port)
{
    copy_str(r->addr, sizeof r->addr, addr);
    r->addr_port = port;
}

void al_request_note_bytes(al_req *r, uint64_t in, uint64_t out)
{
    r->bytes_in = in;
    r->bytes_out += out;
}

struct al_table *al_request_table(const al_req *r)
{
    return r->table;
}

int al_request_has_field(const al_req *r, enum al_req_field f)
{
    switch (f) {
    case AL_REQ_METHOD:
        return r->method != NULL;
    case AL_REQ_SCHEME:
        return r->scheme != NULL;
    case AL_REQ_AUTHORITY:
        return r->authority != NULL;
    case AL_REQ_PATH:
        return r->target != NULL;
    }
    return 0;
}

int al_request_add_header(al_req *r, const char *name, size_t name_len, const char *value,
                          size_t value_len)
{
    if (name_len == 6 && strncasecmp(name, "cookie", 6) == 0 && r->cookie) {
        /* HTTP/2 cookie crumbs: one header upstream, joined with "; ". */
        char *j = arena_alloc(r, r->cookie_len + 2 + value_len + 1);
        if (!j)
            return AL_ERR_NOMEM;
        memcpy(j, r->cookie, r->cookie_len);
        memcpy(j + r->cookie_len, "; ", 2);
        memcpy(j + r->cookie_len + 2, value, value_len);
        r->cookie_len += 2 + value_len;
        j[r->cookie_len] = '\0';
        r->cookie = j;
        return AL_OK;
    }
    if (r->hdr_count == r->hdr_cap) {
        size_t cap = r->hdr_cap ? r->hdr_cap * 2 : 32;
        al_header *n = arena_alloc(r, cap * sizeof *n);
        if (!n)
            return AL_ERR_NOMEM;
        if (r->hdr_count)
            memcpy(n, r->hdrs, r->hdr_count * sizeof *n);
        r->hdrs = n;
        r->hdr_cap = cap;
    }
    char *nm = arena_dup(r, name, name_len);
    char *v = arena_dup(r, value, value_len);
    if (!nm || !v)
        return AL_ERR_NOMEM;
    if (name_len == 6 && strncasecmp(name, "cookie", 6) == 0) {
        r->cookie = v;
        r->cookie_len = value_len;
        nm = NULL; /* the joined value is added when the upstream list is built */
        return AL_OK;
    }
    r->hdrs[r->hdr_count++] = (al_header){nm, name_len, v, value_len};
    return AL_OK;
}

static const al_header *find_header(const al_req *r, const char *name)
{
    size_t n = strlen(name);
    for (size_t i = 0; i < r->hdr_count; i++)
        if (al_http_name_eq(r->hdrs[i].name, r->hdrs[i].name_len, name, n))
            return &r->hdrs[i];
    return NULL;
}

/* Is `name` one of the tokens of the agent's Connection header? */
static int named_by_connection(const al_req *r, const char *name, size_t n)
{
    for (size_t i = 0; i < r->hdr_count; i++) {
        const al_header *h = &r->hdrs[i];
        if (al_http_name_is(h->name, h->name_len, "connection") &&
            al_http_connection_lists(h->value, h->value_len, name, n))
            return 1;
    }
    return 0;
}

/* ---- upstream ----------------------------------------------------------- */

static void stage_credential(al_req *r);

static int64_t header_int(const al_header *h, size_t n, const char *name, int64_t dflt)
{
    size_t nl = strlen(name);
    for (size_t i = 0; i < n; i++) {
        if (!al_http_name_eq(h[i].name, h[i].name_len, name, nl))
            continue;
        int64_t v = 0;
        size_t k = 0, digits = 0;
        for (; k < h[i].value_len; k++) {
            char c = h[i].value[k];
            if (c == ' ')
                continue;
            if (c < '0' || c > '9' || v > INT64_MAX / 10 - 10)
                return dflt;
            v = v * 10 + (c - '0');
            digits++;
        }
        return digits ? v : dflt;
    }
    return dflt;
}

/* tools/list under a policy that limits MCP tools: the answer is held (up to
 * FILTER_BUF_MAX; past it, passed on as is), then the tools the principal may not call
 * are taken out and the JSON padded with spaces to its length (the Content-Length the
 * agent was told holds). Each tool is decided by the same hook as a tools/call. */
static void decide_req_fill(al_req *r, const al_target *t, const char *host, uint16_t port,
                            al_decide_req *q);

typedef struct mcp_list_state {
    al_req *r;
    al_buf hold;
    int sse, passthrough;
} mcp_list_state;

static int mcp_tool_allowed(void *arg, const char *tool)
{
    al_req *r = arg;
    const al_req_hooks *hk = &r->ctx->hooks;
    al_decision d = {.allow = 1, .refusal = AL_REF_POLICY_DENIED};
    al_decide_req q;
    decide_req_fill(r, r->t, r->host, r->tunnel_host ? r->tunnel_port : r->t->port, &q);
    q.mcp_tool = tool;
    return hk->decide && hk->decide(hk->decide_arg, &q, &d) == AL_OK && d.allow;
}

static int mcp_list_run(void *state, const char *in, size_t len, int final, al_buf *out)
{
    mcp_list_state *st = state;
    if (!st->passthrough && al_buf_append(&st->hold, in, len) != AL_OK) {
        st->passthrough = 1; /* too big to hold: the listing goes out unfiltered */
        if (al_buf_append(out, st->hold.data, st->hold.len))
            return AL_ERR_NOMEM;
        al_buf_reset(&st->hold);
    }
    if (st->passthrough)
        return len && al_buf_append(out, in, len) ? AL_ERR_NOMEM : 0;
    if (!final)
        return 0;
    al_mcp_filter_tools_padded(st->hold.data, st->hold.len, st->sse, mcp_tool_allowed, st->r);
    return al_buf_append(out, st->hold.data, st->hold.len) ? AL_ERR_NOMEM : 0;
}

static void mcp_list_free(void *state)
{
    mcp_list_state *st = state;
    al_buf_free(&st->hold, 0);
    free(st);
}

/* Two response-body filters one after the other (a's output is b's input); both keep
 * the length, so the chain does. Counts are a's (the scrubber's). */
typedef struct filter_chain {
    al_body_filter a, b;
    al_buf mid;
} filter_chain;

static int chain_run(void *state, const char *in, size_t len, int final, al_buf *out)
{
    filter_chain *c = state;
    al_buf_reset(&c->mid);
    if (c->a.run(c->a.state, in, len, final, &c->mid))
        return AL_ERR_PROTO;
    return c->b.run(c->b.state, c->mid.data ? c->mid.data : "", c->mid.len, final, out);
}

static uint64_t chain_count(void *state)
{
    filter_chain *c = state;
    return c->a.count ? c->a.count(c->a.state) : 0;
}

static void chain_free(void *state)
{
    filter_chain *c = state;
    if (c->a.free)
        c->a.free(c->a.state);
    if (c->b.free)
        c->b.free(c->b.state);
    al_buf_free(&c->mid, 1); /* it held response bytes around a scrubbed credential */
    free(c);
}

static int mcp_list_open(al_req *r, const al_header *h, size_t n)
{
    mcp_list_state *st = calloc(1, sizeof *st);
    if (!st)
        return 0;
    st->r = r;
    al_buf_init(&st->hold, FILTER_BUF_MAX - 1);
    for (size_t i = 0; i < n; i++)
        if (al_http_name_is(h[i].name, h[i].name_len, "content-type") &&
            memmem(h[i].value, h[i].value_len, "event-stream", 12))
            st->sse = 1;
    al_body_filter f = {mcp_list_run, mcp_list_free, st, NULL, NULL};
    if (!r->filter.run) {
        r->filter = f;
        return 1;
    }
    /* the credential scrubber is on too: it runs first, the listing filter on its output */
    filter_chain *c = calloc(1, sizeof *c);
    if (!c) {
        mcp_list_free(st);
        return 0;
    }
    c->a = r->filter;
    c->b = f;
    al_buf_init(&c->mid, FILTER_BUF_MAX);
    r->filter = (al_body_filter){chain_run, chain_free, c, chain_count, NULL};
    return 1;
}

/* Echoed-secret scrubbing of the response head: a header value that contains the
 * credential injected into this request reaches the agent with it replaced (al_scrub,
 * same length), on targets that keep scrub_echoed_credential on. The common case
 * (no header contains it) costs one memmem per header and copies nothing; otherwise
 * *out is a copy of the headers in the request's arena. Returns 0 or AL_ERR_NOMEM. */
static int scrub_head(al_req *r, const al_header *h, size_t n, const al_header **out)
{
    const al_secret_view *sv = &r->grant.sv;
    *out = h;
    if (!r->have_secret || !r->t || !r->t->scrub_echoed_credential || !sv->value ||
        sv->len < AL_SCRUB_MIN_SECRET || sv->len > AL_SCRUB_MAX_SECRET)
        return AL_OK;
    size_t first = n;
    for (size_t i = 0; i < n && first == n; i++)
        if (h[i].value_len >= sv->len && memmem(h[i].value, h[i].value_len, sv->value, sv->len))
            first = i;
    if (first == n)
        return AL_OK;
    al_header *copy = arena_alloc(r, n * sizeof *copy);
    al_scrub sc;
    al_buf v;
    int rc = copy ? al_scrub_init(&sc, sv->value, sv->len, AL_SCRUB_KEEP_LENGTH) : AL_ERR_NOMEM;
    if (rc != AL_OK)
        return rc;
    al_buf_init(&v, 1 << 20);
    memcpy(copy, h, n * sizeof *copy);
    for (size_t i = first; i < n && rc == AL_OK; i++) {
        int hits = al_scrub_value(&sc, h[i].value, h[i].value_len, &v);
        if (hits < 0)
            rc = hits;
        else if (hits > 0 && !(copy[i].value = arena_dup(r, v.data, v.len)))
            rc = AL_ERR_NOMEM;
        else if (hits > 0)
            r->head_scrubbed += (uint32_t)hits;
    }
    al_buf_free(&v, 1); /* it held bytes around the secret */
    al_scrub_free(&sc);
    if (rc == AL_OK)
        *out = copy;
    return rc;
}

/* 1 when a WWW-Authenticate header says the Bearer token itself was refused (RFC 6750
 * 3.1 error="invalid_token"): a 403 that says so is a rejected token, not a scope. */
static int bearer_invalid_token(const al_header *h, size_t n)
{
    static const char want[] = "invalid_token";
    for (size_t i = 0; i < n; i++) {
        if (h[i].name_len != 16 || strncasecmp(h[i].name, "www-authenticate", 16) != 0 ||
            h[i].value_len < 6 || strncasecmp(h[i].value, "bearer", 6) != 0)
            continue;
        for (size_t k = 0; k + sizeof want - 1 <= h[i].value_len; k++)
            if (strncasecmp(h[i].value + k, want, sizeof want - 1) == 0)
                return 1;
    }
    return 0;
}

static void up_on_head(void *arg, int status, const al_header *h, size_t n)
{
    al_req *r = arg;
    int rejected_as = status == 403 && bearer_invalid_token(h, n) ? 401 : status;
    /* 401/403: one retry, if the credential source says one may help (the store: the
     * previous key version in its grace period, else the fallback provider; OAuth: a
     * fresh token). Only a body-less request or one whose body prepare kept can be
     * sent again. The response is dropped; up_on_done starts the retry. */
    if ((status == 401 || status == 403) && r->cq.attempt == AL_CRED_FIRST &&
        (!r->has_body || r->spool) && r->have_secret &&
        al_credsrc_rejected(r->src, &r->cq, &r->grant, rejected_as, &r->retry)) {
        if (!r->retry.provider ||
            (r->retry.provider = arena_dup(r, r->retry.provider, strlen(r->retry.provider)))) {
            r->retrying = 1;
            return;
        }
    }
    const al_header *fe = r->lambda_gateway ? al_http_find(h, n, "x-amz-function-error") : NULL;
    if (fe) {
        /* The function ran and failed: its error document is collected (bounded) and
         * the agent gets a 502 naming it, not a 200 that looks like a result. */
        int kl = (int)(fe->value_len > 31 ? 31 : fe->value_len);
        snprintf(r->fn_kind, sizeof r->fn_kind, "%.*s", kl, fe->value);
        r->fn_error = 1;
        r->upstream_ms = up_ops(r)->elapsed_ms(r->up);
        return;
    }
    if (status == 429 && r->have_secret) {
        int64_t ra = header_int(h, n, "retry-after", 1);
        al_credsrc_rest(r->src, &r->grant, (uint32_t)(ra > 3600 ? 3600 : ra));
        /* then one retry with another awake key of the pool, when the request can be
         * sent again; otherwise the upstream's 429 reaches the agent */
        if (r->cq.attempt == AL_CRED_FIRST && (!r->has_body || r->spool) &&
            al_credsrc_rejected(r->src, &r->cq, &r->grant, status, &r->retry)) {
            r->retrying = 1; /* dropped; up_on_done starts the retry */
            return;
        }
    }
    r->status = status;
    r->upstream_ms = up_ops(r)->elapsed_ms(r->up);
    r->head_sent = 1;
    int64_t clen = header_int(h, n, "content-length", -1);
    /* The length the agent frames the body by is counted here too: never a byte past
     * it, and an end short of it is an abort, whatever the upstream does. */
    int bodyless = status == 204 || status == 304 || (r->method && !strcmp(r->method, "HEAD"));
    r->resp_length = bodyless ? -1 : clen;
    r->resp_sent = 0;
    const al_req_hooks *hk = &r->ctx->hooks;
    if (hk->body_filter && !bodyless) {
        if (hk->body_filter(hk->body_filter_arg, r->t, r->have_secret ? &r->grant.sv : NULL,
                            status, h, n, &r->filter) != AL_OK) {
            memset(&r->filter, 0, sizeof r->filter);
            r->head_sent = 0;
            refuse(r, AL_REF_INTERNAL_ERROR,
                   "the response filter could not start; see airlock's log");
            return;
        }
        if (r->filter.run)
            al_buf_init(&r->filt_out, FILTER_BUF_MAX);
    }
    if (r->mcp_list && !bodyless && status == 200 && mcp_list_open(r, h, n))
        al_buf_init(&r->filt_out, FILTER_BUF_MAX);
    if (scrub_head(r, h, n, &h) != AL_OK) {
        filter_close(r);
        r->head_sent = 0;
        refuse(r, AL_REF_INTERNAL_ERROR, "out of memory scrubbing the response headers");
        return;
    }
    /* airlock's request id (the audit record's) goes back to the agent, as on its own
     * refusals; an upstream's own X-Request-Id stays what it is (SDKs quote it to the
     * vendor), and airlock's then comes as X-Airlock-Request-Id */
    al_header *ids = arena_alloc(r, (n + 1) * sizeof *ids);
    if (ids && r->request_id[0]) {
        memcpy(ids, h, n * sizeof *h);
        ids[n] = al_http_find(h, n, "x-request-id")
                     ? (al_header){"x-airlock-request-id", 20, r->request_id, strlen(r->request_id)}
                     : (al_header){"x-request-id", 12, r->request_id, strlen(r->request_id)};
        h = ids;
        n++;
    }
    r->sink->head(r->arg, status, h, n, clen);
}

/* An interim response (103 Early Hints) from an engine that reports them: passed on
 * before the head, scrubbed like it; not while a retry drops this attempt's answer. */
static void up_on_interim(void *arg, int status, const al_header *h, size_t n)
{
    al_req *r = arg;
    if (r->state != AL_REQ_UPSTREAM || r->head_sent || r->retrying || !r->sink->interim)
        return;
    if (scrub_head(r, h, n, &h) != AL_OK)
        return;
    r->sink->interim(r->arg, status, h, n);
}

/* ---- response-body filter (al_req_hooks.body_filter) ---------------------- */

/* Offers the filter's output not yet delivered: 0 all delivered, AL_ERR_AGAIN, or an
 * error from the sink. */
static int filter_flush(al_req *r)
{
    while (r->filt_off < r->filt_out.len) {
        size_t n = r->filt_out.len - r->filt_off;
        int rc = r->sink->body(r->arg, r->filt_out.data + r->filt_off, n);
        if (rc)
            return rc;
        r->bytes_out += n;
        r->filt_off += n;
    }
    al_buf_reset(&r->filt_out);
    r->filt_off = 0;
    return 0;
}

/* Runs the filter over in[0..len) (final: flush what it held back). Nonzero when it
 * failed or broke its promise (more out than in: the Content-Length would lie). */
static int filter_run(al_req *r, const char *in, size_t len, int final)
{
    size_t before = r->filt_out.len;
    if (r->filter.run(r->filter.state, in, len, final, &r->filt_out))
        return AL_ERR_PROTO;
    r->filt_in += len;
    r->filt_emitted += r->filt_out.len - before;
    if (r->filter.count) /* kept here: the audit record may be written after the close */
        r->body_scrubbed = (uint32_t)r->filter.count(r->filter.state);
    if (r->filt_emitted > r->filt_in || (final && r->filt_emitted != r->filt_in))
        return AL_ERR_PROTO;
    return 0;
}

static void filter_close(al_req *r)
{
    if (r->filter.free)
        r->filter.free(r->filter.state);
    memset(&r->filter, 0, sizeof r->filter);
    al_buf_free(&r->filt_out, 1); /* it may hold what the filter scrubbed around */
}

static int up_on_body(void *arg, const char *data, size_t len)
{
    al_req *r = arg;
    if (r->retrying)
        return 0;
    if (r->fn_error) { /* kept up to fn_body's limit; the rest is dropped */
        size_t room = r->fn_body.max - r->fn_body.len;
        if (al_buf_append(&r->fn_body, data, len < room ? len : room))
            return AL_ERR_NOMEM;
        return 0;
    }
    size_t n = len;
    if (r->resp_length >= 0 && (uint64_t)r->resp_length - r->resp_sent < n)
        n = (size_t)((uint64_t)r->resp_length - r->resp_sent);
    int rc;
    if (r->filter.run) {
        /* what the filter gave last time goes first; the upstream offers `data` again */
        rc = filter_flush(r);
        if (rc == AL_ERR_AGAIN) {
            r->out_paused = 1;
            return AL_ERR_AGAIN;
        }
        if (rc < 0)
            return rc;
        if (n && r->filter.run_spans && r->sink->body_full && r->sink->body_full(r->arg)) {
            /* not taken yet: the spans would only be copied aside (offered again) */
            r->out_paused = 1;
            return AL_ERR_AGAIN;
        }
        if (n && (r->filter.run_spans ? filter_run_spans(r, data, n) : filter_run(r, data, n, 0)))
            return AL_ERR_PROTO;
        r->resp_sent += n;
        rc = filter_flush(r);
        if (rc == AL_ERR_AGAIN)
            r->out_paused = 1; /* taken; held until resume_output */
        else if (rc < 0)
            return rc;
    } else {
        rc = n ? r->sink->body(r->arg, data, n) : 0;
        if (rc == AL_ERR_AGAIN) {
            r->out_paused = 1;
            return AL_ERR_AGAIN;
        }
        if (rc < 0)
            return rc;
        r->bytes_out += n;
        r->resp_sent += n;
    }
    if (n < len) {
        refuse(r, AL_REF_UPSTREAM_BAD_FRAMING,
               "%s:%u sent more body than its Content-Length (%lld bytes)", r->t->host, r->t->port,
               (long long)r->resp_length);
        return AL_ERR_PROTO;
    }
    return 0;
}

static void up_on_trailers(void *arg, const al_header *h, size_t n)
{
    al_req *r = arg;
    const al_header *out = h;
    if (r->retrying || !r->sink->trailers || scrub_head(r, h, n, &out) != AL_OK)
        return; /* out of memory scrubbing them: dropped rather than sent unscrubbed */
    if (!r->filter.run) {
        r->sink->trailers(r->arg, out, n);
        return;
    }
    /* with a body filter, output may still be held: the trailers wait for it (sent
     * before the end by send_held_trailers), or they would overtake it */
    al_header *c = arena_alloc(r, (n ? n : 1) * sizeof *c);
    for (size_t i = 0; c && i < n; i++) {
        c[i].name = arena_dup(r, out[i].name, out[i].name_len);
        c[i].value = arena_dup(r, out[i].value, out[i].value_len);
        c[i].name_len = out[i].name_len;
        c[i].value_len = out[i].value_len;
        if (!c[i].name || !c[i].value)
            c = NULL;
    }
    if (c) {
        r->held_trailers = c;
        r->held_trailer_n = n;
    }
}

/* The trailers kept while the body filter still held output, once it is all out. */
static void send_held_trailers(al_req *r)
{
    if (r->held_trailer_n && r->sink->trailers)
        r->sink->trailers(r->arg, r->held_trailers, r->held_trailer_n);
    r->held_trailer_n = 0;
}

static ssize_t up_read_body(void *arg, char *buf, size_t cap)
{
    al_req *r = arg;
    if (r->spool) {
        size_t got = 0;
        int rc = al_spool_read(&r->spool_rd, buf, cap, &got);
        if (rc == AL_ERR_AGAIN) {
            r->send_paused = 1;
            return AL_ERR_AGAIN;
        }
        if (rc) {
            refuse(r, AL_REF_BODY_SPOOL_FAILED,
                   "airlock could not read back the request body it kept for a retry "
                   "(%s); check the disk of $TMPDIR",
                   al_strerror(rc));
            return rc;
        }
        return (ssize_t)got;
    }
    if (r->ring_len == 0) {
        if (r->body_ended)
            return 0;
        r->send_paused = 1;
        return AL_ERR_AGAIN;
    }
    size_t n = 0;
    while (n < cap && r->ring_len) {
        size_t chunk = AL_REQ_BODY_BUF - r->ring_head;
        if (chunk > r->ring_len)
            chunk = r->ring_len;
        if (chunk > cap - n)
            chunk = cap - n;
        memcpy(buf + n, r->ring + r->ring_head, chunk);
        r->ring_head = (r->ring_head + chunk) % AL_REQ_BODY_BUF;
        r->ring_len -= chunk;
        n += chunk;
    }
    if (r->sink->body_consumed)
        r->sink->body_consumed(r->arg, n);
    return (ssize_t)n;
}

/* A Lambda function error: 502 function_error with the function's errorType and
 * errorMessage (from its error document) beside airlock's message. */
static void function_error(al_req *r)
{
    json_t *doc = json_loadb(r->fn_body.data ? r->fn_body.data : "", r->fn_body.len, 0, NULL);
    const char *type = json_string_value(json_object_get(doc, "errorType"));
    const char *msg = json_string_value(json_object_get(doc, "errorMessage"));
    json_t *extra = json_pack("{s:s, s:s?, s:s?}", "function_error", r->fn_kind, "error_type", type,
                              "error_message", msg);
    char *txt = extra ? json_dumps(extra, JSON_COMPACT) : NULL;
    /* json_dumps gives {...}: the members only go into the refusal body */
    if (txt && strlen(txt) > 2) {
        txt[strlen(txt) - 1] = '\0';
        r->refuse_extra = arena_dup(r, txt + 1, strlen(txt + 1));
    }
    char t[64], m[256];
    snprintf(t, sizeof t, "%s", type ? type : "an error");
    snprintf(m, sizeof m, "%s", msg ? msg : "no errorMessage");
    free(txt);
    json_decref(extra);
    json_decref(doc);
    refuse(r, AL_REF_FUNCTION_ERROR,
           "the Lambda function %s failed (%s): %s: %s; the function's error is in "
           "error_type and error_message",
           r->t->function_arn, r->fn_kind, t, m);
}

static void up_on_done(void *arg, enum al_upstream_error err, const char *detail)
{
    al_req *r = arg;
    r->up = NULL;
    if (!r->upstream_ms)
        r->upstream_ms = elapsed_ms(&r->t0);
    if (r->retrying && err == AL_UPSTREAM_OK) {
        r->retrying = 0;
        release_secret(r);
        al_auth_out_init(&r->inj);
        r->cq = r->retry;
        r->retry_name = al_cred_attempt_retry_name(r->cq.attempt);
        stage_credential(r);
        return;
    }
    if (r->fn_error && err == AL_UPSTREAM_OK) {
        function_error(r);
        return;
    }
    switch (err) {
    case AL_UPSTREAM_OK:
        if (r->resp_length >= 0 && r->resp_sent != (uint64_t)r->resp_length) {
            refuse(r, AL_REF_UPSTREAM_BAD_FRAMING,
                   "%s:%u ended the body after %llu of its %lld bytes (Content-Length)", r->t->host,
                   r->t->port, (unsigned long long)r->resp_sent, (long long)r->resp_length);
            return;
        }
        if (r->filter.run) {
            if (filter_run(r, "", 0, 1)) {
                finish(r, 0);
                return;
            }
            int rc = filter_flush(r);
            if (rc == AL_ERR_AGAIN) {
                r->filt_finish = 1; /* al_request_resume_output delivers and ends */
                return;
            }
            if (rc < 0) {
                finish(r, 0);
                return;
            }
            send_held_trailers(r);
        }
        finish(r, 1);
        return;
    case AL_UPSTREAM_BAD_FRAMING:
        refuse(r, AL_REF_UPSTREAM_BAD_FRAMING,
               "%s:%u sent a response whose length is ambiguous (%s); airlock does not forward "
               "it and closed that connection; fix the upstream's framing headers",
               r->t->host, r->t->port, detail ? detail : "conflicting framing headers");
        return;
    case AL_UPSTREAM_CONNECT:
        refuse(r, AL_REF_UPSTREAM_CONNECT_FAILED, "could not connect to %s:%u (%s): %s", r->t->host,
               r->t->port, r->addr, detail ? detail : "connection failed");
        return;
    case AL_UPSTREAM_TLS:
        refuse(r, AL_REF_UPSTREAM_TLS_FAILED, "TLS with %s:%u failed: %s", r->t->host, r->t->port,
               detail ? detail : "handshake or certificate verification failed");
        return;
    case AL_UPSTREAM_TIMEOUT_CONNECT:
        refuse(r, AL_REF_UPSTREAM_CONNECT_TIMEOUT, "connecting to %s:%u timed out", r->t->host,
               r->t->port);
        return;
    case AL_UPSTREAM_TIMEOUT_FIRST_BYTE:
    case AL_UPSTREAM_TIMEOUT_IDLE:
        refuse(r, AL_REF_UPSTREAM_TIMEOUT, "%s:%u did not answer in time", r->t->host, r->t->port);
        return;
    case AL_UPSTREAM_TIMEOUT_CLIENT:
        /* the agent stalled: a body that stopped coming, a response nobody reads */
        refuse(r, AL_REF_CLIENT_TIMEOUT,
               "%s (limits.idle_timeout_ms); send and read continuously, or retry",
               detail ? detail : "the agent stalled");
        return;
    case AL_UPSTREAM_BUSY:
        r->retry_after = "1";
        refuse(r, AL_REF_UPSTREAM_BUSY,
               "no connection to %s:%u came free within limits.queue_timeout_ms (%s); retry "
               "after a second",
               r->t->host, r->t->port, detail ? detail : "busy");
        return;
    case AL_UPSTREAM_CLIENT_LIMIT:
        r->retry_after = "1";
        refuse(r, AL_REF_CLIENT_OVER_LIMIT,
               "%s (limits.max_upstream_per_client); wait for them to finish or send fewer "
               "at once, then retry",
               detail ? detail : "too many requests in flight");
        return;
    case AL_UPSTREAM_RESET:
    default:
        refuse(r, AL_REF_UPSTREAM_RESET, "%s:%u closed or reset the connection: %s", r->t->host,
               r->t->port, detail ? detail : "reset");
        return;
    }
}

static const al_upstream_cbs upstream_cbs = {
    .on_head = up_on_head,
    .on_body = up_on_body,
    .on_trailers = up_on_trailers,
    .read_body = up_read_body,
    .on_done = up_on_done,
    .on_interim = up_on_interim,
};

/* ---- credential --------------------------------------------------------- */

static void stage_prepare(al_req *r);

/* The target's injector, NULL when it injects nothing (no provider named) or its
 * method is not built (refused here). */
static int target_injector(al_req *r, const al_auth_injector **out)
{
    const al_target *t = r->t;
    *out = NULL;
    /* (iam names a credential source instead when its credentials are not the store's) */
    if (t->auth.provider_count == 0 && !t->auth.fallback_provider && !t->auth.source)
        return 0;
    *out = al_auth_injector_for(t->auth.method);
    if (!*out) {
        refuse(r, AL_REF_AUTH_METHOD_UNAVAILABLE,
               "target '%s' uses auth method %s, which this build cannot inject yet", t->name,
               al_auth_method_name(t->auth.method));
        return -1;
    }
    return 0;
}

/* The credential source answered (now, or later on the loop). */
static void cred_ready(al_req *r, int rc)
{
    const al_target *t = r->t;
    const char *want = r->provider_wanted;
    if (rc == AL_ERR_AGAIN) { /* every key of the pool rests after a 429 */
        uint32_t s = r->grant.retry_after_s ? r->grant.retry_after_s : 1;
        snprintf(r->retry_after_buf, sizeof r->retry_after_buf, "%u", s);
        r->retry_after = r->retry_after_buf;
        memset(&r->grant, 0, sizeof r->grant);
        refuse(r, AL_REF_RATE_LIMITED,
               "every key of target '%s' is resting after the upstream answered 429 (Too Many "
               "Requests); retry after %u seconds, or add a key to its provider pool",
               t->name, s);
        return;
    }
    if (rc == AL_ERR_DB) {
        memset(&r->grant, 0, sizeof r->grant);
        refuse(r, AL_REF_CREDENTIAL_UNAVAILABLE,
               "the credential store is not open, so provider '%s' cannot be used; check "
               "the state dir and the master key, then restart airlock",
               want);
        return;
    }
    if (rc == AL_ERR_NOTFOUND) {
        char hint[512];
        memset(&r->grant, 0, sizeof r->grant);
        refuse(r, AL_REF_CREDENTIAL_UNAVAILABLE,
               "provider '%s' of target '%s' has no credential in the store; create it "
               "with: %s",
               want, t->name, al_table_create_hint(t, want, hint, sizeof hint));
        return;
    }
    if (rc == AL_ERR_INVAL && t->auth.method == AL_AUTH_OAUTH2_3LO && !r->end_user) {
        memset(&r->grant, 0, sizeof r->grant);
        r->denied = 1;
        refuse(r, AL_REF_POLICY_DENIED,
               "target '%s' acts for the end user of each request, and this request names "
               "none (its inbound token has no iss and sub); send a token of the user's own",
               t->name);
        return;
    }
    if (rc == AL_ERR_PERM && r->grant.consent_url) {
        /* OAuth on behalf of a user: no token (yet, or any more) for this user. The
         * agent shows the link to its user and retries once they have consented. */
        char extra[1024];
        al_buf eb;
        al_buf_init(&eb, sizeof extra);
        if (al_buf_append(&eb, "\"authorization_url\":\"", 21) == AL_OK &&
            al_json_escape_append(&eb, r->grant.consent_url, strlen(r->grant.consent_url)) ==
                AL_OK) {
            snprintf(extra, sizeof extra, "%.*s\",\"expires_in\":%u", (int)eb.len, eb.data,
                     r->grant.consent_expires_in);
            r->refuse_extra = arena_dup(r, extra, strlen(extra));
        }
        al_buf_free(&eb, 0);
        const char *why = r->grant.detail;
        unsigned ttl = r->grant.consent_expires_in;
        memset(&r->grant, 0, sizeof r->grant);
        refuse(r, AL_REF_CONSENT_REQUIRED,
               "target '%s' acts for its user with their own account at provider '%s'%s%s%s; "
               "have the user open authorization_url in a browser within %u seconds to "
               "consent, then retry the request",
               t->name, want, why ? " (" : "", why ? why : "", why ? ")" : "", ttl);
        return;
    }
    if (rc && (t->auth.method == AL_AUTH_OAUTH2_2LO || t->auth.method == AL_AUTH_OAUTH2_3LO) &&
        rc != AL_ERR_INVAL && rc != AL_ERR_NOMEM) {
        /* the identity provider failed (detail: its host, error and description) */
        const char *why = r->grant.detail ? r->grant.detail : al_strerror(rc);
        memset(&r->grant, 0, sizeof r->grant);
        refuse(r, rc == AL_ERR_TIMEOUT ? AL_REF_TOKEN_ENDPOINT_TIMEOUT : AL_REF_TOKEN_ENDPOINT_ERROR,
               "could not get an OAuth access token for provider '%s' of target '%s': %s; "
               "check the provider with `airlock identity test-oauth2-credential-provider "
               "--name %s`",
               want, t->name, why, want);
        return;
    }
    if (rc) {
        const char *why = r->grant.detail ? r->grant.detail : al_strerror(rc);
        memset(&r->grant, 0, sizeof r->grant);
        refuse(r, AL_REF_CREDENTIAL_UNAVAILABLE,
               "no credential for provider '%s' of target '%s': %s; retry later or check the "
               "provider",
               want, t->name, why);
        return;
    }
    r->have_secret = 1;
    stage_prepare(r);
}

static void on_cred_done(void *arg, int rc, al_cred_grant *g)
{
    al_req *r = arg;
    r->cred_pending = NULL;
    if (r->state != AL_REQ_CREDENTIAL || r->finished) { /* cannot happen: cancel came first */
        if (rc == AL_OK)
            al_credsrc_release(r->src, g);
        return;
    }
    r->grant = *g;
    cred_ready(r, rc);
}

/* Acquires the credential the target's injector needs: now, or pending with a
 * callback (the request waits in AL_REQ_CREDENTIAL without blocking the worker). */
static void stage_credential(al_req *r)
{
    const al_target *t = r->t;
    const al_auth_injector *inj;
    if (target_injector(r, &inj))
        return;
    if (!inj || !(inj->needs(t) & AL_AUTH_NEEDS_CREDENTIAL)) {
        stage_prepare(r);
        return;
    }
    r->provider_wanted = r->cq.attempt == AL_CRED_GRACE    ? r->cq.provider
                         : r->cq.attempt == AL_CRED_FALLBACK ? t->auth.fallback_provider
                         : t->auth.provider_count ? t->auth.providers[0]
                         : t->auth.source           ? t->auth.source
                                                    : "?";
    r->src = &r->ctx->cred[t->auth.method];
    r->cq.t = t;
    r->cq.user = r->end_user;
    r->cq.table = r->table;
    set_state(r, AL_REQ_CREDENTIAL);
    void *pending = NULL;
    int rc = al_credsrc_acquire(r->src, &r->cq, &r->grant, on_cred_done, r, &pending);
    if (rc == AL_ERR_PENDING) {
        r->cred_pending = pending;
        return;
    }
    cred_ready(r, rc);
}

/* ---- prepare ------------------------------------------------------------ */

static void stage_upstream(al_req *r, al_header *out, size_t n);
static int spool_write(al_req *r, const char *data, size_t len);

/* Where the body goes (see the file comment): the spool when a retry after 401/403
 * could send it again or the injector signs its hash, else the ring. Returns 0 to go
 * on, 1 when prepare waits in SPOOLING for the body's end, -1 when refused. */
static int prepare_body(al_req *r, const al_auth_injector *inj)
{
    const al_target *t = r->t;
    int sign = inj && (inj->needs(t) & AL_AUTH_NEEDS_BODY_SHA256);
    if (!r->has_body || r->body_length == 0)
        return 0;
    if (!r->spool) {
        uint64_t bound;
        if (sign) {
            bound = t->auth.max_body_bytes;
            if (bound == 0 || (r->body_length > 0 && (uint64_t)r->body_length > bound)) {
                refuse(r, AL_REF_BODY_TOO_LARGE,
                       "the request body is larger than targets[].auth.max_body_bytes (%llu), "
                       "the largest body airlock signs for target '%s'",
                       (unsigned long long)bound, t->name);
                return -1;
            }
        } else {
            /* Kept only when it is worth it: a retry is possible for this credential,
             * and the length is known and small enough. Any other body streams. */
            uint64_t max = r->table->limits.retry_body_max_bytes;
            if (r->body_length < 0 || (uint64_t)r->body_length > max ||
                r->cq.attempt != AL_CRED_FIRST || !r->have_secret ||
                !al_credsrc_may_retry(r->src, &r->cq, &r->grant))
                return 0;
            bound = (uint64_t)r->body_length;
        }
        al_spool_cfg cfg = {
            .memory_max = r->table->limits.spool_memory_bytes, .max_bytes = bound, .sha256 = sign};
        if (al_spool_new(&cfg, &r->spool) != AL_OK) {
            refuse(r, AL_REF_INTERNAL_ERROR, "out of memory");
            return -1;
        }
        r->spool_signed = sign;
        /* What arrived while the request resolved and waited for its credential moves
         * over (the upstream has taken nothing yet); the ring is not needed any more. */
        while (r->ring_len) {
            size_t chunk = AL_REQ_BODY_BUF - r->ring_head;
            if (chunk > r->ring_len)
                chunk = r->ring_len;
            if (spool_write(r, r->ring + r->ring_head, chunk))
                return -1;
            r->ring_head = (r->ring_head + chunk) % AL_REQ_BODY_BUF;
            r->ring_len -= chunk;
        }
        free(r->ring);
        r->ring = NULL;
        r->ring_head = 0;
        if (r->body_ended && al_spool_finish(r->spool) != AL_OK) {
            refuse(r, AL_REF_BODY_SPOOL_FAILED, "airlock could not keep the request body");
            return -1;
        }
    }
    al_spool_reader_init(&r->spool_rd, r->spool); /* each attempt from the start */
    if (sign && !al_spool_finished(r->spool)) {
        set_state(r, AL_REQ_SPOOLING); /* al_request_body_end resumes prepare */
        return 1;
    }
    return 0;
}

/* The upstream method: a Lambda invocation is always a POST (the gateway call's body
 * is the event), whatever method the agent used in gateway mode. */
static const char *up_method(const al_req *r)
{
    return r->t->type == AL_TYPE_LAMBDA && r->t->function_arn && r->lambda_gateway ? "POST"
                                                                                  : r->method;
}

/* Headers, injection, URL: the request as it will go. */
static void stage_prepare(al_req *r)
{
    const al_target *t = r->t;
    const al_auth_injector *inj;
    if (target_injector(r, &inj))
        return;
    if (prepare_body(r, inj) != 0)
        return;

    /* Upstream headers: agent's minus hop-by-hop and credentials, plus ours; room for
     * what the injector sets. */
    size_t cap = r->hdr_count + 6 + AL_AUTH_MAX_HEADERS;
    al_header *out = arena_alloc(r, cap * sizeof *out);
    if (!out) {
        refuse(r, AL_REF_INTERNAL_ERROR, "out of memory");
        return;
    }
    size_t n = 0;
    for (size_t i = 0; i < r->hdr_count; i++) {
        const al_header *h = &r->hdrs[i];
        if (al_auth_drop_request_header(t, h->name, h->name_len) ||
            named_by_connection(r, h->name, h->name_len))
            continue;
        /* the end user's name is for airlock (it chose the user's token), never upstream */
        if (r->table->inbound.user_header &&
            al_http_name_is(h->name, h->name_len, r->table->inbound.user_header))
            continue;
        /* inbound JWT: the token airlock read never goes upstream */
        if (r->table->inbound.mode == AL_INBOUND_JWT &&
            (al_http_name_is(h->name, h->name_len, "proxy-authorization") ||
             (r->gateway && al_http_name_is(h->name, h->name_len, "authorization"))))
            continue;
        if (al_http_name_is(h->name, h->name_len, "host") ||
            al_http_name_is(h->name, h->name_len, "content-length") ||
            al_http_name_is(h->name, h->name_len, "expect") ||
            al_http_name_is(h->name, h->name_len, "x-request-id") ||
            (al_http_name_is(h->name, h->name_len, "x-forwarded-for") &&
             r->table->headers.add_x_forwarded_for))
            continue;
        out[n++] = *h;
    }
    if (r->cookie)
        out[n++] = (al_header){"cookie", 6, r->cookie, r->cookie_len};
    out[n++] = (al_header){"x-request-id", 12, r->request_id, strlen(r->request_id)};
    if (r->table->headers.add_via)
        out[n++] = (al_header){"via", 3, "1.1 airlock", 11};
    if (r->table->headers.add_x_forwarded_for) {
        const char *c = r->client;
        const char *colon = strrchr(c, ':');
        size_t cl = colon ? (size_t)(colon - c) : strlen(c);
        const al_header *prev = find_header(r, "x-forwarded-for");
        if (prev) {
            char *v = arena_alloc(r, prev->value_len + 2 + cl + 1);
            if (v) {
                memcpy(v, prev->value, prev->value_len);
                memcpy(v + prev->value_len, ", ", 2);
                memcpy(v + prev->value_len + 2, c, cl);
                out[n++] = (al_header){"x-forwarded-for", 15, v, prev->value_len + 2 + cl};
            }
        } else {
            out[n++] = (al_header){"x-forwarded-for", 15, c, cl};
        }
    }

    const char *path = r->up_path;
    size_t path_len = r->up_path_len;
    if (inj) {
        unsigned needs = inj->needs(t);
        const char *q = memchr(path, '?', path_len);
        al_auth_req ar = {
            .method = up_method(r),
            .scheme = t->scheme,
            .host = t->host,
            .port = t->port,
            .target = path,
            .target_len = path_len,
            .path = path,
            .path_len = q ? (size_t)(q - path) : path_len,
            .query = q ? q + 1 : NULL,
            .query_len = q ? path_len - (size_t)(q + 1 - path) : 0,
            .headers = out,
            .header_count = n,
            .now_ms = now_wall_ms(),
            .body_length = r->has_body ? r->body_length : 0,
        };
        unsigned char digest[32];
        if (needs & AL_AUTH_NEEDS_BODY_SHA256) {
            /* prepare_body kept the whole body and hashed it as it came; no body
             * hashes as "" */
            static const unsigned char empty_sha256[32] = {
                0xe3, 0xb0, 0xc4, 0x42, 0x98, 0xfc, 0x1c, 0x14, 0x9a, 0xfb, 0xf4,
                0xc8, 0x99, 0x6f, 0xb9, 0x24, 0x27, 0xae, 0x41, 0xe4, 0x64, 0x9b,
                0x93, 0x4c, 0xa4, 0x95, 0x99, 0x1b, 0x78, 0x52, 0xb8, 0x55};
            ar.body_sha256 = empty_sha256;
            if (r->spool) {
                if (al_spool_sha256(r->spool, digest) != AL_OK) {
                    refuse(r, AL_REF_INTERNAL_ERROR, "the request body's hash is missing");
                    return;
                }
                ar.body_sha256 = digest;
            }
        }
        const al_secret_view *sv = r->have_secret ? &r->grant.sv : NULL;
        int prc = inj->prepare(t, &ar, sv, &r->inj);
        if (prc == AL_ERR_PERM) {
            refuse(r, AL_REF_PRESIGNED_URL,
                   "target '%s' signs requests itself; a presigned URL (X-Amz-Signature, "
                   "X-Amz-Credential in the query) cannot go through airlock: send the plain "
                   "request (an SDK with any placeholder keys) and airlock signs it",
                   t->name);
            return;
        }
        if (prc == AL_ERR_PROTO && t->auth.method == AL_AUTH_IAM) {
            refuse(r, AL_REF_BAD_REQUEST,
                   "the request body is signed chunk by chunk (x-amz-content-sha256: "
                   "STREAMING-AWS4-...), with signatures airlock cannot redo; turn chunked "
                   "payload signing off in the SDK (unsigned or whole-body payloads are "
                   "signed by airlock)");
            return;
        }
        if (prc) {
            refuse(r, AL_REF_CREDENTIAL_INVALID,
                   "the credential of provider '%s' cannot be sent (bytes not allowed in a "
                   "header or URL); update it in the store",
                   sv && sv->provider ? sv->provider : r->provider_wanted);
            return;
        }
        if (sv && t->auth.method == AL_AUTH_IAM) { /* the audit names the key that signed */
            const char *ak;
            size_t akn;
            if (al_auth_sigv4_access_key(sv, &ak, &akn) == AL_OK)
                snprintf(r->aws_akid, sizeof r->aws_akid, "%.*s", (int)akn, ak);
        }
        if (r->inj.count) { /* what the injector sets replaces the agent's */
            size_t k = 0;
            for (size_t i = 0; i < n; i++)
                if (!al_auth_out_sets(&r->inj, out[i].name, out[i].name_len))
                    out[k++] = out[i];
            n = k;
            for (size_t i = 0; i < r->inj.count; i++)
                out[n++] = (al_header){r->inj.name[i], r->inj.name_len[i], r->inj.value[i].data,
                                       r->inj.value[i].len};
        }
        if (r->inj.target.len) {
            path = r->inj.target.data;
            path_len = r->inj.target.len;
        }
    }

    /* URL: the target's scheme, host and port, set part by part by al_upstream; the
     * agent's checked (and maybe rewritten) path. The path needs a NUL. */
    if (path_len > URL_MAX) {
        refuse(r, AL_REF_URI_TOO_LONG, "the request target is too long");
        return;
    }
    url_wipe(r); /* (a retry's earlier URL was wiped after its start already) */
    if (!(r->url = arena_dup(r, path, path_len))) {
        refuse(r, AL_REF_INTERNAL_ERROR, "out of memory");
        return;
    }
    r->url_len = path_len;
    stage_upstream(r, out, n);
}

/* ---- upstream ----------------------------------------------------------- */

/* The body length the upstream is told: a signed body was spooled whole before the
 * request went, so its length is known even when the agent sent it chunked (AWS wants
 * a Content-Length with a signed payload). */
static int64_t up_body_length(const al_req *r)
{
    if (!r->has_body)
        return 0;
    if (r->spool && r->spool_signed && al_spool_finished(r->spool))
        return (int64_t)al_spool_size(r->spool);
    return r->body_length;
}

_Static_assert((int)AL_UPSTREAM_PROTO_AUTO == (int)AL_UP_PROTO_AUTO &&
                   (int)AL_UPSTREAM_PROTO_H1 == (int)AL_UP_PROTO_H1 &&
                   (int)AL_UPSTREAM_PROTO_H2 == (int)AL_UP_PROTO_H2,
               "targets[].upstream.protocol values are the engine's");

static void stage_upstream(al_req *r, al_header *out, size_t n)
{
    const al_target *t = r->t;
    const al_limits *lim = &r->table->limits;
    char client[sizeof r->client];
    copy_str(client, sizeof client, r->client);
    char *colon = strrchr(client, ':'); /* "ip:port" -> the address counts, not the port */
    if (colon)
        *colon = '\0';
    al_upstream_opts o = {
        .method = up_method(r),
        .scheme = t->scheme,
        .path = r->url,
        .headers = out,
        .header_count = n,
        .connect_host = t->host,
        .connect_port = t->port,
        .connect_addr = r->addr,
        .allow_private = t->allow_private_network,
        .ca_file = t->ca_file,
        .has_body = r->has_body,
        .body_length = up_body_length(r),
        .connect_timeout_ms = lim->connect_timeout_ms,
        .first_byte_timeout_ms = lim->first_byte_timeout_ms,
        .idle_timeout_ms = lim->idle_timeout_ms,
        .client = client,
        .max_per_client = lim->max_upstream_per_client,
        .queue_timeout_ms = lim->queue_timeout_ms,
        .protocol = t->upstream_protocol, /* AL_UPSTREAM_PROTO_* == AL_UP_PROTO_* */
    };
    set_state(r, AL_REQ_UPSTREAM);
    al_upstream_req *up = NULL;
    const al_req_upstream_ops *ops = up_ops(r);
    al_upstream_pool *pool = ops == &al_req_upstream_native
                                 ? (al_upstream_pool *)(void *)r->ctx->native
                                 : r->ctx->pool;
    int rc = ops->start(pool, &o, &upstream_cbs, r, &up);
    if (rc) {
        refuse(r, AL_REF_UPSTREAM_CONNECT_FAILED, "could not start the request to %s:%u: %s",
               t->host, t->port, al_strerror(rc));
        return;
    }
    if (r->state == AL_REQ_UPSTREAM && !r->finished)
        r->up = up;
    /* The copies in the upstream engine are what matters now; the URL may carry a
     * query secret. */
    url_wipe(r);
    al_auth_out_free(&r->inj);
}

static void on_resolved(void *arg, const al_resolve_result *res)
{
    al_req *r = arg;
    r->resolve_handle = NULL;
    if (r->state != AL_REQ_RESOLVING)
        return;
    if (res->err == AL_ERR_EGRESS) {
        refuse(r, AL_REF_EGRESS_DENIED,
               "%s resolves to a %s address (%s), which airlock refuses; set "
               "allow_private_network: true on target '%s' if this is intended",
               r->t->host, al_egress_class_name(res->refused_class), res->addr_text, r->t->name);
        return;
    }
    if (res->err != AL_OK) {
        refuse(r, AL_REF_UPSTREAM_DNS_FAILED, "could not resolve %s: %s", r->t->host,
               al_strerror(res->err));
        return;
    }
    copy_str(r->addr, sizeof r->addr, res->addr_text);
    r->addr_port = r->t->port;
    stage_credential(r);
}

/* ---- resolve ------------------------------------------------------------ */

/* DNS and the egress guard (pending on c-ares; on_resolved goes on). */
static void stage_resolve(al_req *r)
{
    set_state(r, AL_REQ_RESOLVING);
    void *h = al_resolver_resolve(r->ctx->resolver, r->t->host, r->t->port,
                                  r->t->allow_private_network, on_resolved, r);
    if (r->state == AL_REQ_RESOLVING && h)
        r->resolve_handle = h;
}

/* ---- route -------------------------------------------------------------- */

/* Refuses a request target al_reqtarget rejected, saying what to send instead. */
static int refuse_target(al_req *r, enum al_reqtarget_why why)
{
    switch (why) {
    case AL_REQTARGET_BAD_SCHEME:
        refuse(r, AL_REF_BAD_REQUEST,
               "the request's scheme is not http or https; airlock forwards only http:// and "
               "https:// requests");
        break;
    case AL_REQTARGET_BAD_AUTHORITY:
        refuse(r, AL_REF_BAD_REQUEST,
               "invalid host or port in the request: send a host name, an IPv4 address or a "
               "[bracketed] IPv6 address, an optional port from 1 to 65535, and no user "
               "information ('user@')");
        break;
    case AL_REQTARGET_BAD_CHAR:
        refuse(r, AL_REF_BAD_REQUEST,
               "the request target holds a byte a URL may not hold there (a space, control or "
               "non-ASCII byte, '\\', '#', an encoded NUL, or a '%%' not followed by two hex "
               "digits); percent-encode it");
        break;
    case AL_REQTARGET_NOT_NORMALIZED:
        refuse(r, AL_REF_PATH_NOT_NORMALIZED,
               "the request path has a '.' or '..' segment in some spelling (percent-encoded, "
               "double-encoded, split by an encoded '/' or '\\', or before a ';') or starts "
               "with '//'; send the normalised path (airlock never lets a path climb out of a "
               "target's base path)");
        break;
    default:
        refuse(r, AL_REF_BAD_REQUEST,
               "the request target must be a path starting with '/' (gateway mode: "
               "/t/<target>/<path>, or inside a tunnel), an absolute http:// or https:// URL "
               "(forward proxy), or '*' with OPTIONS");
        break;
    }
    return -1;
}

/* Inside an intercepted tunnel: the host is the CONNECT authority's; the request
 * may repeat it (Host, :authority, absolute-form) but never name another. */
static int route_tunnel(al_req *r, const al_reqtarget *rt)
{
    const char *tg = rt->path, *a = rt->authority;
    size_t tl = rt->path_len, alen = rt->authority_len;
    if (!a) {
        const al_header *h = find_header(r, "host");
        if (h) {
            a = h->value;
            alen = h->value_len;
        }
    }
    const char *host = r->tunnel_host;
    size_t hl = strlen(host);
    uint16_t port = r->tunnel_port;
    if (a && alen) {
        const char *h2;
        size_t h2l;
        uint16_t p2;
        if (al_reqtarget_authority(a, alen, r->tunnel_port, &h2, &h2l, &p2) != AL_OK ||
            h2l != hl || strncasecmp(h2, host, hl) != 0 || p2 != port) {
            refuse(r, AL_REF_TUNNEL_HOST_MISMATCH,
                   "this tunnel was opened for %s:%u; a request inside it may not address "
                   "another host",
                   host, port);
            return -1;
        }
    }
    if (tl == 0 || tg[0] != '/') {
        refuse(r, AL_REF_BAD_REQUEST, "inside a tunnel the request target must be a path");
        return -1;
    }
    r->host = r->tunnel_host;
    const char *q = memchr(tg, '?', tl);
    size_t path_only = q ? (size_t)(q - tg) : tl;
    r->t =
        r->table->router ? al_router_find(r->table->router, host, hl, port, tg, path_only) : NULL;
    if (!r->t) {
        refuse(r, AL_REF_UNKNOWN_TARGET, "no target in the table matches %s:%u%.*s", host, port,
               (int)(path_only > 200 ? 200 : path_only), tg);
        return -1;
    }
    r->up_path = (char *)tg;
    r->up_path_len = tl;
    return 0;
}

/* 1 if host[0..hl) names the loopback interface. */
static int is_loopback_name(const char *host, size_t hl)
{
    static const char *const names[] = {"localhost", "127.0.0.1", "::1"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (al_http_name_is(host, hl, names[i]))
            return 1;
    return 0;
}

/* 1 if host:port is the listener address `listen` ("host:port", "[v6]:port",
 * "*:port"): the same host, or a loopback name when airlock listens on loopback or on
 * a wildcard address (0.0.0.0, ::, *), where loopback reaches it too. `at` is listen
 * as the table read it at load (host NULL: not read, read here). */
static int is_listen_address(const char *listen, const al_listen_addr *at, const char *host,
                             size_t hl, uint16_t port)
{
    al_listen_addr now;
    if (!listen)
        return 0;
    if (!at->host) {
        if (al_table_listen_addr(listen, &now) != AL_OK)
            return 0;
        at = &now;
    }
    const char *lh = at->host;
    size_t lhl = at->host_len;
    if (at->port != port)
        return 0;
    if (al_http_name_eq(lh, lhl, host, hl))
        return 1;
    int wildcard = (lhl == 7 && memcmp(lh, "0.0.0.0", 7) == 0) ||
                   (lhl == 2 && memcmp(lh, "::", 2) == 0);
    return (wildcard || is_loopback_name(lh, lhl)) && is_loopback_name(host, hl);
}

/* A forward-proxy request for airlock's own gateway URL
 * (GET http://<listen.proxy or listen.tls>/t/<name>/... sent to the proxy) is a
 * gateway request. It happens whenever NO_PROXY does not exempt airlock's address:
 * `airlock env` keeps a target's host out of NO_PROXY, and a target may live on
 * airlock's own IP. Gateway mode is reachable directly anyway, so this grants
 * nothing new. rt was checked (absolute-form, no user info). */
static int self_gateway(const al_req *r, const al_reqtarget *rt)
{
    if (r->scheme || rt->form != AL_REQTARGET_ABSOLUTE || rt->https || rt->path_len < 3 ||
        memcmp(rt->path, "/t/", 3) != 0)
        return 0;
    const al_listen *l = &r->table->listen;
    return is_listen_address(l->proxy, &l->proxy_addr, rt->host, rt->host_len, rt->port) ||
           is_listen_address(l->tls, &l->tls_addr, rt->host, rt->host_len, rt->port);
}

/* ---- airlock's own endpoints (hooks.local) -------------------------------- */

/* Sends airlock's own page (a redirect, the consent result) for a local request. */
static void local_answer(al_req *r, const al_local_resp *resp)
{
    r->local_pending = NULL;
    if (r->finished || r->head_sent)
        return;
    r->reason = resp->reason;
    if (resp->audit_path) {
        r->up_path = (char *)resp->audit_path; /* read by the audit record only */
        r->up_path_len = strlen(resp->audit_path);
    }
    r->status = resp->status;
    set_state(r, AL_REQ_REFUSING); /* sending a response of airlock's own */
    al_buf_free(&r->refuse_body, 0);
    al_buf_init(&r->refuse_body, 64 * 1024);
    if (resp->body_len && al_buf_append(&r->refuse_body, resp->body, resp->body_len) != AL_OK)
        al_buf_reset(&r->refuse_body);
    const char *ct = resp->content_type ? resp->content_type : "text/html; charset=utf-8";
    al_header h[8] = {
        {"content-type", 12, ct, strlen(ct)},
        {"cache-control", 13, "no-store", 8},
        /* the page's URL holds a code or a link: no Referer carries it anywhere */
        {"referrer-policy", 15, "no-referrer", 11},
        {"x-content-type-options", 22, "nosniff", 7},
        {"content-security-policy", 23, "default-src 'none'", 18},
    };
    size_t hn = 5;
    if (r->request_id[0])
        h[hn++] = (al_header){"x-request-id", 12, r->request_id, strlen(r->request_id)};
    if (resp->location)
        h[hn++] = (al_header){"location", 8, resp->location, strlen(resp->location)};
    if (resp->www_authenticate)
        h[hn++] = (al_header){"www-authenticate", 16, resp->www_authenticate,
                              strlen(resp->www_authenticate)};
    r->head_sent = 1;
    r->sink->head(r->arg, resp->status, h, hn, (int64_t)r->refuse_body.len);
    deliver_refusal(r);
}

static void on_local_done(void *req, const al_local_resp *resp)
{
    local_answer(req, resp);
}

/* A request for airlock's own endpoints: origin-form (or addressed to a listen
 * address: h2's :authority, an absolute URL) outside gateway mode's /t/. Returns 0 when
 * it is not one (routing goes on), 1 when hooks.local took it. */
static int route_local(al_req *r, const al_reqtarget *rt)
{
    const al_req_hooks *hk = &r->ctx->hooks;
    if (!hk->local || rt->path_len < 2 || rt->path[0] != '/')
        return 0;
    int ours = rt->form == AL_REQTARGET_ORIGIN && !r->scheme;
    const al_listen *l = &r->table->listen;
    if (!ours && rt->host_len && !rt->https)
        ours = is_listen_address(l->proxy, &l->proxy_addr, rt->host, rt->host_len, rt->port);
    if (!ours && rt->host_len)
        ours = is_listen_address(l->tls, &l->tls_addr, rt->host, rt->host_len, rt->port);
    if (!ours)
        return 0;
    al_local_req q = {
        .method = r->method,
        .path = rt->path,
        .path_len = rt->path_len,
        .table = r->table,
        .client = r->client,
        .headers = r->hdrs,
        .header_count = r->hdr_count,
    };
    al_local_resp resp;
    memset(&resp, 0, sizeof resp);
    void *pending = NULL;
    r->decided_by = "local";
    int rc = hk->local(hk->local_arg, &q, &resp, on_local_done, r, &pending);
    if (rc == 0) {
        r->decided_by = NULL;
        return 0;
    }
    if (rc == 2) {
        r->local_pending = pending;
        set_state(r, AL_REQ_LOCAL);
        return 1;
    }
    local_answer(r, &resp);
    return 1;
}

/* Every mode checks its request target with al_reqtarget first (forms, schemes,
 * authority, bytes, the path rule), so what reaches the router and the upstream URL
 * is an origin-form path that no decoding lifts above the prefix the router matched. */
static int stage_route(al_req *r)
{
    const al_router *router = r->table->router;
    al_reqtarget rt;
    int rc = r->scheme ? al_reqtarget_check_h2(r->method, r->scheme, strlen(r->scheme),
                                               r->authority,
                                               r->authority ? strlen(r->authority) : 0,
                                               r->target, r->target_len, &rt)
                       : al_reqtarget_parse_h1(r->method, r->target, r->target_len, &rt);
    if (rc != AL_OK)
        return refuse_target(r, rt.why);
    if (rt.form == AL_REQTARGET_ASTERISK) {
        refuse(r, AL_REF_BAD_REQUEST,
               "OPTIONS * asks airlock itself and is not forwarded; send OPTIONS with the "
               "target's URL or gateway path");
        return -1;
    }
    if (r->tunnel_host)
        return route_tunnel(r, &rt);
    if (route_local(r, &rt))
        return 1;

    const char *tg = rt.path;
    size_t tl = rt.path_len;
    if ((rt.form == AL_REQTARGET_ORIGIN || self_gateway(r, &rt)) && tl >= 3 &&
        memcmp(tg, "/t/", 3) == 0) {
        const char *name = tg + 3;
        size_t nl = 0;
        while (3 + nl < tl && name[nl] != '/' && name[nl] != '?')
            nl++;
        r->t = router ? al_router_find_name(router, name, nl) : NULL;
        if (!r->t) {
            refuse(r, AL_REF_NO_SUCH_TARGET,
                   "there is no target named '%.*s' in the table; gateway URLs are "
                   "/t/<target>/<path>",
                   (int)(nl > 100 ? 100 : nl), name);
            return -1;
        }
        const char *rest = name + nl;
        size_t rl = tl - 3 - nl;
        const char *bp = r->t->base_path ? r->t->base_path : "";
        if (r->t->type == AL_TYPE_LAMBDA && r->t->function_arn) {
            /* Any gateway call of a function invokes it: POST <base>/invocations, the
             * agent's path dropped (its query kept: Qualifier=...). */
            const char *qm = memchr(rest, '?', rl);
            rest = qm ? qm : "";
            rl = qm ? rl - (size_t)(qm - (name + nl)) : 0;
            size_t need = strlen(bp) + 13;
            char *lb = arena_alloc(r, need);
            if (!lb)
                return -1;
            snprintf(lb, need, "%s/invocations", bp);
            bp = lb;
            r->lambda_gateway = 1;
        }
        size_t bl = strlen(bp);
        char *p = arena_alloc(r, bl + rl + 2);
        if (!p)
            return -1;
        memcpy(p, bp, bl);
        size_t o = bl;
        if (!r->lambda_gateway && (rl == 0 || rest[0] == '?'))
            p[o++] = '/';
        memcpy(p + o, rest, rl);
        o += rl;
        p[o] = '\0';
        enum al_reqtarget_why why;
        if (al_reqtarget_path(p, o, &why) != AL_OK) /* base + rest: e.g. a leading "//" */
            return refuse_target(r, why);
        r->up_path = p;
        r->up_path_len = o;
        r->host = r->t->host;
        r->gateway = 1;
        return 0;
    }

    const char *path = rt.path;
    size_t plen = rt.path_len;
    if (rt.form == AL_REQTARGET_ORIGIN && !r->scheme) {
        refuse(r, AL_REF_BAD_REQUEST,
               "airlock serves two kinds of request: as a forward proxy, send the absolute "
               "URL (GET http://host/path, e.g. curl -x http://this-proxy http://host/path), "
               "or in gateway mode call /t/<target>/<path> on this address");
        return -1;
    }
    if (rt.host_len == 0) {
        refuse(r, AL_REF_BAD_REQUEST,
               "an HTTP/2 request through the forward proxy needs :authority (the target's "
               "host); in gateway mode call /t/<target>/<path>");
        return -1;
    }
    const char *host = rt.host;
    size_t hl = rt.host_len;
    uint16_t port = rt.port;
    r->host = arena_dup(r, host, hl);
    if (plen == 0 || path[0] == '?') { /* "http://host" or "http://host?q" */
        char *p = arena_alloc(r, plen + 2);
        if (!p)
            return -1;
        p[0] = '/';
        memcpy(p + 1, path, plen);
        p[plen + 1] = '\0';
        path = p;
        plen++;
    }
    const char *q = memchr(path, '?', plen);
    size_t path_only = q ? (size_t)(q - path) : plen;
    r->t = router ? al_router_find(router, host, hl, port, path, path_only) : NULL;
    if (!r->t) {
        refuse(r, AL_REF_UNKNOWN_TARGET,
               "no target in the table matches %.*s:%u%.*s; airlock only forwards to its "
               "targets",
               (int)(hl > 200 ? 200 : hl), host, port, (int)(path_only > 200 ? 200 : path_only),
               path);
        return -1;
    }
    r->up_path = (char *)path;
    r->up_path_len = plen;
    return 0;
}

/* ---- decide ------------------------------------------------------------- */

/* The policy decision point: ctx->hooks.decide, or allow (the route decided: the
 * table has a target for it). 0 to go on, -1 refused. */
static void decide_req_fill(al_req *r, const al_target *t, const char *host, uint16_t port,
                            al_decide_req *q)
{
    *q = (al_decide_req){
        .method = r->method,
        .target = t,
        .host = host,
        .port = port,
        .path = r->up_path,
        .path_len = r->up_path_len,
        .headers = r->hdrs,
        .header_count = r->hdr_count,
        .client = r->client,
        .protocol = r->protocol,
        .in_tunnel = r->tunnel_host != NULL,
        .table = r->table,
        .gateway = r->gateway,
        .tunnel_authorization = r->tunnel_auth,
        .tunnel_authorization_len = r->tunnel_auth_len,
        .mcp_tool = r->mcp_tool_now, /* the body check's second decision */
    };
}

static int stage_decide(al_req *r, const al_target *t, const char *host, uint16_t port)
{
    const al_req_hooks *hk = &r->ctx->hooks;
    al_decision d = {.allow = 1, .decided_by = "route", .refusal = AL_REF_POLICY_DENIED};
    if (hk->decide) {
        al_decide_req q;
        decide_req_fill(r, t, host, port, &q);
        if (hk->decide(hk->decide_arg, &q, &d) != AL_OK) {
            d.allow = 0;
            d.decided_by = "policy";
            d.refusal = AL_REF_INTERNAL_ERROR;
            d.message = "the policy decision point failed; see airlock's log";
        }
    }
    r->decided_by = d.decided_by ? d.decided_by : "policy";
    if (d.rule)
        r->rule = arena_dup(r, d.rule, strnlen(d.rule, 256));
    if (d.principal)
        r->principal = arena_dup(r, d.principal, strnlen(d.principal, 256));
    if (d.principal_iss)
        r->principal_iss = arena_dup(r, d.principal_iss, strnlen(d.principal_iss, 512));
    if (d.principal_sub)
        r->principal_sub = arena_dup(r, d.principal_sub, strnlen(d.principal_sub, 512));
    if (d.principal_client_id)
        r->principal_client_id =
            arena_dup(r, d.principal_client_id, strnlen(d.principal_client_id, 512));
    if (d.end_user)
        r->end_user = arena_dup(r, d.end_user, strnlen(d.end_user, 1100));
    r->mcp_inspect = d.inspect_mcp_body && t && t->type == AL_TYPE_MCP_SERVER;
    if (d.allow) {
        /* audit.on_failure: deny — nothing is forwarded while the log may not record
         * it (the writer's flag: its last write failed or its queue is nearly full) */
        if (r->table->audit.on_failure == AL_AUDIT_ON_FAILURE_DENY && r->ctx->audit &&
            !al_audit_writable(r->ctx->audit)) {
            r->retry_after = "1";
            refuse(r, AL_REF_AUDIT_UNAVAILABLE,
                   "airlock cannot write its audit log right now (audit.on_failure: deny), so "
                   "it forwards nothing; retry later, and tell airlock's operator");
            return -1;
        }
        return 0;
    }
    if (r->mcp_tool_now) {
        size_t n = 0;
        r->mcp_error = al_mcp_error_response(r->mcp_id, AL_MCP_POLICY_ERROR,
                                             d.message ? d.message : "not allowed by policy", &n);
    }
    if (d.challenge) {
        r->challenge = arena_dup(r, d.challenge, strnlen(d.challenge, 1024));
        r->challenge_name = d.refusal == AL_REF_PROXY_AUTH_REQUIRED ? "proxy-authenticate"
                                                                    : "www-authenticate";
    }
    r->denied = 1;
    refuse(r, d.refusal, "%s",
           d.message ? d.message : "airlock's policy does not allow this request");
    return -1;
}

/* The MCP body check (the policy limits tools here): every tools/call of the
 * JSON-RPC body (one message or a batch) is decided by the hook; the first denied one
 * is answered with a JSON-RPC error and nothing goes upstream. Then stage_resolve. */
static void mcp_check(al_req *r)
{
    r->mcp_wait = 0;
    char *body = malloc(r->ring_len ? r->ring_len : 1);
    if (!body) {
        refuse(r, AL_REF_INTERNAL_ERROR, "out of memory");
        return;
    }
    for (size_t i = 0; i < r->ring_len; i++)
        body[i] = r->ring[(r->ring_head + i) % AL_REQ_BODY_BUF];
    al_mcp_calls calls;
    int rc = al_mcp_parse_calls(body, r->ring_len, &calls);
    free(body);
    if (rc != AL_OK) {
        refuse(r, AL_REF_BAD_REQUEST,
               "the policy limits MCP tools for this target, and the request body is not "
               "JSON-RPC airlock can read (%s)",
               al_strerror(rc));
        return;
    }
    uint16_t port = r->tunnel_host ? r->tunnel_port : r->t->port;
    int denied = 0;
    for (size_t i = 0; i < calls.count && !denied; i++) {
        r->mcp_tool_now = calls.names[i];
        r->mcp_id = calls.ids[i];
        denied = stage_decide(r, r->t, r->host, port) != 0;
    }
    r->mcp_tool_now = NULL;
    r->mcp_id = NULL;
    r->mcp_list = calls.lists_tools;
    al_mcp_calls_free(&calls);
    if (!denied)
        stage_resolve(r);
}

void al_request_start(al_req *r, int has_body, int64_t body_length)
{
    r->has_body = has_body;
    r->body_length = body_length;
    if (!r->method || !r->target || !r->target_len) {
        refuse(r, AL_REF_BAD_REQUEST, "the request has no method or path");
        return;
    }
    if (stage_route(r) != 0)
        return;
    if (stage_decide(r, r->t, r->host, r->tunnel_host ? r->tunnel_port : r->t->port) != 0)
        return;
    uint64_t maxb = r->table->limits.max_body_bytes;
    if (maxb && body_length > 0 && (uint64_t)body_length > maxb) {
        refuse(r, AL_REF_BODY_TOO_LARGE,
               "the request body (%lld bytes) is larger than limits.max_body_bytes (%llu)",
               (long long)body_length, (unsigned long long)maxb);
        return;
    }
    if (r->mcp_inspect && has_body) {
        if (body_length > (int64_t)AL_REQ_BODY_BUF) {
            refuse(r, AL_REF_BODY_TOO_LARGE,
                   "an MCP request body over %d bytes cannot be checked against the policy's "
                   "mcp_tools",
                   AL_REQ_BODY_BUF);
            return;
        }
        r->mcp_wait = 1; /* decided again once the body is here */
        if (!r->body_ended)
            return;
        mcp_check(r);
        return;
    }
    stage_resolve(r);
}

/* ---- CONNECT -------------------------------------------------------------- */

static int passthrough_match(const al_table *t, const char *host, size_t hl)
{
    for (size_t i = 0; i < t->egress.passthrough_count; i++) {
        const char *p = t->egress.passthrough[i];
        size_t pl = strlen(p);
        if (pl > 2 && p[0] == '*' && p[1] == '.') {
            /* "*.example.com" matches names below example.com, not example.com itself */
            if (hl > pl - 1 && strncasecmp(host + hl - (pl - 1), p + 1, pl - 1) == 0)
                return 1;
        } else if (pl == hl && strncasecmp(p, host, hl) == 0) {
            return 1;
        }
    }
    return 0;
}

enum al_connect_verdict al_request_connect(al_req *r, const char *authority, size_t len,
                                           int nested, int can_intercept)
{
    char host[256];
    al_reqtarget rt;
    if (al_reqtarget_parse_h1("CONNECT", authority, len, &rt) != AL_OK ||
        rt.host_len >= sizeof host) {
        refuse(r, AL_REF_BAD_REQUEST,
               "CONNECT needs host:port (a host name, IPv4 or [IPv6] address, no user "
               "information, and a port from 1 to 65535)");
        return AL_CONNECT_REFUSED;
    }
    size_t hl = rt.host_len;
    uint16_t port = rt.port;
    memcpy(host, rt.host, hl);
    host[hl] = '\0';
    if (nested) {
        refuse(r, AL_REF_BAD_REQUEST, "CONNECT inside a tunnel is not accepted");
        return AL_CONNECT_REFUSED;
    }
    const al_table *t = r->table;
    const al_target *tg =
        t->router ? al_router_find_authority(t->router, host, hl, port) : NULL;
    int pass = !tg && passthrough_match(t, host, hl);
    if (!tg && !pass) {
        refuse(r, AL_REF_UNKNOWN_TARGET,
               "CONNECT to %s:%u is refused: no target and no egress.passthrough entry "
               "matches it",
               host, (unsigned)port);
        return AL_CONNECT_REFUSED;
    }
    if (stage_decide(r, tg, host, port) != 0)
        return AL_CONNECT_REFUSED;
    if (tg && !can_intercept) {
        refuse(r, AL_REF_INTERCEPTION_UNAVAILABLE,
               "airlock has no CA to intercept TLS for %s; create one with: airlock ca init, "
               "then restart airlock",
               host);
        return AL_CONNECT_REFUSED;
    }
    return tg ? AL_CONNECT_INTERCEPT : AL_CONNECT_PASSTHROUGH;
}

/* ---- body --------------------------------------------------------------- */

size_t al_request_body_room(const al_req *r)
{
    if (r->state == AL_REQ_REFUSING || r->state == AL_REQ_DONE)
        return AL_REQ_BODY_BUF; /* the body is being discarded */
    if (r->spool) /* kept whole: the write checks its bound */
        return AL_REQ_BODY_BUF;
    return AL_REQ_BODY_BUF - r->ring_len;
}

/* Keeps bytes in the spool; they count as consumed at once. */
static int spool_write(al_req *r, const char *data, size_t len)
{
    int rc = al_spool_write(r->spool, data, len);
    if (rc == AL_ERR_TOOBIG && r->spool_signed) {
        refuse(r, AL_REF_BODY_TOO_LARGE,
               "the request body is larger than targets[].auth.max_body_bytes (%llu), the "
               "largest body airlock signs for target '%s'",
               (unsigned long long)r->t->auth.max_body_bytes, r->t->name);
        return rc;
    }
    if (rc == AL_ERR_TOOBIG) { /* a kept body is exactly its declared length */
        refuse(r, AL_REF_BAD_REQUEST, "the request body is longer than its Content-Length");
        return rc;
    }
    if (rc) {
        const char *why = rc == AL_ERR_IO ? strerror(errno) : al_strerror(rc); /* errno kept */
        al_log(AL_LOG_WARN, "request.spool_failed", "target=%s error=%s", r->t->name, why);
        refuse(r, AL_REF_BODY_SPOOL_FAILED,
               "airlock could not keep the request body (%s); check that $TMPDIR exists and "
               "has free space, or lower limits.retry_body_max_bytes",
               why);
        return rc;
    }
    if (r->sink->body_consumed)
        r->sink->body_consumed(r->arg, len);
    return AL_OK;
}

int al_request_body_write(al_req *r, const char *data, size_t len)
{
    r->bytes_in += len;
    if (r->state == AL_REQ_REFUSING || r->state == AL_REQ_DONE) {
        if (r->sink->body_consumed) /* discarded: the protocol may read on */
            r->sink->body_consumed(r->arg, len);
        return AL_OK;
    }
    uint64_t maxb = r->table->limits.max_body_bytes;
    if (maxb && r->bytes_in > maxb) {
        refuse(r, AL_REF_BODY_TOO_LARGE,
               "the request body is larger than limits.max_body_bytes (%llu)",
               (unsigned long long)maxb);
        return AL_ERR_TOOBIG;
    }
    if (r->spool) {
        if (spool_write(r, data, len))
            return AL_ERR_TOOBIG; /* refused (413, 400, or a disk error): not taken */
        len = 0;                  /* kept; wake a paused upstream below */
    }
    if (len > AL_REQ_BODY_BUF - r->ring_len)
        return AL_ERR_TOOBIG;
    if (r->mcp_wait && r->ring_len + len >= AL_REQ_BODY_BUF) {
        /* the whole body must fit to be checked; the protocol would stop reading */
        refuse(r, AL_REF_BODY_TOO_LARGE,
               "an MCP request body of %d bytes or more cannot be checked against the "
               "policy's mcp_tools",
               AL_REQ_BODY_BUF);
        return AL_ERR_TOOBIG;
    }
    if (len && !r->ring && !(r->ring = malloc(AL_REQ_BODY_BUF)))
        return AL_ERR_NOMEM;
    while (len) {
        size_t tail = (r->ring_head + r->ring_len) % AL_REQ_BODY_BUF;
        size_t chunk = AL_REQ_BODY_BUF - tail;
        if (chunk > len)
            chunk = len;
        memcpy(r->ring + tail, data, chunk);
        r->ring_len += chunk;
        data += chunk;
        len -= chunk;
    }
    if (r->send_paused && r->up) {
        r->send_paused = 0;
        up_ops(r)->resume_send(r->up);
    }
    return AL_OK;
}

static void stage_prepare(al_req *r);

void al_request_body_end(al_req *r)
{
    r->body_ended = 1;
    if (r->mcp_wait && r->state == AL_REQ_NEW) {
        mcp_check(r);
        return;
    }
    if (r->spool && r->state != AL_REQ_REFUSING && r->state != AL_REQ_DONE) {
        int rc = al_spool_finish(r->spool);
        if (rc) {
            refuse(r, AL_REF_BODY_SPOOL_FAILED,
                   "airlock could not keep the request body (%s); free space in $TMPDIR",
                   al_strerror(rc));
            return;
        }
        if (r->state == AL_REQ_SPOOLING) { /* prepare waited for the body's hash */
            stage_prepare(r);
            return;
        }
    }
    if (r->send_paused && r->up) {
        r->send_paused = 0;
        up_ops(r)->resume_send(r->up);
    }
}

void al_request_resume_output(al_req *r)
{
    if (r->state == AL_REQ_REFUSING && !r->finished) {
        deliver_refusal(r);
        return;
    }
    if (r->filter.run && !r->finished) {
        int rc = filter_flush(r);
        if (rc == AL_ERR_AGAIN)
            return;
        if (rc < 0 || r->filt_finish) {
            if (rc == 0)
                send_held_trailers(r);
            finish(r, rc == 0);
            return;
        }
    }
    if (r->out_paused && r->up) {
        r->out_paused = 0;
        up_ops(r)->resume_recv(r->up);
    }
}
