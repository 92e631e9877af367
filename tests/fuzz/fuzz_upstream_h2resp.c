/* libFuzzer harness for the HTTP/2 client codec (upstream/al_up_h2.c): the input is
 * what a hostile upstream sends on a connection where airlock has three requests in
 * flight (a GET, a POST with a body, a HEAD). It is fed in pieces whose sizes come
 * from the input's first byte, with the codec's own output drained between pieces;
 * one consumer pauses now and then and is resumed, one stream is cancelled halfway.
 * Any crash, sanitizer report, leak or callback after on_done is a bug.
 *
 * Seeds (tests/fuzz/corpus/fuzz_upstream_h2resp/): server byte streams recorded from
 * python3-h2 answering those three requests: plain answers, trailers, 103, GOAWAY,
 * RST_STREAM, padding, a malformed :status. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/al_err.h"
#include "upstream/al_up_h2.h"

typedef struct fz_req {
    int done, cancelled, pause_every, calls;
    size_t body_left;
    al_up_h2_stream *st;
} fz_req;

static int woke;

static void fz_wake(void *arg)
{
    (void)arg;
    woke = 1;
}

static void fz_head(void *arg, int status, const al_header *h, size_t n)
{
    fz_req *r = arg;
    if (r->done || status < 200 || status > 599)
        abort();
    for (size_t i = 0; i < n; i++) {
        volatile char x = h[i].name_len ? h[i].name[h[i].name_len - 1] : 0;
        volatile char y = h[i].value_len ? h[i].value[h[i].value_len - 1] : 0;
        (void)x;
        (void)y;
    }
}

static void fz_info(void *arg, int status, const al_header *h, size_t n)
{
    (void)h;
    (void)n;
    fz_req *r = arg;
    if (r->done || status < 100 || status > 199 || status == 101)
        abort();
}

static int fz_body(void *arg, const char *d, size_t len)
{
    fz_req *r = arg;
    if (r->done || len == 0)
        abort();
    volatile char x = d[0] ^ d[len - 1];
    (void)x;
    if (r->pause_every && ++r->calls % r->pause_every == 0)
        return AL_ERR_AGAIN;
    return AL_OK;
}

static void fz_trailers(void *arg, const al_header *h, size_t n)
{
    (void)h;
    (void)n;
    if (((fz_req *)arg)->done)
        abort();
}

static ssize_t fz_read(void *arg, char *buf, size_t cap)
{
    fz_req *r = arg;
    size_t n = r->body_left < cap ? r->body_left : cap;
    memset(buf, 'b', n);
    r->body_left -= n;
    return (ssize_t)n;
}

static void fz_done(void *arg, enum al_up_h2_end e, uint32_t code, const char *detail)
{
    (void)code;
    fz_req *r = arg;
    if (r->done || !detail || e > AL_UP_H2_LOCAL)
        abort();
    r->done = 1;
    r->st = NULL;
}

static const al_up_h2_cbs fz_cbs = {fz_info, fz_head, fz_body, fz_trailers, fz_read, fz_done};

static void drain(al_up_h2 *h)
{
    const uint8_t *out;
    if (woke) {
        woke = 0;
        al_up_h2_run(h);
    }
    while (al_up_h2_send(h, &out) > 0)
        ;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    al_up_h2 *h;
    al_up_h2_config cfg = {.stream_window = 16384, .max_header_bytes = 4096};
    fz_req r[3] = {{.pause_every = 3}, {.body_left = 20000}, {0}};
    al_header hdr[] = {{"authorization", 13, "Bearer x", 8}, {"accept", 6, "*/*", 3}};
    al_up_h2_req q[3] = {
        {"GET", "https", "u.example", "/a", hdr, 2, 0, -1},
        {"POST", "https", "u.example", "/b", hdr, 2, 1, 20000},
        {"HEAD", "https", "u.example", "/c", NULL, 0, 0, -1},
    };
    if (size < 1)
        return 0;
    woke = 0;
    if (al_up_h2_new(&cfg, fz_wake, NULL, &h) != AL_OK)
        return 0;
    for (int i = 0; i < 3; i++)
        if (al_up_h2_submit(h, &q[i], &fz_cbs, &r[i], &r[i].st) != AL_OK)
            abort();
    drain(h);
    size_t piece = (size_t)data[0] % 64 + 1, off = 1;
    /* copied piece by piece so ASan sees reads past each piece */
    while (off < size && al_up_h2_alive(h)) {
        size_t n = size - off < piece ? size - off : piece;
        uint8_t *buf = malloc(n);
        if (!buf)
            break;
        memcpy(buf, data + off, n);
        ssize_t used = al_up_h2_recv(h, buf, n);
        free(buf);
        off += n;
        drain(h);
        if (used < 0)
            break;
        if (r[0].st)
            al_up_h2_resume_recv(r[0].st);
        if (off > size / 2 && r[2].st) {
            al_up_h2_cancel(r[2].st);
            r[2].st = NULL;
            r[2].cancelled = 1;
        }
        drain(h);
    }
    al_up_h2_fail(h, "fuzz input ended");
    for (int i = 0; i < 3; i++)
        if (!r[i].done && !r[i].cancelled)
            abort(); /* every stream ends, once */
    al_up_h2_free(h);
    return 0;
}
