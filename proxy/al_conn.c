/* al_conn: downstream connections (see al_conn.h).
 *
 * Invariants: one ev_io per connection whose event mask follows (wants_read &&
 * input room) and (output pending); the protocol is chosen once from the first
 * bytes (the HTTP/2 client preface -> h2, anything else -> HTTP/1.1); a closed
 * connection stops all I/O at once and its memory is released by the worker's
 * reaper after the current loop iteration, so callbacks still on the stack never
 * see freed memory. */
#include "al_conn.h"
#include "al_h1_conn.h"
#include "al_h2.h"
#include "al_worker.h"
#include "common/al_err.h"
#include "common/al_log.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define OUT_HARD_CAP (8u * 1024 * 1024)
static const char h2_preface[] = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

static ssize_t tcp_read(al_conn *c, void *buf, size_t n)
{
    ssize_t r = read(c->fd, buf, n);
    if (r < 0)
        return (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) ? AL_ERR_AGAIN
                                                                           : AL_ERR_IO;
    return r;
}

static ssize_t tcp_write(al_conn *c, const void *buf, size_t n)
{
    ssize_t r = send(c->fd, buf, n, MSG_NOSIGNAL);
    if (r < 0)
        return (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) ? AL_ERR_AGAIN
                                                                           : AL_ERR_IO;
    return r;
}

static void tcp_release(al_conn *c)
{
    (void)c;
}

const al_transport al_transport_tcp = {"tcp", tcp_read, tcp_write, tcp_release};

size_t al_conn_out_pending(const al_conn *c)
{
    return c->out.len - c->out_off;
}

int al_conn_out_full(const al_conn *c)
{
    return al_conn_out_pending(c) >= AL_CONN_OUT_HIGH;
}

void al_conn_consume(al_conn *c, size_t n)
{
    if (n >= c->in_len) {
        c->in_len = 0;
        return;
    }
    memmove(c->in, c->in + n, c->in_len - n);
    c->in_len -= n;
}

void al_conn_update(al_conn *c)
{
    if (c->dead)
        return;
    int ev = 0;
    if (!c->closing && c->in_len < c->in_cap && (!c->proto || c->proto->wants_read(c)))
        ev |= EV_READ;
    if (al_conn_out_pending(c))
        ev |= EV_WRITE;
    if (ev == c->io_events)
        return;
    ev_io_stop(c->worker->loop, &c->io);
    ev_io_set(&c->io, c->fd, ev);
    if (ev)
        ev_io_start(c->worker->loop, &c->io);
    c->io_events = ev;
}

static void conn_kill(al_conn *c)
{
    if (c->dead)
        return;
    c->dead = 1;
    ev_io_stop(c->worker->loop, &c->io);
    ev_timer_stop(c->worker->loop, &c->kick);
    al_worker_conn_dead(c->worker, c);
}

void al_conn_close(al_conn *c, int flush_first)
{
    if (c->dead)
        return;
    if (flush_first && al_conn_out_pending(c)) {
        c->closing = 1;
        al_conn_update(c);
        return;
    }
    conn_kill(c);
}

/* Writes what is queued; returns 0, or -1 when the connection died. */
static int flush_out(al_conn *c)
{
    int was_full = al_conn_out_full(c);
    while (al_conn_out_pending(c)) {
        ssize_t w = c->transport->write(c, c->out.data + c->out_off, al_conn_out_pending(c));
        if (w == AL_ERR_AGAIN)
            break;
        if (w <= 0) {
            conn_kill(c);
            return -1;
        }
        c->out_off += (size_t)w;
    }
    if (!al_conn_out_pending(c)) {
        c->out_off = 0;
        al_buf_reset(&c->out);
        if (c->closing) {
            conn_kill(c);
            return -1;
        }
    } else if (c->out_off > AL_CONN_OUT_HIGH) {
        /* Compact so the buffer does not creep up to its cap. */
        size_t left = al_conn_out_pending(c);
        memmove(c->out.data, c->out.data + c->out_off, left);
        c->out.len = left;
        c->out_off = 0;
    }
    al_conn_update(c);
    if (was_full && !al_conn_out_full(c) && c->proto && c->proto->on_drain)
        c->proto->on_drain(c);
    return 0;
}

int al_conn_send(al_conn *c, const void *data, size_t len)
{
    if (c->dead)
        return AL_ERR_IO;
    int rc = al_buf_append(&c->out, data, len);
    if (rc)
        return rc;
    /* Small writes go out at once; under load the kernel buffer absorbs them. */
    if (!(c->io_events & EV_WRITE))
        flush_out(c);
    return AL_OK;
}

int al_conn_queue(al_conn *c, const void *data, size_t len)
{
    if (c->dead)
        return AL_ERR_IO;
    return al_buf_append(&c->out, data, len);
}

void al_conn_flush(al_conn *c)
{
    if (!c->dead && !(c->io_events & EV_WRITE))
        flush_out(c);
}

static int pick_protocol(al_conn *c)
{
    size_t n = c->in_len < sizeof h2_preface - 1 ? c->in_len : sizeof h2_preface - 1;
    if (memcmp(c->in, h2_preface, n) != 0)
        return al_h1_conn_attach(c);
    if (n < sizeof h2_preface - 1)
        return 1; /* could still be the preface: wait */
    return al_h2_attach(c);
}

static void on_io(struct ev_loop *loop, ev_io *io, int revents)
{
    al_conn *c = io->data;
    (void)loop;
    if ((revents & EV_WRITE) && flush_out(c) < 0)
        return;
    if (!(revents & EV_READ) || c->dead || c->closing)
        return;
    if (c->in_len >= c->in_cap)
        return;
    ssize_t r = c->transport->read(c, c->in + c->in_len, c->in_cap - c->in_len);
    if (r == AL_ERR_AGAIN)
        return;
    if (r <= 0) {
        if (c->proto && c->proto->on_eof)
            c->proto->on_eof(c);
        else
            conn_kill(c);
        return;
    }
    c->in_len += (size_t)r;
    if (!c->proto) {
        int rc = pick_protocol(c);
        if (rc == 1)
            return;
        if (rc < 0) {
            conn_kill(c);
            return;
        }
    }
    if (c->proto->on_read(c) != 0) {
        al_conn_close(c, 1);
        return;
    }
    al_conn_update(c);
}

static void on_kick(struct ev_loop *loop, ev_timer *t, int revents)
{
    al_conn *c = t->data;
    (void)loop;
    (void)revents;
    if (c->dead || !c->proto)
        return;
    if (c->proto->on_read(c) != 0) {
        al_conn_close(c, 1);
        return;
    }
    al_conn_update(c);
}

void al_conn_kick(al_conn *c)
{
    if (c->dead)
        return;
    ev_timer_stop(c->worker->loop, &c->kick);
    ev_timer_set(&c->kick, 0., 0.);
    ev_timer_start(c->worker->loop, &c->kick);
}

int al_conn_new(al_worker *w, int fd, const struct sockaddr *peer, socklen_t peer_len,
                al_conn **out)
{
    al_conn *c = calloc(1, sizeof *c);
    if (!c)
        return AL_ERR_NOMEM;
    size_t limit = w->table->limits.max_header_bytes ? w->table->limits.max_header_bytes : 65536;
    c->in_cap = limit + AL_CONN_READ_CHUNK;
    c->in = malloc(c->in_cap);
    if (!c->in) {
        free(c);
        return AL_ERR_NOMEM;
    }
    c->worker = w;
    c->fd = fd;
    c->transport = &al_transport_tcp;
    al_buf_init(&c->out, OUT_HARD_CAP);
    char ip[INET6_ADDRSTRLEN] = "?";
    int port = 0;
    if (peer && peer->sa_family == AF_INET && peer_len >= sizeof(struct sockaddr_in)) {
        const struct sockaddr_in *s4 = (const struct sockaddr_in *)peer;
        inet_ntop(AF_INET, &s4->sin_addr, ip, sizeof ip);
        port = ntohs(s4->sin_port);
    } else if (peer && peer->sa_family == AF_INET6 && peer_len >= sizeof(struct sockaddr_in6)) {
        const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)peer;
        inet_ntop(AF_INET6, &s6->sin6_addr, ip, sizeof ip);
        port = ntohs(s6->sin6_port);
    }
    snprintf(c->peer, sizeof c->peer, "%s:%d", ip, port);
    ev_io_init(&c->io, on_io, fd, EV_READ);
    c->io.data = c;
    c->io_events = EV_READ;
    ev_io_start(w->loop, &c->io);
    ev_timer_init(&c->kick, on_kick, 0., 0.);
    c->kick.data = c;
    *out = c;
    return AL_OK;
}

void al_conn_free(al_conn *c)
{
    if (c->proto && c->proto->free)
        c->proto->free(c);
    if (c->transport && c->transport->release)
        c->transport->release(c);
    if (c->fd >= 0)
        close(c->fd);
    al_buf_free(&c->out, 0);
    free(c->in);
    free(c);
}
