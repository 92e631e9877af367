/* Unit tests of the HTTP/2 client codec (upstream/al_up_h2.c) against a real nghttp2
 * SERVER session in memory: bytes go from one session to the other, nothing else.
 *
 * The server answers by :path (see srv_respond): /small, /big/<n> (n bytes of a known
 * pattern), /echo (the request body back), /rst, /refuse, /info (103 then 200),
 * /trailers, /hold (never answers), and malformed answers the client must refuse
 * (/m/...). Its SETTINGS_MAX_CONCURRENT_STREAMS and an optional GOAWAY after the N-th
 * request are set per test. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <nghttp2/nghttp2.h>

#include "common/al_err.h"
#include "upstream/al_up_h2.h"

/* ---- the in-memory server --------------------------------------------------- */

typedef struct srv_stream {
    int32_t id;
    char path[64];
    size_t body_left, body_off;
    char echo[65536];
    size_t echo_len, echo_off;
    int trailers;
    struct srv_stream *prev, *next;
} srv_stream;

typedef struct server {
    nghttp2_session *ng;
    uint32_t max_streams;
    int goaway_after;    /* send GOAWAY when this many requests arrived (0: never) */
    int32_t goaway_last; /* its last_stream_id */
    int requests;        /* request heads received */
    int open, max_open;  /* streams open at once */
    int goaway_sent;
    srv_stream *streams; /* open ones, freed with the server */
} server;

static uint8_t pattern(size_t off)
{
    return (uint8_t)('a' + off % 23);
}

static ssize_t srv_read(nghttp2_session *ng, int32_t id, uint8_t *buf, size_t len, uint32_t *flags,
                        nghttp2_data_source *src, void *user)
{
    (void)ng;
    (void)id;
    (void)user;
    srv_stream *ss = src->ptr;
    if (ss->echo_len || strcmp(ss->path, "/echo") == 0) {
        size_t n = ss->echo_len - ss->echo_off;
        if (n > len)
            n = len;
        memcpy(buf, ss->echo + ss->echo_off, n);
        ss->echo_off += n;
        if (ss->echo_off == ss->echo_len)
            *flags |= NGHTTP2_DATA_FLAG_EOF;
        return (ssize_t)n;
    }
    size_t n = ss->body_left < len ? ss->body_left : len;
    for (size_t i = 0; i < n; i++)
        buf[i] = pattern(ss->body_off + i);
    ss->body_off += n;
    ss->body_left -= n;
    if (!ss->body_left) {
        *flags |= NGHTTP2_DATA_FLAG_EOF;
        if (ss->trailers) {
            nghttp2_nv t[] = {{(uint8_t *)"grpc-status", (uint8_t *)"0", 11, 1, 0}};
            if (nghttp2_submit_trailer(ng, ss->id, t, 1) == 0)
                *flags |= NGHTTP2_DATA_FLAG_NO_END_STREAM;
        }
    }
    return (ssize_t)n;
}

#define NV(n, v)                                                                                   \
    {                                                                                              \
        (uint8_t *)(n), (uint8_t *)(v), sizeof(n) - 1, sizeof(v) - 1, 0                            \
    }

static void srv_respond(server *sv, srv_stream *ss)
{
    nghttp2_data_provider prd = {.source.ptr = ss, .read_callback = srv_read};
    const char *p = ss->path;
    if (strcmp(p, "/hold") == 0)
        return;
    if (strcmp(p, "/rst") == 0) {
        nghttp2_submit_rst_stream(sv->ng, 0, ss->id, NGHTTP2_INTERNAL_ERROR);
        return;
    }
    if (strcmp(p, "/refuse") == 0) {
        nghttp2_submit_rst_stream(sv->ng, 0, ss->id, NGHTTP2_REFUSED_STREAM);
        return;
    }
    if (strcmp(p, "/small") == 0) {
        ss->body_left = 5;
        nghttp2_nv h[] = {NV(":status", "200"), NV("content-length", "5")};
        nghttp2_submit_response(sv->ng, ss->id, h, 2, &prd);
        return;
    }
    if (strncmp(p, "/big/", 5) == 0) {
        ss->body_left = strtoul(p + 5, NULL, 10);
        nghttp2_nv h[] = {NV(":status", "200"), NV("x-kind", "big")};
        nghttp2_submit_response(sv->ng, ss->id, h, 2, &prd);
        return;
    }
    if (strcmp(p, "/echo") == 0) {
        nghttp2_nv h[] = {NV(":status", "200")};
        nghttp2_submit_response(sv->ng, ss->id, h, 1, &prd);
        return;
    }
    if (strcmp(p, "/trailers") == 0) {
        ss->body_left = 10;
        ss->trailers = 1;
        nghttp2_nv h[] = {NV(":status", "200")};
        nghttp2_submit_response(sv->ng, ss->id, h, 1, &prd);
        return;
    }
    if (strcmp(p, "/info") == 0) {
        nghttp2_nv i[] = {NV(":status", "103"), NV("link", "</a.css>; rel=preload")};
        nghttp2_submit_headers(sv->ng, 0, ss->id, NULL, i, 2, NULL);
        ss->body_left = 5;
        nghttp2_nv h[] = {NV(":status", "200")};
        nghttp2_submit_response(sv->ng, ss->id, h, 1, &prd);
        return;
    }
    /* malformed answers: nghttp2 sends whatever it is given */
    nghttp2_nv bad[3];
    size_t nb = 0;
    ss->body_left = 5;
    if (strcmp(p, "/m/status-2-digits") == 0) {
        nghttp2_nv x[] = {NV(":status", "20")};
        bad[nb++] = x[0];
    } else if (strcmp(p, "/m/status-letters") == 0) {
        nghttp2_nv x[] = {NV(":status", "2x0")};
        bad[nb++] = x[0];
    } else if (strcmp(p, "/m/status-600") == 0) {
        nghttp2_nv x[] = {NV(":status", "600")};
        bad[nb++] = x[0];
    } else if (strcmp(p, "/m/no-status") == 0) {
        nghttp2_nv x[] = {NV("x-a", "b")};
        bad[nb++] = x[0];
    } else if (strcmp(p, "/m/101") == 0) {
        nghttp2_nv x[] = {NV(":status", "101")};
        bad[nb++] = x[0];
    } else if (strcmp(p, "/m/connection") == 0) {
        nghttp2_nv x[] = {NV(":status", "200"), NV("connection", "close")};
        bad[nb++] = x[0];
        bad[nb++] = x[1];
    } else if (strcmp(p, "/m/transfer-encoding") == 0) {
        nghttp2_nv x[] = {NV(":status", "200"), NV("transfer-encoding", "chunked")};
        bad[nb++] = x[0];
        bad[nb++] = x[1];
    } else if (strcmp(p, "/m/keep-alive") == 0) {
        nghttp2_nv x[] = {NV(":status", "200"), NV("keep-alive", "timeout=5")};
        bad[nb++] = x[0];
        bad[nb++] = x[1];
    } else if (strcmp(p, "/m/upgrade") == 0) {
        nghttp2_nv x[] = {NV(":status", "200"), NV("upgrade", "h2c")};
        bad[nb++] = x[0];
        bad[nb++] = x[1];
    } else if (strcmp(p, "/m/clen-long") == 0) {
        nghttp2_nv x[] = {NV(":status", "200"), NV("content-length", "10")};
        bad[nb++] = x[0];
        bad[nb++] = x[1];
    } else if (strcmp(p, "/m/clen-short") == 0) {
        nghttp2_nv x[] = {NV(":status", "200"), NV("content-length", "2")};
        bad[nb++] = x[0];
        bad[nb++] = x[1];
    } else if (strcmp(p, "/m/clen-two") == 0) {
        nghttp2_nv x[] = {NV(":status", "200"), NV("content-length", "5"),
                          NV("content-length", "6")};
        bad[nb++] = x[0];
        bad[nb++] = x[1];
        bad[nb++] = x[2];
    } else if (strcmp(p, "/m/clen-sign") == 0) {
        nghttp2_nv x[] = {NV(":status", "200"), NV("content-length", "+5")};
        bad[nb++] = x[0];
        bad[nb++] = x[1];
    } else if (strcmp(p, "/m/pseudo-path") == 0) {
        nghttp2_nv x[] = {NV(":status", "200"), NV(":path", "/x")};
        bad[nb++] = x[0];
        bad[nb++] = x[1];
    } else if (strcmp(p, "/m/uppercase") == 0) {
        /* NO_COPY_NAME: nghttp2 would lower-case a name it copies */
        nghttp2_nv x[] = {
            NV(":status", "200"),
            {(uint8_t *)"X-Upper", (uint8_t *)"1", 7, 1, NGHTTP2_NV_FLAG_NO_COPY_NAME}};
        bad[nb++] = x[0];
        bad[nb++] = x[1];
    } else if (strcmp(p, "/m/crlf-value") == 0) {
        nghttp2_nv x[] = {NV(":status", "200"), NV("x-a", "b\r\nx-b: c")};
        bad[nb++] = x[0];
        bad[nb++] = x[1];
    } else if (strcmp(p, "/m/body-on-204") == 0) {
        nghttp2_nv x[] = {NV(":status", "204")};
        bad[nb++] = x[0];
    } else {
        nghttp2_nv x[] = {NV(":status", "404")};
        bad[nb++] = x[0];
    }
    nghttp2_submit_response(sv->ng, ss->id, bad, nb, &prd);
}

static int srv_begin_headers(nghttp2_session *ng, const nghttp2_frame *f, void *user)
{
    server *sv = user;
    if (f->hd.type != NGHTTP2_HEADERS || f->headers.cat != NGHTTP2_HCAT_REQUEST)
        return 0;
    srv_stream *ss = calloc(1, sizeof *ss);
    assert_non_null(ss);
    ss->id = f->hd.stream_id;
    ss->next = sv->streams;
    if (sv->streams)
        sv->streams->prev = ss;
    sv->streams = ss;
    nghttp2_session_set_stream_user_data(ng, ss->id, ss);
    if (++sv->open > sv->max_open)
        sv->max_open = sv->open;
    return 0;
}

static int srv_header(nghttp2_session *ng, const nghttp2_frame *f, const uint8_t *name, size_t nl,
                      const uint8_t *value, size_t vl, uint8_t flags, void *user)
{
    (void)flags;
    (void)user;
    srv_stream *ss = nghttp2_session_get_stream_user_data(ng, f->hd.stream_id);
    if (ss && nl == 5 && memcmp(name, ":path", 5) == 0 && vl < sizeof ss->path) {
        memcpy(ss->path, value, vl);
        ss->path[vl] = '\0';
    }
    return 0;
}

static int srv_data(nghttp2_session *ng, uint8_t flags, int32_t id, const uint8_t *d, size_t len,
                    void *user)
{
    (void)flags;
    (void)user;
    srv_stream *ss = nghttp2_session_get_stream_user_data(ng, id);
    if (ss && ss->echo_len + len <= sizeof ss->echo) {
        memcpy(ss->echo + ss->echo_len, d, len);
        ss->echo_len += len;
    }
    return 0;
}

static int srv_frame_recv(nghttp2_session *ng, const nghttp2_frame *f, void *user)
{
    server *sv = user;
    srv_stream *ss = nghttp2_session_get_stream_user_data(ng, f->hd.stream_id);
    if (f->hd.type == NGHTTP2_HEADERS && f->headers.cat == NGHTTP2_HCAT_REQUEST && ss) {
        sv->requests++;
        if (sv->goaway_after && sv->requests == sv->goaway_after && !sv->goaway_sent) {
            sv->goaway_sent = 1;
            nghttp2_submit_goaway(ng, 0, sv->goaway_last, NGHTTP2_NO_ERROR, NULL, 0);
        }
    }
    if (ss && (f->hd.type == NGHTTP2_HEADERS || f->hd.type == NGHTTP2_DATA) &&
        (f->hd.flags & NGHTTP2_FLAG_END_STREAM) && (!sv->goaway_after || ss->id <= sv->goaway_last))
        srv_respond(sv, ss);
    return 0;
}

static int srv_close(nghttp2_session *ng, int32_t id, uint32_t code, void *user)
{
    server *sv = user;
    (void)code;
    srv_stream *ss = nghttp2_session_get_stream_user_data(ng, id);
    if (ss) {
        sv->open--;
        if (ss->prev)
            ss->prev->next = ss->next;
        else
            sv->streams = ss->next;
        if (ss->next)
            ss->next->prev = ss->prev;
        free(ss);
    }
    return 0;
}

static void server_init(server *sv, uint32_t max_streams)
{
    memset(sv, 0, sizeof *sv);
    nghttp2_session_callbacks *cb;
    assert_int_equal(nghttp2_session_callbacks_new(&cb), 0);
    nghttp2_session_callbacks_set_on_begin_headers_callback(cb, srv_begin_headers);
    nghttp2_session_callbacks_set_on_header_callback(cb, srv_header);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, srv_data);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cb, srv_frame_recv);
    nghttp2_session_callbacks_set_on_stream_close_callback(cb, srv_close);
    nghttp2_option *opt;
    assert_int_equal(nghttp2_option_new(&opt), 0);
    /* the server must be free to send what a hostile upstream sends */
    nghttp2_option_set_no_http_messaging(opt, 1);
    assert_int_equal(nghttp2_session_server_new2(&sv->ng, cb, sv, opt), 0);
    nghttp2_option_del(opt);
    nghttp2_session_callbacks_del(cb);
    sv->max_streams = max_streams;
    nghttp2_settings_entry iv[] = {{NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, max_streams}};
    assert_int_equal(nghttp2_submit_settings(sv->ng, 0, iv, 1), 0);
}

/* ---- the client side ----------------------------------------------------------- */

typedef struct req {
    const char *path;
    int status, info_status, heads, trailers;
    size_t got;
    int bad_bytes;
    int pause; /* on_body returns AL_ERR_AGAIN while set */
    int done;
    enum al_up_h2_end end;
    uint32_t code;
    /* request body */
    const char *body;
    size_t body_len, body_off;
    int body_stall; /* read_body returns AL_ERR_AGAIN while set */
    al_up_h2_stream *st;
} req;

typedef struct env {
    server sv;
    al_up_h2 *c;
    int woke;
    size_t max_active;
} env;

static void on_wake(void *arg)
{
    ((env *)arg)->woke = 1;
}

static void cb_info(void *arg, int status, const al_header *h, size_t n)
{
    req *r = arg;
    r->info_status = status;
    assert_true(n >= 1);
    assert_int_equal(h[0].name_len, 4);
}

static void cb_head(void *arg, int status, const al_header *h, size_t n)
{
    req *r = arg;
    r->status = status;
    r->heads++;
    for (size_t i = 0; i < n; i++)
        assert_true(h[i].name_len > 0 && h[i].name[0] != ':');
}

static int cb_body(void *arg, const char *d, size_t len)
{
    req *r = arg;
    assert_int_equal(r->done, 0);
    if (r->pause)
        return AL_ERR_AGAIN;
    assert_true(len <= AL_UP_H2_MAX_CHUNK);
    if (strncmp(r->path, "/big/", 5) == 0)
        for (size_t i = 0; i < len; i++)
            if ((uint8_t)d[i] != pattern(r->got + i))
                r->bad_bytes++;
    if (r->body && strcmp(r->path, "/echo") == 0)
        if (r->got + len > r->body_len || memcmp(d, r->body + r->got, len) != 0)
            r->bad_bytes++;
    r->got += len;
    return AL_OK;
}

static void cb_trailers(void *arg, const al_header *h, size_t n)
{
    req *r = arg;
    assert_int_equal(n, 1);
    assert_memory_equal(h[0].name, "grpc-status", 11);
    r->trailers++;
}

static ssize_t cb_read(void *arg, char *buf, size_t cap)
{
    req *r = arg;
    if (r->body_stall)
        return AL_ERR_AGAIN;
    size_t n = r->body_len - r->body_off;
    if (n > cap)
        n = cap;
    if (n > 1000)
        n = 1000; /* small pieces: the stream is pulled many times */
    memcpy(buf, r->body + r->body_off, n);
    r->body_off += n;
    if (n && r->body_off < r->body_len && r->body_off % 3000 == 0)
        r->body_stall = 1; /* pause now and then; the test resumes */
    return (ssize_t)n;
}

static void cb_done(void *arg, enum al_up_h2_end e, uint32_t code, const char *detail)
{
    req *r = arg;
    assert_non_null(detail);
    assert_int_equal(r->done, 0);
    r->done = 1;
    r->end = e;
    r->code = code;
    r->st = NULL;
}

static const al_up_h2_cbs cbs = {cb_info, cb_head, cb_body, cb_trailers, cb_read, cb_done};

static void env_init(env *e, uint32_t srv_max, const al_up_h2_config *cfg)
{
    memset(e, 0, sizeof *e);
    server_init(&e->sv, srv_max);
    assert_int_equal(al_up_h2_new(cfg, on_wake, e, &e->c), AL_OK);
}

static void env_free(env *e)
{
    al_up_h2_free(e->c);
    nghttp2_session_del(e->sv.ng);
    while (e->sv.streams) {
        srv_stream *ss = e->sv.streams;
        e->sv.streams = ss->next;
        free(ss);
    }
}

/* Moves bytes both ways until nothing moves (bounded). */
static void io(env *e)
{
    for (int round = 0; round < 200000; round++) {
        int moved = 0;
        if (e->woke) {
            e->woke = 0;
            al_up_h2_run(e->c);
        }
        const uint8_t *d;
        ssize_t n;
        while ((n = al_up_h2_send(e->c, &d)) > 0) {
            assert_int_equal(nghttp2_session_mem_recv(e->sv.ng, d, (size_t)n), n);
            moved = 1;
        }
        assert_true(n == 0);
        while ((n = nghttp2_session_mem_send(e->sv.ng, &d)) > 0) {
            assert_int_equal(al_up_h2_recv(e->c, d, (size_t)n), n);
            moved = 1;
        }
        if (al_up_h2_active(e->c) > e->max_active)
            e->max_active = al_up_h2_active(e->c);
        if (!moved && !e->woke)
            return;
    }
    fail_msg("the sessions never settled");
}

static void submit(env *e, req *r, const char *path)
{
    r->path = path;
    al_up_h2_req q = {"GET", "https", "upstream.example", path, NULL, 0, 0, -1};
    al_header hdr[] = {{"Authorization", 13, "Bearer secret", 13},
                       {"Connection", 10, "keep-alive", 10},
                       {"X-Mixed-Case", 12, "v", 1}};
    q.headers = hdr;
    q.header_count = 3;
    if (r->body) {
        q.method = "POST";
        q.has_body = 1;
        q.body_length = (int64_t)r->body_len;
    }
    assert_int_equal(al_up_h2_submit(e->c, &q, &cbs, r, &r->st), AL_OK);
}

/* ---- tests ------------------------------------------------------------------------- */

static void test_many_streams_share_one_session(void **state)
{
    (void)state;
    env e;
    env_init(&e, 100, NULL);
    enum { N = 300 };
    static req r[N];
    memset(r, 0, sizeof r);
    for (int i = 0; i < N; i++)
        submit(&e, &r[i], i % 3 ? "/big/70000" : "/small");
    io(&e);
    for (int i = 0; i < N; i++) {
        assert_int_equal(r[i].done, 1);
        assert_int_equal(r[i].end, AL_UP_H2_DONE);
        assert_int_equal(r[i].status, 200);
        assert_int_equal(r[i].got, i % 3 ? 70000 : 5);
        assert_int_equal(r[i].bad_bytes, 0);
    }
    /* the peer's limit was respected: at most 100 at once, the rest waited here */
    assert_int_equal(e.sv.max_open, 100);
    assert_true(e.max_active <= 100);
    assert_int_equal(al_up_h2_active(e.c), 0);
    assert_int_equal(al_up_h2_queued(e.c), 0);
    assert_true(al_up_h2_can_submit(e.c));
    env_free(&e);
}

static void test_paused_reader_does_not_stall_the_others(void **state)
{
    (void)state;
    /* The paused stream may fill a window as large as the connection's: were its bytes
     * charged to the connection until its reader took them, the 999 others would stop. */
    al_up_h2_config cfg = {.stream_window = 65535, .connection_window = 65535};
    env e;
    env_init(&e, 2000, &cfg);
    enum { N = 1000 };
    static req r[N];
    memset(r, 0, sizeof r);
    r[0].pause = 1;
    for (int i = 0; i < N; i++)
        submit(&e, &r[i], i ? "/big/40000" : "/big/200000");
    io(&e);
    assert_true(e.max_active >= 999); /* all at once: one connection, no queueing */
    for (int i = 1; i < N; i++) {
        assert_int_equal(r[i].end, AL_UP_H2_DONE);
        assert_int_equal(r[i].got, 40000);
        assert_int_equal(r[i].bad_bytes, 0);
    }
    /* the paused one holds at most its window and is still open */
    assert_int_equal(r[0].done, 0);
    assert_int_equal(r[0].got, 0);
    assert_int_equal(r[0].status, 200);
    assert_int_equal(al_up_h2_active(e.c), 1);
    /* resumed, it completes with every byte in order */
    r[0].pause = 0;
    al_up_h2_resume_recv(r[0].st);
    io(&e);
    assert_int_equal(r[0].end, AL_UP_H2_DONE);
    assert_int_equal(r[0].got, 200000);
    assert_int_equal(r[0].bad_bytes, 0);
    env_free(&e);
}

static void test_pause_resume_many_times_keeps_order(void **state)
{
    (void)state;
    al_up_h2_config cfg = {.stream_window = 8192};
    env e;
    env_init(&e, 100, &cfg);
    req r = {0}, other = {0};
    submit(&e, &r, "/big/100000");
    submit(&e, &other, "/trailers");
    for (int i = 0; i < 1000 && !r.done; i++) {
        r.pause = !r.pause;
        if (!r.pause)
            al_up_h2_resume_recv(r.st);
        io(&e);
    }
    assert_int_equal(r.end, AL_UP_H2_DONE);
    assert_int_equal(r.got, 100000);
    assert_int_equal(r.bad_bytes, 0);
    assert_int_equal(other.end, AL_UP_H2_DONE);
    assert_int_equal(other.trailers, 1);
    env_free(&e);
}

static void test_goaway_mid_load_reports_what_can_be_replayed(void **state)
{
    (void)state;
    env e;
    env_init(&e, 20, NULL);
    /* after the 20th request head, GOAWAY with last_stream_id 11: streams 1..11 (6
     * requests) are processed, 13..39 are not (the server never answers them), and 30
     * more wait in the client's queue */
    e.sv.goaway_after = 20;
    e.sv.goaway_last = 11;
    enum { N = 50 };
    req r[N];
    memset(r, 0, sizeof r);
    for (int i = 0; i < N; i++)
        submit(&e, &r[i], "/big/30000");
    io(&e);
    int done = 0, refused = 0;
    for (int i = 0; i < N; i++) {
        assert_int_equal(r[i].done, 1);
        if (r[i].end == AL_UP_H2_DONE) {
            assert_int_equal(r[i].got, 30000);
            assert_true(i < 6);
            done++;
        } else {
            if (r[i].end != AL_UP_H2_REFUSED)
                fail_msg("request %d: %s code %u", i, al_up_h2_end_str(r[i].end), r[i].code);
            assert_int_equal(r[i].heads, 0);
            refused++;
        }
    }
    assert_int_equal(done, 6);
    assert_int_equal(refused, 44);
    /* no new request on this connection: the pool opens another one */
    assert_false(al_up_h2_can_submit(e.c));
    req late = {0};
    al_up_h2_req q = {"GET", "https", "u", "/small", NULL, 0, 0, -1};
    assert_int_equal(al_up_h2_submit(e.c, &q, &cbs, &late, &late.st), AL_ERR_AGAIN);
    env_free(&e);
}

static void test_settings_one_stream_queues_the_rest(void **state)
{
    (void)state;
    env e;
    env_init(&e, 1, NULL);
    /* the server's SETTINGS arrive before any request starts */
    io(&e);
    assert_int_equal(al_up_h2_peer_max_streams(e.c), 1);
    req r[10];
    memset(r, 0, sizeof r);
    for (int i = 0; i < 10; i++)
        submit(&e, &r[i], "/small");
    assert_int_equal(al_up_h2_queued(e.c), 10);
    io(&e);
    for (int i = 0; i < 10; i++)
        assert_int_equal(r[i].end, AL_UP_H2_DONE);
    assert_int_equal(e.sv.max_open, 1);
    assert_int_equal(e.max_active, 1);
    env_free(&e);
}

static void test_rst_stream_maps_to_an_error_and_spares_the_others(void **state)
{
    (void)state;
    env e;
    env_init(&e, 100, NULL);
    req rst = {0}, refuse = {0}, ok = {0};
    submit(&e, &rst, "/rst");
    submit(&e, &refuse, "/refuse");
    submit(&e, &ok, "/big/50000");
    io(&e);
    assert_int_equal(rst.end, AL_UP_H2_RESET);
    assert_int_equal(rst.code, NGHTTP2_INTERNAL_ERROR);
    assert_int_equal(refuse.end, AL_UP_H2_REFUSED); /* REFUSED_STREAM: not processed */
    assert_int_equal(ok.end, AL_UP_H2_DONE);
    assert_int_equal(ok.got, 50000);
    assert_true(al_up_h2_can_submit(e.c));
    env_free(&e);
}

static void test_malformed_responses_end_their_stream_only(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "/m/status-2-digits",
        "/m/status-letters",
        "/m/status-600",
        "/m/no-status",
        "/m/101",
        "/m/connection",
        "/m/transfer-encoding",
        "/m/keep-alive",
        "/m/upgrade",
        "/m/clen-long",
        "/m/clen-short",
        "/m/clen-two",
        "/m/clen-sign",
        "/m/pseudo-path",
        "/m/uppercase",
        "/m/crlf-value",
        "/m/body-on-204",
    };
    enum { NB = sizeof bad / sizeof bad[0] };
    for (size_t i = 0; i < NB; i++) {
        env e;
        env_init(&e, 100, NULL);
        req r = {0}, before = {0}, after = {0};
        submit(&e, &before, "/small");
        submit(&e, &r, bad[i]);
        submit(&e, &after, "/big/20000");
        io(&e);
        if (r.end != AL_UP_H2_MALFORMED)
            fail_msg("%s: ended %s, not malformed", bad[i], al_up_h2_end_str(r.end));
        assert_int_equal(r.done, 1);
        /* no byte of a malformed response is forwarded, except a body shorter than its
         * content-length: that shows only at its end (the consumer aborts then) */
        if (r.got && strcmp(bad[i], "/m/clen-long") != 0)
            fail_msg("%s: %zu bytes forwarded", bad[i], r.got);
        assert_int_equal(before.end, AL_UP_H2_DONE);
        assert_int_equal(after.end, AL_UP_H2_DONE);
        assert_int_equal(after.got, 20000);
        assert_true(al_up_h2_can_submit(e.c));
        env_free(&e);
    }
}

static void test_request_body_streams_with_backpressure(void **state)
{
    (void)state;
    env e;
    env_init(&e, 100, NULL);
    static char body[40000];
    for (size_t i = 0; i < sizeof body; i++)
        body[i] = (char)('A' + i % 26);
    req r = {0};
    r.body = body;
    r.body_len = sizeof body;
    submit(&e, &r, "/echo");
    for (int i = 0; i < 1000 && !r.done; i++) {
        io(&e);
        if (r.body_stall) {
            r.body_stall = 0;
            al_up_h2_resume_send(r.st);
        }
    }
    assert_int_equal(r.end, AL_UP_H2_DONE);
    assert_int_equal(r.body_off, sizeof body);
    assert_int_equal(r.got, sizeof body);
    assert_int_equal(r.bad_bytes, 0);
    env_free(&e);
}

static void test_interim_and_trailers(void **state)
{
    (void)state;
    env e;
    env_init(&e, 100, NULL);
    req info = {0}, tr = {0};
    submit(&e, &info, "/info");
    submit(&e, &tr, "/trailers");
    io(&e);
    assert_int_equal(info.info_status, 103);
    assert_int_equal(info.status, 200);
    assert_int_equal(info.heads, 1);
    assert_int_equal(info.end, AL_UP_H2_DONE);
    assert_int_equal(tr.trailers, 1);
    assert_int_equal(tr.got, 10);
    assert_int_equal(tr.end, AL_UP_H2_DONE);
    env_free(&e);
}

static void test_cancel_and_connection_loss(void **state)
{
    (void)state;
    env e;
    env_init(&e, 2, NULL);
    req held = {0}, cancelled = {0}, queued = {0}, ok = {0};
    submit(&e, &ok, "/small");
    io(&e);
    assert_int_equal(ok.end, AL_UP_H2_DONE);
    submit(&e, &cancelled, "/hold");
    submit(&e, &held, "/hold");
    submit(&e, &queued, "/hold"); /* over the server's 2 streams: waits here */
    io(&e);
    assert_int_equal(al_up_h2_active(e.c), 2);
    al_up_h2_cancel(cancelled.st);
    io(&e);
    assert_int_equal(cancelled.done, 0); /* a cancel is silent */
    assert_int_equal(e.sv.open, 2);      /* the queued one took the freed slot */
    al_up_h2_fail(e.c, "connection reset by peer");
    assert_int_equal(held.end, AL_UP_H2_CONN_LOST);
    assert_int_equal(queued.end, AL_UP_H2_CONN_LOST);
    assert_false(al_up_h2_can_submit(e.c));
    env_free(&e);
}

static void test_fail_refuses_what_never_left(void **state)
{
    (void)state;
    env e;
    env_init(&e, 100, NULL);
    req r[3];
    memset(r, 0, sizeof r);
    for (int i = 0; i < 3; i++)
        submit(&e, &r[i], "/small");
    al_up_h2_fail(e.c, NULL); /* before a byte was written */
    for (int i = 0; i < 3; i++)
        assert_int_equal(r[i].end, AL_UP_H2_REFUSED);
    env_free(&e);
}

static void test_bad_request_fields_are_refused(void **state)
{
    (void)state;
    env e;
    env_init(&e, 100, NULL);
    req r = {0};
    al_header crlf[] = {{"x-a", 3, "b\r\nx-b: c", 9}};
    al_header sp[] = {{"x a", 3, "b", 1}};
    al_up_h2_req q = {"GET", "https", "u", "/", crlf, 1, 0, -1};
    assert_int_equal(al_up_h2_submit(e.c, &q, &cbs, &r, &r.st), AL_ERR_INVAL);
    q.headers = sp;
    assert_int_equal(al_up_h2_submit(e.c, &q, &cbs, &r, &r.st), AL_ERR_INVAL);
    q.headers = NULL;
    q.header_count = 0;
    q.path = "/a b";
    assert_int_equal(al_up_h2_submit(e.c, &q, &cbs, &r, &r.st), AL_ERR_INVAL);
    q.path = "";
    assert_int_equal(al_up_h2_submit(e.c, &q, &cbs, &r, &r.st), AL_ERR_INVAL);
    env_free(&e);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_many_streams_share_one_session),
        cmocka_unit_test(test_paused_reader_does_not_stall_the_others),
        cmocka_unit_test(test_pause_resume_many_times_keeps_order),
        cmocka_unit_test(test_goaway_mid_load_reports_what_can_be_replayed),
        cmocka_unit_test(test_settings_one_stream_queues_the_rest),
        cmocka_unit_test(test_rst_stream_maps_to_an_error_and_spares_the_others),
        cmocka_unit_test(test_malformed_responses_end_their_stream_only),
        cmocka_unit_test(test_request_body_streams_with_backpressure),
        cmocka_unit_test(test_interim_and_trailers),
        cmocka_unit_test(test_cancel_and_connection_loss),
        cmocka_unit_test(test_fail_refuses_what_never_left),
        cmocka_unit_test(test_bad_request_fields_are_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
