/* libFuzzer harness for the HTTP/1.1 request engine (proxy/al_h1.c): request-head
 * scanning and parsing, then body decoding of whatever follows, in pieces. Any
 * crash, sanitizer report or slice outside the input is a bug. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "proxy/al_h1.h"

static int sink(void *arg, const char *d, size_t n)
{
    size_t *total = arg;
    volatile char x = n ? d[0] ^ d[n - 1] : 0; /* touch the bytes: ASan checks bounds */
    (void)x;
    *total += n;
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* Copy so ASan catches reads past the end. */
    char *buf = malloc(size ? size : 1);
    if (!buf)
        return 0;
    memcpy(buf, data, size);
    size_t off = al_h1_skip_empty_lines(buf, size);
    while (off < size) {
        al_h1_error e;
        long n = al_h1_head_scan(buf + off, size - off, 8192, &e);
        if (n <= 0)
            break;
        al_h1_parser p;
        size_t total = 0;
        if (al_h1_parse_head(&p, buf + off, (size_t)n, sink, &total, &e) != 0)
            break;
        for (size_t i = 0; i < p.head.field_count; i++) {
            const al_h1_field *f = &p.head.fields[i];
            if (f->name.off + f->name.len > (size_t)n || f->value.off + f->value.len > (size_t)n)
                abort();
        }
        if (p.head.url.off + p.head.url.len > (size_t)n)
            abort();
        off += (size_t)n;
        /* Body in pieces of 7 bytes, as a slow client would send it. */
        while (!p.message_done && off < size) {
            size_t piece = size - off < 7 ? size - off : 7;
            long u = al_h1_feed_body(&p, buf + off, piece, &e);
            if (u < 0) {
                off = size;
                break;
            }
            off += (size_t)u;
            if (u == 0)
                break;
        }
        if (!p.message_done)
            break;
    }
    free(buf);
    return 0;
}
