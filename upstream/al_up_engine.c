/* al_up_engine: the native upstream engine (see al_up_engine.h).
 *
 * Objects: a host (the pool key: checked address, port, scheme, TLS name, ca_file)
 * owns its idle connections, its slot count, its waiting requests and per-client
 * counts, and the TLS session to resume; a connection (up_conn) is a transport
 * (al_up_io) with one ev_io, busy with one request or idle in its host's list; a
 * request (al_up_req) owns its read buffer, its body buffer, its serialised head
 * (wiped: it holds the credential) and one timer whose meaning follows its phase.
 *
 * How a protocol plugs in: a connection is made ready by the transport (connect,
 * TLS handshake with ALPN); conn_ready() then hands it to the codec the handshake
 * chose. HTTP/1.1 is h1_send()/h1_recv() below, one request per connection. The
 * HTTP/2 codec (al_up_h2, up-h2) adds a second branch there: a connection whose
 * io.alpn_h2 is set carries many requests (host_pick() may then hand a busy h2
 * connection to a new request while it has stream capacity), and the connection's
 * io callback drives the nghttp2 session instead of h1_send/h1_recv; requests keep
 * the same timers, admission and callbacks. ALPN offers only "http/1.1" until then.
 *
 * Re-entrancy: callbacks (on_head, on_body, read_body, ...) may cancel or resume the
 * request. While the engine works on a request (busy > 0) a cancel only marks it and
 * a resume asks for another pass; the request ends (on_done, free) when the engine
 * lets go of it (settle()). on_done is never called inside al_up_start. */
#include "al_up_engine.h"
#include "al_up_h1.h"
#include "al_up_tls.h"
#include "common/al_buf.h"
#include "common/al_err.h"

#include <arpa/inet.h>
#include <errno.h>
#include <ev.h>
#include <netinet/in.h>
#include <openssl/crypto.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define READ_BUF     16384
#define BODY_BUF     16384
#define FREE_MAX     64
#define MAX_HEAD_OUT (128 * 1024) /* serialised request head */

typedef struct up_conn up_conn;
typedef struct up_host up_host;

typedef struct up_client {
    struct up_client *next;
    size_t active, refs;
    char addr[48];
} up_client;

struct up_host {
    up_host *next;
    al_up_engine *e;
    /* key */
    char addr[64];
    uint16_t port;
    int https;
    char *name, *ca_file;
    struct sockaddr_storage sa;
    socklen_t salen;
    /* state */
    SSL_SESSION *session; /* to resume; owned */
    up_conn *idle;        /* newest first */
    size_t idle_count, conns, active;
    al_up_req *wait_head, *wait_tail;
    up_client *clients;
};

enum { C_CONNECT, C_HANDSHAKE, C_READY };

struct up_conn {
    up_conn *next; /* host's idle list */
    up_host *host;
    al_up_io io;
    ev_io w;
    ev_timer idle_t;
    int state, events, served;
    al_up_req *req; /* HTTP/1.1: the one request; NULL when idle */
};

enum { P_QUEUED, P_CONNECT, P_SEND, P_WAIT, P_RECV };

struct al_up_req {
    al_up_engine *e;
    up_host *h;
    up_client *cq;
    up_conn *c;
    al_upstream_cbs cbs;
    void *arg;
    al_up_req *prev, *next; /* engine's live list */
    al_up_req *qnext;       /* host's waiting list */
    al_up_req *dnext;       /* engine's deferred list */

    int has_body, chunked, idempotent, allow_private;
    int64_t body_length;
    uint32_t connect_ms, first_byte_ms, idle_ms, queue_ms, client_cap;

    al_buf hb; /* the serialised head (holds the credential: wiped) */
    size_t hoff;
    char *bb; /* body buffer: BODY_BUF + chunk framing */
    size_t blen, boff;
    uint64_t sent; /* bytes of this attempt the transport took */

    al_up_h1_resp resp;
    char rbuf[READ_BUF];
    size_t rlen, roff;
    const char *pend; /* body bytes offered and refused (AGAIN): offered again */
    size_t pend_len;

    ev_timer timer;
    int phase;
    ev_tstamp phase_at, last_activity;
    struct timespec started;
    uint32_t first_byte_elapsed;

    unsigned queued : 1, counted : 1, body_eof : 1, req_done : 1, got_byte : 1, head_done : 1,
        send_paused : 1, recv_paused : 1, cancelled : 1, finished : 1, deferred : 1, retried : 1,
        rerun : 1, live : 1, dispatch : 1, tls_rw : 1;
    int busy;
    enum al_upstream_error err;
    char detail[256];
};

struct al_up_engine {
    struct ev_loop *loop;
    al_up_tls_cache *tls;
    al_up_guard_fn guard;
    void *guard_arg;
    up_host *hosts;
    al_up_req *live;
    al_up_req *dhead, *dtail;
    ev_timer deferred;
    al_up_req *free_reqs;
    size_t free_count;
    al_up_stats stats;
};

static void run(al_up_req *r);
static void settle(al_up_req *r);
static void conn_events(up_conn *c);
static void conn_close(up_conn *c);
static void dispatch(al_up_req *r);
static void rearm(al_up_req *r);

static const unsigned char ALPN_H1[] = "\x08http/1.1";

/* ---- small helpers ----------------------------------------------------------- */

static uint32_t ms_since(const struct timespec *t0)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    int64_t ms = (int64_t)(now.tv_sec - t0->tv_sec) * 1000 + (now.tv_nsec - t0->tv_nsec) / 1000000;
    return ms <= 0 ? 1 : (uint32_t)ms;
}

/* Ends the request with err (first reason wins); the end is delivered by settle(). */
static void fail(al_up_req *r, enum al_upstream_error err, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void fail(al_up_req *r, enum al_upstream_error err, const char *fmt, ...)
{
    if (r->finished)
        return;
    r->finished = 1;
    r->err = err;
    if (fmt) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(r->detail, sizeof r->detail, fmt, ap);
        va_end(ap);
    }
}

static void defer(al_up_req *r)
{
    al_up_engine *e = r->e;
    if (!r->deferred) {
        r->deferred = 1;
        r->dnext = NULL;
        if (e->dtail)
            e->dtail->dnext = r;
        else
            e->dhead = r;
        e->dtail = r;
    }
    if (!ev_is_active(&e->deferred)) {
        ev_timer_set(&e->deferred, 0., 0.);
        ev_timer_start(e->loop, &e->deferred);
    }
}

static void undefer(al_up_req *r)
{
    al_up_engine *e = r->e;
    if (!r->deferred)
        return;
    al_up_req *prev = NULL;
    for (al_up_req *n = e->dhead; n; prev = n, n = n->dnext)
        if (n == r) {
            if (prev)
                prev->dnext = r->dnext;
            else
                e->dhead = r->dnext;
            if (e->dtail == r)
                e->dtail = prev;
            break;
        }
    r->deferred = 0;
    r->dnext = NULL;
}

/* ---- hosts and admission ---------------------------------------------------------- */

static int str_eq(const char *a, const char *b)
{
    return (!a && !b) || (a && b && !strcmp(a, b));
}

static up_host *host_get(al_up_engine *e, const char *addr, uint16_t port, int https,
                         const char *name, const char *ca_file, const struct sockaddr_storage *sa,
                         socklen_t salen)
{
    for (up_host *h = e->hosts; h; h = h->next)
        if (h->port == port && h->https == https && !strcmp(h->addr, addr) &&
            !strcmp(h->name, name) && str_eq(h->ca_file, ca_file))
            return h;
    up_host *h = calloc(1, sizeof *h);
    if (!h)
        return NULL;
    h->e = e;
    snprintf(h->addr, sizeof h->addr, "%s", addr);
    h->port = port;
    h->https = https;
    h->name = strdup(name);
    h->ca_file = ca_file ? strdup(ca_file) : NULL;
    if (!h->name || (ca_file && !h->ca_file)) {
        free(h->name);
        free(h->ca_file);
        free(h);
        return NULL;
    }
    h->sa = *sa;
    h->salen = salen;
    h->next = e->hosts;
    e->hosts = h;
    return h;
}

static void host_drop_if_unused(up_host *h)
{
    if (h->active || h->wait_head || h->conns || h->clients)
        return;
    al_up_engine *e = h->e;
    for (up_host **pp = &e->hosts; *pp; pp = &(*pp)->next)
        if (*pp == h) {
            *pp = h->next;
            break;
        }
    if (h->session)
        SSL_SESSION_free(h->session);
    free(h->name);
    free(h->ca_file);
    free(h);
}

static up_client *client_get(up_host *h, const char *addr)
{
    size_t n = strnlen(addr, sizeof((up_client *)0)->addr - 1);
    for (up_client *c = h->clients; c; c = c->next)
        if (c->addr[n] == '\0' && !memcmp(c->addr, addr, n))
            return c;
    up_client *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    memcpy(c->addr, addr, n);
    c->next = h->clients;
    h->clients = c;
    return c;
}

static void client_unref(up_host *h, up_client *c)
{
    if (--c->refs)
        return;
    for (up_client **pp = &h->clients; *pp; pp = &(*pp)->next)
        if (*pp == c) {
            *pp = c->next;
            free(c);
            return;
        }
}

static int may_run(const up_host *h, const al_up_req *r)
{
    return h->active < AL_UP_MAX_HOST_CONNECTIONS &&
           !(r->client_cap && r->cq && r->cq->active >= r->client_cap);
}

static void count_in(al_up_req *r)
{
    r->counted = 1;
    r->h->active++;
    if (r->cq)
        r->cq->active++;
}

/* The request leaves its host: its slot goes to the first waiting request that may
 * run (dispatched from the loop), or it leaves the waiting list. */
static void host_leave(al_up_req *r)
{
    up_host *h = r->h;
    if (!h)
        return;
    if (r->queued) {
        al_up_req *prev = NULL;
        for (al_up_req *n = h->wait_head; n; prev = n, n = n->qnext)
            if (n == r) {
                if (prev)
                    prev->qnext = r->qnext;
                else
                    h->wait_head = r->qnext;
                if (h->wait_tail == r)
                    h->wait_tail = prev;
                break;
            }
        r->queued = 0;
    } else if (r->counted) {
        r->counted = 0;
        h->active--;
        if (r->cq)
            r->cq->active--;
        al_up_req *prev = NULL;
        for (al_up_req *n = h->wait_head; n; prev = n, n = n->qnext) {
            if (!may_run(h, n))
                continue;
            if (prev)
                prev->qnext = n->qnext;
            else
                h->wait_head = n->qnext;
            if (h->wait_tail == n)
                h->wait_tail = prev;
            n->qnext = NULL;
            n->queued = 0;
            count_in(n);
            n->dispatch = 1;
            defer(n);
            break;
        }
    }
    r->qnext = NULL;
    if (r->cq)
        client_unref(h, r->cq);
    r->cq = NULL;
    r->h = NULL;
    host_drop_if_unused(h);
}

/* ---- connections ------------------------------------------------------------------ */

static void conn_io_cb(struct ev_loop *loop, ev_io *w, int revents);

static void idle_expire_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    up_conn *c = w->data;
    c->host->e->stats.idle_closed++;
    conn_close(c);
}

/* Out of the idle list (if there) and closed; its host may go. */
static void conn_close(up_conn *c)
{
    up_host *h = c->host;
    al_up_engine *e = h->e;
    if (!c->req) {
        for (up_conn **pp = &h->idle; *pp; pp = &(*pp)->next)
            if (*pp == c) {
                *pp = c->next;
                h->idle_count--;
                break;
            }
    }
    ev_io_stop(e->loop, &c->w);
    ev_timer_stop(e->loop, &c->idle_t);
    al_up_io_close(&c->io);
    h->conns--;
    free(c);
    host_drop_if_unused(h);
}

static void conn_to_idle(up_conn *c)
{
    up_host *h = c->host;
    al_up_engine *e = h->e;
    c->req = NULL;
    if (h->idle_count >= AL_UP_MAX_IDLE_PER_HOST) {
        conn_close(c);
        return;
    }
    c->next = h->idle;
    h->idle = c;
    h->idle_count++;
    /* readable while idle = the upstream closed it (or sent what nobody asked for) */
    conn_events(c);
    ev_timer_set(&c->idle_t, AL_UP_IDLE_EXPIRY_MS / 1000.0, 0.);
    ev_timer_start(e->loop, &c->idle_t);
}

/* An idle connection of h that is still open, or NULL. One the upstream closed (or
 * that has bytes waiting, which no request asked for) is closed here, before reuse. */
static up_conn *host_pick(up_host *h)
{
    while (h->idle) {
        up_conn *c = h->idle;
        h->idle = c->next;
        h->idle_count--;
        c->next = NULL;
        ev_timer_stop(h->e->loop, &c->idle_t);
        if (al_up_io_alive(&c->io) && !(c->io.ssl && SSL_pending(c->io.ssl)))
            return c;
        h->e->stats.idle_closed++;
        ev_io_stop(h->e->loop, &c->w);
        al_up_io_close(&c->io);
        h->conns--;
        free(c);
    }
    return NULL;
}

static up_conn *conn_new(up_host *h)
{
    up_conn *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->host = h;
    c->io.fd = -1;
    ev_init(&c->w, conn_io_cb);
    c->w.data = c;
    ev_init(&c->idle_t, idle_expire_cb);
    c->idle_t.data = c;
    h->conns++;
    return c;
}

static int has_output(const al_up_req *r)
{
    return r->hoff < r->hb.len || r->boff < r->blen;
}

static void conn_events(up_conn *c)
{
    int ev = 0;
    al_up_req *r = c->req;
    if (c->state == C_CONNECT)
        ev = EV_WRITE;
    else if (c->state == C_HANDSHAKE)
        ev = c->io.want ? c->io.want : EV_READ;
    else if (!r)
        ev = EV_READ;
    else {
        if (has_output(r) || r->tls_rw)
            ev |= EV_WRITE;
        if (!r->recv_paused)
            ev |= EV_READ;
    }
    if (ev == c->events && ev_is_active(&c->w))
        return;
    struct ev_loop *loop = c->host->e->loop;
    ev_io_stop(loop, &c->w);
    c->events = ev;
    if (ev) {
        ev_io_set(&c->w, c->io.fd, ev);
        ev_io_start(loop, &c->w);
    }
}

/* The request lets go of its connection: back to the pool when reusable. */
static void detach(al_up_req *r, int reusable)
{
    up_conn *c = r->c;
    if (!c)
        return;
    r->c = NULL;
    if (reusable && c->state == C_READY) {
        c->served++;
        conn_to_idle(c);
    } else {
        c->req = NULL;
        conn_close(c);
    }
}

/* ---- the request's timer ------------------------------------------------------------ */

static void set_phase(al_up_req *r, int phase)
{
    r->phase = phase;
    r->phase_at = ev_now(r->e->loop);
    r->last_activity = r->phase_at;
    rearm(r);
}

static void rearm(al_up_req *r)
{
    struct ev_loop *loop = r->e->loop;
    uint32_t ms = 0;
    ev_tstamp from = r->phase_at;
    switch (r->phase) {
    case P_QUEUED:
        ms = r->queue_ms;
        break;
    case P_CONNECT:
        ms = r->connect_ms;
        break;
    case P_WAIT:
        ms = r->first_byte_ms;
        break;
    default: /* sending, receiving: no progress either way for idle_ms */
        ms = r->idle_ms;
        from = r->last_activity;
        break;
    }
    ev_timer_stop(loop, &r->timer);
    if (!ms || r->finished)
        return;
    ev_tstamp left = from + ms / 1000.0 - ev_now(loop);
    ev_timer_set(&r->timer, left > 0 ? left : 0., 0.);
    ev_timer_start(loop, &r->timer);
}

static void timer_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    al_up_req *r = w->data;
    if (r->finished || r->cancelled)
        return;
    r->busy++;
    switch (r->phase) {
    case P_QUEUED: {
        int over = r->cq && r->client_cap && r->cq->active >= r->client_cap;
        if (over)
            fail(r, AL_UPSTREAM_CLIENT_LIMIT,
                 "this client already has %u requests in flight to this upstream", r->client_cap);
        else
            fail(r, AL_UPSTREAM_BUSY, "all %u upstream connections of this worker are busy",
                 (unsigned)AL_UP_MAX_HOST_CONNECTIONS);
        break;
    }
    case P_CONNECT:
        fail(r, AL_UPSTREAM_TIMEOUT_CONNECT, "no connection within %u ms", r->connect_ms);
        break;
    case P_WAIT:
        fail(r, AL_UPSTREAM_TIMEOUT_FIRST_BYTE, "no response within %u ms", r->first_byte_ms);
        break;
    default: {
        ev_tstamp left = r->last_activity + r->idle_ms / 1000.0 - ev_now(loop);
        if (left > 0.0005) {
            rearm(r);
            break;
        }
        int client =
            (r->phase == P_SEND && r->send_paused) || (r->phase == P_RECV && r->recv_paused);
        if (client)
            fail(r, AL_UPSTREAM_TIMEOUT_CLIENT, "the agent %s nothing for %u ms",
                 r->recv_paused ? "read" : "sent", r->idle_ms);
        else
            fail(r, AL_UPSTREAM_TIMEOUT_IDLE, "no data for %u ms", r->idle_ms);
        break;
    }
    }
    r->busy--;
    settle(r);
}

/* ---- HTTP/1.1 on a ready connection --------------------------------------------------- */

/* Fills the body buffer from read_body when it is empty. */
static void h1_fill_body(al_up_req *r)
{
    if (!r->has_body || r->body_eof || r->send_paused || r->boff < r->blen)
        return;
    r->blen = r->boff = 0;
    char *dst = r->bb + (r->chunked ? 20 : 0);
    ssize_t got = r->cbs.read_body(r->arg, dst, BODY_BUF);
    if (r->cancelled || r->finished)
        return;
    if (got == AL_ERR_AGAIN) {
        r->send_paused = 1;
        return;
    }
    if (got < 0 || (size_t)got > BODY_BUF) {
        fail(r, AL_UPSTREAM_ABORTED, "request body read failed");
        return;
    }
    r->last_activity = ev_now(r->e->loop);
    if (got == 0) {
        r->body_eof = 1;
        if (r->chunked) {
            memcpy(r->bb, AL_UP_H1_CHUNK_END, 5);
            r->blen = 5;
        }
        return;
    }
    if (!r->chunked) {
        r->blen = (size_t)got;
        return;
    }
    /* "<hex>\r\n" right before the data, "\r\n" after it */
    char head[20];
    size_t hl = al_up_h1_chunk_head(head, (size_t)got);
    r->boff = 20 - hl;
    memcpy(r->bb + r->boff, head, hl);
    memcpy(r->bb + 20 + got, "\r\n", 2);
    r->blen = 20 + (size_t)got + 2;
}

/* May the request go again on a fresh connection after its pooled one broke? Once,
 * and only when none of it was sent, or it is idempotent without a body (RFC 9110
 * section 9.2.2) and no byte of a response came. */
static int may_retry(const al_up_req *r)
{
    return r->c && r->c->served && !r->retried && !r->got_byte &&
           (r->sent == 0 || (r->idempotent && !r->has_body));
}

static void retry(al_up_req *r)
{
    r->retried = 1;
    r->e->stats.retries++;
    detach(r, 0);
    r->hoff = 0;
    r->sent = 0;
    r->req_done = 0;
    al_up_h1_resp_init(&r->resp, r->resp.head_request);
    r->rlen = r->roff = 0;
    dispatch(r);
}

static void h1_send(al_up_req *r)
{
    while (!r->finished && !r->cancelled && !r->req_done) {
        h1_fill_body(r);
        if (r->finished || r->cancelled)
            return;
        if (!has_output(r)) {
            if (!r->has_body || r->body_eof) {
                r->req_done = 1;
                if (!r->head_done)
                    set_phase(r, P_WAIT);
            }
            return;
        }
        struct iovec iov[2];
        int n = 0;
        if (r->hoff < r->hb.len)
            iov[n++] = (struct iovec){r->hb.data + r->hoff, r->hb.len - r->hoff};
        if (r->boff < r->blen)
            iov[n++] = (struct iovec){r->bb + r->boff, r->blen - r->boff};
        ssize_t w = al_up_io_writev(&r->c->io, iov, n);
        if (w == AL_ERR_AGAIN) {
            r->tls_rw = 0;
            return;
        }
        if (w < 0) {
            if (may_retry(r)) {
                retry(r);
                return;
            }
            fail(r, AL_UPSTREAM_RESET, "connection lost while sending the request");
            return;
        }
        r->sent += (uint64_t)w;
        r->last_activity = ev_now(r->e->loop);
        size_t k = (size_t)w;
        size_t hk = r->hb.len - r->hoff < k ? r->hb.len - r->hoff : k;
        r->hoff += hk;
        r->boff += k - hk;
    }
}

static void deliver_head(al_up_req *r, const al_up_h1_event *ev)
{
    r->head_done = 1;
    set_phase(r, P_RECV);
    if (r->cbs.on_head)
        r->cbs.on_head(r->arg, ev->status, ev->headers, ev->count);
}

/* Reads and parses until the response ends, the agent pauses, or the socket has
 * nothing more. */
static void h1_recv(al_up_req *r)
{
    while (!r->finished && !r->cancelled) {
        if (r->pend_len) {
            int rc = r->cbs.on_body ? r->cbs.on_body(r->arg, r->pend, r->pend_len) : 0;
            if (r->cancelled || r->finished)
                return;
            if (rc == AL_ERR_AGAIN) {
                r->recv_paused = 1;
                return;
            }
            if (rc < 0) {
                fail(r, AL_UPSTREAM_ABORTED, "response body refused");
                return;
            }
            r->recv_paused = 0;
            r->pend_len = 0;
            r->last_activity = ev_now(r->e->loop);
        }
        if (r->recv_paused)
            return;
        al_up_h1_event ev;
        size_t used = 0;
        al_up_h1_resp_next(&r->resp, r->rbuf + r->roff, r->rlen - r->roff, &used, &ev);
        r->roff += used;
        switch (ev.type) {
        case AL_UP_H1_NEED_MORE: {
            r->rlen = r->roff = 0;
            ssize_t n = al_up_io_read(&r->c->io, r->rbuf, sizeof r->rbuf);
            if (n == AL_ERR_AGAIN) {
                r->tls_rw = r->c->io.want == EV_WRITE;
                return;
            }
            if (n < 0 || n == 0) {
                if (!r->got_byte && may_retry(r)) {
                    retry(r);
                    return;
                }
                if (n == 0) {
                    al_up_h1_resp_eof(&r->resp, &ev);
                    if (ev.type == AL_UP_H1_DONE) {
                        detach(r, 0);
                        fail(r, AL_UPSTREAM_OK, NULL);
                        return;
                    }
                    fail(r, AL_UPSTREAM_RESET, "%s",
                         r->got_byte ? ev.detail : "upstream closed before a response");
                    return;
                }
                fail(r, AL_UPSTREAM_RESET, "%s",
                     r->got_byte ? "connection reset while reading the response"
                                 : "connection reset before a response");
                return;
            }
            if (!r->got_byte) {
                r->got_byte = 1;
                r->first_byte_elapsed = ms_since(&r->started);
            }
            r->rlen = (size_t)n;
            r->last_activity = ev_now(r->e->loop);
            break;
        }
        case AL_UP_H1_INTERIM:
            if (ev.status != 100 && r->cbs.on_interim)
                r->cbs.on_interim(r->arg, ev.status, ev.headers, ev.count);
            break;
        case AL_UP_H1_HEAD:
            deliver_head(r, &ev);
            break;
        case AL_UP_H1_BODY:
            r->pend = ev.data;
            r->pend_len = ev.len;
            break;
        case AL_UP_H1_TRAILERS:
            if (r->cbs.on_trailers)
                r->cbs.on_trailers(r->arg, ev.headers, ev.count);
            break;
        case AL_UP_H1_DONE: {
            /* reused only when the whole exchange is done and nothing else came */
            int reusable = r->resp.keep_alive && r->req_done && r->roff == r->rlen;
            detach(r, reusable);
            fail(r, AL_UPSTREAM_OK, NULL);
            return;
        }
        case AL_UP_H1_ERROR:
            fail(r, ev.err == AL_UP_H1_BAD_FRAMING ? AL_UPSTREAM_BAD_FRAMING : AL_UPSTREAM_RESET,
                 "%s", ev.detail);
            return;
        }
    }
}

/* ---- connection progress ---------------------------------------------------------------- */

static void conn_ready(al_up_req *r)
{
    up_conn *c = r->c;
    c->state = C_READY;
    /* (HTTP/2: when c->io.alpn_h2, the h2 codec takes the connection here) */
    set_phase(r, P_SEND);
}

/* Connect and handshake steps; 1 when the connection is ready. */
static int conn_progress(al_up_req *r)
{
    up_conn *c = r->c;
    if (c->state == C_CONNECT) {
        int rc = al_up_io_connected(&c->io);
        if (rc == 0)
            return 0;
        if (rc < 0) {
            fail(r, AL_UPSTREAM_CONNECT, "connect to %s port %u failed: %s", r->h->addr,
                 (unsigned)r->h->port, strerror(errno));
            return 0;
        }
        if (!r->h->https) {
            conn_ready(r);
            return 1;
        }
        const char *why = NULL;
        SSL_CTX *ctx = al_up_tls_ctx(r->e->tls, r->h->ca_file, &why);
        if (!ctx) {
            fail(r, AL_UPSTREAM_TLS, "%s", why);
            return 0;
        }
        if (al_up_io_tls(&c->io, ctx, r->h->name, ALPN_H1, sizeof ALPN_H1 - 1, &r->h->session) !=
            AL_OK) {
            fail(r, AL_UPSTREAM_TLS, "TLS setup failed");
            return 0;
        }
        c->state = C_HANDSHAKE;
    }
    if (c->state == C_HANDSHAKE) {
        char why[200];
        int rc = al_up_io_handshake(&c->io, why, sizeof why);
        if (rc == 0)
            return 0;
        if (rc < 0) {
            fail(r, AL_UPSTREAM_TLS, "%s", why);
            return 0;
        }
        conn_ready(r);
    }
    return c->state == C_READY;
}

static void conn_io_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    up_conn *c = w->data;
    al_up_req *r = c->req;
    if (!r) { /* idle and readable: closed by the upstream, or stray bytes */
        char b;
        if (c->io.ssl && al_up_io_read(&c->io, &b, 1) == AL_ERR_AGAIN && c->io.want == EV_READ)
            return; /* a TLS 1.3 session ticket, or another record without data */
        c->host->e->stats.idle_closed++;
        conn_close(c);
        return;
    }
    run(r);
}

/* ---- dispatch: a slot is held; find or make a connection --------------------------------- */

static void dispatch(al_up_req *r)
{
    up_host *h = r->h;
    up_conn *c = host_pick(h);
    if (c) {
        h->e->stats.reuses++;
        r->c = c;
        c->req = r;
        set_phase(r, P_SEND);
        run(r);
        return;
    }
    c = conn_new(h);
    if (!c) {
        fail(r, AL_UPSTREAM_CONNECT, "out of memory");
        return;
    }
    r->c = c;
    c->req = r;
    h->e->stats.connects++;
    set_phase(r, P_CONNECT);
    if (al_up_io_connect(&c->io, (const struct sockaddr *)&h->sa, h->salen) != AL_OK) {
        fail(r, AL_UPSTREAM_CONNECT, "connect to %s port %u failed: %s", h->addr, (unsigned)h->port,
             strerror(errno));
        return;
    }
    c->state = C_CONNECT;
    run(r);
}

/* One pass over the request's work; settles when the outermost pass ends. */
static void run(al_up_req *r)
{
    if (r->busy) {
        r->rerun = 1;
        return;
    }
    r->busy++;
    do {
        r->rerun = 0;
        if (r->finished || r->cancelled || !r->c)
            break;
        if (r->c->state != C_READY && !conn_progress(r))
            break;
        up_conn *c = r->c;
        h1_send(r);
        if (r->c != c) /* retried on another connection */
            continue;
        h1_recv(r);
    } while (r->rerun && !r->finished && !r->cancelled);
    r->busy--;
    settle(r);
}

/* ---- the end ---------------------------------------------------------------------------- */

static void req_free(al_up_req *r)
{
    al_up_engine *e = r->e;
    ev_timer_stop(e->loop, &r->timer);
    undefer(r);
    if (r->live) {
        if (r->prev)
            r->prev->next = r->next;
        else
            e->live = r->next;
        if (r->next)
            r->next->prev = r->prev;
        r->live = 0;
    }
    detach(r, 0);
    host_leave(r);
    al_buf_free(&r->hb, 1);
    if (r->bb) {
        OPENSSL_cleanse(r->bb, BODY_BUF + 32);
        free(r->bb);
        r->bb = NULL;
    }
    if (e->free_count < FREE_MAX) {
        r->next = e->free_reqs;
        e->free_reqs = r;
        e->free_count++;
        return;
    }
    al_up_h1_resp_free(&r->resp);
    free(r);
}

static void settle(al_up_req *r)
{
    if (r->busy)
        return;
    if (r->cancelled) {
        req_free(r);
        return;
    }
    if (r->finished) {
        ev_timer_stop(r->e->loop, &r->timer);
        detach(r, 0); /* an error: the connection is not reused */
        host_leave(r);
        enum al_upstream_error err = r->err;
        r->busy++; /* a cancel from on_done is a no-op */
        r->cbs.on_done(r->arg, err, err == AL_UPSTREAM_OK ? NULL : r->detail);
        r->busy--;
        req_free(r);
        return;
    }
    if (r->c)
        conn_events(r->c);
}

static void deferred_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    al_up_engine *e = w->data;
    al_up_req *r;
    while ((r = e->dhead) != NULL) {
        e->dhead = r->dnext;
        if (!e->dhead)
            e->dtail = NULL;
        r->deferred = 0;
        r->dnext = NULL;
        if (r->dispatch && !r->finished && !r->cancelled) {
            r->dispatch = 0;
            r->busy++;
            dispatch(r);
            r->busy--;
            if (!r->finished && !r->cancelled && r->c)
                run(r);
            else
                settle(r);
            continue;
        }
        if (r->rerun) {
            r->rerun = 0;
            run(r);
            continue;
        }
        settle(r);
    }
}

/* ---- public ------------------------------------------------------------------------------ */

int al_up_engine_new(struct ev_loop *loop, al_up_engine **out)
{
    if (!loop || !out)
        return AL_ERR_INVAL;
    al_up_engine *e = calloc(1, sizeof *e);
    if (!e)
        return AL_ERR_NOMEM;
    if (al_up_tls_cache_new(&e->tls) != AL_OK) {
        free(e);
        return AL_ERR_NOMEM;
    }
    e->loop = loop;
    ev_init(&e->deferred, deferred_cb);
    e->deferred.data = e;
    *out = e;
    return AL_OK;
}

void al_up_engine_free(al_up_engine *e)
{
    if (!e)
        return;
    while (e->live) {
        al_up_req *r = e->live;
        r->cancelled = 1;
        r->busy = 0;
        req_free(r);
    }
    while (e->hosts) {
        up_host *h = e->hosts;
        while (h->idle) {
            up_conn *c = h->idle;
            h->idle = c->next;
            ev_io_stop(e->loop, &c->w);
            ev_timer_stop(e->loop, &c->idle_t);
            al_up_io_close(&c->io);
            free(c);
        }
        e->hosts = h->next;
        if (h->session)
            SSL_SESSION_free(h->session);
        free(h->name);
        free(h->ca_file);
        free(h);
    }
    while (e->free_reqs) {
        al_up_req *r = e->free_reqs;
        e->free_reqs = r->next;
        al_up_h1_resp_free(&r->resp);
        free(r);
    }
    ev_timer_stop(e->loop, &e->deferred);
    al_up_tls_cache_free(e->tls);
    free(e);
}

void al_up_engine_set_guard(al_up_engine *e, al_up_guard_fn fn, void *arg)
{
    e->guard = fn;
    e->guard_arg = arg;
}

void al_up_engine_stats(const al_up_engine *e, al_up_stats *out)
{
    *out = e->stats;
}

/* The checked address (brackets allowed) and port as a socket address. */
static int parse_addr(const char *a, uint16_t port, struct sockaddr_storage *ss, socklen_t *len,
                      char *text, size_t text_len)
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
    memset(ss, 0, sizeof *ss);
    struct sockaddr_in *s4 = (struct sockaddr_in *)ss;
    struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)ss;
    if (inet_pton(AF_INET, a, &s4->sin_addr) == 1) {
        s4->sin_family = AF_INET;
        s4->sin_port = htons(port);
        *len = sizeof *s4;
    } else if (inet_pton(AF_INET6, a, &s6->sin6_addr) == 1) {
        s6->sin6_family = AF_INET6;
        s6->sin6_port = htons(port);
        *len = sizeof *s6;
    } else {
        return AL_ERR_INVAL;
    }
    snprintf(text, text_len, "%s", a);
    return AL_OK;
}

static al_up_req *req_get(al_up_engine *e)
{
    al_up_req *r = e->free_reqs;
    if (r) {
        e->free_reqs = r->next;
        e->free_count--;
        al_up_h1_resp keep = r->resp;
        memset(r, 0, offsetof(al_up_req, rbuf));
        memset(&r->rlen, 0, sizeof *r - offsetof(al_up_req, rlen));
        r->resp = keep;
    } else if (!(r = calloc(1, sizeof *r))) {
        return NULL;
    }
    r->e = e;
    ev_init(&r->timer, timer_cb);
    r->timer.data = r;
    return r;
}

static int is_idempotent(const char *m)
{
    static const char *const ok[] = {"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"};
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++)
        if (!strcmp(m, ok[i]))
            return 1;
    return 0;
}

int al_up_start(al_up_engine *e, const al_upstream_opts *o, const al_upstream_cbs *cbs, void *arg,
                al_up_req **out)
{
    if (!e || !o || !cbs || !out || !o->method || !o->scheme || !o->path || !o->connect_host ||
        !cbs->on_done || (o->has_body && !cbs->read_body) || !o->connect_port)
        return AL_ERR_INVAL;
    *out = NULL;
    int https = !strcmp(o->scheme, "https");
    if (!https && strcmp(o->scheme, "http") != 0)
        return AL_ERR_INVAL;
    struct sockaddr_storage ss;
    socklen_t sl = 0;
    char addr[64];
    /* a name and no checked address: nothing to connect to (a literal host is its own) */
    if (parse_addr(o->connect_addr ? o->connect_addr : o->connect_host, o->connect_port, &ss, &sl,
                   addr, sizeof addr) != AL_OK)
        return AL_ERR_INVAL;
    al_up_req *r = req_get(e);
    if (!r)
        return AL_ERR_NOMEM;
    int rc = AL_ERR_INVAL;
    r->cbs = *cbs;
    r->arg = arg;
    r->has_body = o->has_body != 0;
    r->body_length = o->has_body ? o->body_length : 0;
    r->chunked = r->has_body && o->body_length < 0;
    r->idempotent = is_idempotent(o->method);
    r->allow_private = o->allow_private;
    r->connect_ms = o->connect_timeout_ms;
    r->first_byte_ms = o->first_byte_timeout_ms;
    r->idle_ms = o->idle_timeout_ms;
    r->queue_ms = o->queue_timeout_ms;
    r->client_cap = o->max_per_client;
    clock_gettime(CLOCK_MONOTONIC, &r->started);
    al_buf_init(&r->hb, MAX_HEAD_OUT);
    const char *m = o->method;
    int bodyless_write =
        !o->has_body && (!strcmp(m, "POST") || !strcmp(m, "PUT") || !strcmp(m, "PATCH"));
    al_up_h1_req q = {
        .method = m,
        .path = o->path,
        .host = o->connect_host,
        .port = o->connect_port,
        .https = https,
        .headers = o->headers,
        .header_count = o->header_count,
        .has_body = r->has_body,
        .force_length = bodyless_write,
        .body_length = r->body_length,
    };
    if (o->path[0] != '/' || (rc = al_up_h1_write_head(&r->hb, &q)) != AL_OK) {
        rc = rc == AL_ERR_TOOBIG ? AL_ERR_TOOBIG : AL_ERR_INVAL;
        goto fail;
    }
    if (r->has_body && !(r->bb = malloc(BODY_BUF + 32))) {
        rc = AL_ERR_NOMEM;
        goto fail;
    }
    al_up_h1_resp_init(&r->resp, !strcmp(m, "HEAD"));
    r->h = host_get(e, addr, o->connect_port, https, o->connect_host, https ? o->ca_file : NULL,
                    &ss, sl);
    if (!r->h) {
        rc = AL_ERR_NOMEM;
        goto fail;
    }
    if (o->client && o->client[0]) {
        if (!(r->cq = client_get(r->h, o->client))) {
            rc = AL_ERR_NOMEM;
            goto fail;
        }
        r->cq->refs++;
    }
    r->live = 1;
    r->next = e->live;
    if (e->live)
        e->live->prev = r;
    e->live = r;
    *out = r;
    r->busy++; /* nothing ends inside start: the end waits for the loop */
    const char *refused =
        !o->allow_private && e->guard ? e->guard((const struct sockaddr *)&ss, e->guard_arg) : NULL;
    if (refused) {
        fail(r, AL_UPSTREAM_CONNECT, "refused by the egress guard: %s address", refused);
    } else if (!may_run(r->h, r)) {
        r->queued = 1;
        if (r->h->wait_tail)
            r->h->wait_tail->qnext = r;
        else
            r->h->wait_head = r;
        r->h->wait_tail = r;
        set_phase(r, P_QUEUED);
    } else {
        count_in(r);
        dispatch(r);
    }
    /* a pooled connection: a bodiless request's head goes now (read_body is never
     * called inside start: the caller has not got *out yet) */
    if (!r->finished && r->c && r->c->state == C_READY && !r->has_body) {
        h1_send(r);
        r->rerun = 0;
    }
    r->busy--;
    if (r->finished || r->rerun) {
        defer(r);
    } else if (r->c) {
        conn_events(r->c);
    }
    return AL_OK;
fail:
    req_free(r);
    return rc;
}

void al_up_resume_send(al_up_req *r)
{
    if (!r || r->cancelled || r->finished)
        return;
    r->send_paused = 0;
    r->last_activity = ev_now(r->e->loop);
    if (r->busy) {
        r->rerun = 1;
        return;
    }
    if (r->c && r->c->state == C_READY)
        run(r);
}

void al_up_resume_recv(al_up_req *r)
{
    if (!r || r->cancelled || r->finished)
        return;
    r->recv_paused = 0;
    r->last_activity = ev_now(r->e->loop);
    if (r->busy) {
        r->rerun = 1;
        return;
    }
    if (r->c && r->c->state == C_READY)
        run(r); /* as curl_easy_pause does: the paused bytes are offered right away */
}

void al_up_cancel(al_up_req *r)
{
    if (!r || r->cancelled)
        return;
    if (r->finished && r->busy) /* from inside on_done: the request ends anyway */
        return;
    r->cancelled = 1;
    ev_timer_stop(r->e->loop, &r->timer);
    if (r->busy)
        return;
    req_free(r);
}

uint32_t al_up_elapsed_ms(const al_up_req *r)
{
    return r ? r->first_byte_elapsed : 0;
}
