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
#include "al_server.h"
#include "al_tls.h"
#include "al_worker.h"
#include "common/al_err.h"
#include "common/al_log.h"

#include <arpa/inet.h>
#include <openssl/bio.h>
#include <openssl/err.h>
#include <pthread.h>
#include <openssl/ssl.h>
#include <stdint.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#define OUT_HARD_CAP (8u * 1024 * 1024)
static const char no_tunnel_host[] = ""; /* c->tunnel_host outside a tunnel */
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

static size_t tcp_pending(al_conn *c)
{
    (void)c;
    return 0;
}

const al_transport al_transport_tcp = {"tcp", tcp_read, tcp_write, tcp_release, tcp_pending};

static ssize_t tls_io_result(al_conn *c, int r)
{
    int e = SSL_get_error(c->tls, r);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
        return AL_ERR_AGAIN;
    if (e == SSL_ERROR_ZERO_RETURN)
        return 0;
    ERR_clear_error();
    return AL_ERR_IO;
}

static ssize_t tls_read(al_conn *c, void *buf, size_t n)
{
    int r = SSL_read(c->tls, buf, n > INT32_MAX ? INT32_MAX : (int)n);
    return r > 0 ? r : tls_io_result(c, r);
}

static ssize_t tls_write(al_conn *c, const void *buf, size_t n)
{
    int r = SSL_write(c->tls, buf, n > INT32_MAX ? INT32_MAX : (int)n);
    return r > 0 ? r : tls_io_result(c, r);
}

static void tls_release(al_conn *c)
{
    if (c->tls) {
        SSL_shutdown(c->tls); /* best effort close_notify; never waits */
        SSL_free(c->tls);
    }
    if (c->outer_tls) {
        SSL_shutdown(c->outer_tls);
        SSL_free(c->outer_tls);
    }
    c->tls = c->outer_tls = NULL;
}

static size_t tls_pending(al_conn *c)
{
    size_t n = c->tls ? (size_t)SSL_pending(c->tls) : 0;
    n += c->pre_len - c->pre_off;
    return n + (c->outer_tls ? (size_t)SSL_pending(c->outer_tls) : 0);
}

/* The session's own BIO, used when it cannot simply own the fd:
 *  - TLS in TLS (CONNECT on listen.tls): the inner session reads and writes through
 *    the outer session, so its WANT_READ/WANT_WRITE are the outer's;
 *  - bytes the client sent right after its CONNECT head (a ClientHello pipelined
 *    before the 200 arrived) were already read into c->in: they are kept in c->pre
 *    and the session reads them before anything from the socket. */
static int conn_bio_read(BIO *b, char *buf, int n)
{
    al_conn *c = BIO_get_data(b);
    BIO_clear_retry_flags(b);
    if (c->pre_off < c->pre_len) {
        size_t k = c->pre_len - c->pre_off;
        if (k > (size_t)n)
            k = (size_t)n;
        memcpy(buf, c->pre + c->pre_off, k);
        c->pre_off += k;
        return (int)k;
    }
    if (!c->outer_tls) {
        ssize_t r = read(c->fd, buf, (size_t)n);
        if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
            BIO_set_retry_read(b);
        return r < 0 ? -1 : (int)r;
    }
    SSL *outer = c->outer_tls;
    int r = SSL_read(outer, buf, n);
    if (r <= 0) {
        int e = SSL_get_error(outer, r);
        if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
            BIO_set_retry_read(b);
        return e == SSL_ERROR_ZERO_RETURN ? 0 : -1;
    }
    return r;
}

static int conn_bio_write(BIO *b, const char *buf, int n)
{
    al_conn *c = BIO_get_data(b);
    BIO_clear_retry_flags(b);
    if (!c->outer_tls) {
        ssize_t w = send(c->fd, buf, (size_t)n, MSG_NOSIGNAL);
        if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
            BIO_set_retry_write(b);
        return w < 0 ? -1 : (int)w;
    }
    SSL *outer = c->outer_tls;
    int r = SSL_write(outer, buf, n);
    if (r <= 0) {
        int e = SSL_get_error(outer, r);
        if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
            BIO_set_retry_write(b);
        return -1;
    }
    return r;
}

static long conn_bio_ctrl(BIO *b, int cmd, long num, void *ptr)
{
    (void)b;
    (void)num;
    (void)ptr;
    return cmd == BIO_CTRL_FLUSH ? 1 : 0;
}

static BIO_METHOD *conn_bio_method;
static pthread_once_t conn_bio_once = PTHREAD_ONCE_INIT;

static void conn_bio_init(void)
{
    BIO_METHOD *m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "airlock-conn");
    if (m && BIO_meth_set_read(m, conn_bio_read) && BIO_meth_set_write(m, conn_bio_write) &&
        BIO_meth_set_ctrl(m, conn_bio_ctrl))
        conn_bio_method = m;
}

const al_transport al_transport_tls = {"tls", tls_read, tls_write, tls_release, tls_pending};

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

/* ---- client-side clock --------------------------------------------------------
 * One ev_timer per connection, armed for the clock the connection's state calls for
 * (ct_kind) and re-checked lazily when it fires: progress only stamps last_read /
 * last_write, so the hot path costs no timer operation. */

static int ct_kind_now(al_conn *c)
{
    if (c->closing)
        return AL_CT_CLOSING;
    if (c->start_tls_ctx || c->tls_handshaking)
        return AL_CT_HANDSHAKE;
    if (!c->proto)
        return AL_CT_HEADER; /* nothing yet, or part of what may be an h2 preface */
    return c->proto->timeout_kind ? c->proto->timeout_kind(c) : AL_CT_NONE;
}

static uint32_t ct_limit_ms(const al_conn *c, int kind)
{
    const al_limits *l = &c->worker->table->limits;
    switch (kind) {
    case AL_CT_HANDSHAKE:
        return l->client_handshake_timeout_ms;
    case AL_CT_HEADER:
        if (c->worker->draining && !c->proto && !c->in_len &&
            l->client_header_timeout_ms > AL_CONN_DRAIN_IDLE_MS)
            return AL_CONN_DRAIN_IDLE_MS; /* a connection that never sent a byte */
        return l->client_header_timeout_ms;
    case AL_CT_BODY:
        return l->client_body_timeout_ms;
    case AL_CT_KEEPALIVE:
        /* draining: an idle connection gets a short last chance (al_conn_drain_idle) */
        if (c->worker->draining && l->client_keepalive_timeout_ms > AL_CONN_DRAIN_IDLE_MS)
            return AL_CONN_DRAIN_IDLE_MS;
        return l->client_keepalive_timeout_ms;
    case AL_CT_CLOSING:
        return l->idle_timeout_ms;
    default:
        return 0;
    }
}

static const char *ct_name(int kind)
{
    static const char *const names[] = {"none", "handshake", "header",
                                        "body", "keepalive", "closing"};
    return kind >= 0 && kind <= AL_CT_CLOSING ? names[kind] : "?";
}

static ev_tstamp ct_deadline(const al_conn *c)
{
    ev_tstamp from = c->ct_since;
    if (c->ct_kind == AL_CT_BODY && c->last_read > from)
        from = c->last_read; /* the gap between body bytes, not the whole body */
    if (c->ct_kind == AL_CT_CLOSING && c->last_write > from)
        from = c->last_write;
    return from + ct_limit_ms(c, c->ct_kind) / 1000.0;
}

/* The idle connection has yet to give its memory back (proto->trim): the keep-alive
 * clock's timer also wakes up AL_CONN_TRIM_IDLE_MS into the idle period. */
static int ct_trim_due(const al_conn *c)
{
    return c->ct_kind == AL_CT_KEEPALIVE && !c->trimmed && c->proto && c->proto->trim;
}

static void ct_update(al_conn *c)
{
    int kind = ct_kind_now(c);
    if (kind == c->ct_kind)
        return; /* the same clock keeps running (a head counts from its first byte) */
    struct ev_loop *loop = c->worker->loop;
    c->ct_kind = kind;
    c->ct_since = ev_now(loop);
    c->trimmed = 0;
    ev_timer_stop(loop, &c->ct_timer);
    uint32_t ms = ct_limit_ms(c, kind);
    if (ct_trim_due(c) && (ms == 0 || ms > AL_CONN_TRIM_IDLE_MS))
        ms = AL_CONN_TRIM_IDLE_MS;
    if (kind == AL_CT_NONE || ms == 0)
        return;
    ev_timer_set(&c->ct_timer, ms / 1000.0, 0.);
    ev_timer_start(loop, &c->ct_timer);
}

static void conn_kill(al_conn *c);

static void on_ct_timer(struct ev_loop *loop, ev_timer *t, int revents)
{
    al_conn *c = t->data;
    (void)revents;
    if (c->dead)
        return;
    ct_update(c); /* the state may have moved on without an update */
    if (c->ct_kind == AL_CT_NONE || ev_is_active(&c->ct_timer))
        return;
    ev_tstamp left = ct_deadline(c) - ev_now(loop);
    uint32_t limit = ct_limit_ms(c, c->ct_kind);
    if (ct_trim_due(c)) {
        ev_tstamp at = c->ct_since + AL_CONN_TRIM_IDLE_MS / 1000.0 - ev_now(loop);
        if (at <= 0.001) {
            c->trimmed = 1;
            c->proto->trim(c);
        } else if (limit == 0 || at < left) {
            ev_timer_set(&c->ct_timer, at, 0.);
            ev_timer_start(loop, &c->ct_timer);
            return;
        }
    }
    if (limit == 0)
        return; /* no limit (the timer ran for the trim only) */
    if (left > 0.001) {
        ev_timer_set(&c->ct_timer, left, 0.);
        ev_timer_start(loop, &c->ct_timer);
        return;
    }
    int kind = c->ct_kind;
    al_log(AL_LOG_INFO, "client.timeout", "peer=%s phase=%s limit_ms=%u", c->peer, ct_name(kind),
           ct_limit_ms(c, kind));
    if (c->proto && c->proto->on_timeout &&
        (kind == AL_CT_HEADER || kind == AL_CT_BODY || kind == AL_CT_KEEPALIVE) &&
        !c->start_tls_ctx && !c->tls_handshaking) {
        c->ct_kind = AL_CT_NONE; /* a clock for the next state starts from now */
        c->proto->on_timeout(c, kind);
        al_conn_update(c);
        return;
    }
    conn_kill(c);
}

void al_conn_drain_idle(al_conn *c)
{
    c->ct_kind = AL_CT_NONE; /* the keep-alive clock restarts now, with the drain's limit */
    al_conn_update(c);
}

static void kick_unlink(al_conn *c)
{
    if (!c->kick_queued)
        return;
    al_worker *w = c->worker;
    if (c->kick_prev)
        c->kick_prev->kick_next = c->kick_next;
    else
        w->kicks = c->kick_next;
    if (c->kick_next)
        c->kick_next->kick_prev = c->kick_prev;
    else
        w->kicks_tail = c->kick_prev;
    c->kick_prev = c->kick_next = NULL;
    c->kick_queued = 0;
    w->kick_count--;
}

void al_conn_update(al_conn *c)
{
    if (c->dead)
        return;
    ct_update(c);
    int ev = 0;
    if (!c->closing && c->in_len < c->in_cap && (!c->proto || c->proto->wants_read(c)))
        ev |= EV_READ;
    if (al_conn_out_pending(c) || (c->tls_handshaking && c->tls_want_write))
        ev |= EV_WRITE;
    if (c->tls_handshaking && !c->tls_want_write)
        ev |= EV_READ;
    if ((ev & EV_READ) && c->transport->pending(c))
        al_conn_kick(c); /* decrypted bytes wait in OpenSSL: no socket event will come */
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
    kick_unlink(c);
    ev_timer_stop(c->worker->loop, &c->ct_timer);
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
        c->last_write = ev_now(c->worker->loop);
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
    if ((was_full || c->drain_wanted) && !al_conn_out_full(c) && c->proto && c->proto->on_drain) {
        c->drain_wanted = 0;
        c->proto->on_drain(c);
    }
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

int al_conn_send_spans(al_conn *c, const al_conn_span *sp, size_t n)
{
    struct iovec iov[2 * AL_CONN_SPANS_MAX + 1];
    size_t k = 0, pos = c->out_off, total = 0;
    if (c->dead)
        return AL_ERR_IO;
    if (n > AL_CONN_SPANS_MAX)
        return AL_ERR_INVAL;
    for (size_t i = 0; i < n; i++) {
        if (sp[i].at < pos || sp[i].at > c->out.len)
            return AL_ERR_INVAL;
        if (sp[i].at > pos)
            iov[k++] = (struct iovec){c->out.data + pos, sp[i].at - pos};
        if (sp[i].len)
            iov[k++] = (struct iovec){(void *)sp[i].p, sp[i].len};
        pos = sp[i].at;
    }
    if (c->out.len > pos)
        iov[k++] = (struct iovec){c->out.data + pos, c->out.len - pos};
    for (size_t i = 0; i < k; i++)
        total += iov[i].iov_len;
    if (total == 0)
        return AL_OK;
    int was_full = al_conn_out_full(c);
    size_t done = 0;
    int direct = c->transport == &al_transport_tcp && !(c->io_events & EV_WRITE);
    if (direct) {
        ssize_t w = writev(c->fd, iov, (int)k);
        if (w < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
            conn_kill(c);
            return AL_ERR_IO;
        }
        if (w > 0) {
            done = (size_t)w;
            c->last_write = ev_now(c->worker->loop);
        }
    }
    if (done == total) {
        c->out_off = 0;
        al_buf_reset(&c->out);
    } else if (total - done <= c->out.len - pos) {
        c->out_off = c->out.len - (total - done); /* only queued bytes are left */
    } else {
        /* what the socket left, in order, becomes the queue (the spans' memory is the
         * callers' and changes once this returns) */
        al_buf rest;
        al_buf_init(&rest, c->out.max);
        int rc = AL_OK;
        for (size_t i = 0; i < k && rc == AL_OK; i++) {
            size_t skip = done < iov[i].iov_len ? done : iov[i].iov_len;
            done -= skip;
            rc = al_buf_append(&rest, (char *)iov[i].iov_base + skip, iov[i].iov_len - skip);
        }
        if (rc != AL_OK) {
            al_buf_free(&rest, 0);
            conn_kill(c); /* part of the output is lost: the stream cannot go on */
            return rc;
        }
        al_buf_free(&c->out, 0);
        c->out = rest;
        c->out_off = 0;
    }
    if (!direct) {
        if (!(c->io_events & EV_WRITE))
            flush_out(c);
        return c->dead ? AL_ERR_IO : AL_OK;
    }
    if (!al_conn_out_pending(c) && c->closing) {
        conn_kill(c);
        return AL_OK;
    }
    al_conn_update(c);
    if (was_full && !al_conn_out_full(c) && c->proto && c->proto->on_drain)
        c->proto->on_drain(c);
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
    if (memcmp(c->in, h2_preface, n) != 0) {
        /* "PRI " is the preface's and no HTTP/1.1 client's (RFC 9113 section 3.4): a
         * preface that goes wrong later is refused by nghttp2 as h2 (GOAWAY), never
         * answered with an HTTP/1.1 page. */
        if (c->in_len >= 4 && memcmp(c->in, h2_preface, 4) == 0)
            return al_h2_attach(c);
        return al_h1_conn_attach(c);
    }
    if (n < sizeof h2_preface - 1)
        return 1; /* could still be the preface: wait */
    return al_h2_attach(c);
}

/* Switches to TLS once a protocol asked for it and the plain output has gone. */
static int maybe_start_tls(al_conn *c)
{
    if (!c->start_tls_ctx || al_conn_out_pending(c))
        return 0;
    int nested = c->transport == &al_transport_tls && c->tls && !c->outer_tls;
    if (!nested) {
        /* A client may tunnel plain HTTP through CONNECT (undici does for http:// URLs,
         * curl with --proxytunnel): look at the first byte without taking it. A TLS
         * ClientHello starts with 0x16; anything else is served as plain HTTP inside
         * the tunnel, still bound to the CONNECT host. */
        if (c->proto && c->proto->free)
            c->proto->free(c);
        c->proto = NULL;
        c->proto_state = NULL;
        /* Bytes sent right after the CONNECT head, before the 200 arrived, are already in
         * c->in: they are the tunnel's first bytes, not to be lost. */
        unsigned char first = c->in_len ? (unsigned char)c->in[0] : 0;
        ssize_t n = c->in_len ? 1 : recv(c->fd, &first, 1, MSG_PEEK | MSG_DONTWAIT);
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) {
            al_conn_update(c);
            return 2; /* wait for the first byte */
        }
        if (n <= 0) {
            conn_kill(c);
            return -1;
        }
        if (first != 0x16) {
            c->start_tls_ctx = NULL;
            if (c->in_len) {
                if (pick_protocol(c) < 0) {
                    conn_kill(c);
                    return -1;
                }
                if (c->proto)
                    al_conn_kick(c); /* no socket event will announce these bytes */
            }
            al_conn_update(c);
            return 0;
        }
    }
    SSL *ssl = SSL_new(c->start_tls_ctx);
    c->start_tls_ctx = NULL;
    BIO *bio = NULL;
    if (c->in_len) {
        free(c->pre);
        c->pre = malloc(c->in_len);
        if (!c->pre) {
            SSL_free(ssl);
            conn_kill(c);
            return -1;
        }
        memcpy(c->pre, c->in, c->in_len);
        c->pre_len = c->in_len;
        c->pre_off = 0;
        c->in_len = 0;
    }
    int own_bio = nested || c->pre_len;
    if (own_bio) {
        pthread_once(&conn_bio_once, conn_bio_init);
        bio = conn_bio_method ? BIO_new(conn_bio_method) : NULL;
        if (!bio || !ssl) {
            BIO_free(bio);
            SSL_free(ssl);
            conn_kill(c);
            return -1;
        }
        BIO_set_data(bio, c);
        BIO_set_init(bio, 1);
        SSL_set_bio(ssl, bio, bio);
    }
    if (!ssl || (!own_bio && SSL_set_fd(ssl, c->fd) != 1) ||
        (c->tunnel_host[0] && al_tls_set_intercept_name(ssl, c->tunnel_host) != 0)) {
        SSL_free(ssl);
        conn_kill(c);
        return -1;
    }
    SSL_set_accept_state(ssl);
    SSL_set_mode(ssl, SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER | SSL_MODE_ENABLE_PARTIAL_WRITE);
    if (c->proto && c->proto->free)
        c->proto->free(c);
    c->proto = NULL;
    c->proto_state = NULL;
    if (nested)
        c->outer_tls = c->tls;
    c->tls = ssl;
    c->transport = &al_transport_tls;
    c->tls_handshaking = 1;
    c->tls_want_write = 0;
    if (c->pre_len)
        al_conn_kick(c); /* the ClientHello is already here: no socket event will come */
    al_conn_update(c);
    return 1;
}

static void handshake(al_conn *c)
{
    ERR_clear_error();
    int r = SSL_do_handshake(c->tls);
    if (r == 1) {
        c->tls_handshaking = 0;
        c->tls_want_write = 0;
        const unsigned char *alpn = NULL;
        unsigned alpn_len = 0;
        SSL_get0_alpn_selected(c->tls, &alpn, &alpn_len);
        int rc =
            (alpn_len == 2 && memcmp(alpn, "h2", 2) == 0) ? al_h2_attach(c) : al_h1_conn_attach(c);
        if (rc) {
            conn_kill(c);
            return;
        }
        if (c->proto->on_read(c) != 0) { /* h2: the server preface goes out now */
            al_conn_close(c, 1);
            return;
        }
        al_conn_update(c);
        return;
    }
    int e = SSL_get_error(c->tls, r);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
        c->tls_want_write = e == SSL_ERROR_WANT_WRITE;
        al_conn_update(c);
        return;
    }
    char why[160] = "closed during the handshake";
    unsigned long err = ERR_peek_last_error();
    if (err)
        ERR_error_string_n(err, why, sizeof why);
    ERR_clear_error();
    al_log(AL_LOG_INFO, "tls.handshake_failed", "peer=%s host=%s reason=%s", c->peer,
           c->tunnel_host[0] ? c->tunnel_host : "-", why);
    /* Security teams see refused handshakes too (an agent without the CA, a probe):
     * the request pipeline records it (audit, the finished hook). */
    al_request_note_tls_failure(&c->worker->rctx, c->peer,
                                c->tunnel_host[0] ? c->tunnel_host : NULL);
    conn_kill(c);
}

/* A connection with nothing in flight (no byte received and waiting, no request,
 * nothing to send) gives its buffers back; the next read allocates the input buffer
 * again. Called only at the end of an event (on_io, on_kick), when no protocol code
 * holds a pointer into c->in. The touched pages of the input buffer (max_header_bytes
 * + 16 KiB, malloc'd at accept) and of the output buffer were most of an idle
 * connection's memory (bench/RESULTS.md run 7). */
static void conn_trim(al_conn *c)
{
    if (c->dead || !c->in || c->in_len || !c->proto || !c->proto->idle || c->pre ||
        c->tls_handshaking || c->start_tls_ctx || al_conn_out_pending(c) || !c->proto->idle(c))
        return;
    free(c->in);
    c->in = NULL;
    al_buf_free(&c->out, 0);
    c->out_off = 0;
}

/* One read from the transport into c->in and the protocol's turn; 1 = read more. */
static int read_once(al_conn *c)
{
    if (c->dead || c->closing || c->in_len >= c->in_cap)
        return 0;
    if (c->proto && !c->proto->wants_read(c))
        return 0;
    if (!c->in && !(c->in = malloc(c->in_cap))) { /* trimmed while idle */
        conn_kill(c);
        return 0;
    }
    ssize_t r = c->transport->read(c, c->in + c->in_len, c->in_cap - c->in_len);
    if (r == AL_ERR_AGAIN)
        return 0;
    if (r <= 0) {
        if (c->proto && c->proto->on_eof)
            c->proto->on_eof(c);
        else
            conn_kill(c);
        return 0;
    }
    c->in_len += (size_t)r;
    c->last_read = ev_now(c->worker->loop);
    if (!c->proto) {
        int rc = pick_protocol(c);
        if (rc == 1)
            return 0;
        if (rc < 0) {
            conn_kill(c);
            return 0;
        }
    }
    if (c->proto->on_read(c) != 0) {
        al_conn_close(c, 1);
        return 0;
    }
    if (c->start_tls_ctx) {
        flush_out(c);
        maybe_start_tls(c);
        return 0;
    }
    return c->transport->pending(c) > 0;
}

static void on_io(struct ev_loop *loop, ev_io *io, int revents)
{
    al_conn *c = io->data;
    (void)loop;
    if ((revents & EV_WRITE) && !c->tls_handshaking && flush_out(c) < 0)
        return;
    if (c->start_tls_ctx) {
        int st = maybe_start_tls(c);
        if (st < 0 || st == 2)
            return;
    }
    if (c->tls_handshaking) {
        handshake(c);
        return;
    }
    if (!(revents & EV_READ)) {
        conn_trim(c); /* the last bytes of a response went out */
        return;
    }
    for (int i = 0; i < 16 && read_once(c); i++)
        ;
    if (!c->dead)
        conn_trim(c);
    al_conn_update(c);
}

static void on_kick(al_conn *c)
{
    if (c->dead)
        return;
    if (c->tls_handshaking) {
        handshake(c); /* bytes kept in c->pre, or a spurious turn: both harmless */
        return;
    }
    if (!c->proto)
        return;
    if (c->proto->on_read(c) != 0) {
        al_conn_close(c, 1);
        return;
    }
    if (c->start_tls_ctx) {
        flush_out(c);
        maybe_start_tls(c);
        return;
    }
    for (int i = 0; i < 16 && c->transport->pending(c) && read_once(c); i++)
        ;
    if (!c->dead)
        conn_trim(c);
    al_conn_update(c);
}

/* A kick was a zero-delay ev_timer: one more poll per kick (epoll_wait with a zero
 * timeout, 0.1 per small h2 request at c=1 x 10 streams), and its callback ran first
 * in the next pass, before the upstream reads of that pass (libev invokes a pass's
 * timers before its I/O), so responses finishing there needed another pass. Now a
 * kick runs from the worker's ev_prepare, after every event of the pass, before the
 * loop polls again: the same pass, one write for everything ready. */
void al_conn_kick(al_conn *c)
{
    if (c->dead || c->kick_queued)
        return;
    al_worker *w = c->worker;
    c->kick_queued = 1;
    c->kick_next = NULL;
    c->kick_prev = w->kicks_tail;
    if (w->kicks_tail)
        w->kicks_tail->kick_next = c;
    else
        w->kicks = c;
    w->kicks_tail = c;
    w->kick_count++;
}

void al_conn_run_kicks(al_worker *w)
{
    /* Only those queued before this run: a connection kicked again by its own kick
     * (h2 after 8 rounds of frames: the other connections' turn first) waits for the
     * next pass, and the loop must not block before it. */
    for (size_t n = w->kick_count; n && w->kicks; n--) {
        al_conn *c = w->kicks;
        kick_unlink(c);
        on_kick(c);
    }
    if (w->kicks && !ev_is_active(&w->kick_wake))
        ev_timer_start(w->loop, &w->kick_wake);
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
    c->tunnel_host = no_tunnel_host;
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
    ev_init(&c->ct_timer, on_ct_timer);
    c->ct_timer.data = c;
    c->ct_kind = AL_CT_NONE;
    ct_update(c); /* nothing received yet: the header clock runs from accept */
    *out = c;
    return AL_OK;
}

void al_conn_start_tls(al_conn *c, void *ssl_ctx, const char *intercept_host)
{
    if (intercept_host) {
        char *host = strndup(intercept_host, 255); /* a DNS name's bound */
        if (!host) {
            conn_kill(c); /* never a tunnel without its host binding */
            return;
        }
        if (c->tunnel_host != no_tunnel_host)
            free((char *)c->tunnel_host);
        c->tunnel_host = host;
    }
    c->start_tls_ctx = ssl_ctx;
    ct_update(c); /* the handshake clock */
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
    free(c->pre);
    free(c->in);
    free(c->tunnel_auth);
    if (c->tunnel_host != no_tunnel_host)
        free((char *)c->tunnel_host);
    free(c);
}
