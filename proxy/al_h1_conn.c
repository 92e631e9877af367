/* al_h1_conn: HTTP/1.1 downstream connections (see al_h1_conn.h).
 *
 * States: HEAD (waiting for a complete request head), BODY (feeding the request
 * body into the request's bounded ring: only as many input bytes as the ring has
 * room for are parsed, and reading stops while it is full), WAIT (the body is
 * complete; the response is being produced; reading is stopped). The connection
 * closes after a response when keep-alive is off, after any refusal of a request
 * whose body was not read to the end, and after a parse error (400/431). */
#include "al_h1_conn.h"
#include "al_errors.h"
#include "al_h1.h"
#include "al_request.h"
#include "al_server.h"
#include "al_tunnel.h"
#include "al_worker.h"
#include "common/al_err.h"
#include "common/al_reqtarget.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

enum h1_st { H1_HEAD, H1_BODY, H1_WAIT };

typedef struct h1_state {
    al_conn *c;
    al_h1_parser *p; /* from a request's head to its end (~2.2 KiB with the head's field
                        table): not held while the connection is idle */
    enum h1_st st;
    al_req *req;
    int keep_alive;
    int http_minor;
    int is_head;
    int chunked_out;
    int no_body_out;
    int msg_done;
    int resp_done;
    int peer_eof;
    int failed;               /* the request's bytes could not be parsed: close after the reply */
    int served;               /* a request was answered: an empty input is keep-alive idle */
    struct al_tunnel *tunnel; /* pending passthrough CONNECT (owned until it opens) */
    al_buf trailers;          /* "name: value\r\n" lines for the last chunk (bounded) */
} h1_state;

static const al_proto h1_proto;

static int sink_body(void *arg, const char *data, size_t len);

static void sink_head(void *arg, int status, const al_header *h, size_t n, int64_t clen)
{
    h1_state *s = arg;
    al_conn *c = s->c;
    char line[256];
    if (c->dead)
        return;
    s->no_body_out = s->is_head || status == 204 || status == 304 || status < 200;
    if (s->failed || (s->c->worker->draining))
        s->keep_alive = 0;
    /* A refused CONNECT's code (al_request's ":reason" pseudo-header, always last). */
    const al_header *why = NULL;
    if (n && h[n - 1].name_len == 7 && memcmp(h[n - 1].name, ":reason", 7) == 0)
        why = &h[--n];
    int len = why ? snprintf(line, sizeof line, "HTTP/1.1 %d %s (airlock: %.*s)\r\n", status,
                             al_http_reason(status),
                             (int)(why->value_len > 64 ? 64 : why->value_len), why->value)
                  : snprintf(line, sizeof line, "HTTP/1.1 %d %s\r\n", status,
                             al_http_reason(status));
    al_conn_queue(c, line, (size_t)len);
    for (size_t i = 0; i < n; i++) {
        const al_header *x = &h[i];
        /* airlock frames the response itself */
        if (al_http_hop_by_hop(x->name, x->name_len) ||
            al_http_name_is(x->name, x->name_len, "content-length"))
            continue;
        al_conn_queue(c, x->name, x->name_len);
        al_conn_queue(c, ": ", 2);
        al_conn_queue(c, x->value, x->value_len);
        al_conn_queue(c, "\r\n", 2);
    }
    if (clen >= 0 && (!s->no_body_out || s->is_head)) {
        len = snprintf(line, sizeof line, "content-length: %lld\r\n", (long long)clen);
        al_conn_queue(c, line, (size_t)len);
    } else if (clen < 0 && !s->no_body_out) {
        if (s->http_minor >= 1) {
            s->chunked_out = 1;
            al_conn_queue(c, "transfer-encoding: chunked\r\n", 28);
        } else {
            s->keep_alive = 0; /* HTTP/1.0: the end of the body is the close */
        }
    }
    if (!s->keep_alive)
        al_conn_queue(c, "connection: close\r\n\r\n", 21);
    else if (s->http_minor == 0)
        al_conn_queue(c, "connection: keep-alive\r\n\r\n", 26);
    else
        al_conn_queue(c, "\r\n", 2);
    /* A head with a known, non-empty body goes out with the first body bytes (one
     * write); anything else (SSE, empty bodies) goes out now. */
    if (!(clen > 0 && !s->no_body_out))
        al_conn_flush(c);
}

static int sink_body(void *arg, const char *data, size_t len)
{
    h1_state *s = arg;
    al_conn *c = s->c;
    if (c->dead)
        return AL_ERR_IO;
    if (s->no_body_out || len == 0)
        return AL_OK;
    if (al_conn_out_full(c))
        return AL_ERR_AGAIN;
    /* the body bytes go out from the caller's buffer (one writev with what is queued);
     * only what the socket does not take is copied */
    al_conn_span sp = {c->out.len, data, len};
    if (s->chunked_out) {
        char sz[24];
        int n = snprintf(sz, sizeof sz, "%zx\r\n", len);
        if (al_buf_append(&c->out, sz, (size_t)n))
            return AL_ERR_NOMEM;
        sp.at = c->out.len;
        if (al_buf_append(&c->out, "\r\n", 2))
            return AL_ERR_NOMEM;
    }
    return al_conn_send_spans(c, &sp, 1);
}

static int sink_body_full(void *arg)
{
    h1_state *s = arg;
    return !s->c->dead && !s->no_body_out && al_conn_out_full(s->c);
}

static void sink_end(void *arg, int ok)
{
    h1_state *s = arg;
    al_conn *c = s->c;
    s->resp_done = 1;
    if (c->dead)
        return;
    if (!ok) {
        al_conn_close(c, 1); /* the body is cut short: the close tells the agent */
        return;
    }
    if (s->chunked_out) {
        al_conn_queue(c, "0\r\n", 3);
        if (s->trailers.len)
            al_conn_queue(c, s->trailers.data, s->trailers.len);
        al_conn_queue(c, "\r\n", 2);
    }
    al_buf_reset(&s->trailers);
    al_conn_flush(c);
    if (!s->keep_alive || !s->msg_done || s->peer_eof) {
        al_conn_close(c, 1);
        return;
    }
    al_conn_kick(c); /* next pipelined request; the request is freed from the loop */
}

static void sink_body_consumed(void *arg, size_t n)
{
    h1_state *s = arg;
    (void)n;
    if (s->st == H1_BODY)
        al_conn_kick(s->c);
}

static void sink_trailers(void *arg, const al_header *h, size_t n)
{
    h1_state *s = arg;
    al_buf_reset(&s->trailers);
    if (!s->chunked_out)
        return; /* only a chunked body can carry them */
    for (size_t i = 0; i < n; i++) {
        if (al_buf_append(&s->trailers, h[i].name, h[i].name_len) ||
            al_buf_append(&s->trailers, ": ", 2) ||
            al_buf_append(&s->trailers, h[i].value, h[i].value_len) ||
            al_buf_append(&s->trailers, "\r\n", 2)) {
            al_buf_reset(&s->trailers); /* over the bound: dropped whole, never cut */
            return;
        }
    }
}

/* An interim response (103 Early Hints) before the head: to HTTP/1.1 clients only
 * (RFC 9110 section 15.2: never to an HTTP/1.0 client), sent at once. */
static void sink_interim(void *arg, int status, const al_header *h, size_t n)
{
    h1_state *s = arg;
    al_conn *c = s->c;
    char line[64];
    if (c->dead || s->http_minor < 1 || status < 102 || status > 199)
        return;
    int len = snprintf(line, sizeof line, "HTTP/1.1 %d %s\r\n", status, al_http_reason(status));
    al_conn_queue(c, line, (size_t)len);
    for (size_t i = 0; i < n; i++) {
        if (al_http_hop_by_hop(h[i].name, h[i].name_len) ||
            al_http_name_is(h[i].name, h[i].name_len, "content-length"))
            continue;
        al_conn_queue(c, h[i].name, h[i].name_len);
        al_conn_queue(c, ": ", 2);
        al_conn_queue(c, h[i].value, h[i].value_len);
        al_conn_queue(c, "\r\n", 2);
    }
    al_conn_queue(c, "\r\n", 2);
    al_conn_flush(c);
}

static const al_req_sink h1_sink = {sink_head, sink_body,     sink_end,
                                    sink_body_consumed, sink_trailers, sink_interim,
                                    sink_body_full};

static int body_cb(void *arg, const char *data, size_t len)
{
    h1_state *s = arg;
    int rc = al_request_body_write(s->req, data, len);
    return rc == AL_ERR_TOOBIG && al_request_finished(s->req) ? 0 : rc;
}

static void fail_request(h1_state *s, const al_h1_error *e)
{
    al_conn *c = s->c;
    s->failed = 1;
    s->keep_alive = 0;
    s->st = H1_WAIT;
    if (!s->req) {
        s->req = al_request_new(&c->worker->rctx, &h1_sink, s, "http/1.1", c->peer);
        if (!s->req) {
            al_conn_close(c, 0);
            return;
        }
        al_request_set_head(s->req, "-", 1, NULL, 0, NULL, 0, "-", 1);
    }
    al_request_refuse(s->req, e->ref, "%s", e->reason);
}

/* CONNECT host:port: the request pipeline decides (intercept, passthrough, or a
 * refusal before any tunnel); this only carries the verdict out. */
static void handle_connect(h1_state *s, const char *url, size_t url_len)
{
    al_conn *c = s->c;
    al_server *srv = c->worker->server;
    int can_intercept = srv && srv->intercept_ctx;
    switch (al_request_connect(s->req, url, url_len, c->tunnel_host[0] || c->outer_tls,
                               can_intercept)) {
    case AL_CONNECT_INTERCEPT: {
        al_reqtarget rt;
        char host[256];
        al_reqtarget_parse_h1("CONNECT", url, url_len, &rt); /* checked by al_request_connect */
        memcpy(host, rt.host, rt.host_len);
        host[rt.host_len] = '\0';
        al_conn_queue(c, "HTTP/1.1 200 Connection established\r\n\r\n", 39);
        c->tunnel_port = rt.port;
        /* the tunnel's principal: its requests are decided with this token */
        const al_h1_head *hd = &s->p->head;
        for (size_t i = 0; i < hd->field_count && !c->tunnel_auth; i++)
            if (al_http_name_is(hd->buf + hd->fields[i].name.off, hd->fields[i].name.len,
                                "proxy-authorization") &&
                (c->tunnel_auth = malloc(hd->fields[i].value.len + 1))) {
                memcpy(c->tunnel_auth, hd->buf + hd->fields[i].value.off,
                       hd->fields[i].value.len);
                c->tunnel_auth[hd->fields[i].value.len] = '\0';
                c->tunnel_auth_len = hd->fields[i].value.len;
            }
        al_conn_start_tls(c, srv->intercept_ctx, host);
        al_request_note_done(s->req, 200);
        return;
    }
    case AL_CONNECT_PASSTHROUGH: {
        al_reqtarget rt;
        char host[256];
        al_reqtarget_parse_h1("CONNECT", url, url_len, &rt);
        memcpy(host, rt.host, rt.host_len);
        host[rt.host_len] = '\0';
        al_req *r = s->req;
        s->req = NULL; /* the tunnel owns the CONNECT now */
        al_tunnel_start(c, r, host, rt.port);
        return;
    }
    case AL_CONNECT_REFUSED:
        return;
    }
}

static int start_request(h1_state *s, size_t head_len)
{
    al_conn *c = s->c;
    const al_h1_head *h = &s->p->head;
    s->req = al_request_new(&c->worker->rctx, &h1_sink, s, "http/1.1", c->peer);
    if (!s->req)
        return -1;
    s->keep_alive = h->keep_alive && !c->worker->draining;
    s->http_minor = h->http_minor;
    s->is_head = strcmp(h->method, "HEAD") == 0;
    s->chunked_out = s->no_body_out = s->msg_done = s->resp_done = 0;
    int rc = al_request_set_head(s->req, h->method, strlen(h->method), NULL, 0, NULL, 0,
                                 h->buf + h->url.off, h->url.len);
    for (size_t i = 0; !rc && i < h->field_count; i++)
        rc = al_request_add_header(s->req, h->buf + h->fields[i].name.off, h->fields[i].name.len,
                                   h->buf + h->fields[i].value.off, h->fields[i].value.len);
    if (rc)
        return -1;
    int has_body = h->chunked || h->content_length > 0;
    int64_t blen = h->chunked ? -1 : (h->content_length > 0 ? h->content_length : 0);
    int expect = h->expect_continue;
    s->msg_done = s->p->message_done;
    if (h->is_connect) {
        s->keep_alive = 0;
        s->st = H1_WAIT;
        s->msg_done = 1;
        handle_connect(s, h->buf + h->url.off, h->url.len);
        al_conn_consume(c, head_len);
        return 0;
    }
    al_conn_consume(c, head_len); /* the request holds its own copy of the head */
    if (c->tunnel_host[0] && (al_request_set_tunnel(s->req, c->tunnel_host, c->tunnel_port) ||
                              al_request_set_tunnel_auth(s->req, c->tunnel_auth,
                                                         c->tunnel_auth_len)))
        return -1;
    s->st = s->msg_done ? H1_WAIT : H1_BODY;
    al_request_start(s->req, has_body, blen);
    if (s->msg_done)
        al_request_body_end(s->req);
    else if (expect && !al_request_finished(s->req) && al_request_status(s->req) == 0)
        al_conn_send(c, "HTTP/1.1 100 Continue\r\n\r\n", 25);
    return 0;
}

/* RFC 9112 3.2: an HTTP/1.1 request without Host is a 400, in a tunnel or not (a
 * CONNECT names its authority in the request line). */
static int host_missing(const al_h1_head *h, al_h1_error *e)
{
    if (h->host_count || h->http_minor < 1 || h->is_connect)
        return 0;
    e->ref = AL_REF_BAD_REQUEST;
    e->status = al_refusal(e->ref)->status;
    e->code = al_refusal(e->ref)->code;
    e->reason = "an HTTP/1.1 request needs a Host header (RFC 9112 section 3.2)";
    return 1;
}

static int h1_on_read(al_conn *c)
{
    h1_state *s = c->proto_state;
    for (;;) {
        if (c->dead || c->closing)
            return 0;
        if (s->st == H1_WAIT) {
            if (!s->req || !al_request_finished(s->req) || !s->resp_done)
                return 0;
            al_request_free(s->req);
            s->req = NULL;
            free(s->p);
            s->p = NULL;
            s->st = H1_HEAD;
            s->served = 1;
            if (c->worker->draining) {
                al_conn_close(c, 1);
                return 0;
            }
        }
        if (s->st == H1_HEAD) {
            size_t skip = al_h1_skip_empty_lines(c->in, c->in_len);
            if (skip)
                al_conn_consume(c, skip);
            if (c->in_len == 0)
                return 0;
            al_h1_error e;
            size_t limit = c->worker->table->limits.max_header_bytes;
            long n = al_h1_head_scan(c->in, c->in_len, limit ? limit : 65536, &e);
            if (n == 0)
                return 0;
            if (n > 0 && !s->p && !(s->p = malloc(sizeof *s->p)))
                return -1;
            if (n < 0 || al_h1_parse_head(s->p, c->in, (size_t)n, body_cb, s, &e) != 0 ||
                host_missing(&s->p->head, &e)) {
                fail_request(s, &e);
                return 0;
            }
            if (start_request(s, (size_t)n) != 0)
                return -1;
            continue;
        }
        /* H1_BODY */
        size_t room = al_request_body_room(s->req);
        size_t feed = c->in_len < room ? c->in_len : room;
        if (feed == 0)
            return 0;
        al_h1_error e;
        long used = al_h1_feed_body(s->p, c->in, feed, &e);
        if (used < 0) {
            if (!al_request_finished(s->req) && al_request_status(s->req) == 0) {
                s->st = H1_WAIT;
                s->failed = 1;
                s->keep_alive = 0;
                al_request_refuse(s->req, e.ref, "%s", e.reason);
                return 0;
            }
            return -1;
        }
        al_conn_consume(c, (size_t)used);
        if (s->p->message_done) {
            s->msg_done = 1;
            s->st = H1_WAIT;
            al_request_body_end(s->req);
            continue;
        }
        if (used == 0 || c->in_len == 0)
            return 0;
    }
}

/* A request is in flight with nothing pipelined behind it: the connection reads on
 * (into an empty input buffer) only so that the agent's close is seen at once. Without
 * it a quiet SSE stream whose agent left stays in CLOSE-WAIT, holding its upstream
 * exchange, until the stream ends, and a draining server waits for it. Pipelined
 * bytes stop the reading again (at most one buffer held); a CONNECT's tunnel or TLS
 * start owns the bytes after its head. */
static int h1_watching_eof(al_conn *c, const h1_state *s)
{
    return s->st == H1_WAIT && s->req && !s->resp_done && !s->tunnel && !c->start_tls_ctx &&
           c->in_len == 0;
}

static void h1_on_eof(al_conn *c)
{
    h1_state *s = c->proto_state;
    if (h1_watching_eof(c, s)) {
        /* The agent closed (or half-closed: indistinguishable without a write) while
         * its response was pending: nobody takes the rest, cancel the exchange (audited
         * as client_closed), as nginx does without proxy_ignore_client_abort. */
        s->peer_eof = 1;
        al_conn_close(c, 0);
        return;
    }
    s->peer_eof = 1;
    if (s->st == H1_WAIT && s->req && !s->resp_done) {
        al_conn_update(c); /* finish the response, then close */
        return;
    }
    al_conn_close(c, 1);
}

static void h1_on_drain(al_conn *c)
{
    h1_state *s = c->proto_state;
    if (s->req && !s->resp_done)
        al_request_resume_output(s->req);
}

static int h1_wants_read(al_conn *c)
{
    h1_state *s = c->proto_state;
    if (s->peer_eof)
        return 0;
    if (s->st == H1_HEAD)
        return 1;
    if (s->st == H1_BODY)
        return al_request_body_room(s->req) > 0;
    return h1_watching_eof(c, s);
}

static int h1_timeout_kind(al_conn *c)
{
    h1_state *s = c->proto_state;
    if (s->tunnel || s->peer_eof)
        return AL_CT_NONE; /* a pending passthrough has its connect timeout */
    switch (s->st) {
    case H1_HEAD:
        if (s->req)
            return AL_CT_NONE;
        return c->in_len || !s->served ? AL_CT_HEADER : AL_CT_KEEPALIVE;
    case H1_BODY:
        /* a full ring waits for the upstream, whose clocks govern then */
        return al_request_body_room(s->req) ? AL_CT_BODY : AL_CT_NONE;
    default:
        return AL_CT_NONE;
    }
}

static void h1_on_timeout(al_conn *c, int kind)
{
    h1_state *s = c->proto_state;
    if (kind == AL_CT_HEADER && c->in_len && s->st == H1_HEAD && !s->req) {
        al_h1_error e = {AL_REF_REQUEST_TIMEOUT, 408, "request_timeout",
                         "the request head did not arrive in time "
                         "(limits.client_header_timeout_ms); send the whole head at once"};
        c->in_len = 0; /* the partial head is not parsed */
        fail_request(s, &e);
        return;
    }
    if (kind == AL_CT_BODY && s->st == H1_BODY && s->req && !al_request_finished(s->req) &&
        al_request_status(s->req) == 0) {
        s->st = H1_WAIT;
        s->failed = 1;
        s->keep_alive = 0;
        al_request_refuse(s->req, AL_REF_BODY_TIMEOUT,
                          "no request body bytes arrived for limits.client_body_timeout_ms; "
                          "send the body right after the head, or retry");
        return;
    }
    /* keep-alive idle, or the rest of a refused body never came: close after the
     * output; a body stalled while the response streams: abort the exchange */
    al_conn_close(c, !(s->req && !al_request_finished(s->req)));
}

static int h1_idle(al_conn *c)
{
    h1_state *s = c->proto_state;
    return s->st == H1_HEAD && !s->req;
}

static void h1_drain(al_conn *c)
{
    h1_state *s = c->proto_state;
    if (h1_idle(c))
        al_conn_drain_idle(c);
    else
        s->keep_alive = 0;
}

void al_h1_conn_set_tunnel(al_conn *c, struct al_tunnel *t)
{
    h1_state *s = c->proto_state;
    if (s && c->proto == &h1_proto)
        s->tunnel = t;
}

void al_h1_conn_tunnel_gone(al_conn *c)
{
    h1_state *s = c->proto_state;
    if (s && c->proto == &h1_proto)
        s->tunnel = NULL;
}

static void h1_free(al_conn *c)
{
    h1_state *s = c->proto_state;
    if (!s)
        return;
    if (s->tunnel)
        al_tunnel_abort(s->tunnel);
    if (s->req)
        al_request_free(s->req);
    al_buf_free(&s->trailers, 0);
    free(s->p);
    free(s);
    c->proto_state = NULL;
}

static const al_proto h1_proto = {
    "http/1.1", h1_on_read, h1_on_eof, h1_on_drain,     h1_wants_read,
    h1_idle,    h1_drain,   h1_free,   h1_timeout_kind, h1_on_timeout,
    NULL,
};

int al_h1_conn_attach(al_conn *c)
{
    h1_state *s = calloc(1, sizeof *s);
    if (!s)
        return AL_ERR_NOMEM;
    s->c = c;
    s->st = H1_HEAD;
    al_buf_init(&s->trailers, 8192);
    c->proto = &h1_proto;
    c->proto_state = s;
    return AL_OK;
}
