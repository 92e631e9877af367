/* al_h2: HTTP/2 downstream connections with nghttp2 (see al_h2.h).
 *
 * nghttp2 is the protocol engine without I/O: received bytes go in with
 * nghttp2_session_mem_recv, frames to send come out of nghttp2_session_mem_send
 * into the connection's output queue (only while it is under its high mark).
 *
 * Re-entrancy rule: request callbacks (sink_*) never run nghttp2's send loop; they
 * submit or resume and schedule a "kick", and the kick (at the end of the loop pass,
 * outside every callback chain) receives, sends, resumes paused upstreams and frees the
 * streams nghttp2 has closed. So a request is never freed while one of its own
 * callbacks is on the stack. */
#include "al_h2.h"
#include "al_request.h"
#include "al_worker.h"
#include "common/al_err.h"
#include "common/al_fmt.h"
#include "common/al_log.h"

#include <ctype.h>
#include <malloc.h>
#include <nghttp2/nghttp2.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/mman.h>
#include <unistd.h>

#if defined(__SANITIZE_ADDRESS__)
#define AL_H2_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define AL_H2_ASAN 1
#endif
#endif
#ifdef AL_H2_ASAN
#include <sanitizer/asan_interface.h>
#define FL_POISON(p, n) ASAN_POISON_MEMORY_REGION(p, n)
#define FL_UNPOISON(p, n) ASAN_UNPOISON_MEMORY_REGION(p, n)
#else
#define FL_POISON(p, n) ((void)(p), (void)(n))
#define FL_UNPOISON(p, n) ((void)(p), (void)(n))
#endif

#define STREAM_OUT_HIGH (64 * 1024)
/* One writev's worth of DATA payload (referenced in the streams' buffers, not copied)
 * while the socket takes everything; AL_CONN_OUT_HIGH once it is full (what it leaves
 * is copied into the connection's queue). */
#define SEND_BATCH (256 * 1024)

typedef struct h2_session h2_session;

static void *fl_alloc(size_t size);
static void fl_free(void *ptr);

/* nghttp2's big buffers, each on pages of its own in a slot (see "idle memory") */
enum { PART_DEFLATE, PART_MAP, PART_FRAMEBUF, PARTS };

typedef struct h2_stream {
    h2_session *h;
    int32_t id;
    al_req *req;
    al_buf out; /* response body not yet framed */
    size_t out_off;
    size_t header_bytes;
    int64_t clen; /* the request's content-length, -1 none */
    int headers_too_large;
    int started, is_head, eof, rst, out_paused, closed, submitted;
    int in_flight;        /* counted in h2_session.in_flight until its request ends */
    nghttp2_nv *trailers; /* owned, with the names and values in trailer_buf */
    size_t trailer_count;
    char *trailer_buf;
    struct h2_stream *prev, *next; /* live list */
    ev_timer body_timer;           /* limits.client_body_timeout_ms while the request body comes */
    ev_tstamp body_at;             /* the last DATA (or the head) */
} h2_stream;

struct h2_session {
    al_conn *c;
    nghttp2_session *ng;
    h2_stream *streams;
    h2_stream *closed; /* freed at the next kick */
    size_t stream_count;
    size_t in_flight; /* live streams whose request has not ended (sink end) */
    int sending;
    /* h2_send's batch: DATA payloads (in their streams' buffers) to insert into the
     * connection's queue, their bytes, and whether the batch limit stopped nghttp2 */
    al_conn_span *zc; /* h2_send's array on its stack: NULL outside h2_send (an idle
                       * connection keeps no 1.5 KB of spans) */
    size_t zc_n, zc_bytes;
    int zc_full;
    int goaway; /* 0, GOAWAY_NOTICE (shutdown notice + PING sent), GOAWAY_FINAL */
    int32_t max_stream_id;  /* the highest stream id a HEADERS frame used */
    int32_t recent_ids[16]; /* streams closed lately (a ring): their trailers may be late */
    unsigned recent_pos;
    int got_settings; /* the client's first SETTINGS arrived (the preface is complete) */
    /* nghttp2's big buffers, on pages of their own (see "idle memory" below): the
     * slot, and each part of it while nghttp2 holds it. */
    char *slot;
    void *part[PARTS];
    int creating;     /* inside nghttp2_session_server_new3: its buffers are recognised */
    int deleting;     /* inside nghttp2_session_del: slot_put gives the pages back */
    int deflate_seen; /* a 1,024-byte buffer was allocated during creation */
};

static const al_proto h2_proto;

/* A graceful GOAWAY (RFC 9113 section 6.8): first a shutdown notice (last-stream-id
 * 2^31-1) and a PING; the PING's ACK comes after every stream the client opened before
 * it saw the notice, so the final GOAWAY's last-stream-id then covers all of them and
 * none is refused under the client. */
enum { GOAWAY_NOTICE = 1, GOAWAY_FINAL = 2 };
static const uint8_t drain_ping[8] = {'a', 'l', '-', 'd', 'r', 'a', 'i', 'n'};

static void goaway_final(h2_session *h)
{
    if (h->goaway == GOAWAY_FINAL)
        return;
    h->goaway = GOAWAY_FINAL;
    nghttp2_submit_goaway(h->ng, NGHTTP2_FLAG_NONE, nghttp2_session_get_last_proc_stream_id(h->ng),
                          NGHTTP2_NO_ERROR, NULL, 0);
}

static void schedule(h2_session *h)
{
    al_conn_kick(h->c);
}

/* ---- response side (called by al_request) ------------------------------ */

static size_t out_pending(const h2_stream *s)
{
    return s->out.len - s->out_off;
}

/* The last DATA frame; trailers, when the upstream sent some, end the stream instead. */
static void end_of_data(nghttp2_session *ng, h2_stream *s, uint32_t *flags)
{
    *flags |= NGHTTP2_DATA_FLAG_EOF;
    if (s->trailer_count && nghttp2_submit_trailer(ng, s->id, s->trailers, s->trailer_count) == 0)
        *flags |= NGHTTP2_DATA_FLAG_NO_END_STREAM;
}

static ssize_t data_read(nghttp2_session *ng, int32_t id, uint8_t *buf, size_t length,
                         uint32_t *flags, nghttp2_data_source *src, void *user)
{
    h2_stream *s = src->ptr;
    (void)user;
    size_t n = out_pending(s);
    if (n == 0) {
        if (s->eof) {
            end_of_data(ng, s, flags);
            return 0;
        }
        return NGHTTP2_ERR_DEFERRED;
    }
    (void)buf; /* the payload goes out from s->out itself (send_data) */
    if (n > length)
        n = length;
    *flags |= NGHTTP2_DATA_FLAG_NO_COPY;
    if (n == out_pending(s) && s->eof)
        end_of_data(ng, s, flags);
    return (ssize_t)n;
}

static size_t batch_limit(const al_conn *c)
{
    return (c->io_events & EV_WRITE) ? AL_CONN_OUT_HIGH : SEND_BATCH;
}

/* A DATA frame nghttp2 has framed (data_read said NO_COPY): its 9-byte header goes to
 * the connection's queue, its payload stays in s->out and is sent from there by the
 * writev at the end of h2_send (al_conn_send_spans). s->out is neither moved nor reset
 * before that: sink_body runs only outside h2_send, and closed streams are freed after
 * it. The batch is bounded (batch_limit bytes, AL_CONN_SPANS_MAX frames): past that,
 * WOULDBLOCK keeps the frame in nghttp2 for the next round. */
static int send_data(nghttp2_session *ng, nghttp2_frame *frame, const uint8_t *framehd,
                     size_t length, nghttp2_data_source *src, void *user)
{
    h2_session *h = user;
    h2_stream *s = src->ptr;
    al_conn *c = h->c;
    (void)ng;
    if (!h->sending || h->zc_n == AL_CONN_SPANS_MAX ||
        (h->zc_n && al_conn_out_pending(c) + h->zc_bytes + length > batch_limit(c))) {
        h->zc_full = 1;
        return NGHTTP2_ERR_WOULDBLOCK;
    }
    if (frame->data.padlen || length > out_pending(s))
        return NGHTTP2_ERR_CALLBACK_FAILURE; /* airlock never pads; nor frames past its bytes */
    if (al_buf_append(&c->out, framehd, 9) != AL_OK)
        return NGHTTP2_ERR_CALLBACK_FAILURE;
    h->zc[h->zc_n++] = (al_conn_span){c->out.len, s->out.data + s->out_off, length};
    h->zc_bytes += length;
    s->out_off += length;
    /* The paused upstream is resumed by the kick (h2_on_read), never from inside
     * nghttp2's send loop. Without this wake-up the resume waited for some other
     * event: the kick's resume pass runs before its send pass, so a buffer framed
     * below the mark by that send (after a WINDOW_UPDATE, say) left the stream
     * paused for good once no other stream kept the connection busy (the last
     * streams of a batch stalled at "90% done" under CPU contention). */
    if (s->out_paused && out_pending(s) < STREAM_OUT_HIGH / 2)
        schedule(s->h);
    return 0;
}

/* The header block of a response head or an interim response: :status, the headers
 * with lower-case names (hop-by-hop, content-length and pseudo headers dropped), and
 * content-length when clen >= 0. *nva and *lower are the caller's to free; -1 when
 * out of memory (the stream was reset). */
/* A response head as nghttp2 name/value pairs: in the small buffers here when it fits
 * (nghttp2 copies the pairs when the head is submitted), else allocated (a calloc and
 * a malloc per response before). */
typedef struct head_nv {
    nghttp2_nv *nva;
    char *lower; /* the names in lower case */
    size_t count;
    nghttp2_nv nva_small[32];
    char lower_small[512];
    char st[4], cl[24];
} head_nv;

static void head_nv_free(head_nv *v)
{
    if (v->nva != v->nva_small)
        free(v->nva);
    if (v->lower != v->lower_small)
        free(v->lower);
}

static int head_nva(h2_stream *s, int status, const al_header *h, size_t n, int64_t clen,
                    head_nv *v)
{
    size_t total = 0;
    for (size_t i = 0; i < n; i++)
        total += h[i].name_len;
    v->nva = n + 2 <= sizeof v->nva_small / sizeof v->nva_small[0] ? v->nva_small
                                                                   : calloc(n + 2, sizeof *v->nva);
    v->lower = total < sizeof v->lower_small ? v->lower_small : malloc(total + 1);
    if (!v->nva || !v->lower) {
        head_nv_free(v);
        nghttp2_submit_rst_stream(s->h->ng, NGHTTP2_FLAG_NONE, s->id, NGHTTP2_INTERNAL_ERROR);
        s->rst = 1;
        schedule(s->h);
        return -1;
    }
    nghttp2_nv *nva = v->nva;
    char *lower = v->lower, *st = v->st, *cl = v->cl;
    unsigned sv = (unsigned)(status < 0 ? 0 : status) % 1000;
    st[0] = (char)('0' + sv / 100);
    st[1] = (char)('0' + sv / 10 % 10);
    st[2] = (char)('0' + sv % 10);
    st[3] = '\0';
    size_t k = 0, off = 0;
    nva[k++] = (nghttp2_nv){(uint8_t *)":status", (uint8_t *)st, 7, 3, NGHTTP2_NV_FLAG_NONE};
    for (size_t i = 0; i < n; i++) {
        const al_header *x = &h[i];
        int skip = al_http_hop_by_hop(x->name, x->name_len) ||
                   al_http_name_is(x->name, x->name_len, "content-length");
        if (skip || x->name_len == 0 || x->name[0] == ':')
            continue;
        for (size_t j = 0; j < x->name_len; j++) { /* (ASCII: tolower is a libc call) */
            unsigned char c = (unsigned char)x->name[j];
            lower[off + j] = (char)(c >= 'A' && c <= 'Z' ? c + 32 : c);
        }
        nva[k++] = (nghttp2_nv){(uint8_t *)lower + off, (uint8_t *)x->value, x->name_len,
                                x->value_len, NGHTTP2_NV_FLAG_NONE};
        off += x->name_len;
    }
    if (clen >= 0) {
        size_t cn = al_fmt_u64(cl, (uint64_t)clen); /* not snprintf: one per response */
        nva[k++] = (nghttp2_nv){(uint8_t *)"content-length", (uint8_t *)cl, 14, cn,
                                NGHTTP2_NV_FLAG_NONE};
    }
    v->count = k;
    return 0;
}

static void sink_head(void *arg, int status, const al_header *h, size_t n, int64_t clen)
{
    h2_stream *s = arg;
    if (s->closed || s->rst)
        return;
    head_nv v;
    /* The length comes from how airlock frames the body (al_request counts it), not
     * from whatever the upstream's header said. */
    if (head_nva(s, status, h, n, clen >= 0 && status != 204 && status >= 200 ? clen : -1, &v))
        return;
    nghttp2_data_provider prd = {.source.ptr = s, .read_callback = data_read};
    int no_body = s->is_head || status == 204 || status == 304;
    int rv = nghttp2_submit_response(s->h->ng, s->id, v.nva, v.count, no_body ? NULL : &prd);
    head_nv_free(&v);
    if (rv != 0) {
        nghttp2_submit_rst_stream(s->h->ng, NGHTTP2_FLAG_NONE, s->id, NGHTTP2_INTERNAL_ERROR);
        s->rst = 1;
    }
    s->submitted = 1;
    if (no_body)
        s->eof = 1;
    schedule(s->h);
}

/* An interim response (103 Early Hints) before the head: a HEADERS frame without
 * END_STREAM, as many as the upstream sent. */
static void sink_interim(void *arg, int status, const al_header *h, size_t n)
{
    h2_stream *s = arg;
    if (s->closed || s->rst || s->submitted || status < 102 || status > 199)
        return;
    head_nv v;
    if (head_nva(s, status, h, n, -1, &v))
        return;
    nghttp2_submit_headers(s->h->ng, NGHTTP2_FLAG_NONE, s->id, NULL, v.nva, v.count, NULL);
    head_nv_free(&v);
    schedule(s->h);
}

static int sink_body(void *arg, const char *data, size_t len)
{
    h2_stream *s = arg;
    if (s->closed || s->rst)
        return AL_OK; /* nobody reads it any more; the request ends at the next kick */
    if (s->is_head || len == 0)
        return AL_OK;
    if (out_pending(s) >= STREAM_OUT_HIGH) {
        s->out_paused = 1;
        return AL_ERR_AGAIN;
    }
    if (s->out_off && s->out_off == s->out.len) {
        s->out_off = 0;
        al_buf_reset(&s->out);
    } else if (s->out_off && len > s->out.max - s->out.len) {
        /* Framed bytes still sit in front of the pending ones: move the pending part
         * down rather than fail. Without this a 1 MiB response failed midway about
         * every other time (pending < 64 KiB, but pending + framed + 16 KiB over the
         * buffer's 128 KiB limit: "response body refused"). */
        size_t pending = out_pending(s);
        memmove(s->out.data, s->out.data + s->out_off, pending);
        s->out.len = pending;
        s->out.data[pending] = '\0';
        s->out_off = 0;
    }
    int rc = al_buf_append(&s->out, data, len);
    if (rc)
        return rc;
    nghttp2_session_resume_data(s->h->ng, s->id);
    schedule(s->h);
    return AL_OK;
}

/* As sink_body would answer AL_ERR_AGAIN: the request pauses and is resumed the same way. */
static int sink_body_full(void *arg)
{
    h2_stream *s = arg;
    if (s->closed || s->rst || s->is_head || out_pending(s) < STREAM_OUT_HIGH)
        return 0;
    s->out_paused = 1;
    return 1;
}

static void stream_ended(h2_stream *s)
{
    if (s->in_flight) {
        s->in_flight = 0;
        s->h->in_flight--;
    }
}

static void sink_end(void *arg, int ok)
{
    h2_stream *s = arg;
    stream_ended(s);
    if (s->closed)
        return;
    if (!ok) {
        nghttp2_submit_rst_stream(s->h->ng, NGHTTP2_FLAG_NONE, s->id, NGHTTP2_INTERNAL_ERROR);
        s->rst = 1;
    } else {
        s->eof = 1;
        nghttp2_session_resume_data(s->h->ng, s->id);
    }
    schedule(s->h);
}

static void sink_body_consumed(void *arg, size_t n)
{
    h2_stream *s = arg;
    if (!s->closed)
        nghttp2_session_consume(s->h->ng, s->id, n);
    schedule(s->h);
}

static void sink_trailers(void *arg, const al_header *h, size_t n)
{
    h2_stream *s = arg;
    size_t total = 0;
    if (s->closed || s->rst || s->trailers || n == 0)
        return;
    for (size_t i = 0; i < n; i++)
        total += h[i].name_len + h[i].value_len;
    if (total > 8192)
        return; /* bounded: dropped whole */
    s->trailers = calloc(n, sizeof *s->trailers);
    s->trailer_buf = malloc(total + 1);
    if (!s->trailers || !s->trailer_buf) {
        free(s->trailers);
        free(s->trailer_buf);
        s->trailers = NULL;
        s->trailer_buf = NULL;
        return;
    }
    char *p = s->trailer_buf;
    for (size_t i = 0; i < n; i++) {
        for (size_t j = 0; j < h[i].name_len; j++)
            p[j] = (char)tolower((unsigned char)h[i].name[j]);
        memcpy(p + h[i].name_len, h[i].value, h[i].value_len);
        s->trailers[s->trailer_count++] =
            (nghttp2_nv){(uint8_t *)p, (uint8_t *)p + h[i].name_len, h[i].name_len, h[i].value_len,
                         NGHTTP2_NV_FLAG_NONE};
        p += h[i].name_len + h[i].value_len;
    }
}

static const al_req_sink h2_sink = {sink_head,          sink_body,     sink_end,
                                    sink_body_consumed, sink_trailers, sink_interim,
                                    sink_body_full};

/* ---- request body clock --------------------------------------------------- */

/* No DATA for limits.client_body_timeout_ms while the stream's body is awaited (and
 * the ring has room, so the agent is the one to move): 408, or a reset once the
 * response began. Lazy: DATA only stamps body_at. */
static void on_body_timer(struct ev_loop *loop, ev_timer *t, int revents)
{
    h2_stream *s = t->data;
    (void)revents;
    if (s->closed || s->rst || al_request_finished(s->req))
        return;
    uint32_t ms = s->h->c->worker->table->limits.client_body_timeout_ms;
    ev_tstamp now = ev_now(loop);
    if (al_request_body_room(s->req) == 0)
        s->body_at = now; /* the upstream's turn: its clocks govern */
    ev_tstamp left = s->body_at + ms / 1000.0 - now;
    if (ms == 0 || left > 0.001) {
        ev_timer_set(t, ms ? left : 60., 0.);
        ev_timer_start(loop, t);
        return;
    }
    al_log(AL_LOG_INFO, "client.timeout", "peer=%s phase=body stream=%d limit_ms=%u", s->h->c->peer,
           s->id, ms);
    if (al_request_status(s->req) == 0) {
        al_request_refuse(s->req, AL_REF_BODY_TIMEOUT,
                          "no request body bytes arrived for limits.client_body_timeout_ms; "
                          "send the body right after the head, or retry");
    } else {
        nghttp2_submit_rst_stream(s->h->ng, NGHTTP2_FLAG_NONE, s->id, NGHTTP2_CANCEL);
        s->rst = 1;
    }
    schedule(s->h);
}

static void body_clock_start(h2_stream *s)
{
    uint32_t ms = s->h->c->worker->table->limits.client_body_timeout_ms;
    struct ev_loop *loop = s->h->c->worker->loop;
    s->body_at = ev_now(loop);
    if (ms && !ev_is_active(&s->body_timer)) {
        ev_timer_set(&s->body_timer, ms / 1000.0, 0.);
        ev_timer_start(loop, &s->body_timer);
    }
}

/* ---- nghttp2 callbacks --------------------------------------------------- */

static int recently_closed(const h2_session *h, int32_t id)
{
    for (size_t i = 0; i < sizeof h->recent_ids / sizeof h->recent_ids[0]; i++)
        if (h->recent_ids[i] == id)
            return 1;
    return 0;
}

/* RFC 9113 section 5.1.1: a client opens streams in increasing id order; a HEADERS
 * frame on a lower id it never used is a connection error (PROTOCOL_ERROR). nghttp2
 * only ignores such a frame (it cannot tell it from trailers late for a stream it
 * reset and forgot), so airlock tells them apart: a stream nghttp2 still knows, or one
 * that closed lately, is left to nghttp2; anything else ends the connection. */
static int on_begin_frame(nghttp2_session *ng, const nghttp2_frame_hd *hd, void *user)
{
    h2_session *h = user;
    if (hd->type != NGHTTP2_HEADERS || hd->stream_id <= 0)
        return 0;
    if (hd->stream_id > h->max_stream_id) {
        h->max_stream_id = hd->stream_id;
        return 0;
    }
    if (nghttp2_session_find_stream(ng, hd->stream_id) || recently_closed(h, hd->stream_id))
        return 0;
    al_log(AL_LOG_DEBUG, "h2.error", "peer=%s HEADERS on stream %d after stream %d", h->c->peer,
           (int)hd->stream_id, (int)h->max_stream_id);
    nghttp2_session_terminate_session(ng, NGHTTP2_PROTOCOL_ERROR);
    return NGHTTP2_ERR_CALLBACK_FAILURE;
}

static int on_begin_headers(nghttp2_session *ng, const nghttp2_frame *f, void *user)
{
    h2_session *h = user;
    if (f->hd.type != NGHTTP2_HEADERS || f->headers.cat != NGHTTP2_HCAT_REQUEST)
        return 0;
    h2_stream *s = fl_alloc(sizeof *s); /* the thread's free list (fl_alloc) */
    if (!s)
        return NGHTTP2_ERR_CALLBACK_FAILURE;
    memset(s, 0, sizeof *s);
    s->h = h;
    s->id = f->hd.stream_id;
    s->clen = -1;
    ev_init(&s->body_timer, on_body_timer);
    s->body_timer.data = s;
    al_buf_init(&s->out, STREAM_OUT_HIGH + 64 * 1024);
    s->req = al_request_new(&h->c->worker->rctx, &h2_sink, s, "h2", h->c->peer);
    if (!s->req) {
        fl_free(s);
        return NGHTTP2_ERR_CALLBACK_FAILURE;
    }
    if (h->c->tunnel_host[0] &&
        (al_request_set_tunnel(s->req, h->c->tunnel_host, h->c->tunnel_port) != AL_OK ||
         al_request_set_tunnel_auth(s->req, h->c->tunnel_auth, h->c->tunnel_auth_len) != AL_OK)) {
        al_request_free(s->req);
        fl_free(s);
        return NGHTTP2_ERR_CALLBACK_FAILURE;
    }
    s->next = h->streams;
    if (h->streams)
        h->streams->prev = s;
    h->streams = s;
    h->stream_count++;
    s->in_flight = 1;
    h->in_flight++;
    nghttp2_session_set_stream_user_data(ng, s->id, s);
    return 0;
}

static int on_header(nghttp2_session *ng, const nghttp2_frame *f, const uint8_t *name,
                     size_t namelen, const uint8_t *value, size_t valuelen, uint8_t flags,
                     void *user)
{
    h2_session *h = user;
    (void)flags;
    if (f->hd.type != NGHTTP2_HEADERS || f->headers.cat != NGHTTP2_HCAT_REQUEST)
        return 0; /* trailers are not forwarded */
    h2_stream *s = nghttp2_session_get_stream_user_data(ng, f->hd.stream_id);
    if (!s || s->headers_too_large)
        return 0;
    s->header_bytes += namelen + valuelen + 32;
    size_t limit = h->c->worker->table->limits.max_header_bytes;
    if (s->header_bytes > (limit ? limit : 65536)) {
        s->headers_too_large = 1;
        return 0;
    }
    const char *n = (const char *)name, *v = (const char *)value;
    int rc = 0;
    if (namelen && n[0] == ':') {
        if (namelen == 7 && memcmp(n, ":method", 7) == 0)
            rc = al_request_set_field(s->req, AL_REQ_METHOD, v, valuelen);
        else if (namelen == 7 && memcmp(n, ":scheme", 7) == 0)
            rc = al_request_set_field(s->req, AL_REQ_SCHEME, v, valuelen);
        else if (namelen == 10 && memcmp(n, ":authority", 10) == 0)
            rc = al_request_set_field(s->req, AL_REQ_AUTHORITY, v, valuelen);
        else if (namelen == 5 && memcmp(n, ":path", 5) == 0)
            rc = al_request_set_field(s->req, AL_REQ_PATH, v, valuelen);
        if (namelen == 7 && memcmp(n, ":method", 7) == 0 && valuelen == 4 &&
            memcmp(v, "HEAD", 4) == 0)
            s->is_head = 1;
    } else {
        if (namelen == 14 && memcmp(n, "content-length", 14) == 0) {
            /* nghttp2 has checked it (digits, one value) and checks the DATA against it:
             * a mismatch resets the stream with PROTOCOL_ERROR (RFC 9113 section 8.1.1),
             * which frees the request and cancels the upstream exchange. */
            int64_t len = valuelen ? 0 : -1;
            for (size_t i = 0; i < valuelen && len >= 0; i++)
                len = (value[i] < '0' || value[i] > '9' || len > (INT64_MAX - 9) / 10)
                          ? -1
                          : len * 10 + (value[i] - '0');
            s->clen = len;
        }
        if (namelen == 4 && memcmp(n, "host", 4) == 0 &&
            !al_request_has_field(s->req, AL_REQ_AUTHORITY))
            rc = al_request_set_field(s->req, AL_REQ_AUTHORITY, v, valuelen);
        if (!rc)
            rc = al_request_add_header(s->req, n, namelen, v, valuelen);
    }
    return rc ? NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE : 0;
}

static int on_frame_recv(nghttp2_session *ng, const nghttp2_frame *f, void *user)
{
    h2_session *h = user;
    if (f->hd.type == NGHTTP2_SETTINGS && !(f->hd.flags & NGHTTP2_FLAG_ACK))
        h->got_settings = 1;
    if (f->hd.type == NGHTTP2_PING && (f->hd.flags & NGHTTP2_FLAG_ACK) &&
        h->goaway == GOAWAY_NOTICE && memcmp(f->ping.opaque_data, drain_ping, 8) == 0)
        goaway_final(h);
    if (f->hd.type != NGHTTP2_HEADERS && f->hd.type != NGHTTP2_DATA)
        return 0;
    h2_stream *s = nghttp2_session_get_stream_user_data(ng, f->hd.stream_id);
    if (!s)
        return 0;
    int end_stream = (f->hd.flags & NGHTTP2_FLAG_END_STREAM) != 0;
    if (f->hd.type == NGHTTP2_HEADERS && !s->started) {
        s->started = 1;
        if (s->headers_too_large) {
            al_request_refuse(s->req, AL_REF_HEADER_TOO_LARGE,
                              "the request headers are larger than limits.max_header_bytes");
        } else {
            al_request_start(s->req, !end_stream, end_stream ? 0 : s->clen);
            if (!end_stream && !al_request_finished(s->req))
                body_clock_start(s);
        }
    }
    if (end_stream) {
        ev_timer_stop(h->c->worker->loop, &s->body_timer);
        al_request_body_end(s->req);
    }
    return 0;
}

static int on_data_chunk(nghttp2_session *ng, uint8_t flags, int32_t id, const uint8_t *data,
                         size_t len, void *user)
{
    (void)flags;
    (void)user;
    h2_stream *s = nghttp2_session_get_stream_user_data(ng, id);
    if (!s) {
        nghttp2_session_consume(ng, id, len);
        return 0;
    }
    s->body_at = ev_now(s->h->c->worker->loop);
    /* The window (64 KiB) never lets more in than the ring holds. */
    if (al_request_body_write(s->req, (const char *)data, len) != AL_OK)
        nghttp2_session_consume(ng, id, len);
    return 0;
}

static int on_stream_close(nghttp2_session *ng, int32_t id, uint32_t code, void *user)
{
    h2_session *h = user;
    (void)code;
    h2_stream *s = nghttp2_session_get_stream_user_data(ng, id);
    if (!s)
        return 0;
    nghttp2_session_set_stream_user_data(ng, id, NULL);
    h->recent_ids[h->recent_pos++ % (sizeof h->recent_ids / sizeof h->recent_ids[0])] = id;
    s->closed = 1;
    if (s->prev)
        s->prev->next = s->next;
    else
        h->streams = s->next;
    if (s->next)
        s->next->prev = s->prev;
    s->prev = NULL;
    s->next = h->closed;
    h->closed = s;
    ev_timer_stop(h->c->worker->loop, &s->body_timer);
    stream_ended(s);
    h->stream_count--;
    schedule(h);
    return 0;
}

/* ---- idle memory: nghttp2's big buffers on pages of their own -----------
 *
 * An idle HTTP/2 connection was ~18 KB of RSS (bench/RESULTS.md run 10), most of it
 * buffers nghttp2 allocates per session and keeps for the session's life: the
 * 16,394-byte frame buffer every outgoing frame is written into, the stream map's
 * first table (256 buckets of 16 B, calloc'd) and the HPACK encoder's 1,024-byte
 * table of entry pointers (never written: the encoder keeps no dynamic table). On the
 * malloc heap they sit between other objects, so a page that ever held a frame stays
 * resident. Here each session gets one page-aligned slot holding the three (the
 * allocator below recognises them by size, and the encoder's by coming first, while
 * nghttp2_session_server_new3 runs: nghttp2 1.52's session_new), and h2_trim, once the
 * connection has been idle for AL_CONN_TRIM_IDLE_MS, gives pages back with
 * MADV_DONTNEED (a private anonymous page reads as zeros after that, mapped again on
 * the next write):
 *  - the frame buffer holds nothing live once nghttp2_session_want_write() is 0: that
 *    means no active outbound item, and nghttp2 1.52 resets the buffers when it drops
 *    the item (active_outbound_item_reset) and writes each frame from the start
 *    before reading it (session_prep_frame); mem_send's caller (h2_send) has copied
 *    every frame it was given;
 *  - the map table is given back only when every byte of it is 0 (no stream; closed
 *    streams are not kept), so what nghttp2 reads afterwards is what it left there;
 *  - the encoder's table is never given back while the session lives (were the
 *    guess of which 1,024-byte buffer it is wrong, it would only cost its page).
 * Slots come from one process-wide pool (a lock taken once per session, not per
 * frame); a freed slot's pages go back to the kernel before it is reused, so a slot
 * always starts as zeros (the map table is calloc'd). */
static const size_t part_len[PARTS] = {
    128 * 8,       /* hd_ringbuf: 4,096 / 32 entry pointers */
    256 * 16,      /* nghttp2_map: 1 << 8 buckets of 16 bytes (hash, key, data) */
    9 + 1 + 16384, /* NGHTTP2_FRAMEBUF_CHUNKLEN (nghttp2_frame.h) */
};
#define POOL_GROW 64 /* slots mapped at once */

static pthread_mutex_t pool_lock = PTHREAD_MUTEX_INITIALIZER;
static void **pool_free; /* free slots, their pages already given back */
static size_t pool_n, pool_cap;

static size_t page_round(size_t n)
{
    size_t pg = (size_t)sysconf(_SC_PAGESIZE);
    return (n + pg - 1) / pg * pg;
}

/* A slot is the parts in enum order, each from a page boundary. */
static size_t part_off(int part)
{
    size_t off = 0;
    for (int i = 0; i < part; i++)
        off += page_round(part_len[i]);
    return off;
}

/* A zero-filled slot, or NULL (nghttp2 then allocates with malloc as usual). */
static char *slot_get(void)
{
    char *slot = NULL;
    size_t sz = part_off(PARTS);
    pthread_mutex_lock(&pool_lock);
    if (!pool_n) {
        void **grown = realloc(pool_free, (pool_cap + POOL_GROW) * sizeof *grown);
        char *m = grown ? mmap(NULL, sz * POOL_GROW, PROT_READ | PROT_WRITE,
                               MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
                        : MAP_FAILED;
        if (grown) {
            pool_free = grown;
            pool_cap += POOL_GROW;
        }
        for (size_t i = 0; m != MAP_FAILED && i < POOL_GROW; i++)
            pool_free[pool_n++] = m + (POOL_GROW - 1 - i) * sz;
    }
    if (pool_n)
        slot = pool_free[--pool_n];
    pthread_mutex_unlock(&pool_lock);
    return slot;
}

static void slot_put(char *slot)
{
    if (!slot)
        return;
    size_t sz = part_off(PARTS);
    if (madvise(slot, sz, MADV_DONTNEED) != 0)
        memset(slot, 0, sz); /* not expected: zeros for the next session anyway */
    pthread_mutex_lock(&pool_lock);
    pool_free[pool_n++] = slot; /* room: pool_cap counts every slot ever mapped */
    pthread_mutex_unlock(&pool_lock);
}

/* While the session is created: the part of the slot for an allocation of len
 * bytes, or NULL. */
static void *part_take(h2_session *h, int part, size_t len)
{
    if (!h->creating || !h->slot || len != part_len[part] || h->part[part])
        return NULL;
    return h->part[part] = h->slot + part_off(part);
}

/* Which part ptr is, or -1. */
static int part_of(const h2_session *h, const void *ptr)
{
    for (int i = 0; ptr && i < PARTS; i++)
        if (ptr == h->part[i])
            return i;
    return -1;
}

/* nghttp2's small allocations (its stream, the outbound items, the header name and
 * value buffers, the copied response header pairs: ~5 malloc and ~8 free calls a
 * small request, ~1,500 instructions with glibc, whose per-thread cache holds 7
 * blocks a size while 10 streams come and go together) from free lists of this thread
 * (a worker: its sessions live on its loop). The blocks are plain malloc blocks, no
 * header: a freed block goes to the list of its usable size (malloc_usable_size;
 * glibc's are 16 k + 8 bytes), so nothing a session keeps costs more than before; a
 * thread keeps at most FL_KEEP bytes of them (none per idle connection), and a
 * thread's lists are freed when it exits. Under ASan a cached block is poisoned: a use
 * after nghttp2 freed it is still reported. */
#define FL_CLASSES 32 /* class c: usable size >= 16 (c + 1) + 8, i.e. 24 .. 520 bytes */
#define FL_KEEP (128 * 1024) /* bytes kept a thread */

typedef struct fl_block {
    struct fl_block *next;
} fl_block;

typedef struct {
    fl_block *head[FL_CLASSES];
    size_t kept; /* bytes, by class size */
    int registered;
} fl_lists;

static _Thread_local fl_lists fl;
static pthread_key_t fl_key;
static int fl_key_ok;
static pthread_once_t fl_once = PTHREAD_ONCE_INIT;

static void fl_thread_exit(void *arg)
{
    fl_lists *l = arg;
    for (int c = 0; c < FL_CLASSES; c++)
        while (l->head[c]) {
            fl_block *b = l->head[c];
            FL_UNPOISON(b, sizeof *b);
            l->head[c] = b->next;
            free(b);
        }
    l->kept = 0;
}

static void fl_key_create(void)
{
    fl_key_ok = pthread_key_create(&fl_key, fl_thread_exit) == 0;
}

static void *fl_alloc(size_t size)
{
    if (size <= 16 * FL_CLASSES + 8) {
        unsigned c = size <= 24 ? 0 : (unsigned)((size - 8 + 15) / 16) - 1;
        fl_block *b = fl.head[c];
        if (b) {
            FL_UNPOISON(b, 16 * (c + 1) + 8);
            fl.head[c] = b->next;
            fl.kept -= 16 * (c + 1) + 8;
            return b;
        }
    }
    return malloc(size);
}

static void fl_free(void *ptr)
{
    if (!ptr)
        return;
    size_t u = malloc_usable_size(ptr);
    unsigned c = u < 24 ? FL_CLASSES : (unsigned)((u - 8) / 16) - 1;
    if (c >= FL_CLASSES || fl.kept + 16 * (c + 1) + 8 > FL_KEEP) {
        free(ptr);
        return;
    }
    if (!fl.registered) { /* the thread's first kept block: free the lists at its exit */
        pthread_once(&fl_once, fl_key_create);
        if (!fl_key_ok || pthread_setspecific(fl_key, &fl) != 0) {
            free(ptr);
            return;
        }
        fl.registered = 1;
    }
    fl_block *b = ptr;
    b->next = fl.head[c];
    fl.head[c] = b;
    fl.kept += 16 * (c + 1) + 8;
    FL_POISON(b, 16 * (c + 1) + 8);
}

static void *ng_malloc(size_t size, void *user)
{
    h2_session *h = user;
    void *p = NULL;
    if (size == part_len[PART_FRAMEBUF])
        p = part_take(h, PART_FRAMEBUF, size);
    else if (size == part_len[PART_DEFLATE] && !h->part[PART_DEFLATE] &&
             !h->deflate_seen++) /* the first of the two HPACK tables: the encoder's */
        p = part_take(h, PART_DEFLATE, size);
    return p ? p : fl_alloc(size);
}

static void ng_free(void *ptr, void *user)
{
    h2_session *h = user;
    int part = part_of(h, ptr);
    if (part < 0) {
        fl_free(ptr);
        return;
    }
    /* nghttp2 let go of it (the map grew): its pages go back now */
    if (!h->deleting)
        madvise(ptr, page_round(part_len[part]), MADV_DONTNEED);
    h->part[part] = NULL;
}

static void *ng_calloc(size_t n, size_t size, void *user)
{
    h2_session *h = user;
    void *p = size && n == part_len[PART_MAP] / size && n * size == part_len[PART_MAP]
                  ? part_take(h, PART_MAP, n * size) /* zero-filled */
                  : NULL;
    if (p || (size && n > SIZE_MAX / size))
        return p;
    if ((p = fl_alloc(n * size)))
        memset(p, 0, n * size);
    return p;
}

static void *ng_realloc(void *ptr, size_t size, void *user)
{
    h2_session *h = user;
    if (!ptr)
        return ng_malloc(size, user); /* nghttp2_buf_init2 allocates the frame buffer so */
    int part = part_of(h, ptr);
    if (part < 0)
        return realloc(ptr, size);
    void *p = malloc(size);
    if (p) {
        memcpy(p, ptr, part_len[part] < size ? part_len[part] : size);
        ng_free(ptr, user);
    }
    return p;
}

static int all_zero(const void *p, size_t n)
{
    const unsigned char *b = p;
    return n == 0 || (b[0] == 0 && memcmp(b, b + 1, n - 1) == 0);
}

/* The connection has been idle (no stream) for AL_CONN_TRIM_IDLE_MS: the pages of the
 * frame buffer, and of the stream map table when it is empty, go back to the kernel
 * (the two are adjacent in the slot: one system call). */
static void h2_trim(al_conn *c)
{
    h2_session *h = c->proto_state;
    if (!h || !h->slot || h->stream_count || h->closed || h->goaway ||
        nghttp2_session_want_write(h->ng))
        return;
    char *map = h->part[PART_MAP], *fb = h->part[PART_FRAMEBUF];
    size_t map_sz = page_round(part_len[PART_MAP]), fb_sz = page_round(part_len[PART_FRAMEBUF]);
    if (map && !all_zero(map, part_len[PART_MAP]))
        map = NULL;
    if (map && fb)
        madvise(map, map_sz + fb_sz, MADV_DONTNEED);
    else if (map || fb)
        madvise(map ? map : fb, map ? map_sz : fb_sz, MADV_DONTNEED);
    al_log(AL_LOG_DEBUG, "h2.trim", "peer=%s frame_buffer=%d stream_map=%d", c->peer, fb != NULL,
           map != NULL);
}

/* ---- connection side ------------------------------------------------------ */

static void free_stream(h2_stream *s)
{
    stream_ended(s);
    ev_timer_stop(s->h->c->worker->loop, &s->body_timer);
    al_request_free(s->req);
    free(s->trailers);
    free(s->trailer_buf);
    al_buf_free(&s->out, 0);
    fl_free(s);
}

/* Frames to the socket in rounds: nghttp2's frames go to the queue, DATA payloads are
 * referenced (send_data), then one writev sends queue and payloads (al_conn_send_spans:
 * only what the socket leaves is copied). Another round while the batch limit, not the
 * socket, stopped the last one. */
static int h2_send(h2_session *h)
{
    al_conn *c = h->c;
    int rc = 0;
    if (h->sending)
        return 0;
    al_conn_span zc[AL_CONN_SPANS_MAX];
    h->zc = zc;
    h->sending = 1;
    int more = 0;
    for (int round = 0; round < 8 && rc == 0 && !c->dead; round++) {
        h->zc_n = h->zc_bytes = 0;
        h->zc_full = 0;
        while (!h->zc_full && al_conn_out_pending(c) + h->zc_bytes < batch_limit(c) && !c->dead) {
            const uint8_t *d;
            ssize_t n = nghttp2_session_mem_send(h->ng, &d);
            if (n < 0) {
                rc = -1;
                break;
            }
            if (n == 0)
                break;
            if (al_buf_append(&c->out, d, (size_t)n) != AL_OK) {
                rc = -1;
                break;
            }
        }
        more = h->zc_full || al_conn_out_pending(c) + h->zc_bytes >= batch_limit(c);
        if (al_conn_send_spans(c, h->zc, h->zc_n) != AL_OK && rc == 0)
            rc = c->dead ? 0 : -1; /* a dead connection is closed by al_conn already */
        h->zc_n = h->zc_bytes = 0;
        if (!more || al_conn_out_pending(c))
            break; /* nothing left, or the socket is full */
    }
    h->sending = 0;
    h->zc = NULL;
    if (more && rc == 0 && !c->dead) {
        /* nghttp2 has more: when the socket takes the queue (on_drain, whatever the
         * queue's size), or at the next turn of the loop when 8 rounds went out (the
         * other connections' turn first) */
        if (al_conn_out_pending(c))
            c->drain_wanted = 1;
        else
            al_conn_kick(c);
    }
    return rc;
}

static int h2_on_read(al_conn *c)
{
    h2_session *h = c->proto_state;
    if (c->in_len) {
        ssize_t n = nghttp2_session_mem_recv(h->ng, (const uint8_t *)c->in, c->in_len);
        if (n < 0) {
            al_log(AL_LOG_DEBUG, "h2.error", "peer=%s %s", c->peer, nghttp2_strerror((int)n));
            if (n == NGHTTP2_ERR_BAD_CLIENT_MAGIC) /* it began as h2 (al_conn): answer as h2 */
                nghttp2_session_terminate_session(h->ng, NGHTTP2_PROTOCOL_ERROR);
            h2_send(h);
            return -1;
        }
        al_conn_consume(c, (size_t)n);
    }
    /* Upstreams paused on a full stream buffer go on once it has room. */
    for (h2_stream *s = h->streams; s; s = s->next) {
        if (s->out_paused && out_pending(s) < STREAM_OUT_HIGH / 2) {
            s->out_paused = 0;
            al_request_resume_output(s->req);
        }
    }
    if (h2_send(h) != 0)
        return -1;
    while (h->closed) {
        h2_stream *s = h->closed;
        h->closed = s->next;
        free_stream(s);
    }
    if (!nghttp2_session_want_read(h->ng) && !nghttp2_session_want_write(h->ng))
        return -1;
    if (h->goaway == GOAWAY_FINAL && h->stream_count == 0)
        return -1;
    return 0;
}

static void h2_on_eof(al_conn *c)
{
    al_conn_close(c, 0);
}

static void h2_on_drain(al_conn *c)
{
    al_conn_kick(c);
}

static int h2_wants_read(al_conn *c)
{
    h2_session *h = c->proto_state;
    return nghttp2_session_want_read(h->ng);
}

static int h2_idle(al_conn *c)
{
    h2_session *h = c->proto_state;
    return h->stream_count == 0;
}

static int h2_timeout_kind(al_conn *c)
{
    h2_session *h = c->proto_state;
    if (!h->got_settings)
        return AL_CT_HANDSHAKE;
    if (h->stream_count == 0)
        return AL_CT_KEEPALIVE;
    /* every request ended, streams wait only for the agent to take their output (a
     * window of 0 holds them for ever): the output clock, restarted by each write */
    return h->in_flight == 0 ? AL_CT_CLOSING : AL_CT_NONE;
}

static void h2_drain(al_conn *c)
{
    h2_session *h = c->proto_state;
    if (!h->goaway) {
        if (nghttp2_submit_shutdown_notice(h->ng) == 0 &&
            nghttp2_submit_ping(h->ng, NGHTTP2_FLAG_NONE, drain_ping) == 0)
            h->goaway = GOAWAY_NOTICE;
        else
            goaway_final(h);
    }
    al_conn_kick(c);
}

static void h2_on_timeout(al_conn *c, int kind)
{
    (void)kind;
    /* no stream for limits.client_keepalive_timeout_ms: GOAWAY, then close */
    goaway_final(c->proto_state);
    h2_send(c->proto_state);
    al_conn_close(c, 1);
}

static void h2_free(al_conn *c)
{
    h2_session *h = c->proto_state;
    if (!h)
        return;
    while (h->streams) {
        h2_stream *s = h->streams;
        h->streams = s->next;
        free_stream(s);
    }
    while (h->closed) {
        h2_stream *s = h->closed;
        h->closed = s->next;
        free_stream(s);
    }
    h->deleting = 1;
    nghttp2_session_del(h->ng);
    slot_put(h->slot); /* one system call for the whole slot */
    free(h);
    c->proto_state = NULL;
}

static const al_proto h2_proto = {
    "h2",    h2_on_read, h2_on_eof, h2_on_drain,     h2_wants_read,
    h2_idle, h2_drain,   h2_free,   h2_timeout_kind, h2_on_timeout,
    h2_trim,
};

int al_h2_attach(al_conn *c)
{
    h2_session *h = calloc(1, sizeof *h);
    nghttp2_session_callbacks *cbs = NULL;
    nghttp2_option *opt = NULL;
    int rc = AL_ERR_NOMEM;
    if (!h || nghttp2_session_callbacks_new(&cbs) != 0 || nghttp2_option_new(&opt) != 0)
        goto fail;
    h->c = c;
    nghttp2_session_callbacks_set_on_begin_frame_callback(cbs, on_begin_frame);
    nghttp2_session_callbacks_set_on_begin_headers_callback(cbs, on_begin_headers);
    nghttp2_session_callbacks_set_on_header_callback(cbs, on_header);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cbs, on_frame_recv);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs, on_data_chunk);
    nghttp2_session_callbacks_set_on_stream_close_callback(cbs, on_stream_close);
    nghttp2_session_callbacks_set_send_data_callback(cbs, send_data);
    /* Request bodies: the window is given back only when bytes went upstream. */
    nghttp2_option_set_no_auto_window_update(opt, 1);
    /* Idle memory (bench/RESULTS.md run 10): a closed stream is freed at once instead
     * of kept for RFC 7540's priority tree (up to MAX_CONCURRENT_STREAMS, 1,024 closed
     * streams of ~220 B each on a connection that served many requests), and the
     * response HPACK encoder keeps no dynamic table (as HAProxy's: every header is
     * sent indexed from the static table or literal), so no entries stay behind. */
    nghttp2_option_set_no_closed_streams(opt, 1);
    nghttp2_option_set_max_deflate_dynamic_table_size(opt, 0);
    nghttp2_mem mem = {h, ng_malloc, ng_free, ng_calloc, ng_realloc}; /* copied by nghttp2 */
    h->slot = slot_get();
    h->creating = 1;
    int made = nghttp2_session_server_new3(&h->ng, cbs, h, opt, &mem);
    h->creating = 0;
    if (made != 0)
        goto fail;
    nghttp2_settings_entry iv[] = {
        {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, 1024},
        {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, 65535},
        {NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, c->worker->table->limits.max_header_bytes
                                                    ? c->worker->table->limits.max_header_bytes
                                                    : 65536},
    };
    if (nghttp2_submit_settings(h->ng, NGHTTP2_FLAG_NONE, iv, sizeof iv / sizeof iv[0]) != 0)
        goto fail;
    /* The connection window is shared by all streams: large, per-stream ones bound memory. */
    nghttp2_session_set_local_window_size(h->ng, NGHTTP2_FLAG_NONE, 0, 16 * 1024 * 1024);
    nghttp2_session_callbacks_del(cbs);
    nghttp2_option_del(opt);
    c->proto = &h2_proto;
    c->proto_state = h;
    return AL_OK;
fail:
    if (h) {
        h->deleting = 1;
        nghttp2_session_del(h->ng); /* NULL: nothing */
        slot_put(h->slot);
    }
    free(h);
    nghttp2_session_callbacks_del(cbs);
    nghttp2_option_del(opt);
    return rc;
}
