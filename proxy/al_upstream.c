/* al_upstream: the upstream client engine — libcurl's multi interface on a libev loop.
 *
 * Owns, per worker, one al_upstream_pool: a CURLM (its connection cache is what
 * reuses upstream connections; HTTP/2 streams share a connection when libcurl can
 * pause one of them without stalling the others, see al_upstream_multiplexes),
 * the ev_io watchers curl asks for through CURLMOPT_SOCKETFUNCTION, one ev_timer for
 * CURLMOPT_TIMERFUNCTION, and free lists of requests and easy handles so a request
 * costs no curl_easy_init on the hot path (handles are curl_easy_reset and set up
 * again).
 *
 * Invariants:
 *  - curl is never re-entered from inside one of its own callbacks. While any curl
 *    callback runs (pool->cb_depth > 0), al_upstream_cancel / resume / start only
 *    record what to do and queue the request on the pool's deferred list; a 0 s
 *    ev_timer applies it from the loop. A request cancelled inside a callback also
 *    makes the callback fail, so curl stops the transfer at once.
 *  - on_done is called exactly once for a request not cancelled, never from inside a
 *    curl callback, and the request is freed right after it returns.
 *  - the connection goes to the checked address only: CURLOPT_RESOLVE pins the name
 *    ("+host:port:addr", replacing any earlier entry for host:port in the multi's DNS
 *    cache), and the open-socket callback refuses any other address or port and,
 *    unless allow_private, any address of a class the egress guard refuses. The URL is
 *    built from its parts (CURLU): its host, port and TLS name are the caller's
 *    connect_host/connect_port, never something parsed out of the path.
 *  - memory per request is bounded: response head and trailers each at most
 *    AL_UPSTREAM_MAX_HEAD bytes / AL_UPSTREAM_MAX_HEADERS lines, plus curl's 16 KiB
 *    receive and 16 KiB upload buffers (HTTP/2: plus curl's 32 KiB connection input
 *    buffer); a paused direction holds only those, the rest stays in the kernel and
 *    TCP pushes back on the upstream.
 *  - request header values (they carry the injected credential) are wiped when the
 *    request ends; they never appear in a detail string.
 *
 * Timeouts, one governing each phase: connect (curl's CURLOPT_CONNECTTIMEOUT_MS,
 * TLS handshake included); while the request body is sent, idle (no byte either way
 * for idle_timeout_ms); from the end of the request to the response head, first
 * byte; after the head, idle. The idle clock keeps running while airlock holds a
 * direction paused because the agent is not sending or not reading: an agent that
 * stalls for idle_timeout_ms ends with AL_UPSTREAM_TIMEOUT_CLIENT, so it cannot
 * hold an upstream slot for ever (a slow agent that still moves bytes restarts it).
 * While a request waits for a slot of its host, queue_timeout_ms bounds the wait.
 * curl's connect deadline has a timer of ours behind it (see arm_connect).
 *
 * Fairness: a host has AL_UPSTREAM_MAX_HOST_CONNECTIONS slots per worker; one client
 * address holds at most max_per_client of them, its further requests wait, and the
 * queue hands a freed slot to the first waiting request whose client is under its
 * cap, so one agent stalling its transfers cannot lock the others out.
 *
 * Known limit (libcurl 7.88): HTTP/2 response trailers that follow a body with a
 * Content-Length are dropped by curl, and otherwise not always passed on; HTTP/1.1
 * chunked trailers always are. A request body is not rewound: when curl must resend
 * it (a reused connection found dead after the body began), the request fails with
 * AL_UPSTREAM_RESET and the caller decides whether it can replay. */
#include "al_upstream.h"
#include "upstream/al_egress.h"
#include "common/al_err.h"
#include "upstream/al_up_admit.h"
#include "upstream/al_up_h1.h"

#include <arpa/inet.h>
#include <curl/curl.h>
#include <stddef.h>
#include <ev.h>
#include <openssl/crypto.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define AL_UPSTREAM_MAX_HEAD    (64 * 1024) /* bytes of response head (names + values) */
#define AL_UPSTREAM_MAX_HEADERS 256         /* response header lines */
#define AL_UPSTREAM_FREE_MAX    256         /* pooled requests kept for reuse */
#define AL_UPSTREAM_LINE_MAX    8192        /* request header line built on the stack */

typedef struct hdr_ent {
    uint32_t name_off, name_len, value_off, value_len;
} hdr_ent;

/* A header block being collected: names and values in one bounded buffer. */
typedef struct hdr_block {
    char *data; /* owned; grows by doubling up to AL_UPSTREAM_MAX_HEAD, kept for reuse */
    size_t len, cap;
    hdr_ent ent[AL_UPSTREAM_MAX_HEADERS];
    size_t count;
} hdr_block;

/* Transfers per upstream host (scheme, name, port) in this pool: at most
 * AL_UPSTREAM_MAX_HOST_CONNECTIONS are in curl at once, the rest wait here in order.
 * Curl has its own queue for a host at its connection cap, but libcurl 7.88 walks
 * that whole queue on every curl_multi_remove_handle and retries a queued transfer
 * against every connection each time one ends: with 500 agent streams on one worker
 * that halved throughput (13k req/s against 31k at 100 streams). A node lives while
 * it has transfers in curl or waiting (the admission itself is upstream/al_up_admit). */
typedef struct host_q {
    struct host_q *next;
    al_up_admit_host adm; /* counted transfers (in curl or about to be added), waiting ones */
    int https;
    unsigned port;
    char host[256]; /* connect_host (a longer one is cut: such names would share a node) */
} host_q;

typedef struct sock_watch {
    ev_io io;
    curl_socket_t fd;
    struct al_upstream_pool *pool;
    struct sock_watch *prev, *next;
} sock_watch;

struct al_upstream_req {
    al_upstream_pool *pool;
    CURL *easy;                           /* owned; returned to the pool's free list with the req */
    struct curl_slist *headers, *resolve; /* owned; header values wiped on free */
    al_upstream_cbs cbs;
    void *arg;

    /* the pinned address and port: the socket curl opens must be exactly these */
    int pin_family;
    unsigned char pin_addr[16];
    uint16_t pin_port;
    CURLU *url; /* owned: the URL built from its parts (CURLOPT_CURLU) */
    int allow_private;
    int user_body;       /* read_body is called */
    int64_t body_length; /* as given; meaningful when user_body */
    uint32_t first_byte_ms, idle_ms, connect_ms;

    ev_timer first_byte_timer, idle_timer, queue_timer, connect_timer;
    ev_tstamp last_activity;
    ev_tstamp handed_at; /* ev_time() when curl got the transfer (connect backstop) */
    struct timespec started;
    uint32_t first_byte_elapsed; /* ms, 0 until the first response byte */

    /* state */
    unsigned added : 1, prereq : 1, body_eof : 1, head_done : 1, send_paused : 1, recv_paused : 1,
        cancelled : 1, done : 1, deferred : 1, want_add : 1, want_send : 1, want_recv : 1,
        got_first_byte : 1;
    host_q *hq;                  /* its host's queue node (NULL before start) */
    al_up_admit_ticket adm;      /* its place in hq's admission (queued: not yet in curl) */
    unsigned resp_h2 : 1;        /* the response came over HTTP/2 ("HTTP/2 200") */
    uint32_t queue_ms;
    enum al_upstream_error fail; /* set by our own callbacks; wins over curl's code */
    int status;
    hdr_block head, trailers;
    char errbuf[CURL_ERROR_SIZE]; /* curl's own message (CURLOPT_ERRORBUFFER) */
    char detail[CURL_ERROR_SIZE]; /* what on_done gets */

    al_upstream_req *prev, *next;   /* pool's live list */
    al_upstream_req *dprev, *dnext; /* pool's deferred list */
};

struct al_upstream_pool {
    struct ev_loop *loop;
    CURLM *multi;
    ev_timer timer;    /* curl's timeout */
    ev_timer deferred; /* 0 s: applies what callbacks could not do in place */
    int cb_depth;      /* > 0 while inside a curl callback */
    int multiplex;     /* HTTP/2 streams share connections (see al_upstream_multiplexes) */
    al_upstream_req *live, *dhead, *dtail;
    al_upstream_req *free_reqs; /* singly linked through next, each with its easy */
    size_t free_count;
    sock_watch *socks;
    host_q *hosts; /* owned */
};

static void check_done(al_upstream_pool *p);
static void update_idle(al_upstream_req *r);
static void deferred_push(al_upstream_req *r);

/* ---- per-host admission ------------------------------------------------------ */

static host_q *host_get(al_upstream_pool *p, const al_upstream_opts *o, int https)
{
    /* compared field by field: an snprintf'd key cost ~1.2k instructions a request */
    size_t n = strnlen(o->connect_host, sizeof((host_q *)0)->host - 1);
    for (host_q *h = p->hosts; h; h = h->next)
        if (h->port == o->connect_port && h->https == https && h->host[n] == '\0' &&
            !memcmp(h->host, o->connect_host, n))
            return h;
    host_q *h = calloc(1, sizeof *h);
    if (!h)
        return NULL;
    h->https = https;
    h->port = o->connect_port;
    memcpy(h->host, o->connect_host, n);
    h->next = p->hosts;
    p->hosts = h;
    return h;
}

static void host_drop_if_unused(al_upstream_pool *p, host_q *h)
{
    if (!al_up_admit_unused(&h->adm))
        return;
    for (host_q **pp = &p->hosts; *pp; pp = &(*pp)->next)
        if (*pp == h) {
            *pp = h->next;
            free(h);
            return;
        }
}

/* The request leaves its host: uncounted (the first waiting one that may run is
 * handed to curl from the loop) or taken off the waiting list. */
static void host_leave(al_upstream_req *r)
{
    host_q *h = r->hq;
    if (!h)
        return;
    r->hq = NULL;
    ev_timer_stop(r->pool->loop, &r->queue_timer);
    al_up_admit_ticket *t = al_up_admit_leave(&h->adm, &r->adm, AL_UPSTREAM_MAX_HOST_CONNECTIONS);
    if (t) {
        al_upstream_req *n = t->owner;
        ev_timer_stop(r->pool->loop, &n->queue_timer);
        n->want_add = 1;
        deferred_push(n);
    }
    host_drop_if_unused(r->pool, h);
}

/* ---- small helpers --------------------------------------------------------- */

static void slist_free_wiped(struct curl_slist *l)
{
    for (struct curl_slist *n = l; n; n = n->next)
        if (n->data)
            OPENSSL_cleanse(n->data, strlen(n->data));
    curl_slist_free_all(l);
}

/* A response never passes on the hop-by-hop headers, nor a Proxy-Authenticate meant
 * for airlock (the shared list is common/al_http's). */
static int is_hop_by_hop(const char *name, size_t len)
{
    return al_http_hop_by_hop(name, len) || al_http_name_is(name, len, "proxy-authenticate");
}

static int name_is(const al_header *h, const char *name)
{
    return al_http_name_is(h->name, h->name_len, name);
}

static int bytes_ok(const char *s, size_t n, int is_name)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '\r' || c == '\n' || c == '\0')
            return 0;
        if (is_name && (c == ':' || c <= ' ' || c >= 0x7f))
            return 0;
    }
    return !is_name || n > 0;
}

static uint32_t ms_since(const struct timespec *t0)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    int64_t ms = (int64_t)(now.tv_sec - t0->tv_sec) * 1000 + (now.tv_nsec - t0->tv_nsec) / 1000000;
    return ms <= 0 ? 1 : (uint32_t)ms;
}

static void deferred_push(al_upstream_req *r)
{
    al_upstream_pool *p = r->pool;
    if (!r->deferred) {
        r->deferred = 1;
        r->dnext = NULL;
        r->dprev = p->dtail;
        if (p->dtail)
            p->dtail->dnext = r;
        else
            p->dhead = r;
        p->dtail = r;
    }
    if (!ev_is_active(&p->deferred)) {
        ev_timer_set(&p->deferred, 0., 0.);
        ev_timer_start(p->loop, &p->deferred);
    }
}

static void deferred_unlink(al_upstream_req *r)
{
    al_upstream_pool *p = r->pool;
    if (!r->deferred)
        return;
    if (r->dprev)
        r->dprev->dnext = r->dnext;
    else
        p->dhead = r->dnext;
    if (r->dnext)
        r->dnext->dprev = r->dprev;
    else
        p->dtail = r->dprev;
    r->deferred = 0;
    r->dprev = r->dnext = NULL;
}

/* Ends a request without any callback: out of curl, out of every list, and back to
 * the free list (or freed). Never called from inside a curl callback. */
static void req_release(al_upstream_req *r)
{
    al_upstream_pool *p = r->pool;
    ev_timer_stop(p->loop, &r->first_byte_timer);
    ev_timer_stop(p->loop, &r->idle_timer);
    ev_timer_stop(p->loop, &r->queue_timer);
    ev_timer_stop(p->loop, &r->connect_timer);
    deferred_unlink(r);
    if (r->prev)
        r->prev->next = r->next;
    else if (p->live == r)
        p->live = r->next;
    if (r->next)
        r->next->prev = r->prev;
    r->prev = r->next = NULL;
    if (r->added)
        curl_multi_remove_handle(p->multi, r->easy);
    r->added = 0;
    host_leave(r);
    slist_free_wiped(r->headers);
    curl_slist_free_all(r->resolve);
    r->headers = r->resolve = NULL;
    if (r->easy)
        curl_easy_reset(r->easy); /* drops curl's copies of the URL (it may hold a key) */
    curl_url_cleanup(r->url);
    r->url = NULL;
    OPENSSL_cleanse(r->errbuf, sizeof r->errbuf);
    OPENSSL_cleanse(r->detail, sizeof r->detail);
    if (r->easy && p->free_count < AL_UPSTREAM_FREE_MAX) {
        r->next = p->free_reqs;
        p->free_reqs = r;
        p->free_count++;
        return;
    }
    if (r->easy)
        curl_easy_cleanup(r->easy);
    free(r->head.data);
    free(r->trailers.data);
    free(r);
}

/* Reports the end and frees. Never called from inside a curl callback. */
static void req_finish(al_upstream_req *r, enum al_upstream_error err, const char *detail)
{
    al_upstream_pool *p = r->pool;
    ev_timer_stop(p->loop, &r->first_byte_timer);
    ev_timer_stop(p->loop, &r->idle_timer);
    ev_timer_stop(p->loop, &r->queue_timer);
    ev_timer_stop(p->loop, &r->connect_timer);
    if (r->added) {
        curl_multi_remove_handle(p->multi, r->easy);
        r->added = 0;
    }
    r->done = 1; /* al_upstream_cancel from on_done is then a no-op */
    if (r->cbs.on_done)
        r->cbs.on_done(r->arg, err, detail);
    req_release(r);
}

/* ---- curl -> libev glue ---------------------------------------------------- */

static void io_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    sock_watch *sw = (sock_watch *)w;
    al_upstream_pool *p = sw->pool;
    int action =
        ((revents & EV_READ) ? CURL_CSELECT_IN : 0) | ((revents & EV_WRITE) ? CURL_CSELECT_OUT : 0);
    int running = 0;
    curl_multi_socket_action(p->multi, sw->fd, action, &running); /* may free sw */
    check_done(p);
}

static void timer_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    al_upstream_pool *p = w->data;
    int running = 0;
    curl_multi_socket_action(p->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    check_done(p);
}

static int sock_cb(CURL *easy, curl_socket_t s, int what, void *userp, void *socketp)
{
    al_upstream_pool *p = userp;
    sock_watch *sw = socketp;
    if (what == CURL_POLL_REMOVE) {
        if (sw) {
            ev_io_stop(p->loop, &sw->io);
            if (sw->prev)
                sw->prev->next = sw->next;
            else
                p->socks = sw->next;
            if (sw->next)
                sw->next->prev = sw->prev;
            curl_multi_assign(p->multi, s, NULL);
            free(sw);
        }
        return 0;
    }
    if (!sw) {
        sw = calloc(1, sizeof *sw);
        if (!sw)
            return -1;
        sw->fd = s;
        sw->pool = p;
        sw->next = p->socks;
        if (p->socks)
            p->socks->prev = sw;
        p->socks = sw;
        ev_init(&sw->io, io_cb);
        curl_multi_assign(p->multi, s, sw);
    }
    int events = ((what & CURL_POLL_IN) ? EV_READ : 0) | ((what & CURL_POLL_OUT) ? EV_WRITE : 0);
    ev_io_stop(p->loop, &sw->io);
    ev_io_set(&sw->io, s, events);
    ev_io_start(p->loop, &sw->io);
    return 0;
}

static int multi_timer_cb(CURLM *multi, long timeout_ms, void *userp)
{
    al_upstream_pool *p = userp;
    ev_timer_stop(p->loop, &p->timer);
    if (timeout_ms >= 0) {
        ev_timer_set(&p->timer, (double)timeout_ms / 1000.0, 0.);
        ev_timer_start(p->loop, &p->timer);
    }
    return 0;
}

/* ---- errors ---------------------------------------------------------------- */

static enum al_upstream_error map_curl_error(al_upstream_req *r, CURLcode rc)
{
    switch (rc) {
    case CURLE_OK:
        return AL_UPSTREAM_OK;
    case CURLE_COULDNT_CONNECT:
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_UNSUPPORTED_PROTOCOL:
    case CURLE_URL_MALFORMAT:
        return AL_UPSTREAM_CONNECT;
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CERTPROBLEM:
    case CURLE_SSL_CIPHER:
    case CURLE_SSL_CACERT_BADFILE:
    case CURLE_SSL_ISSUER_ERROR:
    case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
    case CURLE_SSL_CRL_BADFILE:
    case CURLE_SSL_ENGINE_NOTFOUND:
    case CURLE_SSL_ENGINE_SETFAILED:
    case CURLE_SSL_ENGINE_INITFAILED:
    case CURLE_SSL_INVALIDCERTSTATUS:
    case CURLE_USE_SSL_FAILED:
        return AL_UPSTREAM_TLS;
    case CURLE_OPERATION_TIMEDOUT: {
        /* curl's only deadline is the connect one (TLS handshake included); ours
         * are ev_timers. Still, tell the phases apart from what curl reports. */
        if (!r->prereq)
            return AL_UPSTREAM_TIMEOUT_CONNECT;
        return r->head_done ? AL_UPSTREAM_TIMEOUT_IDLE : AL_UPSTREAM_TIMEOUT_FIRST_BYTE;
    }
    case CURLE_ABORTED_BY_CALLBACK:
        return AL_UPSTREAM_ABORTED;
    default:
        /* RECV/SEND errors, GOT_NOTHING, PARTIAL_FILE, HTTP2, HTTP2_STREAM,
         * WEIRD_SERVER_REPLY, ...: the upstream broke the exchange. */
        return AL_UPSTREAM_RESET;
    }
}

static void fail_with(al_upstream_req *r, enum al_upstream_error err, const char *detail)
{
    if (r->fail == AL_UPSTREAM_OK) {
        r->fail = err;
        snprintf(r->detail, sizeof r->detail, "%s", detail);
    }
}

static void done_msg(al_upstream_req *r, CURLcode rc)
{
    if (r->cancelled) {
        req_release(r);
        return;
    }
    enum al_upstream_error err = r->fail;
    if (err == AL_UPSTREAM_OK) {
        err = map_curl_error(r, rc);
        if (err == AL_UPSTREAM_OK && !r->head_done) {
            err = AL_UPSTREAM_RESET;
            snprintf(r->detail, sizeof r->detail, "upstream closed before a response");
        } else if (err != AL_UPSTREAM_OK) {
            /* curl's message names hosts and phases, never header values */
            snprintf(r->detail, sizeof r->detail, "%s",
                     r->errbuf[0] ? r->errbuf : curl_easy_strerror(rc));
            /* curl refuses some lengths ("-2", empty) before header_cb sees the line */
            if (rc == CURLE_WEIRD_SERVER_REPLY && strstr(r->errbuf, "Content-Length"))
                err = AL_UPSTREAM_BAD_FRAMING;
        }
    }
    if (err == AL_UPSTREAM_OK && r->trailers.count && r->cbs.on_trailers) {
        al_header h[AL_UPSTREAM_MAX_HEADERS];
        for (size_t i = 0; i < r->trailers.count; i++) {
            const hdr_ent *e = &r->trailers.ent[i];
            h[i] = (al_header){r->trailers.data + e->name_off, e->name_len,
                               r->trailers.data + e->value_off, e->value_len};
        }
        r->pool->cb_depth++; /* the caller may cancel here: curl must not be touched */
        r->cbs.on_trailers(r->arg, h, r->trailers.count);
        r->pool->cb_depth--;
        if (r->cancelled) {
            req_release(r);
            return;
        }
    }
    req_finish(r, err, err == AL_UPSTREAM_OK ? NULL : r->detail);
}

static void check_done(al_upstream_pool *p)
{
    CURLMsg *msg;
    int left;
    while ((msg = curl_multi_info_read(p->multi, &left))) {
        if (msg->msg != CURLMSG_DONE)
            continue;
        al_upstream_req *r = NULL;
        curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&r);
        if (r)
            done_msg(r, msg->data.result);
    }
}

/* ---- our timers -------------------------------------------------------------- */

static void first_byte_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    al_upstream_req *r = w->data;
    snprintf(r->detail, sizeof r->detail, "no response within %u ms", r->first_byte_ms);
    req_finish(r, AL_UPSTREAM_TIMEOUT_FIRST_BYTE, r->detail);
}

static void idle_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    al_upstream_req *r = w->data;
    /* the clock is restarted lazily: activity only stamps last_activity */
    ev_tstamp left = r->last_activity + r->idle_ms / 1000.0 - ev_now(loop);
    if (left > 0.0005) {
        ev_timer_set(w, left, 0.);
        ev_timer_start(loop, w);
        return;
    }
    if (r->send_paused || r->recv_paused) {
        /* airlock holds the transfer paused for the agent: the agent stalled */
        snprintf(r->detail, sizeof r->detail, "the agent %s nothing for %u ms",
                 r->recv_paused ? "read" : "sent", r->idle_ms);
        req_finish(r, AL_UPSTREAM_TIMEOUT_CLIENT, r->detail);
        return;
    }
    snprintf(r->detail, sizeof r->detail, "no data for %u ms", r->idle_ms);
    req_finish(r, AL_UPSTREAM_TIMEOUT_IDLE, r->detail);
}

/* A request waited queue_timeout_ms for a slot of its host. */
static void queue_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    al_upstream_req *r = w->data;
    (void)loop;
    (void)revents;
    if (r->cancelled || r->done)
        return;
    int over = al_up_admit_client_over(&r->adm);
    snprintf(r->detail, sizeof r->detail,
             over ? "this client already has %u requests in flight to this upstream"
                  : "all %u upstream connections of this worker are busy",
             over ? r->adm.client_cap : (unsigned)AL_UPSTREAM_MAX_HOST_CONNECTIONS);
    req_finish(r, over ? AL_UPSTREAM_CLIENT_LIMIT : AL_UPSTREAM_BUSY, r->detail);
}

static void update_idle(al_upstream_req *r)
{
    struct ev_loop *loop = r->pool->loop;
    int sending = r->user_body && !r->body_eof;
    /* pauses do not stop the clock (see the top of this file) */
    int want = r->idle_ms && r->prereq && !r->cancelled && (r->head_done || sending);
    if (want && !ev_is_active(&r->idle_timer)) {
        r->last_activity = ev_now(loop);
        ev_timer_set(&r->idle_timer, r->idle_ms / 1000.0, 0.);
        ev_timer_start(loop, &r->idle_timer);
    } else if (!want && ev_is_active(&r->idle_timer)) {
        ev_timer_stop(loop, &r->idle_timer);
    }
}

/* curl's connect timeout, with grace: the backstop below fires only if curl's did not. */
#define CONNECT_GRACE_S 0.1

static void connect_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    al_upstream_req *r = w->data;
    (void)revents;
    if (r->prereq || r->done || r->cancelled)
        return;
    /* measured from the real clock: a timer started while the loop's clock was stale
     * fires early */
    ev_tstamp left = r->handed_at + r->connect_ms / 1000.0 + CONNECT_GRACE_S - ev_time();
    if (left > 0.0005) {
        ev_timer_set(w, left, 0.);
        ev_timer_start(loop, w);
        return;
    }
    snprintf(r->detail, sizeof r->detail, "no connection within %u ms", r->connect_ms);
    req_finish(r, AL_UPSTREAM_TIMEOUT_CONNECT, r->detail);
}

/* The transfer is curl's now: curl's CURLOPT_CONNECTTIMEOUT_MS governs the connect,
 * and this timer backs it up. libcurl 7.88 can lose that timeout: when an earlier
 * timeout of the same transfer fires late (the loop was busy, e.g. loading a CA
 * bundle) within 1 ms of the connect deadline, add_next_timeout() rounds the
 * difference down to 0 ms and drops the connect deadline as past, while
 * Curl_timeleft() still sees 1 ms left; nothing is armed after that, and a
 * handshake the peer never answers waited for ever (test_tls_to_plain_server hung
 * 1 run in 300 under CPU load). */
static void arm_connect(al_upstream_req *r)
{
    r->added = 1;
    if (r->connect_ms && !r->prereq) {
        r->handed_at = ev_time();
        ev_timer_set(&r->connect_timer, r->connect_ms / 1000.0 + CONNECT_GRACE_S, 0.);
        ev_timer_start(r->pool->loop, &r->connect_timer);
    }
}

static void arm_first_byte(al_upstream_req *r)
{
    if (r->first_byte_ms && !r->head_done && !ev_is_active(&r->first_byte_timer)) {
        ev_timer_set(&r->first_byte_timer, r->first_byte_ms / 1000.0, 0.);
        ev_timer_start(r->pool->loop, &r->first_byte_timer);
    }
}

/* ---- curl callbacks ---------------------------------------------------------- */

static curl_socket_t open_socket_cb(void *clientp, curlsocktype purpose, struct curl_sockaddr *a)
{
    al_upstream_req *r = clientp;
    const struct sockaddr *sa = &a->addr;
    const void *raw = NULL;
    size_t raw_len = 0;
    uint16_t port = 0;
    if (sa->sa_family == AF_INET) {
        raw = &((const struct sockaddr_in *)sa)->sin_addr;
        raw_len = 4;
        port = ntohs(((const struct sockaddr_in *)sa)->sin_port);
    } else if (sa->sa_family == AF_INET6) {
        raw = &((const struct sockaddr_in6 *)sa)->sin6_addr;
        raw_len = 16;
        port = ntohs(((const struct sockaddr_in6 *)sa)->sin6_port);
    }
    if (!raw || sa->sa_family != r->pin_family || memcmp(raw, r->pin_addr, raw_len) != 0) {
        fail_with(r, AL_UPSTREAM_CONNECT, "refused: not the checked address");
        return CURL_SOCKET_BAD;
    }
    if (port != r->pin_port) { /* the target's port only, whatever the URL said */
        fail_with(r, AL_UPSTREAM_CONNECT, "refused: not the target's port");
        return CURL_SOCKET_BAD;
    }
    enum al_addr_class c = al_egress_classify(sa);
    if (c != AL_ADDR_PUBLIC && !r->allow_private) {
        char d[96];
        snprintf(d, sizeof d, "refused by the egress guard: %s address", al_egress_class_name(c));
        fail_with(r, AL_UPSTREAM_CONNECT, d);
        return CURL_SOCKET_BAD;
    }
    int fd = socket(a->family, a->socktype | SOCK_CLOEXEC, a->protocol);
    return fd < 0 ? CURL_SOCKET_BAD : fd;
}

static int prereq_cb(void *clientp, char *primary_ip, char *local_ip, int primary_port,
                     int local_port)
{
    al_upstream_req *r = clientp;
    r->prereq = 1;
    ev_timer_stop(r->pool->loop, &r->connect_timer);
    /* with no body to send, the request is out as soon as this returns */
    if (!r->user_body || r->body_length == 0)
        arm_first_byte(r);
    update_idle(r);
    return CURL_PREREQFUNC_OK;
}

static size_t read_cb(char *buf, size_t size, size_t n, void *ud)
{
    al_upstream_req *r = ud;
    size_t cap = size * n;
    if (r->cancelled)
        return CURL_READFUNC_ABORT;
    if (!r->user_body || r->body_eof)
        return 0;
    r->pool->cb_depth++;
    ssize_t got = r->cbs.read_body(r->arg, buf, cap);
    r->pool->cb_depth--;
    if (r->cancelled)
        return CURL_READFUNC_ABORT;
    if (got == AL_ERR_AGAIN) {
        r->send_paused = 1;
        update_idle(r);
        return CURL_READFUNC_PAUSE;
    }
    if (got < 0 || (size_t)got > cap) {
        fail_with(r, AL_UPSTREAM_ABORTED, "request body read failed");
        return CURL_READFUNC_ABORT;
    }
    r->last_activity = ev_now(r->pool->loop);
    if (got == 0) {
        r->body_eof = 1;
        arm_first_byte(r);
        update_idle(r);
    }
    return (size_t)got;
}

static size_t write_cb(char *data, size_t size, size_t n, void *ud)
{
    al_upstream_req *r = ud;
    size_t len = size * n;
    if (r->cancelled)
        return 0;
    if (!r->head_done) {
        fail_with(r, AL_UPSTREAM_RESET, "body before the response head");
        return 0;
    }
    if (!len)
        return 0;
    r->pool->cb_depth++;
    int rc = r->cbs.on_body ? r->cbs.on_body(r->arg, data, len) : 0;
    r->pool->cb_depth--;
    if (r->cancelled)
        return 0;
    if (rc == AL_ERR_AGAIN) {
        r->recv_paused = 1;
        update_idle(r);
        return CURL_WRITEFUNC_PAUSE;
    }
    if (rc < 0) {
        fail_with(r, AL_UPSTREAM_ABORTED, "response body refused");
        return 0;
    }
    r->last_activity = ev_now(r->pool->loop);
    return len;
}

static int block_reserve(hdr_block *b, size_t add)
{
    size_t need = b->len + add;
    if (need > AL_UPSTREAM_MAX_HEAD)
        return AL_ERR_TOOBIG;
    if (need <= b->cap)
        return AL_OK;
    size_t cap = b->cap ? b->cap : 2048;
    while (cap < need)
        cap *= 2;
    char *d = realloc(b->data, cap);
    if (!d)
        return AL_ERR_NOMEM;
    b->data = d;
    b->cap = cap;
    return AL_OK;
}

static int block_add(hdr_block *b, const char *line, size_t len)
{
    int rc;
    if (len && (line[0] == ' ' || line[0] == '\t')) {
        /* obs-fold: the continuation belongs to the last value, which is the tail
         * of the buffer, so it can grow in place */
        if (!b->count)
            return AL_ERR_PROTO;
        while (len && (line[0] == ' ' || line[0] == '\t'))
            line++, len--;
        if ((rc = block_reserve(b, 1 + len)) != AL_OK)
            return rc;
        b->data[b->len++] = ' ';
        memcpy(b->data + b->len, line, len);
        b->len += len;
        b->ent[b->count - 1].value_len += (uint32_t)(len + 1);
        return AL_OK;
    }
    const char *colon = memchr(line, ':', len);
    if (!colon || colon == line)
        return AL_ERR_PROTO;
    size_t nlen = (size_t)(colon - line);
    const char *v = colon + 1, *end = line + len;
    while (v < end && (*v == ' ' || *v == '\t'))
        v++;
    while (end > v && (end[-1] == ' ' || end[-1] == '\t'))
        end--;
    size_t vlen = (size_t)(end - v);
    if (b->count == AL_UPSTREAM_MAX_HEADERS)
        return AL_ERR_TOOBIG;
    if ((rc = block_reserve(b, nlen + vlen)) != AL_OK)
        return rc;
    hdr_ent *e = &b->ent[b->count++];
    e->name_off = (uint32_t)b->len;
    e->name_len = (uint32_t)nlen;
    memcpy(b->data + b->len, line, nlen);
    b->len += nlen;
    e->value_off = (uint32_t)b->len;
    e->value_len = (uint32_t)vlen;
    memcpy(b->data + b->len, v, vlen);
    b->len += vlen;
    return AL_OK;
}

/* Is this header named by a token of a Connection header in the block? */
static int named_by_connection(const hdr_block *b, const char *name, size_t nlen)
{
    for (size_t i = 0; i < b->count; i++) {
        const hdr_ent *e = &b->ent[i];
        if (al_http_name_is(b->data + e->name_off, e->name_len, "connection") &&
            al_http_connection_lists(b->data + e->value_off, e->value_len, name, nlen))
            return 1;
    }
    return 0;
}

/* The framing rules (two lengths, Content-Length with Transfer-Encoding, a coding
 * other than chunked, ...) are the native engine's codec's, upstream/al_up_h1.h:
 * airlock frames the agent's response from what it was told here. */
static int deliver_head(al_upstream_req *r)
{
    al_header all[AL_UPSTREAM_MAX_HEADERS], h[AL_UPSTREAM_MAX_HEADERS];
    size_t n = 0;
    const hdr_block *b = &r->head;
    for (size_t i = 0; i < b->count; i++) {
        const hdr_ent *e = &b->ent[i];
        all[i] = (al_header){b->data + e->name_off, e->name_len, b->data + e->value_off,
                             e->value_len};
    }
    al_up_framing f;
    const char *why = al_up_framing_problem(all, b->count, r->resp_h2, &f);
    if (why) {
        fail_with(r, AL_UPSTREAM_BAD_FRAMING, why);
        return AL_ERR_PROTO; /* curl ends the transfer and closes the connection */
    }
    int cl_done = 0;
    for (size_t i = 0; i < b->count; i++) {
        const al_header *e = &all[i];
        if (is_hop_by_hop(e->name, e->name_len) || named_by_connection(b, e->name, e->name_len))
            continue;
        if (al_http_name_is(e->name, e->name_len, "content-length")) {
            /* one header with one value, however the upstream repeated it */
            if (!cl_done)
                h[n++] = (al_header){e->name, e->name_len, f.text, f.text_len};
            cl_done = 1;
            continue;
        }
        h[n++] = *e;
    }
    r->pool->cb_depth++;
    if (r->cbs.on_head)
        r->cbs.on_head(r->arg, r->status, h, n);
    r->pool->cb_depth--;
    return r->cancelled ? AL_ERR_AGAIN : AL_OK;
}

static size_t header_cb(char *line, size_t size, size_t n, void *ud)
{
    al_upstream_req *r = ud;
    size_t len = size * n;
    if (r->cancelled)
        return 0;
    if (!r->got_first_byte) {
        r->got_first_byte = 1;
        r->first_byte_elapsed = ms_since(&r->started);
    }
    r->last_activity = ev_now(r->pool->loop);
    size_t l = len;
    while (l && (line[l - 1] == '\n' || line[l - 1] == '\r'))
        l--;
    if (r->head_done) {
        /* after the body: trailers (HTTP/1.1 chunked or HTTP/2), reported at the end */
        int rc = l ? block_add(&r->trailers, line, l) : AL_OK;
        if (rc) {
            fail_with(r, AL_UPSTREAM_RESET,
                      rc == AL_ERR_TOOBIG ? "response trailers too large"
                                          : "malformed response trailer");
            return 0;
        }
        return len;
    }
    if (l >= 5 && memcmp(line, "HTTP/", 5) == 0) {
        /* a status line starts a block: "HTTP/1.1 200 OK", "HTTP/2 200" */
        const char *sp = memchr(line, ' ', l);
        int st = 0;
        if (sp && (size_t)(line + l - sp) >= 4) {
            for (int i = 1; i <= 3; i++) {
                char c = sp[i];
                if (c < '0' || c > '9') {
                    st = 0;
                    break;
                }
                st = st * 10 + (c - '0');
            }
        }
        if (st < 100 || st > 999) {
            fail_with(r, AL_UPSTREAM_RESET, "malformed response status line");
            return 0;
        }
        r->status = st;
        r->resp_h2 = l >= 7 && memcmp(line, "HTTP/2 ", 7) == 0;
        r->head.count = 0;
        r->head.len = 0;
        return len;
    }
    if (l == 0) {
        if (r->status >= 100 && r->status < 200)
            return len; /* end of an interim block: wait for the final one */
        if (!r->status) {
            fail_with(r, AL_UPSTREAM_RESET, "response without a status line");
            return 0;
        }
        r->head_done = 1;
        ev_timer_stop(r->pool->loop, &r->first_byte_timer);
        update_idle(r);
        if (deliver_head(r))
            return 0;
        return len;
    }
    if (r->status >= 100 && r->status < 200)
        return len; /* interim headers are not passed on */
    int rc = block_add(&r->head, line, l);
    if (rc) {
        fail_with(r, AL_UPSTREAM_RESET,
                  rc == AL_ERR_TOOBIG ? "response head too large" : "malformed response header");
        return 0;
    }
    return len;
}

/* ---- the deferred queue ------------------------------------------------------ */

static void apply_pause(al_upstream_req *r)
{
    int mask = (r->send_paused ? CURLPAUSE_SEND : 0) | (r->recv_paused ? CURLPAUSE_RECV : 0);
    /* may call write_cb/read_cb synchronously; they raise cb_depth themselves, so a
     * cancel or resume from there is deferred */
    curl_easy_pause(r->easy, mask);
}

static void deferred_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    al_upstream_pool *p = w->data;
    al_upstream_req *r;
    while ((r = p->dhead) != NULL) {
        deferred_unlink(r);
        if (r->cancelled) {
            req_release(r);
            continue;
        }
        if (r->want_add) {
            r->want_add = 0;
            if (curl_multi_add_handle(p->multi, r->easy) != CURLM_OK) {
                snprintf(r->detail, sizeof r->detail, "could not start the transfer");
                req_finish(r, AL_UPSTREAM_CONNECT, r->detail);
                continue;
            }
            arm_connect(r);
        }
        int changed = (r->want_send && r->send_paused) || (r->want_recv && r->recv_paused);
        if (r->want_send)
            r->send_paused = 0;
        if (r->want_recv)
            r->recv_paused = 0;
        r->want_send = r->want_recv = 0;
        if (changed) {
            update_idle(r);
            apply_pause(r);
        }
    }
    check_done(p);
}

/* ---- public ------------------------------------------------------------------ */

/* libcurl before 8.x pauses a multiplexed HTTP/2 stream by pausing the whole
 * nghttp2 session (head-of-line blocking for every stream on the connection), and
 * 7.88 loses wake-ups: with one stream paused another one stalled until its idle
 * timeout in our tests (curl issues #10988, #16955, fixed in later 8.x releases).
 * Backpressure is not optional here, so on such a libcurl each HTTP/2 connection
 * carries one stream at a time: connections are still reused, one after another,
 * and a pause holds back only its own connection. */
int al_upstream_multiplexes(void)
{
    const curl_version_info_data *v = curl_version_info(CURLVERSION_NOW);
    return v && v->version_num >= 0x080e00; /* 8.14.0 */
}

int al_upstream_pool_new(struct ev_loop *loop, al_upstream_pool **out)
{
    int rc = AL_ERR_NOMEM;
    al_upstream_pool *p = NULL;
    if (!loop || !out)
        return AL_ERR_INVAL;
    *out = NULL;
    /* thread-safe and reference-counted in curl >= 7.84, so one call per worker */
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
        return AL_ERR_NOMEM;
    p = calloc(1, sizeof *p);
    if (!p)
        goto fail;
    p->loop = loop;
    p->multi = curl_multi_init();
    if (!p->multi)
        goto fail;
    ev_init(&p->timer, timer_cb);
    p->timer.data = p;
    ev_init(&p->deferred, deferred_cb);
    p->deferred.data = p;
    curl_multi_setopt(p->multi, CURLMOPT_SOCKETFUNCTION, sock_cb);
    curl_multi_setopt(p->multi, CURLMOPT_SOCKETDATA, p);
    curl_multi_setopt(p->multi, CURLMOPT_TIMERFUNCTION, multi_timer_cb);
    curl_multi_setopt(p->multi, CURLMOPT_TIMERDATA, p);
    p->multiplex = al_upstream_multiplexes();
    curl_multi_setopt(p->multi, CURLMOPT_PIPELINING,
                      p->multiplex ? (long)CURLPIPE_MULTIPLEX : (long)CURLPIPE_NOTHING);
    /* A burst of agent streams (1,000 on one h2 connection) must not become a burst
     * of upstream TLS handshakes: past this many transfers to one host a request
     * waits in the pool's host queue (host_q) for one to end (its first-byte timer
     * only starts once it is sent); curl's own cap stays as a backstop. */
    curl_multi_setopt(p->multi, CURLMOPT_MAX_HOST_CONNECTIONS,
                      (long)AL_UPSTREAM_MAX_HOST_CONNECTIONS);
    curl_multi_setopt(p->multi, CURLMOPT_MAXCONNECTS, 256L); /* idle cache */
    *out = p;
    return AL_OK;
fail:
    free(p);
    curl_global_cleanup();
    return rc;
}

void al_upstream_pool_free(al_upstream_pool *p)
{
    if (!p)
        return;
    while (p->live)
        req_release(p->live);
    while (p->dhead)
        req_release(p->dhead); /* started-but-not-added requests sit only here */
    while (p->free_reqs) {
        al_upstream_req *r = p->free_reqs;
        p->free_reqs = r->next;
        curl_easy_cleanup(r->easy);
        free(r->head.data);
        free(r->trailers.data);
        free(r);
    }
    curl_multi_cleanup(p->multi); /* may still report sockets removed */
    while (p->socks) {
        sock_watch *sw = p->socks;
        p->socks = sw->next;
        ev_io_stop(p->loop, &sw->io);
        free(sw);
    }
    ev_timer_stop(p->loop, &p->timer);
    ev_timer_stop(p->loop, &p->deferred);
    free(p);
    curl_global_cleanup();
}

/* Parses an address in text form, with or without IPv6 brackets. */
static int parse_addr(const char *a, int *family, unsigned char *raw)
{
    char tmp[64];
    size_t n = strlen(a);
    if (n >= 2 && a[0] == '[' && a[n - 1] == ']') {
        if (n - 2 >= sizeof tmp)
            return AL_ERR_INVAL;
        memcpy(tmp, a + 1, n - 2);
        tmp[n - 2] = '\0';
        a = tmp;
    }
    if (inet_pton(AF_INET, a, raw) == 1)
        *family = AF_INET;
    else if (inet_pton(AF_INET6, a, raw) == 1)
        *family = AF_INET6;
    else
        return AL_ERR_INVAL;
    return AL_OK;
}

static int pin_address(al_upstream_req *r, const al_upstream_opts *o)
{
    unsigned char lit[16];
    int lit_family = 0;
    int host_is_literal = parse_addr(o->connect_host, &lit_family, lit) == AL_OK;
    r->pin_port = o->connect_port;
    if (!o->connect_addr && !host_is_literal)
        return AL_ERR_INVAL; /* a name and no checked address: nothing to pin */
    if (parse_addr(o->connect_addr ? o->connect_addr : o->connect_host, &r->pin_family,
                   r->pin_addr))
        return AL_ERR_INVAL;
    if (host_is_literal)
        return AL_OK; /* curl does no lookup; the socket check compares the pin */
    char text[INET6_ADDRSTRLEN], entry[512];
    if (!inet_ntop(r->pin_family, r->pin_addr, text, sizeof text))
        return AL_ERR_INVAL;
    int w = snprintf(entry, sizeof entry, r->pin_family == AF_INET6 ? "+%s:%u:[%s]" : "+%s:%u:%s",
                     o->connect_host, (unsigned)o->connect_port, text);
    if (w < 0 || (size_t)w >= sizeof entry)
        return AL_ERR_INVAL;
    r->resolve = curl_slist_append(NULL, entry);
    return r->resolve ? AL_OK : AL_ERR_NOMEM;
}

/* The URL from its parts with CURLU: the target's scheme, host and port, each set on
 * its own; the checked path[?query] goes into the request line as is
 * (CURLOPT_REQUEST_TARGET, set by the caller). Nothing here is parsed as a whole URL,
 * so no byte of the agent's path can become user info, a host or a port (a
 * concatenated "http://host:port" + "@other:9104/x" would have been), and the path
 * keeps its exact bytes (curl 7.88's CURLUPART_PATH would lower-case "%2F"). The
 * TLS name (SNI and certificate verification) is this host. */
#define URL_HOST_MAX 255

static int build_url(al_upstream_req *r, const al_upstream_opts *o, int https)
{
    char host[URL_HOST_MAX + 3], port[8];
    size_t hl = strlen(o->connect_host);
    if (hl == 0 || hl > URL_HOST_MAX || o->connect_port == 0 || o->path[0] != '/')
        return AL_ERR_INVAL;
    for (const char *c = o->path; *c; c++) /* the request line: no space, no control */
        if ((unsigned char)*c <= ' ' || (unsigned char)*c >= 0x7f)
            return AL_ERR_INVAL;
    int v6 = memchr(o->connect_host, ':', hl) != NULL;
    snprintf(host, sizeof host, v6 ? "[%s]" : "%s", o->connect_host);
    snprintf(port, sizeof port, "%u", (unsigned)o->connect_port);
    if (!(r->url = curl_url()))
        return AL_ERR_NOMEM;
    if (curl_url_set(r->url, CURLUPART_SCHEME, https ? "https" : "http", 0) != CURLUE_OK ||
        curl_url_set(r->url, CURLUPART_HOST, host, 0) != CURLUE_OK ||
        curl_url_set(r->url, CURLUPART_PORT, port, 0) != CURLUE_OK)
        return AL_ERR_INVAL;
    return AL_OK;
}

static int build_headers(al_upstream_req *r, const al_upstream_opts *o)
{
    int has_accept = 0, has_expect = 0;
    char stack[AL_UPSTREAM_LINE_MAX];
    for (size_t i = 0; i < o->header_count; i++) {
        const al_header *h = &o->headers[i];
        if (!bytes_ok(h->name, h->name_len, 1) || !bytes_ok(h->value, h->value_len, 0))
            return AL_ERR_INVAL;
        /* curl owns framing and Host: it derives them from the URL and the body */
        if (name_is(h, "host") || name_is(h, "content-length") ||
            (is_hop_by_hop(h->name, h->name_len) &&
             !(name_is(h, "te") && h->value_len == 8 && !strncasecmp(h->value, "trailers", 8))))
            continue;
        has_accept |= name_is(h, "accept");
        has_expect |= name_is(h, "expect");
        size_t need = h->name_len + 2 + h->value_len + 1;
        char *line = need <= sizeof stack ? stack : malloc(need);
        if (!line)
            return AL_ERR_NOMEM;
        memcpy(line, h->name, h->name_len);
        size_t k = h->name_len;
        if (h->value_len) {
            line[k++] = ':';
            line[k++] = ' ';
            memcpy(line + k, h->value, h->value_len);
            k += h->value_len;
        } else {
            line[k++] = ';'; /* curl's way to send a header with an empty value */
        }
        line[k] = '\0';
        struct curl_slist *nl = curl_slist_append(r->headers, line);
        OPENSSL_cleanse(line, k);
        if (line != stack)
            free(line);
        if (!nl)
            return AL_ERR_NOMEM;
        r->headers = nl;
    }
    /* remove curl's defaults the agent did not ask for */
    static const char *const drop[] = {"Accept:", "Expect:"};
    for (int i = 0; i < 2; i++) {
        if ((i == 0 && has_accept) || (i == 1 && has_expect))
            continue;
        struct curl_slist *nl = curl_slist_append(r->headers, drop[i]);
        if (!nl)
            return AL_ERR_NOMEM;
        r->headers = nl;
    }
    return AL_OK;
}

static al_upstream_req *req_get(al_upstream_pool *p)
{
    al_upstream_req *r = p->free_reqs;
    if (r) {
        p->free_reqs = r->next;
        p->free_count--;
        CURL *easy = r->easy;
        memset(r, 0, offsetof(al_upstream_req, head));
        r->head.len = r->head.count = 0;
        r->trailers.len = r->trailers.count = 0;
        memset(r->errbuf, 0, sizeof r->errbuf);
        memset(r->detail, 0, sizeof r->detail);
        r->prev = r->next = r->dprev = r->dnext = NULL;
        r->easy = easy;
    } else {
        r = calloc(1, sizeof *r);
        if (!r)
            return NULL;
        r->easy = curl_easy_init();
        if (!r->easy) {
            free(r);
            return NULL;
        }
    }
    r->pool = p;
    ev_init(&r->first_byte_timer, first_byte_cb);
    r->first_byte_timer.data = r;
    ev_init(&r->idle_timer, idle_cb);
    r->idle_timer.data = r;
    ev_init(&r->queue_timer, queue_cb);
    r->queue_timer.data = r;
    ev_init(&r->connect_timer, connect_cb);
    r->connect_timer.data = r;
    return r;
}

int al_upstream_start(al_upstream_pool *p, const al_upstream_opts *o, const al_upstream_cbs *cbs,
                      void *arg, al_upstream_req **out)
{
    int rc = AL_ERR_INVAL;
    if (!p || !o || !cbs || !out || !o->method || !o->scheme || !o->path || !o->connect_host ||
        !cbs->on_done ||
        (o->has_body && !cbs->read_body) || !o->method[0] ||
        !bytes_ok(o->method, strlen(o->method), 1))
        return AL_ERR_INVAL;
    *out = NULL;
    al_upstream_req *r = req_get(p);
    if (!r)
        return AL_ERR_NOMEM;
    r->cbs = *cbs;
    r->arg = arg;
    r->allow_private = o->allow_private;
    r->user_body = o->has_body != 0;
    r->body_length = o->has_body ? o->body_length : 0;
    r->first_byte_ms = o->first_byte_timeout_ms;
    r->idle_ms = o->idle_timeout_ms;
    r->connect_ms = o->connect_timeout_ms;
    r->queue_ms = o->queue_timeout_ms;
    clock_gettime(CLOCK_MONOTONIC, &r->started);

    int https = strcmp(o->scheme, "https") == 0;
    if (!https && strcmp(o->scheme, "http") != 0) {
        rc = AL_ERR_INVAL;
        goto fail;
    }
    if ((rc = pin_address(r, o)) != AL_OK || (rc = build_url(r, o, https)) != AL_OK ||
        (rc = build_headers(r, o)) != AL_OK)
        goto fail;

    CURL *e = r->easy;
    int bad = 0;
    bad |= curl_easy_setopt(e, CURLOPT_CURLU, r->url) != CURLE_OK;
    bad |= curl_easy_setopt(e, CURLOPT_REQUEST_TARGET, o->path) != CURLE_OK;
    bad |= curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https") != CURLE_OK;
    bad |= curl_easy_setopt(e, CURLOPT_PROXY, "") != CURLE_OK; /* ignore *_proxy env vars */
    bad |= curl_easy_setopt(e, CURLOPT_PRIVATE, (char *)r) != CURLE_OK;
    bad |= curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L) != CURLE_OK;
    bad |= curl_easy_setopt(e, CURLOPT_ERRORBUFFER, r->errbuf) != CURLE_OK;
    bad |= curl_easy_setopt(e, CURLOPT_HTTP_VERSION,
                            https ? (long)CURL_HTTP_VERSION_2TLS : (long)CURL_HTTP_VERSION_1_1) !=
           CURLE_OK;
    if (https) {
        /* wait for a connection that may multiplex rather than open a second one */
        curl_easy_setopt(e, CURLOPT_PIPEWAIT, (long)p->multiplex);
        bad |= curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 1L) != CURLE_OK;
        bad |= curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 2L) != CURLE_OK;
        bad |= curl_easy_setopt(e, CURLOPT_SSLVERSION, (long)CURL_SSLVERSION_TLSv1_2) != CURLE_OK;
        if (o->ca_file)
            bad |= curl_easy_setopt(e, CURLOPT_CAINFO, o->ca_file) != CURLE_OK;
    }
    /* a proxy passes bytes as they are: no decoding, no redirects, no path rewriting */
    bad |= curl_easy_setopt(e, CURLOPT_HTTP_CONTENT_DECODING, 0L) != CURLE_OK;
    bad |= curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L) != CURLE_OK;
    bad |= curl_easy_setopt(e, CURLOPT_PATH_AS_IS, 1L) != CURLE_OK;
    bad |= curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L) != CURLE_OK;
    bad |= curl_easy_setopt(e, CURLOPT_UPLOAD_BUFFERSIZE, 16384L) != CURLE_OK;
    if (r->resolve)
        bad |= curl_easy_setopt(e, CURLOPT_RESOLVE, r->resolve) != CURLE_OK;
    bad |= curl_easy_setopt(e, CURLOPT_OPENSOCKETFUNCTION, open_socket_cb) != CURLE_OK;
    bad |= curl_easy_setopt(e, CURLOPT_OPENSOCKETDATA, r) != CURLE_OK;
    bad |= curl_easy_setopt(e, CURLOPT_PREREQFUNCTION, prereq_cb) != CURLE_OK;
    bad |= curl_easy_setopt(e, CURLOPT_PREREQDATA, r) != CURLE_OK;
    if (o->connect_timeout_ms)
        bad |=
            curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, (long)o->connect_timeout_ms) != CURLE_OK;
    bad |= curl_easy_setopt(e, CURLOPT_HTTPHEADER, r->headers) != CURLE_OK;
    bad |= curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, header_cb) != CURLE_OK;
    bad |= curl_easy_setopt(e, CURLOPT_HEADERDATA, r) != CURLE_OK;
    bad |= curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, write_cb) != CURLE_OK;
    bad |= curl_easy_setopt(e, CURLOPT_WRITEDATA, r) != CURLE_OK;
    bad |= curl_easy_setopt(e, CURLOPT_READFUNCTION, read_cb) != CURLE_OK;
    bad |= curl_easy_setopt(e, CURLOPT_READDATA, r) != CURLE_OK;

    const char *m = o->method;
    int bodyless_write =
        !o->has_body && (!strcmp(m, "POST") || !strcmp(m, "PUT") || !strcmp(m, "PATCH"));
    if (!strcmp(m, "HEAD")) {
        bad |= curl_easy_setopt(e, CURLOPT_NOBODY, 1L) != CURLE_OK;
    } else if (!strcmp(m, "GET") && !o->has_body) {
        bad |= curl_easy_setopt(e, CURLOPT_HTTPGET, 1L) != CURLE_OK;
    } else {
        bad |= curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, m) != CURLE_OK;
    }
    if (o->has_body || bodyless_write) {
        /* upload mode streams through read_cb; with an unknown length curl sends
         * HTTP/1.1 chunked or HTTP/2 DATA frames. A bodiless POST still says
         * Content-Length: 0, which some servers require. */
        curl_off_t len = o->has_body ? (curl_off_t)o->body_length : 0;
        bad |= curl_easy_setopt(e, CURLOPT_UPLOAD, 1L) != CURLE_OK;
        bad |= curl_easy_setopt(e, CURLOPT_INFILESIZE_LARGE, len < 0 ? (curl_off_t)-1 : len) !=
               CURLE_OK;
    }
    if (bad) {
        rc = AL_ERR_INVAL;
        goto fail;
    }

    r->hq = host_get(p, o, https);
    if (!r->hq) {
        rc = AL_ERR_NOMEM;
        goto fail;
    }
    if (al_up_admit_join(&r->hq->adm, &r->adm, r, o->client, o->max_per_client) != AL_OK) {
        host_drop_if_unused(p, r->hq);
        r->hq = NULL;
        rc = AL_ERR_NOMEM;
        goto fail;
    }
    r->next = p->live;
    if (p->live)
        p->live->prev = r;
    p->live = r;
    if (!al_up_admit_may_run(&r->hq->adm, &r->adm, AL_UPSTREAM_MAX_HOST_CONNECTIONS)) {
        /* waits for a transfer to this host (or of this client) to end, at most
         * queue_ms; no other timer runs while it waits. (Whoever waits while the
         * host has a free slot waits for its own client's cap, so a request that
         * may run goes first without breaking anyone's turn.) */
        al_up_admit_wait(&r->hq->adm, &r->adm);
        if (r->queue_ms) {
            ev_timer_set(&r->queue_timer, r->queue_ms / 1000.0, 0.);
            ev_timer_start(p->loop, &r->queue_timer);
        }
        *out = r;
        return AL_OK;
    }
    al_up_admit_count(&r->hq->adm, &r->adm);
    if (p->cb_depth > 0) {
        r->want_add = 1; /* curl refuses add_handle from inside its callbacks */
        deferred_push(r);
    } else {
        if (curl_multi_add_handle(p->multi, r->easy) != CURLM_OK) {
            rc = AL_ERR_NOMEM;
            goto fail;
        }
        arm_connect(r);
    }
    *out = r;
    return AL_OK;
fail:
    req_release(r);
    return rc;
}

void al_upstream_resume_send(al_upstream_req *r)
{
    if (!r || r->cancelled || r->done)
        return;
    if (r->pool->cb_depth > 0) {
        /* queued even when not paused yet: the callback running now may be about
         * to return AL_ERR_AGAIN, and this resume must not be lost */
        r->want_send = 1;
        deferred_push(r);
        return;
    }
    if (!r->send_paused)
        return;
    r->send_paused = 0;
    update_idle(r);
    apply_pause(r);
}

void al_upstream_resume_recv(al_upstream_req *r)
{
    if (!r || r->cancelled || r->done)
        return;
    if (r->pool->cb_depth > 0) {
        /* queued even when not paused yet: the callback running now may be about
         * to return AL_ERR_AGAIN, and this resume must not be lost */
        r->want_recv = 1;
        deferred_push(r);
        return;
    }
    if (!r->recv_paused)
        return;
    r->recv_paused = 0;
    update_idle(r);
    apply_pause(r);
}

void al_upstream_cancel(al_upstream_req *r)
{
    if (!r || r->cancelled || r->done)
        return;
    r->cancelled = 1;
    ev_timer_stop(r->pool->loop, &r->first_byte_timer);
    ev_timer_stop(r->pool->loop, &r->idle_timer);
    ev_timer_stop(r->pool->loop, &r->queue_timer);
    ev_timer_stop(r->pool->loop, &r->connect_timer);
    if (r->pool->cb_depth > 0) {
        /* the failing callback makes curl end the transfer; the queue frees it
         * if curl has not reported it done first */
        deferred_push(r);
        return;
    }
    req_release(r);
}

uint32_t al_upstream_elapsed_ms(const al_upstream_req *r)
{
    return r ? r->first_byte_elapsed : 0;
}
