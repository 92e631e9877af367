/* libFuzzer harness for common/al_reqtarget: request targets of every form (HTTP/1.1
 * request lines, HTTP/2 pseudo-headers, CONNECT authorities, base paths). Besides
 * crashes and sanitizer reports, it checks the promise with an independent oracle:
 * a path al_reqtarget_path accepts has, after decoding once or twice (with '\' and
 * encoded '/' as separators and ';' parameters cut off), no "." or ".." segment, and
 * every slice it returns lies inside the input.
 *
 * Input: first byte picks the entry point; the rest is split at '\n' into fields. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/al_err.h"
#include "common/al_reqtarget.h"

static int hexv(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    c |= 0x20;
    return c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

/* Decodes %XX once into out (same or shorter length); returns the new length. */
static size_t decode_once(const char *in, size_t n, char *out)
{
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        if (in[i] == '%' && i + 2 < n && hexv(in[i + 1]) >= 0 && hexv(in[i + 2]) >= 0) {
            out[o++] = (char)(hexv(in[i + 1]) << 4 | hexv(in[i + 2]));
            i += 2;
        } else {
            out[o++] = in[i];
        }
    }
    return o;
}

static void assert_no_dot_segment(const char *p, size_t n)
{
    size_t i = 0;
    while (i <= n) {
        size_t j = i;
        while (j < n && p[j] != '/' && p[j] != '\\')
            j++;
        size_t e = i;
        while (e < j && p[e] != ';')
            e++;
        size_t len = e - i;
        if ((len == 1 && p[i] == '.') || (len == 2 && p[i] == '.' && p[i + 1] == '.'))
            abort(); /* a dot segment survived: the path could climb */
        i = j + 1;
    }
}

static void check_path_promise(const char *p, size_t n)
{
    if (n == 0 || p[0] != '/' || (n > 1 && p[1] == '/'))
        abort();
    const char *q = memchr(p, '?', n);
    size_t pl = q ? (size_t)(q - p) : n;
    if (memchr(p, '#', n) || memchr(p, ' ', n) || memchr(p, '\\', n))
        abort();
    char *a = malloc(pl + 1), *b = malloc(pl + 1);
    if (!a || !b)
        abort();
    size_t al = decode_once(p, pl, a);
    assert_no_dot_segment(a, al);
    size_t bl = decode_once(a, al, b);
    assert_no_dot_segment(b, bl);
    free(a);
    free(b);
}

static void inside(const char *s, size_t n, const char *base, size_t blen)
{
    if (n && (s < base || s + n > base + blen))
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    /* copy so ASan catches reads past the end */
    size_t n = size - 1;
    char *buf = malloc(n ? n : 1);
    if (!buf)
        return 0;
    memcpy(buf, data + 1, n);
    const char *f[4] = {buf, NULL, NULL, NULL};
    size_t fl[4] = {n, 0, 0, 0};
    for (int k = 1; k < 4; k++) {
        const char *nl = memchr(f[k - 1], '\n', fl[k - 1]);
        if (!nl)
            break;
        f[k] = nl + 1;
        fl[k] = fl[k - 1] - (size_t)(f[k] - f[k - 1]);
        fl[k - 1] = (size_t)(nl - f[k - 1]);
    }
    al_reqtarget rt;
    enum al_reqtarget_why why;
    static const char *const methods[] = {"GET", "CONNECT", "OPTIONS", "POST"};
    const char *method = methods[data[0] >> 6];
    switch (data[0] & 3) {
    case 0:
        if (al_reqtarget_path(buf, n, &why) == AL_OK)
            check_path_promise(buf, n);
        break;
    case 1:
        if (al_reqtarget_parse_h1(method, buf, n, &rt) == AL_OK) {
            inside(rt.host, rt.host_len, buf, n);
            inside(rt.path, rt.path_len, buf, n);
            inside(rt.authority, rt.authority_len, buf, n);
            if (rt.form == AL_REQTARGET_ORIGIN ||
                (rt.form == AL_REQTARGET_ABSOLUTE && rt.path_len && rt.path[0] == '/'))
                check_path_promise(rt.path, rt.path_len);
            if (rt.host_len && (memchr(rt.host, '@', rt.host_len) || rt.port == 0))
                abort();
        }
        break;
    case 2:
        if (f[2] &&
            al_reqtarget_check_h2(method, f[0], fl[0], f[1], fl[1], f[2], fl[2], &rt) == AL_OK &&
            rt.form == AL_REQTARGET_ORIGIN) {
            inside(rt.path, rt.path_len, buf, n);
            check_path_promise(rt.path, rt.path_len);
        }
        break;
    default:
        if (al_reqtarget_base_path(buf, n, &why) == AL_OK && n) {
            if (buf[0] != '/')
                abort();
            check_path_promise(buf, n);
        }
        break;
    }
    free(buf);
    return 0;
}
