/* al_up_engine: the native upstream engine (see al_up_engine.h).
 *
 * Objects: a host (the pool key: checked address, port, scheme, TLS name, ca_file,
 * upstream.protocol)
 * owns its idle connections, its slot count, its waiting requests and per-client
 * counts, and the TLS session to resume; a connection (up_conn) is a transport
 * (al_up_io) with one ev_io, busy with one request or idle in its host's list; a
 * request (al_up_req) owns its read buffer, its body buffer, its serialised head
 * (wiped: it holds the credential) and one timer whose meaning follows its phase.
 *
 * How a protocol plugs in: a connection is made ready by the transport (connect,
 * TLS handshake with ALPN); the codec the handshake chose takes it. HTTP/1.1 is
 * h1_send()/h1_recv() below, one request per connection. HTTP/2 (the "HTTP/2"
 * section: al_up_h2's session on an h2mode connection) carries many requests on one
 * connection per host, which requests join while it connects; its io callback and
 * kick drive the session instead of h1_send/h1_recv, and requests keep the same
 * timers, admission and callbacks. ALPN offers "h2" and "http/1.1" unless the target
 * says upstream.protocol h1 (or h2: "h2" alone).
 *
 * Re-entrancy: callbacks (on_head, on_body, read_body, ...) may cancel or resume the
 * request. While the engine works on a request (busy > 0) a cancel only marks it and
 * a resume asks for another pass; the request ends (on_done, free) when the engine
 * lets go of it (settle()). on_done is never called inside al_up_start. */
#include "al_up_engine.h"
#include "al_up_admit.h"
#include "al_up_h1.h"
#include "al_up_h2.h"
#include "al_up_tls.h"
#include "common/al_buf.h"
#include "common/al_err.h"
#include "common/al_fmt.h"

#include <arpa/inet.h>
#include <errno.h>
#include <ev.h>
#include <netinet/in.h>
#include <openssl/crypto.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define READ_BUF     16384
/* A response body is read in pieces of up to this much once its head is delivered (and
 * more than READ_BUF is still to come): a 16 KiB read was 66 read() calls and as many
 * body offers per 1 MiB response. The downstream takes one piece while it holds less
 * than its high mark (64 KiB), so a stream's memory stays bounded by mark + piece. */
#define BODY_READ    AL_UP_MAX_BODY_CHUNK
#define BODY_BUF     16384
#define FREE_MAX     64
#define MAX_HEAD_OUT (128 * 1024) /* serialised request head */

typedef struct up_conn up_conn;
typedef struct up_host up_host;

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
    int proto;            /* AL_UP_PROTO_* the requests asked for (part of the key) */
    int alpn;             /* what the upstream chose: 0 unknown, 1 h2, -1 http/1.1 */
    up_conn *h2c;         /* HTTP/2: the connection new requests join (connecting or open) */
    up_conn *h2_list;     /* HTTP/2: every h2 connection of the host (draining ones too) */
    SSL_SESSION *session; /* to resume; owned */
    up_conn *idle;        /* newest first */
    size_t idle_count, conns;
    al_up_admit_host adm; /* slots, per-client counts, waiting requests */
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
    /* HTTP/2 (h2mode): the session, its requests (streams, or waiting for the
     * handshake), bytes from the session not written yet, a zero-delay kick that runs
     * the session outside its callbacks */
    int h2mode, tls_rw;
    al_up_h2 *h2;
    al_up_req *streams;
    size_t nstreams;
    up_conn *h2_next; /* host's h2_list */
    al_buf out;
    size_t out_off;
    ev_timer kick;
    ev_tstamp last_rx; /* the last byte from the upstream (or the connection's start) */
    ev_tstamp idle_since; /* HTTP/1.1: when it last went back to the pool */
};

enum { P_QUEUED, P_CONNECT, P_SEND, P_WAIT, P_RECV };

struct al_up_req {
    al_up_engine *e;
    up_host *h;
    al_up_admit_ticket adm; /* its place in h's admission */
    up_conn *c;
    al_upstream_cbs cbs;
    void *arg;
    al_up_req *prev, *next;   /* engine's live list */
    al_up_req *dprev, *dnext; /* engine's deferred list (unlinked in O(1)) */

    int has_body, chunked, idempotent, allow_private;
    int64_t body_length;
    uint32_t connect_ms, first_byte_ms, idle_ms, queue_ms;

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
    char *rbig; /* BODY_READ bytes for a large body (malloc'd on its first read), or NULL */

    ev_timer timer;
    int phase;
    ev_tstamp phase_at, last_activity;
    ev_tstamp timer_at; /* when the timer, while active, fires */
    struct timespec started;
    uint32_t first_byte_elapsed;

    al_up_h2_stream *st;      /* HTTP/2: the request's stream (NULL: none now) */
    al_up_req *sprev, *snext; /* HTTP/2: the connection's requests */
    int replays;              /* HTTP/2: times sent again after a GOAWAY / REFUSED */
    unsigned body_eof : 1, req_done : 1, got_byte : 1, head_done : 1, send_paused : 1,
        recv_paused : 1, cancelled : 1, finished : 1, deferred : 1, retried : 1, rerun : 1,
        live : 1, dispatch : 1, tls_rw : 1, send_broken : 1, grace : 1;
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
static void h2_dispatch(al_up_req *r);
static void h2_detach(al_up_req *r);
static void h2_conn_forget(up_conn *c);
static int h2_conn_events(const up_conn *c);
static void h2_conn_io(up_conn *c);
static void h2_conn_suspect(al_up_req *r, uint32_t ms);
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
        r->dprev = e->dtail;
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
    if (r->dprev)
        r->dprev->dnext = r->dnext;
    else
        e->dhead = r->dnext;
    if (r->dnext)
        r->dnext->dprev = r->dprev;
    else
        e->dtail = r->dprev;
    r->deferred = 0;
    r->dprev = r->dnext = NULL;
}

/* ---- hosts and admission ---------------------------------------------------------- */

static int str_eq(const char *a, const char *b)
{
    return (!a && !b) || (a && b && !strcmp(a, b));
}

static up_host *host_get(al_up_engine *e, const char *addr, uint16_t port, int https, int proto,
                         const char *name, const char *ca_file, const struct sockaddr_storage *sa,
                         socklen_t salen)
{
    for (up_host *h = e->hosts; h; h = h->next)
        if (h->port == port && h->https == https && h->proto == proto && !strcmp(h->addr, addr) &&
            !strcmp(h->name, name) && str_eq(h->ca_file, ca_file))
            return h;
    up_host *h = calloc(1, sizeof *h);
    if (!h)
        return NULL;
    h->e = e;
    snprintf(h->addr, sizeof h->addr, "%s", addr);
    h->port = port;
    h->https = https;
    h->proto = proto;
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
    if (!al_up_admit_unused(&h->adm) || h->conns)
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

/* The host's slots now: per stream once it speaks HTTP/2. */
static size_t host_cap(const up_host *h)
{
    return h->alpn > 0 ? AL_UP_MAX_HOST_STREAMS : AL_UP_MAX_HOST_CONNECTIONS;
}

/* The request leaves its host: its slot goes to the first waiting request that may
 * run (dispatched from the loop), or it leaves the waiting list. */
static void host_leave(al_up_req *r)
{
    up_host *h = r->h;
    if (!h)
        return;
    al_up_admit_ticket *t = al_up_admit_leave(&h->adm, &r->adm, host_cap(h));
    if (t) {
        al_up_req *n = t->owner;
        n->dispatch = 1;
        defer(n);
    }
    r->h = NULL;
    host_drop_if_unused(h);
}

/* ---- connections ------------------------------------------------------------------ */

static void conn_io_cb(struct ev_loop *loop, ev_io *w, int revents);

static void idle_expire_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    up_conn *c = w->data;
    if (!c->h2mode) { /* HTTP/1.1: the timer ran on while the connection served */
        if (c->req)
            return; /* busy: conn_to_idle arms it again */
        ev_tstamp left = c->idle_since + AL_UP_IDLE_EXPIRY_MS / 1000.0 - ev_now(loop);
        if (left > 0.0005) {
            ev_timer_set(&c->idle_t, left, 0.);
            ev_timer_start(loop, &c->idle_t);
            return;
        }
    }
    c->host->e->stats.idle_closed++;
    conn_close(c);
}

/* Out of the idle list (if there) and closed; its host may go. */
static void conn_close(up_conn *c)
{
    up_host *h = c->host;
    al_up_engine *e = h->e;
    if (c->h2mode)
        h2_conn_forget(c);
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
    /* the expiry counts from now; a timer still running from an earlier idle spell
     * (host_pick leaves it: one heap removal and insertion less per request) fires
     * early and is armed again for what is left */
    c->idle_since = ev_now(e->loop);
    if (!ev_is_active(&c->idle_t)) {
        ev_timer_set(&c->idle_t, AL_UP_IDLE_EXPIRY_MS / 1000.0, 0.);
        ev_timer_start(e->loop, &c->idle_t);
    }
}

/* An idle connection reported readable: the upstream closed it or sent what nobody
 * asked for. 1 when it is still usable after all: over TLS a record without data (a TLS
 * 1.3 session ticket) was consumed; a readiness left from its previous request's pass
 * (that request read the socket dry from another callback) finds nothing to read. */
static int conn_idle_readable(up_conn *c)
{
    char b;
    if (c->io.ssl)
        return al_up_io_read(&c->io, &b, 1) == AL_ERR_AGAIN && c->io.want == EV_READ;
    return al_up_io_alive(&c->io);
}

/* An idle connection of h that is still open for r, or NULL.
 *
 * A pooled connection keeps its read watcher armed (conn_to_idle), so a close or stray
 * bytes that arrived by the loop's last poll were already handled by conn_io_cb, or
 * are pending in this loop pass (handled here, before reuse): no system call per
 * request. What the loop cannot have seen is a FIN still in flight; a request that may
 * be sent again (may_retry: idempotent without a body, or nothing sent) finds it when
 * its read gives EOF or a reset before any response byte and goes again once, on a
 * fresh connection (dispatch). Any other request (a body, or a method that is not
 * idempotent: never sent twice) also asks the socket (MSG_PEEK), which narrows that
 * window for it as before. */
static up_conn *host_pick(up_host *h, const al_up_req *r)
{
    int peek = r->has_body || !r->idempotent;
    while (h->idle) {
        up_conn *c = h->idle;
        h->idle = c->next;
        h->idle_count--;
        c->next = NULL;
        int ok = 1;
        if (ev_is_pending(&c->w)) { /* readable in this loop pass: closed or stray bytes */
            ev_clear_pending(h->e->loop, &c->w);
            ok = conn_idle_readable(c);
        } else if (peek) {
            ok = al_up_io_alive(&c->io);
        }
        if (ok && !(c->io.ssl && SSL_pending(c->io.ssl)))
            return c;
        h->e->stats.idle_closed++;
        ev_io_stop(h->e->loop, &c->w);
        ev_timer_stop(h->e->loop, &c->idle_t);
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
    return !r->send_broken && (r->hoff < r->hb.len || r->boff < r->blen);
}

static void conn_events(up_conn *c)
{
    int ev = 0;
    al_up_req *r = c->req;
    if (c->state == C_CONNECT)
        ev = EV_WRITE;
    else if (c->state == C_HANDSHAKE)
        ev = c->io.want ? c->io.want : EV_READ;
    else if (c->h2mode)
        ev = h2_conn_events(c);
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
    if (c->h2mode) { /* the stream ends (reset if it had not); the connection stays */
        h2_detach(r);
        return;
    }
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
    r->grace = 0;
    r->phase_at = ev_now(r->e->loop);
    r->last_activity = r->phase_at;
    rearm(r);
}

/* The current phase's deadline (ev_now time); 0 when it has none. */
static ev_tstamp phase_due(const al_up_req *r)
{
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
    return ms ? from + ms / 1000.0 : 0;
}

static void arm_at(al_up_req *r, ev_tstamp at)
{
    struct ev_loop *loop = r->e->loop;
    ev_tstamp left = at - ev_now(loop);
    ev_timer_stop(loop, &r->timer);
    r->timer_at = at;
    ev_timer_set(&r->timer, left > 0 ? left : 0., 0.);
    ev_timer_start(loop, &r->timer);
}

/* Arms the request's timer for its phase's deadline, lazily: a timer already armed no
 * later than the deadline stays as it is (it fires early and timer_cb arms it again
 * for what is left), so the phases of one exchange (send, wait, receive) do not each
 * take it out of libev's timer heap and put it back. */
static void rearm(al_up_req *r)
{
    struct ev_loop *loop = r->e->loop;
    ev_tstamp due = r->finished ? 0 : phase_due(r);
    if (!due) {
        ev_timer_stop(loop, &r->timer);
        return;
    }
    if (ev_is_active(&r->timer) && r->timer_at <= due)
        return;
    /* sending: armed no later than the deadline of the wait for the first byte that
     * follows, so that phase keeps this timer */
    ev_tstamp wait = ev_now(loop) + r->first_byte_ms / 1000.0;
    if (r->phase == P_SEND && r->first_byte_ms && wait < due)
        due = wait;
    arm_at(r, due);
}

/* 1 when the connection's socket is ready for what its watcher waits on: after a stall
 * (a starved worker) libev may run an expired timer before the same pass's I/O
 * callback, so the answer that arrived in time would be reported as a timeout. Such a
 * request gets one short grace period (once per phase) for the I/O to be handled. */
static int io_pending(al_up_req *r)
{
    up_conn *c = r->c;
    if (r->grace || !c || c->io.fd < 0 || !c->events)
        return 0;
    struct pollfd pf = {.fd = c->io.fd,
                        .events = (short)((c->events & EV_READ ? POLLIN : 0) |
                                          (c->events & EV_WRITE ? POLLOUT : 0))};
    return poll(&pf, 1, 0) == 1 && (pf.revents & (POLLIN | POLLOUT | POLLHUP | POLLERR));
}

static void timer_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    al_up_req *r = w->data;
    if (r->finished || r->cancelled)
        return;
    if (!r->grace) { /* armed early (rearm): the phase's own deadline may be later */
        ev_tstamp due = phase_due(r);
        if (!due)
            return;
        if (due - ev_now(loop) > 0.0005) {
            arm_at(r, due);
            return;
        }
    }
    if ((r->phase == P_CONNECT || r->phase == P_WAIT) && io_pending(r)) {
        r->grace = 1;
        arm_at(r, ev_now(loop) + 0.05);
        return;
    }
    r->busy++;
    switch (r->phase) {
    case P_QUEUED: {
        if (al_up_admit_client_over(&r->adm))
            fail(r, AL_UPSTREAM_CLIENT_LIMIT,
                 "this client already has %u requests in flight to this upstream",
                 r->adm.client_cap);
        else
            fail(r, AL_UPSTREAM_BUSY, "all %u upstream connections of this worker are busy",
                 (unsigned)AL_UP_MAX_HOST_CONNECTIONS);
        break;
    }
    case P_CONNECT:
        h2_conn_suspect(r, 0);
        fail(r, AL_UPSTREAM_TIMEOUT_CONNECT, "no connection within %u ms", r->connect_ms);
        break;
    case P_WAIT:
        h2_conn_suspect(r, r->first_byte_ms);
        fail(r, AL_UPSTREAM_TIMEOUT_FIRST_BYTE, "no response within %u ms", r->first_byte_ms);
        break;
    default: {
        int client =
            (r->phase == P_SEND && r->send_paused) || (r->phase == P_RECV && r->recv_paused);
        if (client)
            fail(r, AL_UPSTREAM_TIMEOUT_CLIENT, "the agent %s nothing for %u ms",
                 r->recv_paused ? "read" : "sent", r->idle_ms);
        else {
            h2_conn_suspect(r, r->idle_ms);
            fail(r, AL_UPSTREAM_TIMEOUT_IDLE, "no data for %u ms", r->idle_ms);
        }
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
    while (!r->finished && !r->cancelled && !r->req_done && !r->send_broken) {
        h1_fill_body(r);
        if (r->finished || r->cancelled)
            return;
        /* the head waits for the first body bytes (one writev for both): a pooled
         * connection is not touched before there is something to send on it */
        if (r->hoff == 0 && r->has_body && !r->body_eof && r->boff >= r->blen)
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
            /* the upstream may have answered and closed before taking the whole body
             * (a 401 or 413 before reading it): its answer is read before giving up */
            r->send_broken = 1;
            r->tls_rw = 0;
            if (!r->head_done)
                set_phase(r, P_WAIT);
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
        al_up_h1_resp_next(&r->resp, (r->rbig ? r->rbig : r->rbuf) + r->roff, r->rlen - r->roff,
                           &used, &ev);
        r->roff += used;
        switch (ev.type) {
        case AL_UP_H1_NEED_MORE: {
            r->rlen = r->roff = 0;
            if (!r->rbig && r->head_done && r->resp.body != AL_UP_H1_BODY_NONE &&
                (r->resp.body != AL_UP_H1_BODY_LENGTH || r->resp.left > READ_BUF))
                r->rbig = malloc(BODY_READ); /* NULL: the 16 KiB buffer will do */
            ssize_t n = r->rbig ? al_up_io_read(&r->c->io, r->rbig, BODY_READ)
                                : al_up_io_read(&r->c->io, r->rbuf, sizeof r->rbuf);
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
                         r->got_byte      ? ev.detail
                         : r->send_broken ? "connection lost while sending the request"
                                          : "upstream closed before a response");
                    return;
                }
                fail(r, AL_UPSTREAM_RESET, "%s",
                     r->got_byte      ? "connection reset while reading the response"
                     : r->send_broken ? "connection lost while sending the request"
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
    set_phase(r, P_SEND);
}

/* Connect and handshake steps of c, ALPN offering alpn: 1 ready, 0 waiting, -1 failed
 * (*err and why say how). */
static int conn_step(up_conn *c, const unsigned char *alpn, size_t alpn_len,
                     enum al_upstream_error *err, char *why, size_t why_len)
{
    up_host *h = c->host;
    if (c->state == C_CONNECT) {
        int rc = al_up_io_connected(&c->io);
        if (rc == 0)
            return 0;
        if (rc < 0) {
            *err = AL_UPSTREAM_CONNECT;
            snprintf(why, why_len, "connect to %s port %u failed: %s", h->addr, (unsigned)h->port,
                     strerror(errno));
            return -1;
        }
        if (!h->https)
            return 1;
        const char *w = NULL;
        SSL_CTX *ctx = al_up_tls_ctx(h->e->tls, h->ca_file, &w);
        *err = AL_UPSTREAM_TLS;
        if (!ctx) {
            snprintf(why, why_len, "%s", w);
            return -1;
        }
        if (al_up_io_tls(&c->io, ctx, h->name, alpn, alpn_len, &h->session) != AL_OK) {
            snprintf(why, why_len, "TLS setup failed");
            return -1;
        }
        c->state = C_HANDSHAKE;
    }
    if (c->state == C_HANDSHAKE) {
        int rc = al_up_io_handshake(&c->io, why, why_len);
        *err = AL_UPSTREAM_TLS;
        return rc < 0 ? -1 : rc;
    }
    return 1;
}

/* Connect and handshake steps; 1 when the connection is ready. */
static int conn_progress(al_up_req *r)
{
    enum al_upstream_error err = AL_UPSTREAM_CONNECT;
    char why[200];
    int rc = conn_step(r->c, ALPN_H1, sizeof ALPN_H1 - 1, &err, why, sizeof why);
    if (rc < 0)
        fail(r, err, "%s", why);
    if (rc <= 0)
        return 0;
    conn_ready(r);
    return 1;
}

/* ---- HTTP/2 ----------------------------------------------------------------------------
 * A host whose requests may speak HTTP/2 (https with ALPN offering h2, or
 * upstream.protocol h2) keeps one connection new requests join (h->h2c). While it
 * connects, requests wait on it (their connect clock runs); once the handshake chose
 * h2 each becomes a stream of the session (upstream/al_up_h2: the peer's stream limit,
 * flow control per stream so a paused agent stalls only its own stream). If ALPN chose
 * http/1.1, the host is marked HTTP/1.1 and the waiting requests go the HTTP/1.1 way.
 * The connection's io callback and its kick (a zero-delay timer the session asks for
 * when a stream resumes or a frame is queued) drive the session, never from inside
 * one of its callbacks. A stream the upstream did not process (GOAWAY above its
 * last_stream_id, REFUSED_STREAM) is sent again on another connection when nothing of
 * its body was read yet; one lost with the connection after it was sent only when it
 * is idempotent without a body and nothing of a response came (as HTTP/1.1 does).
 * The request's HTTP/2 fields are read back from the HTTP/1.1 head already written
 * (r->hb: one format, checked when written), so the credential is held once. */

#define H2_OUT_FILL (64 * 1024)
#define H2_OUT_MAX  (512 * 1024)
#define H2_REPLAYS  3

static const unsigned char ALPN_H2_H1[] = "\x02h2\x08http/1.1";
static const unsigned char ALPN_H2[] = "\x02h2";

static int h2_possible(const up_host *h)
{
    if (h->proto == AL_UP_PROTO_H1 || h->alpn < 0)
        return 0;
    return h->https || h->proto == AL_UP_PROTO_H2;
}

static void h2_kick_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    h2_conn_io(w->data);
}

static void h2_kick(up_conn *c)
{
    struct ev_loop *loop = c->host->e->loop;
    if (!ev_is_active(&c->kick)) {
        ev_timer_set(&c->kick, 0., 0.);
        ev_timer_start(loop, &c->kick);
    }
}

static void h2_wake(void *arg)
{
    h2_kick(arg);
}

static void h2_link(up_conn *c, al_up_req *r)
{
    r->c = c;
    r->sprev = NULL;
    r->snext = c->streams;
    if (c->streams)
        c->streams->sprev = r;
    c->streams = r;
    c->nstreams++;
    ev_timer_stop(c->host->e->loop, &c->idle_t);
}

static void h2_unlink(al_up_req *r)
{
    up_conn *c = r->c;
    if (!c)
        return;
    if (r->sprev)
        r->sprev->snext = r->snext;
    else
        c->streams = r->snext;
    if (r->snext)
        r->snext->sprev = r->sprev;
    r->sprev = r->snext = NULL;
    r->c = NULL;
    c->nstreams--;
    h2_kick(c); /* a reset to send, or the connection to idle or close */
}

static void h2_detach(al_up_req *r)
{
    if (r->st) {
        al_up_h2_cancel(r->st); /* RST_STREAM(CANCEL) unless it ended */
        r->st = NULL;
    }
    h2_unlink(r);
}

/* A request changed its mind inside one of its callbacks (cancel): the stream goes,
 * the request is freed from the loop. */
static int h2_after_cb(al_up_req *r)
{
    if (!r->cancelled)
        return 0;
    h2_detach(r);
    defer(r);
    return 1;
}

static void h2_first_byte(al_up_req *r)
{
    if (!r->got_byte) {
        r->got_byte = 1;
        r->first_byte_elapsed = ms_since(&r->started);
    }
}

static void h2_cb_info(void *arg, int status, const al_header *hv, size_t n)
{
    al_up_req *r = arg;
    if (r->finished || r->cancelled)
        return;
    h2_first_byte(r);
    if (status == 100 || !r->cbs.on_interim)
        return;
    r->busy++;
    r->cbs.on_interim(r->arg, status, hv, n);
    r->busy--;
    h2_after_cb(r);
}

static void h2_cb_head(void *arg, int status, const al_header *hv, size_t n)
{
    al_up_req *r = arg;
    if (r->finished || r->cancelled)
        return;
    h2_first_byte(r);
    r->head_done = 1;
    set_phase(r, P_RECV);
    if (r->cbs.on_head) {
        r->busy++;
        r->cbs.on_head(r->arg, status, hv, n);
        r->busy--;
    }
    h2_after_cb(r);
}

static int h2_cb_body(void *arg, const char *d, size_t len)
{
    al_up_req *r = arg;
    if (r->finished || r->cancelled)
        return AL_OK;
    r->last_activity = ev_now(r->e->loop);
    int rc = AL_OK;
    if (r->cbs.on_body) {
        r->busy++;
        rc = r->cbs.on_body(r->arg, d, len);
        r->busy--;
    }
    if (h2_after_cb(r))
        return AL_OK;
    if (rc == AL_ERR_AGAIN) {
        r->recv_paused = 1;
        return rc;
    }
    r->recv_paused = 0;
    if (rc < 0) {
        fail(r, AL_UPSTREAM_ABORTED, "response body refused");
        return rc;
    }
    return AL_OK;
}

static void h2_cb_trailers(void *arg, const al_header *hv, size_t n)
{
    al_up_req *r = arg;
    if (r->finished || r->cancelled || !r->cbs.on_trailers)
        return;
    r->busy++;
    r->cbs.on_trailers(r->arg, hv, n);
    r->busy--;
    h2_after_cb(r);
}

static ssize_t h2_cb_read(void *arg, char *buf, size_t cap)
{
    al_up_req *r = arg;
    if (r->finished || r->cancelled)
        return AL_ERR_AGAIN; /* its stream is being reset */
    r->busy++;
    ssize_t got = r->cbs.read_body(r->arg, buf, cap);
    r->busy--;
    if (h2_after_cb(r))
        return AL_ERR_AGAIN;
    if (got == AL_ERR_AGAIN) {
        r->send_paused = 1;
        return got;
    }
    if (got < 0 || (size_t)got > cap) {
        fail(r, AL_UPSTREAM_ABORTED, "request body read failed");
        return AL_ERR_IO;
    }
    r->last_activity = ev_now(r->e->loop);
    if (got == 0) {
        r->body_eof = 1;
        r->req_done = 1;
        if (!r->head_done)
            set_phase(r, P_WAIT);
        return 0;
    }
    r->sent += (uint64_t)got;
    return got;
}

/* Sent again elsewhere? Not processed (REFUSED): when the body can be read again
 * (none of it was). Lost with the connection: also only once, idempotent, no body. */
static int h2_may_replay(const al_up_req *r, enum al_up_h2_end end)
{
    if (r->got_byte || r->replays >= H2_REPLAYS || (r->has_body && (r->sent || r->body_eof)))
        return 0;
    if (end == AL_UP_H2_REFUSED)
        return 1;
    return end == AL_UP_H2_CONN_LOST && !r->retried && r->idempotent && !r->has_body;
}

static void h2_cb_done(void *arg, enum al_up_h2_end end, uint32_t code, const char *detail)
{
    al_up_req *r = arg;
    r->st = NULL;
    h2_unlink(r);
    if (!r->finished && !r->cancelled) {
        switch (end) {
        case AL_UP_H2_DONE:
            fail(r, AL_UPSTREAM_OK, NULL);
            break;
        case AL_UP_H2_REFUSED:
        case AL_UP_H2_CONN_LOST:
            if (h2_may_replay(r, end)) {
                r->replays++;
                if (end == AL_UP_H2_CONN_LOST)
                    r->retried = 1;
                r->e->stats.retries++;
                r->req_done = r->head_done = r->send_paused = r->recv_paused = 0;
                r->dispatch = 1; /* from the loop: this session may be closing */
                break;
            }
            fail(r, AL_UPSTREAM_RESET, "%s", detail);
            break;
        case AL_UP_H2_RESET:
        case AL_UP_H2_MALFORMED:
            if (code)
                fail(r, AL_UPSTREAM_RESET, "%s (HTTP/2 error %u)", detail, (unsigned)code);
            else
                fail(r, AL_UPSTREAM_RESET, "%s", detail);
            break;
        default:
            fail(r, AL_UPSTREAM_ABORTED, "%s", detail);
            break;
        }
    }
    defer(r); /* settled (or dispatched again) from the loop, outside the session */
}

static const al_up_h2_cbs h2_bridge = {h2_cb_info,     h2_cb_head, h2_cb_body,
                                       h2_cb_trailers, h2_cb_read, h2_cb_done};

/* The request as a stream of c's session; its fields are read back from the HTTP/1.1
 * head (a copy, wiped): "METHOD SP path SP HTTP/1.1", "Host: authority", then
 * "Name: value" lines (framing headers are dropped by the codec). */
static int h2_submit(al_up_req *r)
{
    up_conn *c = r->c;
    size_t len = r->hb.len, n = 0, cap = 0;
    char *copy = malloc(len + 1);
    al_header *hv = NULL;
    int rc = AL_ERR_NOMEM;
    if (!copy)
        goto out;
    memcpy(copy, r->hb.data, len);
    copy[len] = '\0';
    for (size_t i = 0; i + 1 < len; i++)
        cap += copy[i] == '\r' && copy[i + 1] == '\n';
    if (!(hv = calloc(cap ? cap : 1, sizeof *hv)))
        goto out;
    rc = AL_ERR_INVAL;
    char *line = copy, *end = copy + len, *method = NULL, *path = NULL, *authority = NULL;
    while (line < end) {
        char *eol = strstr(line, "\r\n");
        if (!eol || eol == line)
            break; /* the blank line ends the head */
        *eol = '\0';
        if (!method) {
            char *sp1 = strchr(line, ' '), *sp2 = strrchr(line, ' ');
            if (!sp1 || sp2 == sp1)
                goto out;
            *sp1 = *sp2 = '\0';
            method = line;
            path = sp1 + 1;
        } else {
            char *colon = strstr(line, ": ");
            if (!colon)
                goto out;
            *colon = '\0';
            if (!authority && !strcasecmp(line, "host"))
                authority = colon + 2;
            else
                hv[n++] = (al_header){line, (size_t)(colon - line), colon + 2, strlen(colon + 2)};
        }
        line = eol + 2;
    }
    if (!method || !authority)
        goto out;
    al_up_h2_req q = {method, "https", authority, path, hv, n, r->has_body, r->body_length};
    if (!c->host->https)
        q.scheme = "http";
    rc = al_up_h2_submit(c->h2, &q, &h2_bridge, r, &r->st);
out:
    if (copy) {
        OPENSSL_cleanse(copy, len);
        free(copy);
    }
    free(hv);
    if (rc == AL_OK) {
        set_phase(r, r->has_body ? P_SEND : P_WAIT);
        h2_kick(c);
        return AL_OK;
    }
    h2_unlink(r);
    if (rc == AL_ERR_AGAIN) { /* the session takes no more (GOAWAY, ids used up) */
        if (c->host->h2c == c)
            c->host->h2c = NULL;
        r->dispatch = 1;
    } else {
        fail(r, AL_UPSTREAM_ABORTED, "the request cannot be sent over HTTP/2");
    }
    defer(r);
    return rc;
}

/* Every request of c ends with err (the connection failed before its session). */
static void h2_fail_all(up_conn *c, enum al_upstream_error err, const char *why)
{
    al_up_req *r;
    while ((r = c->streams) != NULL) {
        h2_detach(r);
        fail(r, err, "%s", why);
        defer(r);
    }
}

/* The connection is gone: the session ends its streams (each replayed or failed). */
static void h2_conn_lost(up_conn *c, const char *why)
{
    if (c->h2)
        al_up_h2_fail(c->h2, why);
    h2_fail_all(c, AL_UPSTREAM_RESET, why);
    conn_close(c);
}

/* Out of its host's lists; the session freed (its streams ended before). */
static void h2_conn_forget(up_conn *c)
{
    up_host *h = c->host;
    if (h->h2c == c)
        h->h2c = NULL;
    for (up_conn **pp = &h->h2_list; *pp; pp = &(*pp)->h2_next)
        if (*pp == c) {
            *pp = c->h2_next;
            break;
        }
    ev_timer_stop(h->e->loop, &c->kick);
    while (c->streams) /* not expected: every caller ends them first */
        h2_detach(c->streams);
    al_up_h2_free(c->h2);
    c->h2 = NULL;
    al_buf_free(&c->out, 0);
    c->h2mode = 0;
}

/* ALPN chose http/1.1: the host speaks HTTP/1.1 from now on; the first waiting request
 * takes this connection, the others are dispatched again. */
static void h2_to_h1(up_conn *c)
{
    up_host *h = c->host;
    al_up_req *first = NULL, *r;
    h->alpn = -1;
    while ((r = c->streams) != NULL) {
        h2_unlink(r);
        if (!first) {
            first = r;
            continue;
        }
        r->dispatch = 1;
        defer(r);
    }
    h2_conn_forget(c);
    if (!first) {
        c->state = C_READY;
        conn_to_idle(c);
        return;
    }
    first->c = c;
    c->req = first;
    conn_ready(first);
    run(first);
}

/* Requests that waited for the slots HTTP/2 opens (the cap is per stream now). */
static void host_admit_waiting(up_host *h)
{
    al_up_admit_ticket *t;
    while ((t = al_up_admit_take_head(&h->adm, host_cap(h))) != NULL) {
        al_up_req *r = t->owner;
        r->dispatch = 1;
        defer(r);
    }
}

static void h2_conn_connecting(up_conn *c)
{
    up_host *h = c->host;
    if (c->nstreams == 0 && h->h2c != c) { /* retired (its requests timed out) */
        conn_close(c);
        return;
    }
    int only = h->proto == AL_UP_PROTO_H2;
    enum al_upstream_error err = AL_UPSTREAM_CONNECT;
    char why[200];
    int rc = conn_step(c, only ? ALPN_H2 : ALPN_H2_H1,
                       only ? sizeof ALPN_H2 - 1 : sizeof ALPN_H2_H1 - 1, &err, why, sizeof why);
    if (rc == 0) {
        conn_events(c);
        return;
    }
    if (rc < 0) {
        h2_fail_all(c, err, why);
        conn_close(c);
        return;
    }
    c->state = C_READY;
    if (h->https && !c->io.alpn_h2) {
        if (!only) {
            h2_to_h1(c);
            return;
        }
        h2_fail_all(c, AL_UPSTREAM_TLS,
                    "the upstream did not choose HTTP/2 in the TLS handshake (ALPN), which "
                    "upstream.protocol: h2 requires");
        conn_close(c);
        return;
    }
    h->alpn = 1;
    c->last_rx = ev_now(h->e->loop);
    if (al_up_h2_new(NULL, h2_wake, c, &c->h2) != AL_OK) {
        h2_fail_all(c, AL_UPSTREAM_CONNECT, "out of memory for an HTTP/2 session");
        conn_close(c);
        return;
    }
    al_up_req *next;
    for (al_up_req *r = c->streams; r; r = next) {
        next = r->snext;
        h2_submit(r);
    }
    host_admit_waiting(h);
    h2_kick(c);
}

/* Bytes of the session to the socket; -1 when the connection failed. */
static int h2_flush(up_conn *c)
{
    for (;;) {
        if (c->out_off < c->out.len) {
            struct iovec iov = {c->out.data + c->out_off, c->out.len - c->out_off};
            ssize_t w = al_up_io_writev(&c->io, &iov, 1);
            if (w == AL_ERR_AGAIN)
                return 0;
            if (w < 0)
                return -1;
            c->out_off += (size_t)w;
            if (c->out_off < c->out.len)
                continue;
            al_buf_reset(&c->out);
            c->out_off = 0;
        }
        while (c->out.len < H2_OUT_FILL) {
            const uint8_t *d;
            ssize_t n = al_up_h2_send(c->h2, &d);
            if (n < 0)
                return -1;
            if (n == 0)
                break;
            if (al_buf_append(&c->out, d, (size_t)n) != AL_OK)
                return -1;
        }
        if (c->out.len == 0)
            return 0;
    }
}

static int h2_conn_events(const up_conn *c)
{
    int ev = EV_READ;
    if (c->out_off < c->out.len || c->tls_rw || (c->h2 && al_up_h2_want_write(c->h2)))
        ev |= EV_WRITE;
    return ev;
}

/* One pass over an HTTP/2 connection: resumed streams, what the socket has, what the
 * session has to send; then whether the connection idles, drains or goes. */
static void h2_conn_io(up_conn *c)
{
    up_host *h = c->host;
    if (c->state != C_READY) {
        h2_conn_connecting(c);
        return;
    }
    if (!c->h2)
        return;
    al_up_h2_run(c->h2);
    c->tls_rw = 0;
    for (int i = 0;; i++) {
        if (i == 64) { /* more may wait (TLS buffers it): the next pass, after others */
            h2_kick(c);
            break;
        }
        char buf[BODY_READ]; /* (TLS gives one record, <= 16 KiB, per read anyway) */
        ssize_t n = al_up_io_read(&c->io, buf, sizeof buf);
        if (n == AL_ERR_AGAIN) {
            c->tls_rw = c->io.want == EV_WRITE;
            break;
        }
        if (n <= 0) {
            h2_conn_lost(c, n == 0 ? "the upstream closed the HTTP/2 connection"
                                   : "the HTTP/2 connection was reset");
            return;
        }
        c->last_rx = ev_now(h->e->loop);
        if (al_up_h2_recv(c->h2, (const uint8_t *)buf, (size_t)n) < 0) {
            h2_flush(c); /* its GOAWAY, if it can go */
            h2_conn_lost(c, "the upstream broke the HTTP/2 protocol");
            return;
        }
    }
    if (h2_flush(c) < 0) {
        h2_conn_lost(c, "the HTTP/2 connection failed while sending");
        return;
    }
    if (h->h2c == c && !al_up_h2_can_submit(c->h2))
        h->h2c = NULL; /* draining (GOAWAY): new requests open another connection */
    if (!al_up_h2_alive(c->h2)) {
        h2_conn_lost(c, "the HTTP/2 session ended");
        return;
    }
    if (c->nstreams == 0) {
        if (h->h2c != c) {
            conn_close(c);
            return;
        }
        if (!ev_is_active(&c->idle_t)) {
            ev_timer_set(&c->idle_t, AL_UP_IDLE_EXPIRY_MS / 1000.0, 0.);
            ev_timer_start(h->e->loop, &c->idle_t);
        }
    }
    conn_events(c);
}

/* A request of c timed out: when the connection has been silent most of that time too
 * (or is still connecting), new requests go to a new connection; this one ends with its
 * last stream. (A dead connection that keeps receiving new streams would time each
 * one out in turn.) */
static void h2_conn_suspect(al_up_req *r, uint32_t ms)
{
    up_conn *c = r->c;
    if (!c || !c->h2mode || c->host->h2c != c)
        return;
    /* (half the timeout: the upstream's SETTINGS may have come just after the stream
     * started) */
    if (c->state == C_READY && ev_now(c->host->e->loop) - c->last_rx < ms / 2000.0)
        return; /* the connection is alive: this stream alone is slow */
    c->host->h2c = NULL;
}

/* A slot is held: join the host's HTTP/2 connection, or open it. */
static void h2_dispatch(al_up_req *r)
{
    up_host *h = r->h;
    al_up_engine *e = h->e;
    up_conn *c = h->h2c;
    if (c && c->h2 && !al_up_h2_can_submit(c->h2)) {
        h->h2c = NULL;
        c = NULL;
    }
    if (c) {
        e->stats.reuses++;
        h2_link(c, r);
        if (c->state == C_READY)
            h2_submit(r);
        else
            set_phase(r, P_CONNECT);
        return;
    }
    if (!(c = conn_new(h))) {
        fail(r, AL_UPSTREAM_CONNECT, "out of memory");
        return;
    }
    c->h2mode = 1;
    ev_init(&c->kick, h2_kick_cb);
    c->kick.data = c;
    al_buf_init(&c->out, H2_OUT_MAX);
    c->h2_next = h->h2_list;
    h->h2_list = c;
    h->h2c = c;
    e->stats.connects++;
    h2_link(c, r);
    set_phase(r, P_CONNECT);
    if (al_up_io_connect(&c->io, (const struct sockaddr *)&h->sa, h->salen) != AL_OK) {
        fail(r, AL_UPSTREAM_CONNECT, "connect to %s port %u failed: %s", h->addr, (unsigned)h->port,
             strerror(errno));
        h2_unlink(r);
        conn_close(c);
        return;
    }
    c->state = C_CONNECT;
    conn_events(c);
}

static void conn_io_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    up_conn *c = w->data;
    al_up_req *r = c->req;
    if (c->h2mode) {
        h2_conn_io(c);
        return;
    }
    if (!r) { /* idle and readable: closed by the upstream, or stray bytes */
        if (!conn_idle_readable(c)) {
            c->host->e->stats.idle_closed++;
            conn_close(c);
        }
        return;
    }
    run(r);
}

/* ---- dispatch: a slot is held; find or make a connection --------------------------------- */

static void dispatch(al_up_req *r)
{
    up_host *h = r->h;
    if (h2_possible(h)) {
        h2_dispatch(r);
        return;
    }
    /* a retry goes on a fresh connection: another pooled one may be closing too, and
     * the request gets no third attempt */
    up_conn *c = r->retried ? NULL : host_pick(h, r);
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
        if (r->finished || r->cancelled || !r->c || r->c->h2mode)
            break; /* (HTTP/2: the connection drives its streams) */
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
    /* the head held the credential: wiped; its memory goes with the request to the free
     * list (al_up_start writes the next head into it) unless it grew past a usual head */
    if (r->hb.cap > 4096) {
        al_buf_free(&r->hb, 1);
    } else if (r->hb.data) {
        OPENSSL_cleanse(r->hb.data, r->hb.len);
        al_buf_reset(&r->hb);
    }
    free(r->rbig);
    r->rbig = NULL;
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
    al_buf_free(&r->hb, 1);
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
        if (e->dhead)
            e->dhead->dprev = NULL;
        else
            e->dtail = NULL;
        r->deferred = 0;
        r->dprev = r->dnext = NULL;
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
    for (up_host *h = e->hosts; h; h = h->next) /* (their streams ended with the requests) */
        while (h->h2_list) {
            up_conn *c = h->h2_list;
            h2_conn_forget(c);
            ev_io_stop(e->loop, &c->w);
            ev_timer_stop(e->loop, &c->idle_t);
            al_up_io_close(&c->io);
            free(c);
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
        al_buf_free(&r->hb, 1);
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
    /* (the resolver's checked address is a plain dotted quad: read without libc) */
    if (al_fmt_read_ipv4(a, &s4->sin_addr.s_addr) ||
        inet_pton(AF_INET, a, &s4->sin_addr) == 1) {
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
    size_t al = strlen(a); /* an address inet_pton took: at most 45 characters */
    if (al >= text_len)
        return AL_ERR_INVAL;
    memcpy(text, a, al + 1);
    return AL_OK;
}

static al_up_req *req_get(al_up_engine *e)
{
    al_up_req *r = e->free_reqs;
    if (r) {
        e->free_reqs = r->next;
        e->free_count--;
        /* resp (its ~8 KiB header table and head buffer) is kept as it was: al_up_start
         * initialises it; copying it out and back and clearing it cost ~25k instructions
         * per request. So is hb's memory (wiped by req_free), for the next head. */
        al_buf hb = r->hb;
        memset(r, 0, offsetof(al_up_req, resp));
        memset(&r->rlen, 0, sizeof *r - offsetof(al_up_req, rlen));
        r->hb = hb;
    } else if ((r = malloc(sizeof *r)) != NULL) {
        /* not calloc: zeroing the whole request (~25 KiB: the read buffer and the
         * response's header table, both written before they are read) cost ~24k
         * instructions for each request past the free list's FREE_MAX in flight */
        memset(r, 0, offsetof(al_up_req, resp));
        memset(&r->resp, 0, offsetof(al_up_h1_resp, hdrs));
        memset(&r->resp.count, 0, sizeof r->resp - offsetof(al_up_h1_resp, count));
        memset(&r->rlen, 0, sizeof *r - offsetof(al_up_req, rlen));
    } else {
        return NULL;
    }
    r->e = e;
    ev_init(&r->timer, timer_cb);
    r->timer.data = r;
    return r;
}

enum { M_IDEMPOTENT = 1, M_WRITE = 2, M_HEAD = 4 };

/* What the engine needs to know of a method: idempotent (RFC 9110 section 9.2.2: may
 * be sent again), a write that says its length even without a body (POST, PUT,
 * PATCH), HEAD. One length switch instead of up to ten strcmp per request. */
static unsigned method_flags(const char *m)
{
    switch (strlen(m)) {
    case 3:
        if (!memcmp(m, "GET", 3))
            return M_IDEMPOTENT;
        if (!memcmp(m, "PUT", 3))
            return M_IDEMPOTENT | M_WRITE;
        break;
    case 4:
        if (!memcmp(m, "HEAD", 4))
            return M_IDEMPOTENT | M_HEAD;
        if (!memcmp(m, "POST", 4))
            return M_WRITE;
        break;
    case 5:
        if (!memcmp(m, "TRACE", 5))
            return M_IDEMPOTENT;
        if (!memcmp(m, "PATCH", 5))
            return M_WRITE;
        break;
    case 6:
        if (!memcmp(m, "DELETE", 6))
            return M_IDEMPOTENT;
        break;
    case 7:
        if (!memcmp(m, "OPTIONS", 7))
            return M_IDEMPOTENT;
        break;
    }
    return 0;
}

int al_up_start(al_up_engine *e, const al_upstream_opts *o, const al_upstream_cbs *cbs, void *arg,
                al_up_req **out)
{
    if (!e || !o || !cbs || !out || !o->method || !o->scheme || !o->path || !o->connect_host ||
        !cbs->on_done || (o->has_body && !cbs->read_body) || !o->connect_port)
        return AL_ERR_INVAL;
    *out = NULL;
    /* "http" or "https", byte by byte (two strcmp calls were ~40 instructions) */
    const char *sc = o->scheme;
    int http = sc[0] == 'h' && sc[1] == 't' && sc[2] == 't' && sc[3] == 'p';
    int https = http && sc[4] == 's' && sc[5] == '\0';
    if ((!https && !(http && sc[4] == '\0')) || o->protocol < AL_UP_PROTO_AUTO ||
        o->protocol > AL_UP_PROTO_H2)
        return AL_ERR_INVAL;
    /* http:// speaks HTTP/2 only when told to (prior knowledge): nothing to negotiate */
    int proto = !https && o->protocol == AL_UP_PROTO_AUTO ? AL_UP_PROTO_H1 : o->protocol;
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
    unsigned mf = method_flags(o->method);
    r->idempotent = (mf & M_IDEMPOTENT) != 0;
    r->allow_private = o->allow_private;
    r->connect_ms = o->connect_timeout_ms;
    r->first_byte_ms = o->first_byte_timeout_ms;
    r->idle_ms = o->idle_timeout_ms;
    r->queue_ms = o->queue_timeout_ms;
    clock_gettime(CLOCK_MONOTONIC, &r->started);
    if (!r->hb.data) /* (a request from the free list keeps its head's memory) */
        al_buf_init(&r->hb, MAX_HEAD_OUT);
    const char *m = o->method;
    int bodyless_write = !o->has_body && (mf & M_WRITE);
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
    al_up_h1_resp_init(&r->resp, (mf & M_HEAD) != 0);
    r->h = host_get(e, addr, o->connect_port, https, proto, o->connect_host,
                    https ? o->ca_file : NULL, &ss, sl);
    if (!r->h) {
        rc = AL_ERR_NOMEM;
        goto fail;
    }
    if (al_up_admit_join(&r->h->adm, &r->adm, r, o->client, o->max_per_client) != AL_OK) {
        rc = AL_ERR_NOMEM;
        goto fail;
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
    } else if (!al_up_admit_may_run(&r->h->adm, &r->adm, host_cap(r->h))) {
        al_up_admit_wait(&r->h->adm, &r->adm);
        set_phase(r, P_QUEUED);
    } else {
        al_up_admit_count(&r->h->adm, &r->adm);
        dispatch(r);
    }
    /* a pooled connection: a bodiless request's head goes now (read_body is never
     * called inside start: the caller has not got *out yet) */
    if (!r->finished && r->c && !r->c->h2mode && r->c->state == C_READY && !r->has_body) {
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

/* After a resume's own pass: the end (on_done) never comes inside the caller's call
 * (it resumes from its own body or write path); it is delivered from the loop. */
static void after_resume(al_up_req *r)
{
    if (r->cancelled)
        req_free(r);
    else if (r->finished || r->rerun)
        defer(r);
    else if (r->c)
        conn_events(r->c);
}

void al_up_resume_send(al_up_req *r)
{
    if (!r || r->cancelled || r->finished)
        return;
    r->send_paused = 0;
    r->last_activity = ev_now(r->e->loop);
    if (r->st) { /* HTTP/2: the session pulls the body again at its next pass */
        al_up_h2_resume_send(r->st);
        return;
    }
    if (r->busy) {
        r->rerun = 1;
        return;
    }
    if (!r->c || r->c->h2mode || r->c->state != C_READY)
        return; /* (HTTP/2: the connection drives its streams) */
    /* only the sending side here: a response read now would end the request inside
     * the agent's body write */
    r->busy++;
    h1_send(r);
    r->busy--;
    after_resume(r);
}

void al_up_resume_recv(al_up_req *r)
{
    if (!r || r->cancelled || r->finished)
        return;
    r->recv_paused = 0;
    r->last_activity = ev_now(r->e->loop);
    if (r->st) { /* HTTP/2: the held bytes are offered again at the session's next pass */
        al_up_h2_resume_recv(r->st);
        return;
    }
    if (r->busy) {
        r->rerun = 1;
        return;
    }
    if (!r->c || r->c->h2mode || r->c->state != C_READY)
        return;
    /* as curl_easy_pause does: the paused bytes are offered right away */
    r->busy++;
    h1_recv(r);
    r->busy--;
    after_resume(r);
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
