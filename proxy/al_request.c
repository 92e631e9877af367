/* al_request: the request path shared by HTTP/1.1 and HTTP/2 (see al_request.h).
 *
 * Memory: one arena per request (a 4 KiB block inside the request, then chained
 * blocks) holds the copied head, the upstream header list and the URL; it dies
 * with the request. The request body ring is AL_REQ_BODY_BUF bytes, allocated on
 * the first body byte. Buffers holding the injected secret are wiped when freed.
 *
 * States: NEW -> (refused) | RESOLVING -> UPSTREAM -> DONE. Callbacks from the
 * resolver and the upstream may run synchronously inside the call that starts
 * them; `state` is checked after each such call.
 *
 * Audit: one final record per request (write_audit), and a "request_start" record
 * for a request still running after audit.start_record_after_ms: requests wait for
 * it on a per-worker list in start order, so one timer on the worker's loop (armed
 * for the oldest) serves them all, and a request that ends first just leaves the
 * list. The request id is airlock's own, made when the request is; the agent's
 * X-Request-Id is recorded apart (client_request_id) and not forwarded. */
#include "al_request.h"
#include "al_egress.h"
#include "al_errors.h"
#include "al_server.h"
#include "al_worker.h"
#include "common/al_err.h"
#include "common/al_log.h"
#include "common/al_reqtarget.h"
#include "identity/al_cred.h"
#include "policy/al_audit.h"
#include "targets/al_inject.h"
#include "targets/al_router.h"

#include <openssl/crypto.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

enum req_state { REQ_NEW, REQ_RESOLVING, REQ_UPSTREAM, REQ_REFUSING, REQ_DONE };

/* The one retry after a 401/403 (body-less requests): al_cred_select's attempt 1 is
 * the target's fallback_provider; ATTEMPT_GRACE is the same provider's previous
 * version while its rotation grace period lasts (tried first: a rotated key the
 * upstream does not know yet is the likelier cause). */
enum { ATTEMPT_FIRST = 0, ATTEMPT_FALLBACK = 1, ATTEMPT_GRACE = 2 };

typedef struct arena_blk {
    struct arena_blk *next;
    size_t used, cap;
    char data[];
} arena_blk;

struct al_req {
    al_worker *w;
    al_table *table;       /* == slot->table */
    al_worker_table *slot; /* the worker's hold on the table (no atomics) */
    const al_target *t;
    const al_req_sink *sink;
    void *arg;
    const char *protocol;
    char client[64];
    enum req_state state;

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
    char *up_path; /* path[?query] to send upstream (before injection) */
    size_t up_path_len;

    /* body */
    char *ring;
    size_t ring_head, ring_len;
    int has_body, body_ended, send_paused;
    int64_t body_length;
    uint64_t bytes_in, bytes_out;

    /* credential */
    al_cred_snapshot *snap;
    al_secret_view sv;
    int have_secret;
    al_buf inj_value, inj_target, url;
    int attempt, retrying; /* attempt: ATTEMPT_FIRST, _FALLBACK or _GRACE */
    char *grace_provider;  /* ATTEMPT_GRACE: this provider's previous version (arena) */
    uint32_t grace_version;

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
    int64_t resp_length; /* Content-Length the agent was told, -1 none (or no body) */
    uint64_t resp_sent;  /* body bytes passed to the sink */
    const char *reason;
    const char *retry_after; /* a refusal's Retry-After (seconds), or NULL */
    al_buf refuse_body;
    size_t refuse_off;
    char request_id[48];
    struct timespec t0;
    int64_t wall_ms;
    al_req *audit_prev, *audit_next; /* on w->audit_wait_* until a start or final record */
    int audit_waiting;

    arena_blk *blocks;
    union {
        arena_blk blk;
        char bytes[4096];
    } first;
};

/* ---- arena -------------------------------------------------------------- */

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
static void audit_wait_add(al_req *r);
static void audit_wait_remove(al_req *r);

al_req *al_request_new(al_worker *w, const al_req_sink *sink, void *arg, const char *protocol,
                       const char *client)
{
    /* A request is ~5 KiB (its first arena block inline): past malloc's small-size
     * caches, so malloc + free of it cost ~3k instructions; reuse ended ones. */
    al_req *r;
    if (w->free_reqs) {
        struct al_worker_free_req *f = w->free_reqs;
        w->free_reqs = f->next;
        w->free_req_count--;
        r = (al_req *)(void *)f;
    } else if (!(r = malloc(sizeof *r))) {
        return NULL;
    }
    memset(r, 0, offsetof(al_req, first));
    r->first.blk.next = NULL;
    r->first.blk.used = 0;
    r->first.blk.cap = sizeof r->first - sizeof(arena_blk);
    r->blocks = &r->first.blk;
    r->w = w;
    r->slot = al_worker_table_acquire(w);
    r->table = r->slot->table;
    r->sink = sink;
    r->arg = arg;
    r->protocol = protocol;
    r->body_length = -1;
    r->resp_length = -1;
    copy_str(r->client, sizeof r->client, client);
    al_buf_init(&r->inj_value, 16 * 1024);
    al_buf_init(&r->inj_target, 64 * 1024);
    al_buf_init(&r->url, 64 * 1024);
    al_buf_init(&r->refuse_body, 4096);
    clock_gettime(CLOCK_MONOTONIC, &r->t0);
    r->wall_ms = now_wall_ms();
    make_request_id(r);
    audit_wait_add(r);
    w->requests_in_flight++;
    return r;
}

/* airlock's own id for every request (also those refused before their head is
 * complete): 32 hex digits from the CSPRNG. */
static void make_request_id(al_req *r)
{
    unsigned char rnd[16];
    al_worker_random_id(r->w, rnd); /* zeroes on a CSPRNG failure */
    static const char hex[] = "0123456789abcdef";
    for (size_t i = 0; i < sizeof rnd; i++) {
        r->request_id[2 * i] = hex[rnd[i] >> 4];
        r->request_id[2 * i + 1] = hex[rnd[i] & 15];
    }
    r->request_id[32] = '\0';
}

static void release_secret(al_req *r)
{
    al_buf_free(&r->inj_value, 1);
    al_buf_free(&r->inj_target, 1);
    al_buf_free(&r->url, 1);
    if (r->snap)
        al_cred_snapshot_release(r->snap);
    r->snap = NULL;
    r->have_secret = 0;
    memset(&r->sv, 0, sizeof r->sv);
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
               (strncasecmp(tg, "http://", 7) == 0 || strncasecmp(tg, "https://", 8) == 0)) {
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
    rec->provider = r->sv.provider ? r->sv.provider : r->provider_wanted;
    rec->provider_version = r->sv.provider ? r->sv.version : 0;
    rec->method = r->method;
    audit_addressing(r, rec, b);
    if (r->addr[0]) {
        int v6 = strchr(r->addr, ':') != NULL;
        snprintf(b->upstream, sizeof b->upstream, v6 ? "[%s]:%u" : "%s:%u", r->addr,
                 (unsigned)r->addr_port);
        rec->upstream_addr = b->upstream;
    }
    rec->protocol = r->protocol;
    rec->status = r->status;
    rec->bytes_in = r->bytes_in;
    rec->bytes_out = r->bytes_out;
    rec->upstream_ms = r->upstream_ms;
    rec->total_ms = elapsed_ms(&r->t0);
    rec->decision = r->reason ? "deny" : "allow";
    rec->reason = r->reason;
    rec->retry = r->attempt == ATTEMPT_GRACE      ? "grace_previous_version"
                 : r->attempt == ATTEMPT_FALLBACK ? "fallback_provider"
                                                  : NULL;
}

static void write_audit(al_req *r)
{
    if (r->audited)
        return;
    r->audited = 1;
    audit_wait_remove(r);
    al_audit *a = r->w->server ? r->w->server->audit : NULL;
    if (!a)
        return;
    al_audit_request rec;
    audit_bufs b;
    audit_fill(r, &rec, &b);
    al_audit_submit(a, &rec);
}

/* ---- start records ------------------------------------------------------ */

static uint32_t start_record_after_ms(const al_worker *w)
{
    return w->table ? w->table->audit.start_record_after_ms : 0;
}

static void on_audit_start_timer(struct ev_loop *loop, ev_timer *t, int revents);

static void arm_start_timer(al_worker *w, uint32_t in_ms)
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
    al_worker *w = r->w;
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
    al_worker *w = r->w;
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
    al_worker *w = t->data;
    al_audit *a = w->server ? w->server->audit : NULL;
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
        rec.decision = r->reason ? "deny" : "allow";
        al_audit_submit(a, &rec);
    }
}

void al_request_free(al_req *r)
{
    if (!r)
        return;
    if (r->resolve_handle)
        al_resolver_cancel(r->w->resolver, r->resolve_handle);
    if (r->up)
        al_upstream_cancel(r->up);
    r->up = NULL;
    if (!r->finished && !r->reason && r->status == 0)
        r->reason = "client_closed";
    write_audit(r);
    release_secret(r);
    al_buf_free(&r->refuse_body, 0);
    free(r->ring);
    arena_blk *b = r->blocks;
    while (b && b != &r->first.blk) {
        arena_blk *next = b->next;
        free(b);
        b = next;
    }
    al_worker_table_release(r->w, r->slot);
    if (r->w->requests_in_flight)
        r->w->requests_in_flight--;
    al_worker *w = r->w;
    al_worker_request_done(w);
    if (w->free_req_count < AL_WORKER_FREE_REQS) {
        struct al_worker_free_req *f = (struct al_worker_free_req *)(void *)r;
        f->next = w->free_reqs;
        w->free_reqs = f;
        w->free_req_count++;
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
    r->state = REQ_DONE;
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

static void vrefuse(al_req *r, int status, const char *code, const char *fmt, va_list ap)
{
    char msg[1024];
    vsnprintf(msg, sizeof msg, fmt, ap);
    if (r->resolve_handle) {
        al_resolver_cancel(r->w->resolver, r->resolve_handle);
        r->resolve_handle = NULL;
    }
    if (r->up) {
        al_upstream_cancel(r->up);
        r->up = NULL;
    }
    r->reason = code;
    if (r->finished)
        return;
    if (r->head_sent) { /* too late for a JSON body: abort the response */
        finish(r, 0);
        return;
    }
    r->status = status;
    r->state = REQ_REFUSING;
    al_error_json(&r->refuse_body, code, "%s", msg);
    /* RFC 9209 Proxy-Status: the reason reaches clients that never show the body of a
     * refused CONNECT (curl -v, requests' ProxyError). */
    al_buf ps;
    al_buf_init(&ps, 2048);
    int ps_ok = al_proxy_status(&ps, code, status, msg) == AL_OK;
    al_header h[6] = {
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

static void refuse(al_req *r, int status, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void refuse(al_req *r, int status, const char *code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vrefuse(r, status, code, fmt, ap);
    va_end(ap);
}

void al_request_refuse(al_req *r, int status, const char *code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vrefuse(r, status, code, fmt, ap);
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

void al_request_note_done(al_req *r, int status)
{
    r->status = status;
    r->finished = 1;
    r->state = REQ_DONE;
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
        if (r->hdrs[i].name_len == n && strncasecmp(r->hdrs[i].name, name, n) == 0)
            return &r->hdrs[i];
    return NULL;
}

/* Is `name` one of the tokens of the agent's Connection header? */
static int named_by_connection(const al_req *r, const char *name, size_t n)
{
    for (size_t i = 0; i < r->hdr_count; i++) {
        const al_header *h = &r->hdrs[i];
        if (h->name_len != 10 || strncasecmp(h->name, "connection", 10) != 0)
            continue;
        const char *p = h->value, *end = h->value + h->value_len;
        while (p < end) {
            while (p < end && (*p == ' ' || *p == '\t' || *p == ','))
                p++;
            const char *s = p;
            while (p < end && *p != ',' && *p != ' ' && *p != '\t')
                p++;
            if ((size_t)(p - s) == n && strncasecmp(s, name, n) == 0)
                return 1;
        }
    }
    return 0;
}

/* ---- upstream ----------------------------------------------------------- */

static void start_upstream(al_req *r);

static int64_t header_int(const al_header *h, size_t n, const char *name, int64_t dflt)
{
    size_t nl = strlen(name);
    for (size_t i = 0; i < n; i++) {
        if (h[i].name_len != nl || strncasecmp(h[i].name, name, nl) != 0)
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

static void up_on_head(void *arg, int status, const al_header *h, size_t n)
{
    al_req *r = arg;
    if ((status == 401 || status == 403) && r->attempt == ATTEMPT_FIRST && !r->has_body) {
        al_secret_view prev;
        if (r->have_secret && r->snap &&
            al_cred_lookup_previous(r->snap, r->sv.provider, r->sv.version, &prev) == AL_OK &&
            (r->grace_provider = arena_dup(r, prev.provider, strlen(prev.provider)))) {
            r->grace_version = prev.version;
            r->retrying = ATTEMPT_GRACE; /* dropped; on_done retries with that version */
            return;
        }
        if (r->t->auth.fallback_provider) {
            r->retrying = ATTEMPT_FALLBACK; /* dropped; on_done retries with the fallback */
            return;
        }
    }
    if (status == 429 && r->sv.provider && r->w->server->creds) {
        int64_t ra = header_int(h, n, "retry-after", 1);
        al_cred_rest(r->w->server->creds, r->sv.provider, (uint32_t)(ra > 3600 ? 3600 : ra));
    }
    r->status = status;
    r->upstream_ms = al_upstream_elapsed_ms(r->up);
    r->head_sent = 1;
    int64_t clen = header_int(h, n, "content-length", -1);
    /* The length the agent frames the body by is counted here too: never a byte past
     * it, and an end short of it is an abort, whatever the upstream does. */
    int bodyless = status == 204 || status == 304 || (r->method && !strcmp(r->method, "HEAD"));
    r->resp_length = bodyless ? -1 : clen;
    r->resp_sent = 0;
    r->sink->head(r->arg, status, h, n, clen);
}

static int up_on_body(void *arg, const char *data, size_t len)
{
    al_req *r = arg;
    if (r->retrying)
        return 0;
    size_t n = len;
    if (r->resp_length >= 0 && (uint64_t)r->resp_length - r->resp_sent < n)
        n = (size_t)((uint64_t)r->resp_length - r->resp_sent);
    int rc = n ? r->sink->body(r->arg, data, n) : 0;
    if (rc == AL_ERR_AGAIN) {
        r->out_paused = 1;
        return AL_ERR_AGAIN;
    }
    if (rc < 0)
        return rc;
    r->bytes_out += n;
    r->resp_sent += n;
    if (n < len) {
        refuse(r, 502, "upstream_bad_framing",
               "%s:%u sent more body than its Content-Length (%lld bytes)", r->t->host, r->t->port,
               (long long)r->resp_length);
        return AL_ERR_PROTO;
    }
    return 0;
}

static void up_on_trailers(void *arg, const al_header *h, size_t n)
{
    al_req *r = arg;
    if (!r->retrying && r->sink->trailers)
        r->sink->trailers(r->arg, h, n);
}

static ssize_t up_read_body(void *arg, char *buf, size_t cap)
{
    al_req *r = arg;
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

static void up_on_done(void *arg, enum al_upstream_error err, const char *detail)
{
    al_req *r = arg;
    r->up = NULL;
    if (!r->upstream_ms)
        r->upstream_ms = elapsed_ms(&r->t0);
    if (r->retrying && err == AL_UPSTREAM_OK) {
        r->attempt = r->retrying;
        r->retrying = 0;
        release_secret(r);
        al_buf_init(&r->inj_value, 16 * 1024);
        al_buf_init(&r->inj_target, 64 * 1024);
        al_buf_init(&r->url, 64 * 1024);
        start_upstream(r);
        return;
    }
    switch (err) {
    case AL_UPSTREAM_OK:
        if (r->resp_length >= 0 && r->resp_sent != (uint64_t)r->resp_length) {
            refuse(r, 502, "upstream_bad_framing",
                   "%s:%u ended the body after %llu of its %lld bytes (Content-Length)", r->t->host,
                   r->t->port, (unsigned long long)r->resp_sent, (long long)r->resp_length);
            return;
        }
        finish(r, 1);
        return;
    case AL_UPSTREAM_BAD_FRAMING:
        refuse(r, 502, "upstream_bad_framing",
               "%s:%u sent a response whose length is ambiguous (%s); airlock does not forward "
               "it and closed that connection; fix the upstream's framing headers",
               r->t->host, r->t->port, detail ? detail : "conflicting framing headers");
        return;
    case AL_UPSTREAM_CONNECT:
        refuse(r, 502, "upstream_connect_failed", "could not connect to %s:%u (%s): %s", r->t->host,
               r->t->port, r->addr, detail ? detail : "connection failed");
        return;
    case AL_UPSTREAM_TLS:
        refuse(r, 502, "upstream_tls_failed", "TLS with %s:%u failed: %s", r->t->host, r->t->port,
               detail ? detail : "handshake or certificate verification failed");
        return;
    case AL_UPSTREAM_TIMEOUT_CONNECT:
        refuse(r, 504, "upstream_connect_timeout", "connecting to %s:%u timed out", r->t->host,
               r->t->port);
        return;
    case AL_UPSTREAM_TIMEOUT_FIRST_BYTE:
    case AL_UPSTREAM_TIMEOUT_IDLE:
        refuse(r, 504, "upstream_timeout", "%s:%u did not answer in time", r->t->host, r->t->port);
        return;
    case AL_UPSTREAM_TIMEOUT_CLIENT:
        /* the agent stalled: a body that stopped coming, a response nobody reads */
        refuse(r, 408, "client_timeout",
               "%s (limits.idle_timeout_ms); send and read continuously, or retry",
               detail ? detail : "the agent stalled");
        return;
    case AL_UPSTREAM_BUSY:
        r->retry_after = "1";
        refuse(r, 503, "upstream_busy",
               "no connection to %s:%u came free within limits.queue_timeout_ms (%s); retry "
               "after a second",
               r->t->host, r->t->port, detail ? detail : "busy");
        return;
    case AL_UPSTREAM_CLIENT_LIMIT:
        r->retry_after = "1";
        refuse(r, 503, "client_over_limit",
               "%s (limits.max_upstream_per_client); wait for them to finish or send fewer "
               "at once, then retry",
               detail ? detail : "too many requests in flight");
        return;
    case AL_UPSTREAM_RESET:
    default:
        refuse(r, 502, "upstream_reset", "%s:%u closed or reset the connection: %s", r->t->host,
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
};

/* Credential, headers, URL; then hands the request to the upstream pool. */
static void start_upstream(al_req *r)
{
    const al_target *t = r->t;
    al_server *s = r->w->server;
    const char *path = r->up_path;
    size_t path_len = r->up_path_len;
    al_inject_header ih = {NULL, 0};

    if (t->auth.provider_count > 0 || t->auth.fallback_provider) {
        const al_injector *inj = al_injector_for(t->auth.method);
        if (!inj) {
            refuse(r, 502, "auth_method_unavailable",
                   "target '%s' uses auth method %s, which this build cannot inject yet", t->name,
                   al_auth_method_name(t->auth.method));
            return;
        }
        const char *want = r->attempt == ATTEMPT_GRACE ? r->grace_provider
                           : r->attempt                ? t->auth.fallback_provider
                           : (t->auth.provider_count ? t->auth.providers[0] : "?");
        r->provider_wanted = want;
        if (!s->creds) {
            refuse(r, 502, "credential_unavailable",
                   "the credential store is not open, so provider '%s' cannot be used; check "
                   "the state dir and the master key, then restart airlock",
                   want);
            return;
        }
        r->snap = al_cred_cache_acquire(s->creds);
        int rc = r->attempt == ATTEMPT_GRACE
                     ? al_cred_lookup_version(r->snap, r->grace_provider, r->grace_version, &r->sv)
                     : al_cred_select(s->creds, r->snap, t, r->attempt, &r->sv);
        if (rc) {
            char hint[512];
            memset(&r->sv, 0, sizeof r->sv);
            refuse(r, 502, "credential_unavailable",
                   "provider '%s' of target '%s' has no credential in the store; create it "
                   "with: %s",
                   want, t->name, al_table_create_hint(t, want, hint, sizeof hint));
            return;
        }
        r->have_secret = 1;
        if (inj->header(t, &r->sv, &ih, &r->inj_value) ||
            inj->request_target(t, &r->sv, path, path_len, &r->inj_target)) {
            refuse(r, 502, "credential_invalid",
                   "the credential of provider '%s' cannot be sent (bytes not allowed in a "
                   "header or URL); update it in the store",
                   r->sv.provider);
            return;
        }
        if (r->inj_target.len) {
            path = r->inj_target.data;
            path_len = r->inj_target.len;
        }
    }

    /* URL: the target's scheme, host and port, set part by part by al_upstream; the
     * agent's checked (and maybe rewritten) path. The path needs a NUL. */
    int rc = al_buf_append(&r->url, path, path_len);
    if (rc) {
        refuse(r, 414, "uri_too_long", "the request target is too long");
        return;
    }

    /* Upstream headers: agent's minus hop-by-hop and credentials, plus ours. */
    size_t cap = r->hdr_count + 6;
    al_header *out = arena_alloc(r, cap * sizeof *out);
    if (!out) {
        refuse(r, 500, "internal_error", "out of memory");
        return;
    }
    size_t n = 0;
    for (size_t i = 0; i < r->hdr_count; i++) {
        const al_header *h = &r->hdrs[i];
        if (al_inject_drop_request_header(t, h->name, h->name_len) ||
            named_by_connection(r, h->name, h->name_len))
            continue;
        if ((h->name_len == 4 && strncasecmp(h->name, "host", 4) == 0) ||
            (h->name_len == 14 && strncasecmp(h->name, "content-length", 14) == 0) ||
            (h->name_len == 6 && strncasecmp(h->name, "expect", 6) == 0) ||
            (h->name_len == 12 && strncasecmp(h->name, "x-request-id", 12) == 0) ||
            (h->name_len == 15 && strncasecmp(h->name, "x-forwarded-for", 15) == 0 &&
             r->table->headers.add_x_forwarded_for))
            continue;
        if (ih.name && h->name_len == ih.name_len &&
            strncasecmp(h->name, ih.name, ih.name_len) == 0)
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
    if (ih.name)
        out[n++] = (al_header){ih.name, ih.name_len, r->inj_value.data, r->inj_value.len};

    const al_limits *lim = &r->table->limits;
    char client[sizeof r->client];
    copy_str(client, sizeof client, r->client);
    char *colon = strrchr(client, ':'); /* "ip:port" -> the address counts, not the port */
    if (colon)
        *colon = '\0';
    al_upstream_opts o = {
        .method = r->method,
        .scheme = t->scheme,
        .path = r->url.data,
        .headers = out,
        .header_count = n,
        .connect_host = t->host,
        .connect_port = t->port,
        .connect_addr = r->addr,
        .allow_private = t->allow_private_network,
        .ca_file = t->ca_file,
        .has_body = r->has_body,
        .body_length = r->has_body ? r->body_length : 0,
        .connect_timeout_ms = lim->connect_timeout_ms,
        .first_byte_timeout_ms = lim->first_byte_timeout_ms,
        .idle_timeout_ms = lim->idle_timeout_ms,
        .client = client,
        .max_per_client = lim->max_upstream_per_client,
        .queue_timeout_ms = lim->queue_timeout_ms,
    };
    r->state = REQ_UPSTREAM;
    al_upstream_req *up = NULL;
    rc = al_upstream_start(r->w->pool, &o, &upstream_cbs, r, &up);
    if (rc) {
        refuse(r, 502, "upstream_connect_failed", "could not start the request to %s:%u: %s",
               t->host, t->port, al_strerror(rc));
        return;
    }
    if (r->state == REQ_UPSTREAM && !r->finished)
        r->up = up;
    /* The copies in curl are what matters now; the URL may carry a query secret. */
    al_buf_free(&r->url, 1);
    al_buf_free(&r->inj_target, 1);
    al_buf_free(&r->inj_value, 1);
}

static void on_resolved(void *arg, const al_resolve_result *res)
{
    al_req *r = arg;
    r->resolve_handle = NULL;
    if (r->state != REQ_RESOLVING)
        return;
    if (res->err == AL_ERR_EGRESS) {
        refuse(r, 403, "egress_denied",
               "%s resolves to a %s address (%s), which airlock refuses; set "
               "allow_private_network: true on target '%s' if this is intended",
               r->t->host, al_egress_class_name(res->refused_class), res->addr_text, r->t->name);
        return;
    }
    if (res->err != AL_OK) {
        refuse(r, 502, "upstream_dns_failed", "could not resolve %s: %s", r->t->host,
               al_strerror(res->err));
        return;
    }
    copy_str(r->addr, sizeof r->addr, res->addr_text);
    r->addr_port = r->t->port;
    start_upstream(r);
}

/* ---- addressing ------------------------------------------------------- */

/* Refuses a request target al_reqtarget rejected, saying what to send instead. */
static int refuse_target(al_req *r, enum al_reqtarget_why why)
{
    switch (why) {
    case AL_REQTARGET_BAD_SCHEME:
        refuse(r, 400, "bad_request",
               "the request's scheme is not http or https; airlock forwards only http:// and "
               "https:// requests");
        break;
    case AL_REQTARGET_BAD_AUTHORITY:
        refuse(r, 400, "bad_request",
               "invalid host or port in the request: send a host name, an IPv4 address or a "
               "[bracketed] IPv6 address, an optional port from 1 to 65535, and no user "
               "information ('user@')");
        break;
    case AL_REQTARGET_BAD_CHAR:
        refuse(r, 400, "bad_request",
               "the request target holds a byte a URL may not hold there (a space, control or "
               "non-ASCII byte, '\\', '#', an encoded NUL, or a '%%' not followed by two hex "
               "digits); percent-encode it");
        break;
    case AL_REQTARGET_NOT_NORMALIZED:
        refuse(r, 400, "path_not_normalized",
               "the request path has a '.' or '..' segment in some spelling (percent-encoded, "
               "double-encoded, split by an encoded '/' or '\\', or before a ';') or starts "
               "with '//'; send the normalised path (airlock never lets a path climb out of a "
               "target's base path)");
        break;
    default:
        refuse(r, 400, "bad_request",
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
            refuse(r, 403, "tunnel_host_mismatch",
                   "this tunnel was opened for %s:%u; a request inside it may not address "
                   "another host",
                   host, port);
            return -1;
        }
    }
    if (tl == 0 || tg[0] != '/') {
        refuse(r, 400, "bad_request", "inside a tunnel the request target must be a path");
        return -1;
    }
    r->host = r->tunnel_host;
    const char *q = memchr(tg, '?', tl);
    size_t path_only = q ? (size_t)(q - tg) : tl;
    r->t =
        r->table->router ? al_router_find(r->table->router, host, hl, port, tg, path_only) : NULL;
    if (!r->t) {
        refuse(r, 403, "unknown_target", "no target in the table matches %s:%u%.*s", host, port,
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
        if (hl == strlen(names[i]) && strncasecmp(host, names[i], hl) == 0)
            return 1;
    return 0;
}

/* 1 if host:port is the listener address `listen` ("host:port", "[v6]:port",
 * "*:port"): the same host, or a loopback name when airlock listens on loopback or on
 * a wildcard address (0.0.0.0, ::, *), where loopback reaches it too. */
static int is_listen_address(const char *listen, const char *host, size_t hl, uint16_t port)
{
    const char *lh;
    size_t lhl;
    uint16_t lport;
    char any[80];
    if (!listen)
        return 0;
    if (listen[0] == '*') { /* "*:port": every address, as 0.0.0.0 */
        snprintf(any, sizeof any, "0.0.0.0%s", listen + 1);
        listen = any;
    }
    if (al_reqtarget_authority(listen, strlen(listen), 0, &lh, &lhl, &lport) != AL_OK ||
        lport != port)
        return 0;
    if (lhl == hl && strncasecmp(lh, host, hl) == 0)
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
    return is_listen_address(r->table->listen.proxy, rt->host, rt->host_len, rt->port) ||
           is_listen_address(r->table->listen.tls, rt->host, rt->host_len, rt->port);
}

/* Every mode checks its request target with al_reqtarget first (forms, schemes,
 * authority, bytes, the path rule), so what reaches the router and the upstream URL
 * is an origin-form path that no decoding lifts above the prefix the router matched. */
static int route(al_req *r)
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
        refuse(r, 400, "bad_request",
               "OPTIONS * asks airlock itself and is not forwarded; send OPTIONS with the "
               "target's URL or gateway path");
        return -1;
    }
    if (r->tunnel_host)
        return route_tunnel(r, &rt);

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
            refuse(r, 404, "no_such_target",
                   "there is no target named '%.*s' in the table; gateway URLs are "
                   "/t/<target>/<path>",
                   (int)(nl > 100 ? 100 : nl), name);
            return -1;
        }
        const char *rest = name + nl;
        size_t rl = tl - 3 - nl;
        const char *bp = r->t->base_path ? r->t->base_path : "";
        size_t bl = strlen(bp);
        char *p = arena_alloc(r, bl + rl + 2);
        if (!p)
            return -1;
        memcpy(p, bp, bl);
        size_t o = bl;
        if (rl == 0 || rest[0] == '?')
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
        return 0;
    }

    const char *path = rt.path;
    size_t plen = rt.path_len;
    if (rt.form == AL_REQTARGET_ORIGIN && !r->scheme) {
        refuse(r, 400, "bad_request",
               "airlock serves two kinds of request: as a forward proxy, send the absolute "
               "URL (GET http://host/path, e.g. curl -x http://this-proxy http://host/path), "
               "or in gateway mode call /t/<target>/<path> on this address");
        return -1;
    }
    if (rt.host_len == 0) {
        refuse(r, 400, "bad_request",
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
        refuse(r, 403, "unknown_target",
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

void al_request_start(al_req *r, int has_body, int64_t body_length)
{
    r->has_body = has_body;
    r->body_length = body_length;
    if (!r->method || !r->target || !r->target_len) {
        refuse(r, 400, "bad_request", "the request has no method or path");
        return;
    }
    if (route(r) != 0)
        return;
    uint64_t maxb = r->table->limits.max_body_bytes;
    if (maxb && body_length > 0 && (uint64_t)body_length > maxb) {
        refuse(r, 413, "body_too_large",
               "the request body (%lld bytes) is larger than limits.max_body_bytes (%llu)",
               (long long)body_length, (unsigned long long)maxb);
        return;
    }
    r->state = REQ_RESOLVING;
    void *h = al_resolver_resolve(r->w->resolver, r->t->host, r->t->port,
                                  r->t->allow_private_network, on_resolved, r);
    if (r->state == REQ_RESOLVING && h)
        r->resolve_handle = h;
}

/* ---- body --------------------------------------------------------------- */

size_t al_request_body_room(const al_req *r)
{
    if (r->state == REQ_REFUSING || r->state == REQ_DONE)
        return AL_REQ_BODY_BUF; /* the body is being discarded */
    return AL_REQ_BODY_BUF - r->ring_len;
}

int al_request_body_write(al_req *r, const char *data, size_t len)
{
    r->bytes_in += len;
    if (r->state == REQ_REFUSING || r->state == REQ_DONE) {
        if (r->sink->body_consumed) /* discarded: the protocol may read on */
            r->sink->body_consumed(r->arg, len);
        return AL_OK;
    }
    uint64_t maxb = r->table->limits.max_body_bytes;
    if (maxb && r->bytes_in > maxb) {
        refuse(r, 413, "body_too_large",
               "the request body is larger than limits.max_body_bytes (%llu)",
               (unsigned long long)maxb);
        return AL_ERR_TOOBIG;
    }
    if (len > AL_REQ_BODY_BUF - r->ring_len)
        return AL_ERR_TOOBIG;
    if (!r->ring && !(r->ring = malloc(AL_REQ_BODY_BUF)))
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
        al_upstream_resume_send(r->up);
    }
    return AL_OK;
}

void al_request_body_end(al_req *r)
{
    r->body_ended = 1;
    if (r->send_paused && r->up) {
        r->send_paused = 0;
        al_upstream_resume_send(r->up);
    }
}

void al_request_resume_output(al_req *r)
{
    if (r->state == REQ_REFUSING && !r->finished) {
        deliver_refusal(r);
        return;
    }
    if (r->out_paused && r->up) {
        r->out_paused = 0;
        al_upstream_resume_recv(r->up);
    }
}
