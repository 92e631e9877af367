/* libFuzzer harness for proxy/al_scrub: the streaming scrubber must give exactly what
 * a naive whole-buffer scan gives (leftmost, non-overlapping "[REDACTED]"), whatever
 * the secret and however the stream is cut into pieces, must never hold back
 * len(secret) bytes or more, and its output must never contain the secret.
 *
 * The zero-copy form (al_scrub_feed_spans) must give the same bytes, as spans that lie
 * in the piece just fed, in the secret, or in neither (the constant replacement), never
 * empty.
 *
 * Input: byte 0 = secret length (8..40, folded), byte 1 = alphabet fold (a small
 * alphabet makes partial matches frequent) % 5, then bit 0 of byte 1 / 5 =
 * AL_SCRUB_KEEP_LENGTH and bit 1 = feed through al_scrub_feed_spans, byte 2.. = the
 * secret, then a list of piece sizes ended by 0, then the stream. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/al_buf.h"
#include "common/al_err.h"
#include "proxy/al_scrub.h"

static void naive(const unsigned char *sec, size_t sl, const unsigned char *in, size_t n,
                  int keep, al_buf *out)
{
    for (size_t i = 0; i < n;) {
        if (i + sl <= n && memcmp(in + i, sec, sl) == 0) {
            if (!keep) {
                al_buf_append(out, AL_SCRUB_REPLACEMENT, AL_SCRUB_REPLACEMENT_LEN);
            } else {
                size_t head = sl < AL_SCRUB_REPLACEMENT_LEN ? sl : AL_SCRUB_REPLACEMENT_LEN;
                al_buf_append(out, AL_SCRUB_REPLACEMENT, head);
                for (size_t j = head; j < sl; j++)
                    al_buf_append(out, "*", 1);
            }
            i += sl;
        } else {
            al_buf_append(out, in + i, 1);
            i++;
        }
    }
}

/* Where a span may lie: the piece being fed, or the secret; anything else must be the
 * scrubber's constants, so it may not overlap either. */
typedef struct span_check {
    al_buf *out;
    const unsigned char *piece, *sec;
    size_t piece_len, sl;
} span_check;

static int overlaps(const unsigned char *p, size_t n, const unsigned char *b, size_t bn)
{
    return p < b + bn && b < p + n;
}

static int inside(const unsigned char *p, size_t n, const unsigned char *b, size_t bn)
{
    return p >= b && p + n <= b + bn;
}

static int collect(void *arg, const void *p, size_t n)
{
    span_check *k = arg;
    const unsigned char *u = p;
    if (n == 0)
        abort();
    if (!inside(u, n, k->piece, k->piece_len) && !inside(u, n, k->sec, k->sl) &&
        (overlaps(u, n, k->piece, k->piece_len) || overlaps(u, n, k->sec, k->sl)))
        abort();
    return al_buf_append(k->out, p, n);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 3)
        return 0;
    size_t sl = AL_SCRUB_MIN_SECRET + data[0] % 33;
    unsigned fold = data[1] % 5; /* 0 = raw bytes, else an alphabet of fold + 1 letters */
    int keep = (data[1] / 5) & 1, spans = (data[1] / 5) & 2;
    data += 2;
    size -= 2;
    if (size < sl)
        return 0;
    unsigned char sec[64], stream[8192];
    for (size_t i = 0; i < sl; i++)
        sec[i] = fold ? (unsigned char)('a' + data[i] % (fold + 1)) : data[i];
    data += sl;
    size -= sl;
    size_t pieces[64], np = 0;
    while (size && data[0] && np < 64) {
        pieces[np++] = data[0];
        data++;
        size--;
    }
    if (size) { /* the 0 that ends the list */
        data++;
        size--;
    }
    if (!np)
        pieces[np++] = 4096;
    size_t n = size < sizeof stream ? size : sizeof stream;
    for (size_t i = 0; i < n; i++)
        stream[i] = fold ? (unsigned char)('a' + data[i] % (fold + 1)) : data[i];

    al_scrub s;
    if (al_scrub_init(&s, sec, sl, keep ? AL_SCRUB_KEEP_LENGTH : 0) != AL_OK)
        abort();
    al_buf got, want;
    al_buf_init(&got, 1 << 20);
    al_buf_init(&want, 1 << 20);
    naive(sec, sl, stream, n, keep, &want);
    size_t off = 0, j = 0;
    while (off < n) {
        size_t c = pieces[j++ % np];
        if (c > n - off)
            c = n - off;
        span_check k = {&got, stream + off, sec, c, sl};
        if ((spans ? al_scrub_feed_spans(&s, stream + off, c, collect, &k)
                   : al_scrub_feed(&s, stream + off, c, &got)) != AL_OK)
            abort();
        if (al_scrub_pending(&s) >= sl)
            abort();
        off += c;
    }
    if (al_scrub_finish(&s, &got) != AL_OK)
        abort();
    if (got.len != want.len || (want.len && memcmp(got.data, want.data, want.len) != 0))
        abort();
    /* the output never contains the secret, unless "[REDACTED]" pieces and the stream's
     * own bytes happen to form it (a secret made of those letters) */
    if (!fold && got.len >= sl && !memchr(sec, '[', sl) && !memchr(sec, ']', sl) &&
        (!keep || !memchr(sec, '*', sl))) {
        for (size_t i = 0; i + sl <= got.len; i++)
            if (memcmp(got.data + i, sec, sl) == 0)
                abort();
    }
    al_scrub_free(&s);
    al_buf_free(&got, 0);
    al_buf_free(&want, 0);
    return 0;
}
