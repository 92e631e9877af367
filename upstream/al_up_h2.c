/* al_up_h2: the HTTP/2 client codec of the upstream engine (see al_up_h2.h).
 *
 * Owns one nghttp2 client session and the streams submitted on it. A stream lives
 * in h->streams from al_up_h2_submit until it is freed; on its way it may wait in the
 * queue (h->qhead: no stream slot under the peer's SETTINGS_MAX_CONCURRENT_STREAMS),
 * then is submitted to nghttp2 (an id, counted in h->active until nghttp2 closes it).
 *
 * Invariants:
 *  - a stream "ends" once (end_stream): on_done is called then unless it was
 *    cancelled, and no callback of it runs afterwards;
 *  - a stream is freed only by sweep(), outside every callback chain (h->depth == 0),
 *    once it ended and nghttp2 no longer holds it (never submitted, or nghttp2 closed
 *    it: on_stream_close is nghttp2's last use of the stream's pointer, and a request
 *    HEADERS that cannot be sent is closed through on_stream_close too);
 *  - the connection window is given back as DATA arrives, a stream's window when its
 *    consumer took the bytes: a paused stream buffers at most its window
 *    (stream_window; nghttp2 refuses more with FLOW_CONTROL_ERROR), the others flow;
 *  - bytes, trailers and the end of a paused stream are delivered in order once it is
 *    resumed: on_body, then on_trailers, then on_done.
 *
 * Why not nghttp2's own queue for streams above the peer's limit: it assigns stream
 * ids at submit time and holds the request HEADERS in its queue; keeping the excess
 * here makes a GOAWAY's "not processed" set plain (queued here, or above last_stream_id)
 * and keeps the queue bounded (max_queued). */
#include "al_up_h2.h"
#include "common/al_err.h"

#include <nghttp2/nghttp2.h>
#include <openssl/crypto.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DEFAULT_STREAM_WINDOW        (256u * 1024)
#define DEFAULT_CONNECTION_WINDOW    (16u * 1024 * 1024)
#define DEFAULT_MAX_HEADER_BYTES     (64u * 1024)
#define DEFAULT_MAX_QUEUED           4096u
#define PEER_STREAMS_BEFORE_SETTINGS 100u

typedef struct hdr_ref {
    uint32_t name_off, name_len, value_off, value_len;
} hdr_ref;

struct al_up_h2_stream {
    al_up_h2 *h;
    int32_t id;
    al_up_h2_cbs cbs;
    void *arg;
    /* the request, until it is submitted to nghttp2 (which copies it) */
    nghttp2_nv *nva;
    size_t nvlen;
    char *nvbuf;
    size_t nvbuf_len;
    int has_body, is_head;
    /* state */
    unsigned queued : 1, submitted : 1, headers_sent : 1, ng_closed : 1, ended : 1, cancelled : 1,
        got_head : 1, remote_eof : 1, paused : 1, wake_recv : 1, peer_rst : 1, malformed : 1,
        body_deferred : 1, send_ready : 1, trailers_ready : 1, rst_sent : 1;
    const char *malformed_detail;
    /* the header block being received (head or trailers): names and values in hbuf */
    char *hbuf;
    size_t hlen, hcap, hbytes;
    hdr_ref *hrefs;
    size_t hn, hrcap;
    al_header *harr;
    size_t harr_cap;
    int status;
    /* own check of content-length against the DATA (nghttp2 checks too) */
    int64_t clen, body_seen;
    /* response bytes the consumer has not taken yet (it paused) */
    char *pend;
    size_t pend_off, pend_len, pend_cap; /* pending: pend[pend_off..pend_len) */
    al_up_h2_stream *prev, *next; /* h->streams */
    al_up_h2_stream *qnext;       /* h->qhead while queued */
};

struct al_up_h2 {
    nghttp2_session *ng;
    al_up_h2_config cfg;
    void (*wake)(void *arg);
    void *wake_arg;
    al_up_h2_stream *streams;
    al_up_h2_stream *qhead, *qtail;
    size_t queued, active;
    int depth; /* > 0 while inside recv/send/run (callbacks may be running) */
    int dirty; /* a stream was resumed: run() has work */
    int failed, ng_error, no_ids, goaway_recv, goaway_sent;
    int32_t goaway_last_id;
};

const char *al_up_h2_end_str(enum al_up_h2_end e)
{
    switch (e) {
    case AL_UP_H2_DONE:
        return "done";
    case AL_UP_H2_REFUSED:
        return "refused";
    case AL_UP_H2_RESET:
        return "reset";
    case AL_UP_H2_MALFORMED:
        return "malformed";
    case AL_UP_H2_CONN_LOST:
        return "connection lost";
    case AL_UP_H2_LOCAL:
        return "local failure";
    }
    return "unknown";
}

static void wake(al_up_h2 *h)
{
    if (h->wake)
        h->wake(h->wake_arg);
}

/* ---- stream lifetime ------------------------------------------------------- */

static void wipe_request(al_up_h2_stream *s)
{
    if (s->nvbuf) {
        OPENSSL_cleanse(s->nvbuf, s->nvbuf_len);
        free(s->nvbuf);
    }
    free(s->nva);
    s->nvbuf = NULL;
    s->nva = NULL;
    s->nvlen = 0;
}

static void free_stream(al_up_h2_stream *s)
{
    al_up_h2 *h = s->h;
    if (s->prev)
        s->prev->next = s->next;
    else
        h->streams = s->next;
    if (s->next)
        s->next->prev = s->prev;
    wipe_request(s);
    free(s->hbuf);
    free(s->hrefs);
    free(s->harr);
    free(s->pend);
    free(s);
}

static void unqueue(al_up_h2_stream *s)
{
    al_up_h2 *h = s->h;
    al_up_h2_stream **pp = &h->qhead, *prev = NULL;
    while (*pp && *pp != s) {
        prev = *pp;
        pp = &(*pp)->qnext;
    }
    if (!*pp)
        return;
    *pp = s->qnext;
    if (h->qtail == s)
        h->qtail = prev;
    s->qnext = NULL;
    s->queued = 0;
    h->queued--;
}

/* Resets the stream in nghttp2 unless it is closed or a reset is already on its way. */
static void reset_stream(al_up_h2_stream *s, uint32_t code)
{
    if (!s->submitted || s->ng_closed || s->rst_sent)
        return;
    s->rst_sent = 1;
    nghttp2_submit_rst_stream(s->h->ng, NGHTTP2_FLAG_NONE, s->id, code);
    wake(s->h);
}

/* The one place a stream ends. */
static void end_stream(al_up_h2_stream *s, enum al_up_h2_end e, uint32_t code, const char *detail)
{
    if (s->ended)
        return;
    s->ended = 1;
    if (s->queued)
        unqueue(s);
    wipe_request(s);
    /* A response complete while the request body was still going up (the upstream
     * answered early) or any failure: nghttp2 must not pull read_body any more. */
    if (s->submitted && !s->ng_closed &&
        (e != AL_UP_H2_DONE || !nghttp2_session_get_stream_local_close(s->h->ng, s->id)))
        reset_stream(s, e == AL_UP_H2_DONE ? NGHTTP2_NO_ERROR : NGHTTP2_CANCEL);
    if (!s->cancelled && s->cbs.on_done)
        s->cbs.on_done(s->arg, e, code, detail);
}

static void mark_malformed(al_up_h2_stream *s, const char *detail)
{
    if (s->malformed || s->ended)
        return;
    s->malformed = 1;
    s->malformed_detail = detail;
    reset_stream(s, NGHTTP2_PROTOCOL_ERROR);
    end_stream(s, AL_UP_H2_MALFORMED, NGHTTP2_PROTOCOL_ERROR, detail);
}

/* Frees what ended and nghttp2 let go of; only outside callbacks. */
static void sweep(al_up_h2 *h)
{
    if (h->depth)
        return;
    al_up_h2_stream *s = h->streams, *next;
    for (; s; s = next) {
        next = s->next;
        if (s->ended && (!s->submitted || s->ng_closed))
            free_stream(s);
    }
}

/* ---- response delivery ----------------------------------------------------- */

static const al_header *block_headers(al_up_h2_stream *s)
{
    static const al_header none;
    if (s->hn == 0)
        return &none; /* a head of :status alone */
    if (s->hn > s->harr_cap) {
        al_header *a = realloc(s->harr, s->hn * sizeof *a);
        if (!a)
            return NULL;
        s->harr = a;
        s->harr_cap = s->hn;
    }
    for (size_t i = 0; i < s->hn; i++) {
        const hdr_ref *r = &s->hrefs[i];
        s->harr[i] =
            (al_header){s->hbuf + r->name_off, r->name_len, s->hbuf + r->value_off, r->value_len};
    }
    return s->harr;
}

static void block_reset(al_up_h2_stream *s)
{
    s->hlen = 0;
    s->hn = 0;
    s->hbytes = 0;
    s->status = 0;
}

/* The end of the response once everything before it was delivered. */
static void try_finish(al_up_h2_stream *s)
{
    if (s->ended || s->pend_len || !s->remote_eof)
        return;
    if (s->clen >= 0 && !s->is_head && s->status != 204 && s->status != 304 &&
        s->body_seen != s->clen) {
        mark_malformed(s, "the upstream's response body did not match its content-length");
        return;
    }
    if (s->trailers_ready) {
        s->trailers_ready = 0;
        const al_header *t = block_headers(s);
        if (t && s->cbs.on_trailers)
            s->cbs.on_trailers(s->arg, t, s->hn);
        if (s->ended)
            return;
    }
    end_stream(s, AL_UP_H2_DONE, 0, "response complete");
}

/* Offers the held bytes again; the window opens as they are taken. */
static void deliver(al_up_h2_stream *s)
{
    while (s->pend_len && !s->paused && !s->ended) {
        size_t n = s->pend_len - s->pend_off;
        if (n > AL_UP_H2_MAX_CHUNK)
            n = AL_UP_H2_MAX_CHUNK;
        int rc = s->cbs.on_body(s->arg, s->pend + s->pend_off, n);
        if (s->ended)
            return;
        if (rc == AL_ERR_AGAIN) {
            s->paused = 1;
            return;
        }
        if (rc != AL_OK) {
            end_stream(s, AL_UP_H2_LOCAL, 0, "the response body could not be forwarded");
            return;
        }
        s->pend_off += n;
        if (s->pend_off == s->pend_len)
            s->pend_off = s->pend_len = 0;
        if (!s->ng_closed)
            nghttp2_session_consume_stream(s->h->ng, s->id, n);
    }
    try_finish(s);
}

static int hold(al_up_h2_stream *s, const uint8_t *data, size_t len)
{
    if (s->pend_off && s->pend_len + len > s->pend_cap) { /* taken bytes go first */
        memmove(s->pend, s->pend + s->pend_off, s->pend_len - s->pend_off);
        s->pend_len -= s->pend_off;
        s->pend_off = 0;
    }
    if (s->pend_len + len > s->pend_cap) {
        size_t cap = s->pend_cap ? s->pend_cap : 16384;
        while (cap < s->pend_len + len)
            cap *= 2;
        char *p = realloc(s->pend, cap);
        if (!p)
            return AL_ERR_NOMEM;
        s->pend = p;
        s->pend_cap = cap;
    }
    memcpy(s->pend + s->pend_len, data, len);
    s->pend_len += len;
    return AL_OK;
}

/* ---- nghttp2 callbacks ----------------------------------------------------- */

static al_up_h2_stream *stream_of(nghttp2_session *ng, int32_t id)
{
    return id > 0 ? nghttp2_session_get_stream_user_data(ng, id) : NULL;
}

static int on_begin_headers(nghttp2_session *ng, const nghttp2_frame *f, void *user)
{
    (void)user;
    al_up_h2_stream *s = stream_of(ng, f->hd.stream_id);
    if (s && !s->trailers_ready)
        block_reset(s);
    return 0;
}

static int add_field(al_up_h2_stream *s, const uint8_t *name, size_t nl, const uint8_t *value,
                     size_t vl)
{
    if (s->hlen + nl + vl > s->hcap) {
        size_t cap = s->hcap ? s->hcap : 1024;
        while (cap < s->hlen + nl + vl)
            cap *= 2;
        char *b = realloc(s->hbuf, cap);
        if (!b)
            return AL_ERR_NOMEM;
        s->hbuf = b;
        s->hcap = cap;
    }
    if (s->hn == s->hrcap) {
        size_t cap = s->hrcap ? s->hrcap * 2 : 16;
        hdr_ref *r = realloc(s->hrefs, cap * sizeof *r);
        if (!r)
            return AL_ERR_NOMEM;
        s->hrefs = r;
        s->hrcap = cap;
    }
    memcpy(s->hbuf + s->hlen, name, nl);
    memcpy(s->hbuf + s->hlen + nl, value, vl);
    s->hrefs[s->hn++] =
        (hdr_ref){(uint32_t)s->hlen, (uint32_t)nl, (uint32_t)(s->hlen + nl), (uint32_t)vl};
    s->hlen += nl + vl;
    return AL_OK;
}

static int name_is(const uint8_t *n, size_t nl, const char *lit)
{
    size_t l = strlen(lit);
    return nl == l && memcmp(n, lit, l) == 0;
}

/* Fields nghttp2 already refuses (with HTTP messaging on) are checked again here, so
 * this codec does not depend on that option for what it promises. */
static int on_header(nghttp2_session *ng, const nghttp2_frame *f, const uint8_t *name, size_t nl,
                     const uint8_t *value, size_t vl, uint8_t flags, void *user)
{
    al_up_h2 *h = user;
    (void)flags;
    al_up_h2_stream *s = stream_of(ng, f->hd.stream_id);
    if (!s || s->ended || f->hd.type != NGHTTP2_HEADERS)
        return 0;
    int trailer = s->got_head;
    s->hbytes += nl + vl + 32;
    if (s->hbytes > h->cfg.max_header_bytes) {
        mark_malformed(s, trailer ? "the upstream's response trailers are too large"
                                  : "the upstream's response head is too large");
        return 0;
    }
    if (nl && name[0] == ':') {
        if (trailer || !name_is(name, nl, ":status") || s->status) {
            mark_malformed(s, "the upstream's response has a pseudo-header other than one :status");
            return 0;
        }
        if (vl != 3 || value[0] < '1' || value[0] > '5' || value[1] < '0' || value[1] > '9' ||
            value[2] < '0' || value[2] > '9') {
            mark_malformed(s, "the upstream's response has a bad :status");
            return 0;
        }
        s->status = (value[0] - '0') * 100 + (value[1] - '0') * 10 + (value[2] - '0');
        return 0;
    }
    if (al_http_hop_by_hop((const char *)name, nl) &&
        !(name_is(name, nl, "te") && vl == 8 && memcmp(value, "trailers", 8) == 0)) {
        mark_malformed(s, "the upstream's response has a connection-specific header");
        return 0;
    }
    if (!trailer && name_is(name, nl, "content-length")) {
        int64_t v = vl ? 0 : -1;
        for (size_t i = 0; i < vl && v >= 0; i++)
            v = (value[i] < '0' || value[i] > '9' || v > (INT64_MAX - 9) / 10)
                    ? -1
                    : v * 10 + (value[i] - '0');
        if (v < 0 || (s->clen >= 0 && s->clen != v)) {
            mark_malformed(s, "the upstream's response has a bad content-length");
            return 0;
        }
        s->clen = v;
    }
    if (add_field(s, name, nl, value, vl) != AL_OK) {
        reset_stream(s, NGHTTP2_INTERNAL_ERROR);
        end_stream(s, AL_UP_H2_LOCAL, 0, "out of memory for the response head");
    }
    return 0;
}

/* A field nghttp2 would drop in silence (a name with upper case or a character a
 * token cannot hold): the response is malformed (RFC 9113 section 8.2.1), refused
 * rather than forwarded without it. */
static int on_invalid_header(nghttp2_session *ng, const nghttp2_frame *f, const uint8_t *name,
                             size_t nl, const uint8_t *value, size_t vl, uint8_t flags, void *user)
{
    (void)name;
    (void)nl;
    (void)value;
    (void)vl;
    (void)flags;
    (void)user;
    al_up_h2_stream *s = stream_of(ng, f->hd.stream_id);
    if (s)
        mark_malformed(s, "the upstream's response has a header name HTTP/2 does not allow");
    return 0;
}

static void refuse_queue(al_up_h2 *h, const char *detail)
{
    while (h->qhead)
        end_stream(h->qhead, AL_UP_H2_REFUSED, 0, detail);
}

static void on_headers_frame(al_up_h2_stream *s, const nghttp2_frame *f)
{
    int end = (f->hd.flags & NGHTTP2_FLAG_END_STREAM) != 0;
    if (!s->got_head) {
        if (s->status == 0) {
            mark_malformed(s, "the upstream's response has no :status");
            return;
        }
        const al_header *hv = block_headers(s);
        if (!hv) {
            end_stream(s, AL_UP_H2_LOCAL, 0, "out of memory for the response head");
            return;
        }
        if (s->status < 200) {
            /* 101 is not HTTP/2 (RFC 9113 section 8.6); a 1xx cannot end the stream */
            if (s->status == 101 || end) {
                mark_malformed(s, "the upstream sent 101 or an interim response that ends the "
                                  "stream");
                return;
            }
            if (s->cbs.on_info)
                s->cbs.on_info(s->arg, s->status, hv, s->hn);
            block_reset(s);
            return;
        }
        s->got_head = 1;
        s->cbs.on_head(s->arg, s->status, hv, s->hn);
        if (s->ended)
            return;
    } else {
        if (!end) {
            mark_malformed(s, "the upstream's trailers do not end the stream");
            return;
        }
        s->trailers_ready = 1;
    }
    if (end) {
        s->remote_eof = 1;
        if (!s->paused)
            try_finish(s);
    }
}

static int on_frame_recv(nghttp2_session *ng, const nghttp2_frame *f, void *user)
{
    al_up_h2 *h = user;
    switch (f->hd.type) {
    case NGHTTP2_GOAWAY:
        /* Streams above last_stream_id are closed by nghttp2 right after this, with
         * REFUSED_STREAM (on_stream_close); those still queued here never left. */
        h->goaway_recv = 1;
        h->goaway_last_id = f->goaway.last_stream_id;
        refuse_queue(h, "the upstream is closing the connection (GOAWAY); not processed");
        return 0;
    case NGHTTP2_SETTINGS:
        if (h->qhead)
            wake(h);
        return 0;
    case NGHTTP2_RST_STREAM: {
        al_up_h2_stream *s = stream_of(ng, f->hd.stream_id);
        if (s)
            s->peer_rst = 1;
        return 0;
    }
    case NGHTTP2_HEADERS: {
        al_up_h2_stream *s = stream_of(ng, f->hd.stream_id);
        if (s && !s->ended)
            on_headers_frame(s, f);
        return 0;
    }
    case NGHTTP2_DATA: {
        al_up_h2_stream *s = stream_of(ng, f->hd.stream_id);
        if (s && !s->ended && (f->hd.flags & NGHTTP2_FLAG_END_STREAM)) {
            s->remote_eof = 1;
            if (!s->paused)
                try_finish(s);
        }
        return 0;
    }
    }
    return 0;
}

static int on_data_chunk(nghttp2_session *ng, uint8_t flags, int32_t id, const uint8_t *data,
                         size_t len, void *user)
{
    (void)flags;
    (void)user;
    /* The connection's window reopens at once: only the stream's waits for its reader. */
    nghttp2_session_consume_connection(ng, len);
    al_up_h2_stream *s = stream_of(ng, id);
    if (!s || s->ended) {
        nghttp2_session_consume_stream(ng, id, len);
        return 0;
    }
    if (!s->got_head) {
        mark_malformed(s, "the upstream sent DATA before the response head");
        return 0;
    }
    if (len == 0)
        return 0;
    s->body_seen += (int64_t)len;
    if (s->is_head || s->status == 204 || s->status == 304 ||
        (s->clen >= 0 && s->body_seen > s->clen)) {
        mark_malformed(s, "the upstream's response body did not match its content-length");
        return 0;
    }
    if (s->paused || s->pend_len) {
        if (hold(s, data, len) != AL_OK)
            end_stream(s, AL_UP_H2_LOCAL, 0, "out of memory for the response body");
        return 0;
    }
    int rc = s->cbs.on_body(s->arg, (const char *)data, len);
    if (s->ended)
        return 0;
    if (rc == AL_OK) {
        nghttp2_session_consume_stream(ng, id, len);
    } else if (rc == AL_ERR_AGAIN) {
        s->paused = 1;
        if (hold(s, data, len) != AL_OK)
            end_stream(s, AL_UP_H2_LOCAL, 0, "out of memory for the response body");
    } else {
        end_stream(s, AL_UP_H2_LOCAL, 0, "the response body could not be forwarded");
    }
    return 0;
}

static int on_stream_close(nghttp2_session *ng, int32_t id, uint32_t code, void *user)
{
    al_up_h2 *h = user;
    al_up_h2_stream *s = stream_of(ng, id);
    if (!s)
        return 0;
    s->ng_closed = 1;
    h->active--;
    wake(h); /* a slot opened for the queue; the stream is freed by the next sweep */
    if (s->ended)
        return 0;
    if (s->remote_eof && s->got_head) {
        /* the response was complete (a reset after it only stops our request body) */
        if (!s->paused)
            try_finish(s);
        return 0;
    }
    s->pend_off = s->pend_len = 0;
    if (code == NGHTTP2_REFUSED_STREAM && !s->got_head) {
        end_stream(s, AL_UP_H2_REFUSED, code,
                   s->peer_rst ? "the upstream refused the stream (REFUSED_STREAM); not processed"
                               : "the upstream is closing the connection (GOAWAY); not processed");
    } else if (s->peer_rst) {
        end_stream(s, AL_UP_H2_RESET, code, "the upstream reset the stream (RST_STREAM)");
    } else if (code == NGHTTP2_PROTOCOL_ERROR) {
        end_stream(s, AL_UP_H2_MALFORMED, code,
                   "the upstream's response was malformed (bad :status, a connection-specific "
                   "header, or a body not matching content-length)");
    } else {
        end_stream(s, AL_UP_H2_RESET, code, "the stream closed before the response was complete");
    }
    return 0;
}

static int on_frame_send(nghttp2_session *ng, const nghttp2_frame *f, void *user)
{
    al_up_h2 *h = user;
    if (f->hd.type == NGHTTP2_GOAWAY) {
        h->goaway_sent = 1;
        return 0;
    }
    if (f->hd.type == NGHTTP2_HEADERS && f->headers.cat == NGHTTP2_HCAT_REQUEST) {
        al_up_h2_stream *s = stream_of(ng, f->hd.stream_id);
        if (s)
            s->headers_sent = 1;
    }
    return 0;
}

static ssize_t read_body(nghttp2_session *ng, int32_t id, uint8_t *buf, size_t len, uint32_t *flags,
                         nghttp2_data_source *src, void *user)
{
    (void)ng;
    (void)id;
    (void)user;
    al_up_h2_stream *s = src->ptr;
    if (s->ended)
        return NGHTTP2_ERR_DEFERRED; /* a reset is on its way */
    ssize_t n = s->cbs.read_body(s->arg, (char *)buf, len);
    if (s->ended)
        return NGHTTP2_ERR_DEFERRED;
    if (n > 0)
        return n > (ssize_t)len ? (ssize_t)len : n;
    if (n == 0) {
        *flags |= NGHTTP2_DATA_FLAG_EOF;
        return 0;
    }
    if (n == AL_ERR_AGAIN) {
        s->body_deferred = 1;
        return NGHTTP2_ERR_DEFERRED;
    }
    s->rst_sent = 1; /* nghttp2 resets it (INTERNAL_ERROR) */
    end_stream(s, AL_UP_H2_LOCAL, 0, "reading the request body failed");
    return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
}

/* ---- the queue --------------------------------------------------------------- */

static size_t slot_limit(const al_up_h2 *h)
{
    size_t peer =
        nghttp2_session_get_remote_settings(h->ng, NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS);
    size_t own = h->cfg.max_concurrent_streams;
    return own && own < peer ? own : peer;
}

/* Starts queued requests while slots are free. */
static void pump(al_up_h2 *h)
{
    while (h->qhead && !h->failed && al_up_h2_can_submit(h) && h->active < slot_limit(h)) {
        al_up_h2_stream *s = h->qhead;
        unqueue(s);
        nghttp2_data_provider prd = {.source.ptr = s, .read_callback = read_body};
        int32_t id =
            nghttp2_submit_request(h->ng, NULL, s->nva, s->nvlen, s->has_body ? &prd : NULL, s);
        if (id < 0) {
            if (id == NGHTTP2_ERR_STREAM_ID_NOT_AVAILABLE) {
                h->no_ids = 1;
                end_stream(s, AL_UP_H2_REFUSED, 0, "no stream id left on this connection");
                refuse_queue(h, "no stream id left on this connection");
            } else {
                end_stream(s, AL_UP_H2_LOCAL, 0, "submitting the request failed");
            }
            continue;
        }
        s->id = id;
        s->submitted = 1;
        h->active++;
        wipe_request(s); /* nghttp2 copied the header block */
    }
}

/* ---- session ------------------------------------------------------------------ */

int al_up_h2_new(const al_up_h2_config *cfg, void (*wakefn)(void *arg), void *arg, al_up_h2 **out)
{
    nghttp2_session_callbacks *cbs = NULL;
    nghttp2_option *opt = NULL;
    int rc = AL_ERR_NOMEM;
    al_up_h2 *h = calloc(1, sizeof *h);
    *out = NULL;
    if (!h || nghttp2_session_callbacks_new(&cbs) != 0 || nghttp2_option_new(&opt) != 0)
        goto fail;
    if (cfg)
        h->cfg = *cfg;
    if (!h->cfg.stream_window)
        h->cfg.stream_window = DEFAULT_STREAM_WINDOW;
    if (!h->cfg.connection_window)
        h->cfg.connection_window = DEFAULT_CONNECTION_WINDOW;
    if (!h->cfg.max_header_bytes)
        h->cfg.max_header_bytes = DEFAULT_MAX_HEADER_BYTES;
    if (!h->cfg.max_queued)
        h->cfg.max_queued = DEFAULT_MAX_QUEUED;
    if (h->cfg.stream_window > NGHTTP2_MAX_WINDOW_SIZE ||
        h->cfg.connection_window > NGHTTP2_MAX_WINDOW_SIZE) {
        rc = AL_ERR_INVAL;
        goto fail;
    }
    h->wake = wakefn;
    h->wake_arg = arg;
    nghttp2_session_callbacks_set_on_begin_headers_callback(cbs, on_begin_headers);
    nghttp2_session_callbacks_set_on_header_callback(cbs, on_header);
    nghttp2_session_callbacks_set_on_invalid_header_callback(cbs, on_invalid_header);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cbs, on_frame_recv);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs, on_data_chunk);
    nghttp2_session_callbacks_set_on_stream_close_callback(cbs, on_stream_close);
    nghttp2_session_callbacks_set_on_frame_send_callback(cbs, on_frame_send);
    nghttp2_option_set_no_auto_window_update(opt, 1);
    /* until the upstream's SETTINGS say otherwise (nghttp2's default is unlimited) */
    nghttp2_option_set_peer_max_concurrent_streams(opt, PEER_STREAMS_BEFORE_SETTINGS);
    if (nghttp2_session_client_new2(&h->ng, cbs, h, opt) != 0)
        goto fail;
    nghttp2_settings_entry iv[] = {
        {NGHTTP2_SETTINGS_ENABLE_PUSH, 0},
        {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, 0}, /* the upstream opens no stream */
        {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, h->cfg.stream_window},
        {NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, h->cfg.max_header_bytes},
    };
    if (nghttp2_submit_settings(h->ng, NGHTTP2_FLAG_NONE, iv, sizeof iv / sizeof iv[0]) != 0 ||
        nghttp2_session_set_local_window_size(h->ng, NGHTTP2_FLAG_NONE, 0,
                                              (int32_t)h->cfg.connection_window) != 0)
        goto fail;
    nghttp2_session_callbacks_del(cbs);
    nghttp2_option_del(opt);
    *out = h;
    return AL_OK;
fail:
    if (h && h->ng)
        nghttp2_session_del(h->ng);
    free(h);
    nghttp2_session_callbacks_del(cbs);
    nghttp2_option_del(opt);
    return rc;
}

void al_up_h2_free(al_up_h2 *h)
{
    if (!h)
        return;
    /* nghttp2 calls nothing back while it is deleted */
    nghttp2_session_del(h->ng);
    h->ng = NULL;
    while (h->streams)
        free_stream(h->streams);
    free(h);
}

ssize_t al_up_h2_recv(al_up_h2 *h, const uint8_t *in, size_t len)
{
    if (h->failed || h->ng_error)
        return AL_ERR_PROTO;
    h->depth++;
    ssize_t n = nghttp2_session_mem_recv(h->ng, in, len);
    if (n >= 0)
        pump(h);
    h->depth--;
    sweep(h);
    if (n < 0) {
        h->ng_error = 1;
        return AL_ERR_PROTO;
    }
    return n;
}

ssize_t al_up_h2_send(al_up_h2 *h, const uint8_t **out)
{
    *out = NULL;
    if (h->failed)
        return AL_ERR_PROTO;
    h->depth++;
    if (!h->ng_error)
        pump(h);
    ssize_t n = nghttp2_session_mem_send(h->ng, out);
    h->depth--;
    sweep(h);
    if (n < 0) {
        h->ng_error = 1;
        *out = NULL;
        return AL_ERR_PROTO;
    }
    return n;
}

void al_up_h2_run(al_up_h2 *h)
{
    if (h->depth) {
        wake(h);
        return;
    }
    h->depth++;
    while (h->dirty && !h->failed) {
        h->dirty = 0;
        for (al_up_h2_stream *s = h->streams; s; s = s->next) {
            if (s->ended)
                continue;
            if (s->send_ready && s->body_deferred) {
                s->send_ready = 0;
                s->body_deferred = 0;
                nghttp2_session_resume_data(h->ng, s->id);
            }
            if (s->wake_recv) {
                s->wake_recv = 0;
                s->paused = 0;
                deliver(s);
            }
        }
    }
    if (!h->failed && !h->ng_error)
        pump(h);
    h->depth--;
    sweep(h);
}

void al_up_h2_fail(al_up_h2 *h, const char *detail)
{
    if (!detail)
        detail = "the upstream connection failed";
    h->failed = 1;
    h->depth++;
    for (al_up_h2_stream *s = h->streams; s; s = s->next) {
        if (!s->ended)
            end_stream(s, s->headers_sent ? AL_UP_H2_CONN_LOST : AL_UP_H2_REFUSED, 0, detail);
        s->ng_closed = 1; /* nothing more goes through nghttp2 */
    }
    h->depth--;
    sweep(h);
}

/* ---- requests ------------------------------------------------------------------ */

/* Names of headers that usually carry a secret: sent never-indexed (HPACK), so the
 * value does not stay in the connection's dynamic table. */
static int sensitive(const char *n, size_t len)
{
    static const char *const words[] = {"auth", "key", "token", "secret", "cookie", "session"};
    for (size_t w = 0; w < sizeof words / sizeof words[0]; w++) {
        size_t wl = strlen(words[w]);
        for (size_t i = 0; i + wl <= len; i++)
            if (strncasecmp(n + i, words[w], wl) == 0)
                return 1;
    }
    return 0;
}

static int forwardable(const al_header *x)
{
    if (x->name_len == 0 || x->name[0] == ':')
        return 0;
    if (al_http_name_is(x->name, x->name_len, "host") ||
        al_http_name_is(x->name, x->name_len, "content-length") ||
        al_http_name_is(x->name, x->name_len, "http2-settings"))
        return 0;
    if (al_http_name_is(x->name, x->name_len, "te"))
        return x->value_len == 8 && strncasecmp(x->value, "trailers", 8) == 0;
    return !al_http_hop_by_hop(x->name, x->name_len);
}

static int build_request(al_up_h2_stream *s, const al_up_h2_req *req)
{
    const char *pseudo[4][2] = {{":method", req->method},
                                {":scheme", req->scheme},
                                {":authority", req->authority},
                                {":path", req->path}};
    char clen[24];
    int has_clen = req->has_body && req->body_length >= 0;
    size_t total = 0, count = 4 + (size_t)has_clen;
    if (has_clen)
        snprintf(clen, sizeof clen, "%lld", (long long)req->body_length);
    for (int i = 0; i < 4; i++) {
        if (!pseudo[i][1] || !pseudo[i][1][0])
            return AL_ERR_INVAL;
        total += strlen(pseudo[i][0]) + strlen(pseudo[i][1]);
    }
    for (size_t i = 0; i < req->header_count; i++) {
        if (!forwardable(&req->headers[i]))
            continue;
        total += req->headers[i].name_len + req->headers[i].value_len;
        count++;
    }
    if (has_clen)
        total += 14 + strlen(clen);
    s->nvbuf = malloc(total + 1);
    s->nva = calloc(count, sizeof *s->nva);
    if (!s->nvbuf || !s->nva)
        return AL_ERR_NOMEM;
    s->nvbuf_len = total + 1;
    char *p = s->nvbuf;
    size_t k = 0;
#define PUT(nm, nlen, val, vlen, fl)                                                               \
    do {                                                                                           \
        memcpy(p, (nm), (nlen));                                                                   \
        memcpy(p + (nlen), (val), (vlen));                                                         \
        s->nva[k++] = (nghttp2_nv){(uint8_t *)p, (uint8_t *)p + (nlen), (nlen), (vlen), (fl)};     \
        p += (nlen) + (vlen);                                                                      \
    } while (0)
    for (int i = 0; i < 4; i++) {
        size_t vl = strlen(pseudo[i][1]);
        if (!nghttp2_check_header_value((const uint8_t *)pseudo[i][1], vl) ||
            memchr(pseudo[i][1], ' ', vl))
            return AL_ERR_INVAL;
        PUT(pseudo[i][0], strlen(pseudo[i][0]), pseudo[i][1], vl, NGHTTP2_NV_FLAG_NONE);
    }
    for (size_t i = 0; i < req->header_count; i++) {
        const al_header *x = &req->headers[i];
        if (!forwardable(x))
            continue;
        uint8_t fl =
            sensitive(x->name, x->name_len) ? NGHTTP2_NV_FLAG_NO_INDEX : NGHTTP2_NV_FLAG_NONE;
        char *name = p;
        PUT(x->name, x->name_len, x->value, x->value_len, fl);
        for (size_t j = 0; j < x->name_len; j++)
            if (name[j] >= 'A' && name[j] <= 'Z')
                name[j] = (char)(name[j] - 'A' + 'a');
        if (!nghttp2_check_header_name((const uint8_t *)name, x->name_len) ||
            !nghttp2_check_header_value((const uint8_t *)name + x->name_len, x->value_len))
            return AL_ERR_INVAL;
    }
    if (has_clen)
        PUT("content-length", (size_t)14, clen, strlen(clen), NGHTTP2_NV_FLAG_NONE);
#undef PUT
    s->nvlen = k;
    s->is_head = strcmp(req->method, "HEAD") == 0;
    s->has_body = req->has_body;
    return AL_OK;
}

int al_up_h2_submit(al_up_h2 *h, const al_up_h2_req *req, const al_up_h2_cbs *cbs, void *arg,
                    al_up_h2_stream **out)
{
    *out = NULL;
    if (!al_up_h2_can_submit(h) || h->queued >= h->cfg.max_queued)
        return AL_ERR_AGAIN;
    if (!cbs->on_head || !cbs->on_body || !cbs->on_done || (req->has_body && !cbs->read_body))
        return AL_ERR_INVAL;
    al_up_h2_stream *s = calloc(1, sizeof *s);
    if (!s)
        return AL_ERR_NOMEM;
    s->h = h;
    s->cbs = *cbs;
    s->arg = arg;
    s->clen = -1;
    int rc = build_request(s, req);
    if (rc != AL_OK) {
        wipe_request(s);
        free(s);
        return rc;
    }
    s->next = h->streams;
    if (h->streams)
        h->streams->prev = s;
    h->streams = s;
    s->queued = 1;
    if (h->qtail)
        h->qtail->qnext = s;
    else
        h->qhead = s;
    h->qtail = s;
    h->queued++;
    *out = s;
    wake(h);
    return AL_OK;
}

void al_up_h2_cancel(al_up_h2_stream *s)
{
    if (s->ended)
        return;
    s->cancelled = 1;
    end_stream(s, AL_UP_H2_LOCAL, 0, "cancelled");
    s->pend_off = s->pend_len = 0;
    sweep(s->h);
}

void al_up_h2_resume_recv(al_up_h2_stream *s)
{
    if (s->ended)
        return;
    s->wake_recv = 1;
    s->h->dirty = 1;
    wake(s->h);
}

void al_up_h2_resume_send(al_up_h2_stream *s)
{
    if (s->ended)
        return;
    s->send_ready = 1;
    s->h->dirty = 1;
    wake(s->h);
}

int al_up_h2_can_submit(const al_up_h2 *h)
{
    return !h->failed && !h->ng_error && !h->no_ids && !h->goaway_recv && !h->goaway_sent &&
           nghttp2_session_check_request_allowed(h->ng);
}

int al_up_h2_alive(const al_up_h2 *h)
{
    if (h->failed)
        return 0;
    return nghttp2_session_want_read(h->ng) || nghttp2_session_want_write(h->ng);
}

int al_up_h2_want_write(const al_up_h2 *h)
{
    return !h->failed && (nghttp2_session_want_write(h->ng) ||
                          (h->qhead && al_up_h2_can_submit(h) && h->active < slot_limit(h)));
}

size_t al_up_h2_active(const al_up_h2 *h)
{
    return h->active;
}

size_t al_up_h2_queued(const al_up_h2 *h)
{
    return h->queued;
}

uint32_t al_up_h2_peer_max_streams(const al_up_h2 *h)
{
    return nghttp2_session_get_remote_settings(h->ng, NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS);
}

void al_up_h2_shutdown(al_up_h2 *h)
{
    if (h->failed || h->goaway_sent)
        return;
    refuse_queue(h, "the connection is closing; not sent");
    nghttp2_submit_goaway(h->ng, NGHTTP2_FLAG_NONE, 0, NGHTTP2_NO_ERROR, NULL, 0);
    h->goaway_sent = 1;
    wake(h);
}
