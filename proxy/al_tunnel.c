/* al_tunnel: blind passthrough tunnels (see al_tunnel.h).
 *
 * Phases: RESOLVING (egress guard) -> CONNECTING (non-blocking connect to the
 * checked address, with limits.connect_timeout_ms) -> OPEN (the connection's
 * protocol is this file's; bytes are copied). Before OPEN the HTTP/1.1 protocol
 * still owns the connection and the tunnel is only a pending operation it can
 * abort; refusals go through the CONNECT request's sink (JSON 403/502/504). */
#include "al_tunnel.h"
#include "al_h1_conn.h"
#include "upstream/al_egress.h"
#include "al_worker.h"
#include "common/al_err.h"
#include "common/al_log.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

enum tunnel_phase { T_RESOLVING, T_CONNECTING, T_OPEN };

struct al_tunnel {
    al_conn *c;
    al_req *req; /* owned: the CONNECT, audited when the tunnel ends */
    enum tunnel_phase phase;
    void *resolve_handle;
    int fd;
    ev_io io;
    ev_timer timer;
    int io_events;
    char host[256];
    uint16_t port;
    uint64_t bytes_in, bytes_out;
    uint64_t idle_mark; /* bytes_in + bytes_out when the idle timer last looked */
    int up_eof;
};

static const al_proto tunnel_proto;

static void set_events(al_tunnel *t, int ev)
{
    struct ev_loop *loop = t->c->worker->loop;
    if (t->fd < 0 || ev == t->io_events)
        return;
    ev_io_stop(loop, &t->io);
    ev_io_set(&t->io, t->fd, ev);
    if (ev)
        ev_io_start(loop, &t->io);
    t->io_events = ev;
}

static void tunnel_free(al_tunnel *t)
{
    struct ev_loop *loop = t->c->worker->loop;
    if (t->resolve_handle)
        al_resolver_cancel(t->c->worker->resolver, t->resolve_handle);
    ev_io_stop(loop, &t->io);
    ev_timer_stop(loop, &t->timer);
    if (t->fd >= 0)
        close(t->fd);
    if (t->req) {
        al_request_note_bytes(t->req, t->bytes_in, t->bytes_out);
        al_request_free(t->req);
    }
    free(t);
}

void al_tunnel_abort(al_tunnel *t)
{
    if (t)
        tunnel_free(t);
}

/* Refuses the CONNECT (HTTP/1.1 still owns the connection), then frees the tunnel. */
static void fail(al_tunnel *t, enum al_refusal ref, const char *msg)
{
    al_req *r = t->req;
    t->req = NULL;
    al_request_refuse(r, ref, "%s", msg);
    al_request_free(r);
    al_h1_conn_tunnel_gone(t->c);
    tunnel_free(t);
}

/* Agent -> upstream: write what the agent sent; 0 ok, -1 closed. */
static int pump_up(al_tunnel *t)
{
    al_conn *c = t->c;
    while (c->in_len) {
        ssize_t w = send(t->fd, c->in, c->in_len, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
                break;
            return -1;
        }
        t->bytes_in += (uint64_t)w;
        al_conn_consume(c, (size_t)w);
    }
    int ev = (c->in_len ? EV_WRITE : 0) | (!t->up_eof && !al_conn_out_full(c) ? EV_READ : 0);
    set_events(t, ev);
    return 0;
}

static void on_up_io(struct ev_loop *loop, ev_io *io, int revents)
{
    al_tunnel *t = io->data;
    al_conn *c = t->c;
    (void)loop;
    if (revents & EV_WRITE) {
        if (pump_up(t) != 0) {
            al_conn_close(c, 1);
            return;
        }
        al_conn_update(c);
    }
    if (!(revents & EV_READ) || c->dead)
        return;
    char buf[16384];
    for (int i = 0; i < 4 && !al_conn_out_full(c); i++) {
        ssize_t r = recv(t->fd, buf, sizeof buf, 0);
        if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
            break;
        if (r <= 0) {
            t->up_eof = 1;
            set_events(t, 0);
            al_conn_close(c, 1); /* flush what the upstream sent, then close */
            return;
        }
        t->bytes_out += (uint64_t)r;
        if (al_conn_send(c, buf, (size_t)r) != AL_OK) {
            al_conn_close(c, 0);
            return;
        }
    }
    pump_up(t);
}

/* An open tunnel that moved no byte either way for a whole limits.idle_timeout_ms
 * period is closed (so it ends within one to two periods of the last byte). */
static void on_tunnel_idle(struct ev_loop *loop, ev_timer *w, int revents)
{
    al_tunnel *t = w->data;
    (void)loop;
    (void)revents;
    uint64_t moved = t->bytes_in + t->bytes_out;
    if (moved != t->idle_mark) {
        t->idle_mark = moved;
        return; /* repeats */
    }
    al_log(AL_LOG_INFO, "tunnel.idle_timeout", "host=%s port=%u peer=%s", t->host, t->port,
           t->c->peer);
    ev_timer_stop(t->c->worker->loop, &t->timer);
    al_conn_close(t->c, 0);
}

static void opened(al_tunnel *t)
{
    al_conn *c = t->c;
    ev_timer_stop(c->worker->loop, &t->timer);
    uint32_t idle_ms = c->worker->table->limits.idle_timeout_ms;
    if (idle_ms) {
        ev_set_cb(&t->timer, on_tunnel_idle);
        ev_timer_set(&t->timer, idle_ms / 1000.0, idle_ms / 1000.0);
        ev_timer_start(c->worker->loop, &t->timer);
    }
    t->phase = T_OPEN;
    al_request_note_done(t->req, 200);
    /* The HTTP/1.1 protocol hands the connection over; bytes the agent sent early
     * (after its CONNECT) are already in c->in and go upstream first. */
    al_h1_conn_tunnel_gone(c);
    if (c->proto && c->proto->free)
        c->proto->free(c);
    c->proto = &tunnel_proto;
    c->proto_state = t;
    al_conn_send(c, "HTTP/1.1 200 Connection established\r\n\r\n", 39);
    if (pump_up(t) != 0) {
        al_conn_close(c, 0);
        return;
    }
    al_conn_update(c);
}

static void on_connect_io(struct ev_loop *loop, ev_io *io, int revents)
{
    al_tunnel *t = io->data;
    (void)loop;
    (void)revents;
    int err = 0;
    socklen_t l = sizeof err;
    getsockopt(t->fd, SOL_SOCKET, SO_ERROR, &err, &l);
    if (err) {
        char msg[400];
        snprintf(msg, sizeof msg, "could not connect to %s:%u: %s", t->host, t->port,
                 strerror(err));
        fail(t, AL_REF_UPSTREAM_CONNECT_FAILED, msg);
        return;
    }
    ev_io_stop(t->c->worker->loop, &t->io);
    t->io_events = 0;
    ev_set_cb(&t->io, on_up_io);
    opened(t);
}

static void on_timer(struct ev_loop *loop, ev_timer *w, int revents)
{
    al_tunnel *t = w->data;
    (void)loop;
    (void)revents;
    char msg[320];
    snprintf(msg, sizeof msg, "connecting to %s:%u timed out", t->host, t->port);
    fail(t, AL_REF_UPSTREAM_CONNECT_TIMEOUT, msg);
}

static void on_resolved(void *arg, const al_resolve_result *res)
{
    al_tunnel *t = arg;
    char msg[512];
    t->resolve_handle = NULL;
    if (t->phase != T_RESOLVING)
        return;
    if (res->err == AL_ERR_EGRESS) {
        snprintf(msg, sizeof msg, "%s resolves to a %s address (%s), which airlock refuses",
                 t->host, al_egress_class_name(res->refused_class), res->addr_text);
        fail(t, AL_REF_EGRESS_DENIED, msg);
        return;
    }
    if (res->err) {
        snprintf(msg, sizeof msg, "could not resolve %s", t->host);
        fail(t, AL_REF_UPSTREAM_DNS_FAILED, msg);
        return;
    }
    t->phase = T_CONNECTING;
    al_request_note_upstream(t->req, res->addr_text, t->port);
    t->fd = socket(res->addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (t->fd < 0 || (connect(t->fd, (const struct sockaddr *)&res->addr, res->addr_len) != 0 &&
                      errno != EINPROGRESS)) {
        snprintf(msg, sizeof msg, "could not connect to %s:%u: %s", t->host, t->port,
                 strerror(errno));
        fail(t, AL_REF_UPSTREAM_CONNECT_FAILED, msg);
        return;
    }
    struct ev_loop *loop = t->c->worker->loop;
    ev_io_init(&t->io, on_connect_io, t->fd, EV_WRITE);
    t->io.data = t;
    t->io_events = EV_WRITE;
    ev_io_start(loop, &t->io);
    uint32_t ms = al_request_table(t->req)->limits.connect_timeout_ms;
    ev_timer_init(&t->timer, on_timer, (ms ? ms : 5000) / 1000.0, 0.);
    t->timer.data = t;
    ev_timer_start(loop, &t->timer);
}

int al_tunnel_start(al_conn *c, al_req *req, const char *host, uint16_t port)
{
    al_tunnel *t = calloc(1, sizeof *t);
    if (!t) {
        al_request_refuse(req, AL_REF_INTERNAL_ERROR, "out of memory");
        al_request_free(req);
        return AL_ERR_NOMEM;
    }
    t->c = c;
    t->req = req;
    t->fd = -1;
    t->port = port;
    snprintf(t->host, sizeof t->host, "%s", host);
    ev_init(&t->io, on_connect_io);
    ev_init(&t->timer, on_timer);
    t->phase = T_RESOLVING;
    al_h1_conn_set_tunnel(c, t); /* so a connection that dies first aborts the tunnel */
    void *h = al_resolver_resolve(c->worker->resolver, t->host, port, 0, on_resolved, t);
    /* The callback may have run already (and freed t on a refusal): only then is h NULL. */
    if (h)
        t->resolve_handle = h;
    return AL_OK;
}

/* ---- the tunnel as the connection's protocol ------------------------------ */

static int tp_on_read(al_conn *c)
{
    return pump_up(c->proto_state);
}

static void tp_on_eof(al_conn *c)
{
    pump_up(c->proto_state);
    al_conn_close(c, 1); /* the agent is done: flush what came back, then end both sides */
}

static void tp_on_drain(al_conn *c)
{
    pump_up(c->proto_state);
}

static int tp_wants_read(al_conn *c)
{
    return c->in_len < c->in_cap;
}

static int tp_idle(al_conn *c)
{
    (void)c;
    return 0;
}

static void tp_drain(al_conn *c)
{
    (void)c; /* an open tunnel runs until an end closes it or the drain deadline */
}

static void tp_free(al_conn *c)
{
    al_tunnel *t = c->proto_state;
    if (t)
        tunnel_free(t);
    c->proto_state = NULL;
}

static const al_proto tunnel_proto = {
    "tunnel", tp_on_read, tp_on_eof, tp_on_drain, tp_wants_read,
    tp_idle,  tp_drain,   tp_free,   NULL,        NULL, /* the tunnel's own idle timer */
    NULL,
};
