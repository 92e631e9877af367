/* al_http: the HTTP helpers every layer shares — the header slice type, the
 * hop-by-hop header list (RFC 9110 §7.6.1) and the Connection header's tokens.
 * Authorities and request targets are common/al_reqtarget's job.
 *
 * Pure functions: no I/O, no allocation, no logging. */
#ifndef AL_HTTP_H
#define AL_HTTP_H

#include <stddef.h>
#include <string.h>
#include <strings.h>

/* A header as a pair of slices (not NUL-terminated; valid for the call only
 * unless said otherwise). */
typedef struct al_header {
    const char *name;
    size_t name_len;
    const char *value;
    size_t value_len;
} al_header;

/* 1 when a[0..n) equals b[0..n) with ASCII letters in any case (strncasecmp in the C
 * locale airlock runs in, for slices without NUL). Inline: header names are short, most
 * differ in their first byte, and a libc call costs more than the compare. */
static inline int al_http_caseeq(const char *a, const char *b, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char x = (unsigned char)a[i], y = (unsigned char)b[i];
        /* equal, or the same letter: differing only in 0x20, lower form in a..z */
        if (x != y && ((x | 0x20) != (y | 0x20) || (unsigned char)((x | 0x20) - 'a') > 'z' - 'a'))
            return 0;
    }
    return 1;
}
/* 1 when name[0..len) equals lit[0..lit_len), in any case. */
static inline int al_http_name_eq(const char *name, size_t len, const char *lit, size_t lit_len)
{
    return len == lit_len && al_http_caseeq(name, lit, lit_len);
}
/* 1 when name[0..len) equals the NUL-terminated lit, in any case. Inline: with a
 * literal the compiler folds strlen, so the hot path compares lengths first. */
static inline int al_http_name_is(const char *name, size_t len, const char *lit)
{
    return al_http_name_eq(name, len, lit, strlen(lit));
}

/* 1 for a hop-by-hop header that never crosses a proxy: Connection, Keep-Alive,
 * Proxy-Connection, TE, Transfer-Encoding, Upgrade. Each direction adds its own
 * (the request side also drops Proxy-Authorization, Trailer, HTTP2-Settings; the
 * response side Proxy-Authenticate), and the names a Connection header lists. */
int al_http_hop_by_hop(const char *name, size_t len);

/* 1 when the Connection header value v[0..vlen) lists the token name[0..nlen)
 * (comma-separated, OWS around tokens, any case). An empty name is never listed.
 * Inline: it runs for every header of every request and response. */
static inline int al_http_connection_lists(const char *v, size_t vlen, const char *name,
                                           size_t nlen)
{
    const char *p = v, *end = v + vlen;
    if (!nlen)
        return 0;
    while (p < end) {
        while (p < end && (*p == ',' || *p == ' ' || *p == '\t'))
            p++;
        const char *s = p;
        while (p < end && *p != ',' && *p != ' ' && *p != '\t')
            p++;
        if ((size_t)(p - s) == nlen && al_http_caseeq(s, name, nlen))
            return 1;
    }
    return 0;
}

/* 1 when v[0..n) may be a header field value (RFC 9110 section 5.5): no control byte
 * but HTAB, no DEL (visible ASCII, SP, HTAB, obs-text). Eight bytes at a time. */
int al_http_field_value_ok(const char *v, size_t n);
/* The first header named `lit` (lower-case literal) in h[0..n), or NULL. */
const al_header *al_http_find(const al_header *h, size_t n, const char *lit);

#endif
