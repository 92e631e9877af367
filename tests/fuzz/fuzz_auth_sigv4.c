/* libFuzzer harness for auth/al_sigv4: agent-controlled path, query and headers go
 * through the canonicalisation. Besides crashes and sanitizer reports it checks the
 * promises the data path relies on: the wire path/query are idempotent (re-writing
 * the wire form gives the same bytes), the wire query (and with S3's rules the wire
 * path) signs the same as the original (what the upstream receives is what was
 * signed), and the canonical request holds no CR and no NUL.
 *
 * Input: fields split at '\n': flags byte, path, query, then header "name:value"
 * lines. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "auth/al_sigv4.h"
#include "common/al_err.h"

static int sign(const char *path, size_t plen, const char *q, size_t qlen,
                const al_sigv4_header *hs, size_t nh, unsigned flags, al_buf *creq, al_buf *auth)
{
    al_sigv4_request r = {"POST", 4, path, plen, q, qlen, hs, nh, AL_SIGV4_EMPTY_SHA256};
    al_sigv4_params p = {"us-east-1", "lambda", 1440938160, flags};
    al_sigv4_creds cr = {
        "AKID", 4, (const unsigned char *)"secret", 6, (const unsigned char *)"tok", 3};
    al_sigv4_result res = {.authorization = auth, .canonical_request = creq};
    return al_sigv4_sign(&r, &p, &cr, NULL, &res);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    unsigned flags = data[0] & 15;
    const char *s = (const char *)data + 1, *end = (const char *)data + size;
    const char *field[3] = {s, s, s};
    size_t flen[3] = {0, 0, 0};
    for (int i = 0; i < 2; i++) {
        const char *nl = memchr(s, '\n', (size_t)(end - s));
        field[i] = s;
        flen[i] = nl ? (size_t)(nl - s) : (size_t)(end - s);
        s = nl ? nl + 1 : end;
    }
    al_sigv4_header hs[16];
    size_t nh = 0;
    while (s < end && nh < 16) {
        const char *nl = memchr(s, '\n', (size_t)(end - s));
        const char *e = nl ? nl : end;
        const char *colon = memchr(s, ':', (size_t)(e - s));
        if (colon)
            hs[nh++] =
                (al_sigv4_header){s, (size_t)(colon - s), colon + 1, (size_t)(e - colon - 1)};
        s = nl ? nl + 1 : end;
    }
    al_buf wp, wq, wp2, wq2, c1, c2, a1, a2;
    al_buf_init(&wp, 1 << 20);
    al_buf_init(&wq, 1 << 20);
    al_buf_init(&wp2, 1 << 20);
    al_buf_init(&wq2, 1 << 20);
    al_buf_init(&c1, 1 << 20);
    al_buf_init(&c2, 1 << 20);
    al_buf_init(&a1, 1 << 16);
    al_buf_init(&a2, 1 << 16);
    if (al_sigv4_wire_path(field[0], flen[0], flags, &wp) ||
        al_sigv4_wire_query(field[1], flen[1], &wq))
        goto out;
    if (al_sigv4_wire_path(wp.data, wp.len, flags, &wp2) ||
        al_sigv4_wire_query(wq.data ? wq.data : "", wq.len, &wq2))
        abort();
    if (wp.len != wp2.len || memcmp(wp.data, wp2.data, wp.len) || wq.len != wq2.len ||
        (wq.len && memcmp(wq.data, wq2.data, wq.len)))
        abort(); /* not idempotent */
    /* Outside S3 the wire path is encoded again when signed (double encoding): the
     * path the upstream receives is wp, so only the S3 rules sign the original alike. */
    int s3 = (flags & AL_SIGV4_SINGLE_ENCODE) != 0;
    int r1 = sign(s3 ? field[0] : wp.data, s3 ? flen[0] : wp.len, field[1], flen[1], hs, nh, flags,
                  &c1, &a1);
    int r2 = sign(wp.data, wp.len, wq.data, wq.len, hs, nh, flags, &c2, &a2);
    if (r1 != r2)
        abort();
    if (!r1) {
        if (c1.len != c2.len || memcmp(c1.data, c2.data, c1.len) || strcmp(a1.data, a2.data))
            abort(); /* the wire form must sign the same */
        if (memchr(c1.data, '\r', c1.len) || memchr(c1.data, '\0', c1.len))
            abort();
    }
    (void)al_sigv4_query_is_presigned(field[1], flen[1]);
out:
    al_buf_free(&wp, 0);
    al_buf_free(&wq, 0);
    al_buf_free(&wp2, 0);
    al_buf_free(&wq2, 0);
    al_buf_free(&c1, 0);
    al_buf_free(&c2, 0);
    al_buf_free(&a1, 0);
    al_buf_free(&a2, 0);
    return 0;
}
