/* al_auth_api_key: the api_key injector — the key in a header ("prefix+secret") or
 * in a query parameter (see al_auth.h). Moved from targets/al_inject.c unchanged in
 * behaviour.
 *
 * An agent cannot smuggle its own credential next to the injected one: its header of
 * the same name is dropped, and every query parameter whose name, read as leniently
 * as any upstream framework might (decoded, double-decoded, ';' as a separator,
 * trimmed, case-insensitive), matches ours is removed. Every output that will hold a
 * secret is sized before the first secret byte is copied. */
#include "al_auth.h"
#include "common/al_err.h"
#include "common/al_http.h"
#include "common/al_hex.h"

#include <string.h>
#include <strings.h>

/* ---- small helpers -------------------------------------------------------- */

static int eq_ci(const char *a, size_t alen, const char *b, size_t blen)
{
    return al_http_name_eq(a, alen, b, blen);
}

static int unreserved(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' ||
           c == '.' || c == '_' || c == '~';
}

static size_t encoded_len(const unsigned char *p, size_t n)
{
    size_t out = 0;
    for (size_t i = 0; i < n; i++)
        out += unreserved(p[i]) ? 1 : 3;
    return out;
}

static unsigned char fold(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') ? (unsigned char)(c + 32) : c;
}


/* One byte of a query as a lenient server reads it: '+' is a space, %XX a byte, and
 * a '%' that decodes to '%' is decoded again when two hex digits follow (double
 * encoding, "%256b" is 'k'). Advances *i. */
static int query_byte(const char *p, size_t n, size_t *i)
{
    unsigned char c = (unsigned char)p[(*i)++];
    if (c == '+')
        return ' ';
    if (c != '%')
        return c;
    for (int depth = 0; depth < 4 && *i + 1 < n; depth++) {
        int hi = al_hex_value(p[*i]), lo = al_hex_value(p[*i + 1]);
        if (hi < 0 || lo < 0)
            break;
        c = (unsigned char)(hi << 4 | lo);
        *i += 2;
        if (c != '%')
            break;
    }
    return c;
}

static int trims(int c) /* what frameworks strip from a parameter name */
{
    return c == ' ' || c == '\t' || c == '\0' || c == '\r' || c == '\n' || c == '\v' || c == '\f';
}

/* Does the '&'-separated query piece p[0..n) carry a parameter named `name`, as any
 * upstream framework might read it? The piece is decoded as a whole (a server that
 * decodes before it splits sees "x%26key%3D1" as "x&key=1"), split again at '&' and at
 * ';' (the old HTML separator some frameworks still honour: ";key=1"), and each key
 * is cut at '=' or '[' (PHP's key[]=1), trimmed of spaces, tabs and NULs ("key+=1")
 * and compared case-insensitively ("KEY=1"). Decodes on the fly: no allocation. */
static int piece_names(const char *p, size_t n, const char *name, size_t nlen)
{
    size_t i = 0, j = 0;
    int started = 0, dead = 0, in_key = 1;
    for (;;) {
        int end = i >= n;
        int c = end ? '&' : query_byte(p, n, &i);
        if (c == '&' || c == ';') {
            if (!dead && started && j == nlen)
                return 1;
            if (end)
                return 0;
            j = 0;
            started = dead = 0;
            in_key = 1;
            continue;
        }
        if (!in_key || dead)
            continue;
        if (c == '=' || c == '[') {
            in_key = 0;
            continue;
        }
        if (!started && trims(c))
            continue;
        started = 1;
        if (j < nlen && fold((unsigned char)c) == fold((unsigned char)name[j]))
            j++;
        else if (!(j == nlen && trims(c)))
            dead = 1;
    }
}

/* ---- api_key -------------------------------------------------------------- */

static const char *api_key_name(const al_target *t)
{
    if (t->auth.name && t->auth.name[0])
        return t->auth.name;
    /* The loader fills these defaults; repeat them so a hand-built target works. */
    return t->auth.location == AL_KEY_IN_QUERY ? "api_key" : "Authorization";
}

static const char *api_key_prefix(const al_target *t)
{
    if (t->auth.prefix)
        return t->auth.prefix;
    return strcasecmp(api_key_name(t), "Authorization") == 0 ? "Bearer " : "";
}

int al_auth_api_key_header(const al_target *t, const al_secret_view *s, al_auth_out *out)
{
    if (t->auth.location != AL_KEY_IN_HEADER)
        return AL_OK;
    const char *prefix = api_key_prefix(t);
    size_t plen = strlen(prefix);
    if (!s || (!s->value && s->len) || !al_http_field_value_ok(prefix, plen) ||
        !al_http_field_value_ok((const char *)s->value, s->len))
        return AL_ERR_INVAL;
    al_buf *value = al_auth_out_add(out, api_key_name(t));
    if (!value)
        return AL_ERR_TOOBIG;
    int rc = al_auth_reserve(value, plen + s->len);
    if (!rc)
        rc = al_buf_append(value, prefix, plen);
    if (!rc)
        rc = al_buf_append(value, s->value, s->len);
    if (rc) {
        al_buf_free(value, 1);
        out->count--;
        return rc;
    }
    return AL_OK;
}

int al_auth_api_key_target(const al_target *t, const al_secret_view *s, const char *target,
                           size_t len, al_buf *out)
{
    int rc = AL_OK;
    al_buf_reset(out);
    if (t->auth.location != AL_KEY_IN_QUERY)
        return AL_OK;
    if (!s || (!s->value && s->len) || !target || memchr(target, '#', len))
        return AL_ERR_INVAL;
    const char *name = api_key_name(t);
    size_t nlen = strlen(name);
    const char *q = memchr(target, '?', len);
    size_t path_len = q ? (size_t)(q - target) : len;

    /* Worst case: every agent parameter kept, plus "?" "&" name "=" secret. */
    rc = al_auth_reserve(out, len + 2 + encoded_len((const unsigned char *)name, nlen) + 1 +
                          encoded_len(s->value, s->len));
    if (rc)
        goto fail;
    if ((rc = al_buf_append(out, target, path_len)) || (rc = al_buf_append(out, "?", 1)))
        goto fail;
    int kept = 0;
    if (q) {
        const char *p = q + 1, *end = target + len;
        while (p < end) {
            const char *amp = memchr(p, '&', (size_t)(end - p));
            const char *pe = amp ? amp : end;
            if (pe > p && !piece_names(p, (size_t)(pe - p), name, nlen)) {
                if ((kept && (rc = al_buf_append(out, "&", 1))) ||
                    (rc = al_buf_append(out, p, (size_t)(pe - p))))
                    goto fail;
                kept = 1;
            }
            p = pe + 1;
        }
    }
    if ((kept && (rc = al_buf_append(out, "&", 1))) ||
        (rc = al_auth_percent_encode(out, (const unsigned char *)name, nlen)) ||
        (rc = al_buf_append(out, "=", 1)) || (rc = al_auth_percent_encode(out, s->value, s->len)))
        goto fail;
    return AL_OK;
fail:
    al_buf_reset(out);
    return rc;
}

static int api_key_drops_header(const al_target *t, const char *name, size_t len)
{
    if (t->auth.location != AL_KEY_IN_HEADER)
        return 0;
    const char *ours = api_key_name(t);
    return eq_ci(name, len, ours, strlen(ours));
}

static unsigned api_key_needs(const al_target *t)
{
    (void)t;
    return AL_AUTH_NEEDS_CREDENTIAL;
}

static int api_key_prepare(const al_target *t, const al_auth_req *req, const al_secret_view *s,
                           al_auth_out *out)
{
    int rc = al_auth_api_key_header(t, s, out);
    return rc ? rc : al_auth_api_key_target(t, s, req->target, req->target_len, &out->target);
}

const al_auth_injector al_auth_api_key_injector = {
    .method = AL_AUTH_API_KEY,
    .name = "api_key",
    .needs = api_key_needs,
    .prepare = api_key_prepare,
    .drops_header = api_key_drops_header,
};
