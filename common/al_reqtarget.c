/* al_reqtarget: request-target validation (see al_reqtarget.h for the rules).
 *
 * Callers: the request path (proxy/al_request.c) for every request of every mode,
 * the CONNECT handler, and the table loader for a target's base path. Everything
 * here is a pure function over (pointer, length) slices: no allocation, no I/O, so
 * it is unit-tested on spellings as data and fuzzed directly
 * (tests/fuzz/fuzz_common_reqtarget.c).
 *
 * Decoding is "deep": a '%' that a first decoding produces is decoded again when
 * two hex digits (themselves possibly encoded) follow, up to MAX_DEPTH levels, so
 * "%252e" and "%25%32%65" count as '.', as a server that decodes twice would see
 * them. Only the path rule uses decoding; what goes upstream is the bytes as sent. */
#include "al_reqtarget.h"
#include "al_err.h"
#include "al_hex.h"
#include "al_http.h"

#include <string.h>
#include <strings.h>

#define MAX_DEPTH 4

/* ---- character classes (RFC 3986 §2, §3.3, §3.4) -------------------------------- */

/* What a byte may be in a path[?query], by table (this runs for every byte of every
 * request target, twice): PATH for a pchar (unreserved, sub-delims, ':' '@') or '/',
 * QUERY for the bytes clients (Python requests, browsers) leave unencoded in a query,
 * harmless there since the query never selects a target or a path: "[]{}|^`". '%'
 * and '?' are handled apart; every other byte (controls, space, '"', '<', '>', '\\',
 * '#', DEL, bytes >= 0x80) is refused. */
enum { PATH = 1, QUERY = 2 };
static const unsigned char CHAR_CLASS[256] = {
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, /* controls */
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 1, 0, 0, 1, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, /* SP ! " # $ % & ' ( ) * + , - . / */
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 1, 0, 0, /* 0-9 : ; < = > ? */
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, /* @ A-O */
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 0, 2, 2, 1, /* P-Z [ \\ ] ^ _ */
    2, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, /* ` a-o */
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 1, 0, /* p-z { | } ~ DEL */
};

/* Checks the bytes of path[?query]. */
static int chars_ok(const char *p, size_t n)
{
    unsigned ok = PATH;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)p[i];
        if (CHAR_CLASS[c] & ok)
            continue;
        if (c == '%') {
            if (i + 2 >= n || al_hex_value(p[i + 1]) < 0 || al_hex_value(p[i + 2]) < 0)
                return 0;
            i += 2;
        } else if (c == '?') {
            ok = PATH | QUERY;
        } else {
            return 0;
        }
    }
    return 1;
}

/* ---- deep decoding ------------------------------------------------------------- */

/* The byte at p[*i], percent-decoded as deep as MAX_DEPTH; advances *i past what it
 * used. Sets *encoded when any decoding happened. p[0..n) passed chars_ok(). */
static int deep_byte(const char *p, size_t n, size_t *i, unsigned depth, int *encoded)
{
    size_t k = *i;
    int v = (unsigned char)p[k++];
    if (v == '%' && k + 1 < n && al_hex_value(p[k]) >= 0 && al_hex_value(p[k + 1]) >= 0) {
        v = al_hex_value(p[k]) << 4 | al_hex_value(p[k + 1]);
        k += 2;
        *encoded = 1;
    }
    while (v == '%' && depth < MAX_DEPTH && k < n) {
        size_t j = k;
        int e = 0;
        int hi = deep_byte(p, n, &j, depth + 1, &e);
        if (j >= n || al_hex_value(hi) < 0)
            break;
        int lo = deep_byte(p, n, &j, depth + 1, &e);
        if (al_hex_value(lo) < 0)
            break;
        v = al_hex_value(hi) << 4 | al_hex_value(lo);
        k = j;
        *encoded = 1;
        depth++;
    }
    *i = k;
    return v;
}

/* ---- the path rule ---------------------------------------------------------------- */

enum kind { K_OTHER, K_DOT, K_SPACE, K_SEMI, K_SEP };

/* An ASCII byte's kind (K_OTHER unless named): one load instead of five compares for
 * every byte of every path. */
static const unsigned char KIND[128] = {
    ['/'] = K_SEP, ['\\'] = K_SEP, ['.'] = K_DOT, [' '] = K_SPACE, [';'] = K_SEMI,
};

/* Walks path p[0..n) (no query) piece by piece. forbid_encoded_sep: any encoded
 * separator is an error (base paths). */
static enum al_reqtarget_why path_rule(const char *p, size_t n, int forbid_encoded_sep)
{
    if (n >= 2 && p[0] == '/' && p[1] == '/')
        return AL_REQTARGET_NOT_NORMALIZED;
    size_t dots = 0;
    int other = 0, in_params = 0;
    size_t i = 0;
    for (;;) {
        enum kind k = K_SEP; /* the end closes the last piece */
        int enc = 0;
        if (i < n) {
            int b = (unsigned char)p[i]; /* (deep_byte of a byte that is not '%' is itself) */
            if (b == '%')
                b = deep_byte(p, n, &i, 0, &enc);
            else
                i++;
            k = K_OTHER;
            if (b == 0)
                return AL_REQTARGET_BAD_CHAR;
            if (b < 0x80) {
                k = KIND[b];
            } else if (b == 0xC0 || b == 0xC1 || b >= 0xF5) { /* overlong, never valid UTF-8 */
                return AL_REQTARGET_NOT_NORMALIZED;
            } else if ((b == 0xE0 || b == 0xF0 || b == 0xEF) && i < n) {
                size_t j = i;
                int e2 = 0;
                int b2 = deep_byte(p, n, &j, 0, &e2);
                if ((b == 0xE0 && b2 >= 0x80 && b2 < 0xA0) ||
                    (b == 0xF0 && b2 >= 0x80 && b2 < 0x90))
                    return AL_REQTARGET_NOT_NORMALIZED; /* overlong 3/4-byte forms */
                if (b == 0xEF && b2 == 0xBC && j < n) {
                    int b3 = deep_byte(p, n, &j, 0, &e2);
                    if (b3 == 0x8E || b3 == 0x8F || b3 == 0xBC) { /* U+FF0E, U+FF0F, U+FF3C */
                        k = b3 == 0x8E ? K_DOT : K_SEP;
                        enc = 1;
                        i = j;
                    }
                }
            }
        }
        if (k == K_SEP) {
            if (dots && !other)
                return AL_REQTARGET_NOT_NORMALIZED;
            if (enc && forbid_encoded_sep)
                return AL_REQTARGET_NOT_NORMALIZED;
            if (i >= n)
                break;
            dots = 0;
            other = in_params = 0;
            continue;
        }
        if (in_params)
            continue;
        if (k == K_SEMI)
            in_params = 1;
        else if (k == K_DOT)
            dots++;
        else if (k == K_OTHER)
            other = 1;
    }
    return AL_REQTARGET_OK;
}

int al_reqtarget_path(const char *p, size_t n, enum al_reqtarget_why *why)
{
    enum al_reqtarget_why w = AL_REQTARGET_OK;
    if (!p || n == 0 || p[0] != '/')
        w = AL_REQTARGET_BAD_FORM;
    else if (!chars_ok(p, n))
        w = AL_REQTARGET_BAD_CHAR;
    else {
        const char *q = memchr(p, '?', n);
        w = path_rule(p, q ? (size_t)(q - p) : n, 0);
    }
    if (why)
        *why = w;
    return w == AL_REQTARGET_OK ? AL_OK : AL_ERR_INVAL;
}

int al_reqtarget_base_path(const char *p, size_t n, enum al_reqtarget_why *why)
{
    enum al_reqtarget_why w = AL_REQTARGET_OK;
    if (n && (p[0] != '/' || memchr(p, '?', n)))
        w = AL_REQTARGET_BAD_FORM;
    else if (!chars_ok(p, n))
        w = AL_REQTARGET_BAD_CHAR;
    else
        w = path_rule(p, n, 1);
    if (why)
        *why = w;
    return w == AL_REQTARGET_OK ? AL_OK : AL_ERR_INVAL;
}

/* ---- authority ---------------------------------------------------------------- */

int al_reqtarget_authority(const char *a, size_t n, uint16_t default_port, const char **host,
                           size_t *host_len, uint16_t *port)
{
    const char *colon = NULL, *h = a;
    size_t hl;
    if (!a || n == 0)
        return AL_ERR_INVAL;
    if (a[0] == '[') {
        const char *rb = memchr(a, ']', n);
        if (!rb || rb == a + 1)
            return AL_ERR_INVAL;
        h = a + 1;
        hl = (size_t)(rb - h);
        for (size_t i = 0; i < hl; i++)
            if (al_hex_value(h[i]) < 0 && h[i] != ':' && h[i] != '.')
                return AL_ERR_INVAL; /* no zone id, no IPvFuture */
        if (!memchr(h, ':', hl))
            return AL_ERR_INVAL;
        if (rb + 1 < a + n) {
            if (rb[1] != ':')
                return AL_ERR_INVAL;
            colon = rb + 1;
        }
    } else {
        colon = memchr(a, ':', n);
        hl = colon ? (size_t)(colon - a) : n;
        for (size_t i = 0; i < hl; i++) {
            unsigned char c = (unsigned char)a[i];
            if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                  c == '-' || c == '.' || c == '_'))
                return AL_ERR_INVAL; /* '@' (user info), '%', '\', ... */
        }
    }
    if (hl == 0 || hl > 255)
        return AL_ERR_INVAL;
    unsigned long v = default_port;
    if (colon) {
        const char *pp = colon + 1, *end = a + n;
        if (pp == end || end - pp > 5)
            return AL_ERR_INVAL;
        v = 0;
        for (; pp < end; pp++) {
            if (*pp < '0' || *pp > '9')
                return AL_ERR_INVAL;
            v = v * 10 + (unsigned long)(*pp - '0');
        }
        if (v == 0 || v > 65535)
            return AL_ERR_INVAL;
    }
    *host = h;
    *host_len = hl;
    *port = (uint16_t)v;
    return AL_OK;
}

/* ---- forms -------------------------------------------------------------------- */

static int fail(al_reqtarget *out, enum al_reqtarget_why why)
{
    out->why = why;
    return AL_ERR_INVAL;
}

/* path-abempty [? query] of an absolute-form target: "" and "?q" are allowed. */
static enum al_reqtarget_why abempty_ok(const char *p, size_t n)
{
    if (n == 0)
        return AL_REQTARGET_OK;
    if (p[0] == '?')
        return chars_ok(p, n) ? AL_REQTARGET_OK : AL_REQTARGET_BAD_CHAR;
    enum al_reqtarget_why w;
    al_reqtarget_path(p, n, &w);
    return w;
}

int al_reqtarget_parse_h1(const char *method, const char *target, size_t len, al_reqtarget *out)
{
    memset(out, 0, sizeof *out);
    int connect = method && strcmp(method, "CONNECT") == 0;
    int options = method && strcmp(method, "OPTIONS") == 0;
    if (!target || len == 0)
        return fail(out, AL_REQTARGET_BAD_FORM);
    if (connect) { /* authority-form, port required */
        out->form = AL_REQTARGET_AUTHORITY;
        out->authority = target;
        out->authority_len = len;
        if (!memchr(target, ':', len) ||
            al_reqtarget_authority(target, len, 0, &out->host, &out->host_len, &out->port) ||
            out->port == 0)
            return fail(out, AL_REQTARGET_BAD_AUTHORITY);
        return AL_OK;
    }
    if (len == 1 && target[0] == '*') {
        out->form = AL_REQTARGET_ASTERISK;
        return options ? AL_OK : fail(out, AL_REQTARGET_BAD_FORM);
    }
    if (target[0] == '/') {
        out->form = AL_REQTARGET_ORIGIN;
        out->path = target;
        out->path_len = len;
        return al_reqtarget_path(target, len, &out->why);
    }
    /* absolute-form: scheme "://" authority path-abempty [ "?" query ] */
    size_t s = 0;
    while (s < len && target[s] != ':' && target[s] != '/' && target[s] != '?')
        s++;
    if (s == len || target[s] != ':' || s == 0)
        return fail(out, AL_REQTARGET_BAD_FORM);
    for (size_t i = 0; i < s; i++) { /* ALPHA *( ALPHA / DIGIT / "+" / "-" / "." ) */
        unsigned char c = (unsigned char)target[i];
        int alpha = (c | 0x20) >= 'a' && (c | 0x20) <= 'z';
        if (!alpha && (i == 0 || !((c >= '0' && c <= '9') || c == '+' || c == '-' || c == '.')))
            return fail(out, AL_REQTARGET_BAD_FORM);
    }
    if (!((s == 4 && al_http_caseeq(target, "http", 4)) ||
          (s == 5 && al_http_caseeq(target, "https", 5))))
        return fail(out, AL_REQTARGET_BAD_SCHEME);
    out->form = AL_REQTARGET_ABSOLUTE;
    out->https = s == 5;
    if (len < s + 3 || target[s + 1] != '/' || target[s + 2] != '/')
        return fail(out, AL_REQTARGET_BAD_FORM);
    const char *a = target + s + 3, *end = target + len, *e = a;
    while (e < end && *e != '/' && *e != '?')
        e++;
    out->authority = a;
    out->authority_len = (size_t)(e - a);
    if (al_reqtarget_authority(a, (size_t)(e - a), out->https ? 443 : 80, &out->host,
                               &out->host_len, &out->port))
        return fail(out, AL_REQTARGET_BAD_AUTHORITY);
    out->path = e;
    out->path_len = (size_t)(end - e);
    enum al_reqtarget_why w = abempty_ok(out->path, out->path_len);
    return w == AL_REQTARGET_OK ? AL_OK : fail(out, w);
}

int al_reqtarget_check_h2(const char *method, const char *scheme, size_t scheme_len,
                          const char *authority, size_t authority_len, const char *path,
                          size_t path_len, al_reqtarget *out)
{
    memset(out, 0, sizeof *out);
    if (!method || strcmp(method, "CONNECT") == 0 || !path || path_len == 0)
        return fail(out, AL_REQTARGET_BAD_FORM); /* h2 CONNECT is not served */
    if (!scheme || !((scheme_len == 4 && al_http_caseeq(scheme, "http", 4)) ||
                     (scheme_len == 5 && al_http_caseeq(scheme, "https", 5))))
        return fail(out, AL_REQTARGET_BAD_SCHEME);
    out->https = scheme_len == 5;
    out->authority = authority;
    out->authority_len = authority ? authority_len : 0;
    if (authority && al_reqtarget_authority(authority, authority_len, out->https ? 443 : 80,
                                            &out->host, &out->host_len, &out->port))
        return fail(out, AL_REQTARGET_BAD_AUTHORITY);
    if (path_len == 1 && path[0] == '*') {
        out->form = AL_REQTARGET_ASTERISK;
        return strcmp(method, "OPTIONS") == 0 ? AL_OK : fail(out, AL_REQTARGET_BAD_FORM);
    }
    out->form = AL_REQTARGET_ORIGIN;
    out->path = path;
    out->path_len = path_len;
    return al_reqtarget_path(path, path_len, &out->why);
}

const char *al_reqtarget_why_str(enum al_reqtarget_why why)
{
    switch (why) {
    case AL_REQTARGET_OK:
        return "ok";
    case AL_REQTARGET_BAD_SCHEME:
        return "bad_scheme";
    case AL_REQTARGET_BAD_FORM:
        return "bad_form";
    case AL_REQTARGET_BAD_AUTHORITY:
        return "bad_authority";
    case AL_REQTARGET_BAD_CHAR:
        return "bad_char";
    case AL_REQTARGET_NOT_NORMALIZED:
        return "not_normalized";
    }
    return "?";
}
