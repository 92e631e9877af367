/* al_return_url: the return-URL allow-list of OAuth's app binding mode (see
 * al_return_url.h).
 *
 * One strict parser (url_parse) serves both the check of allow-list entries and the
 * match of a candidate: a spelling it does not understand exactly is refused, so no
 * browser, server or library can read a matched URL as pointing elsewhere. */
#include "al_return_url.h"
#include "al_err.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct url_parts {
    int https;
    char host[256]; /* lower case; "[...]" kept for IPv6 */
    unsigned port;
    const char *path; /* into the URL; "" = "/" */
    size_t path_len;
    int has_query;
} url_parts;

static int ieq_prefix(const char *s, const char *p)
{
    for (; *p; s++, p++)
        if (!*s || (*s | 0x20) != *p)
            return 0;
    return 1;
}

static int hexval(char ch)
{
    if (ch >= '0' && ch <= '9')
        return ch - '0';
    ch = (char)(ch | 0x20);
    return ch >= 'a' && ch <= 'f' ? ch - 'a' + 10 : -1;
}

/* Parses the strict subset of URLs described in al_return_url.h; NULL = fine, else why not. */
static const char *url_parse(const char *url, url_parts *u)
{
    memset(u, 0, sizeof *u);
    size_t n = strlen(url);
    if (n > AL_RETURN_URL_MAX)
        return "longer than 2048 bytes";
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)url[i];
        if (ch <= 0x20 || ch >= 0x7f)
            return "it holds a space, a control character or a non-ASCII byte";
        if (ch == '\\')
            return "it holds a backslash";
        if (ch == '#')
            return "it holds a fragment ('#')";
    }
    const char *p;
    if (ieq_prefix(url, "https://"))
        u->https = 1, p = url + 8;
    else if (ieq_prefix(url, "http://"))
        p = url + 7;
    else
        return "it is not an absolute http:// or https:// URL";
    size_t alen = strcspn(p, "/?");
    if (memchr(p, '@', alen))
        return "it holds userinfo ('@' before the host)";
    const char *h = p, *hend = p + alen, *colon = NULL;
    size_t hl = 0;
    if (*h == '[') {
        const char *rb = memchr(h, ']', alen);
        if (!rb)
            return "its IPv6 host has no ']'";
        for (const char *q = h + 1; q < rb; q++)
            if (hexval(*q) < 0 && *q != ':' && *q != '.')
                return "its IPv6 host holds other characters than hex digits, ':' and '.'";
        hl = (size_t)(rb - h) + 1;
        if (h + hl < hend && h[hl] != ':')
            return "something follows its IPv6 host";
        colon = h + hl < hend ? h + hl : NULL;
    } else {
        colon = memchr(h, ':', alen);
        hl = colon ? (size_t)(colon - h) : alen;
        for (size_t i = 0; i < hl; i++) {
            char ch = h[i];
            if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
                  (ch >= '0' && ch <= '9') || ch == '-' || ch == '.'))
                return "its host holds other characters than letters, digits, '-' and '.'";
        }
        if (hl && (h[0] == '.' || h[hl - 1] == '.' || memmem(h, hl, "..", 2)))
            return "its host has an empty label";
    }
    if (!hl || hl >= sizeof u->host)
        return "its host is empty or too long";
    for (size_t i = 0; i < hl; i++)
        u->host[i] = (char)((h[i] >= 'A' && h[i] <= 'Z') ? h[i] | 0x20 : h[i]);
    u->port = u->https ? 443 : 80;
    if (colon) {
        size_t pl = (size_t)(hend - colon - 1);
        unsigned v = 0;
        if (!pl || pl > 5 || colon[1] == '0') /* "08080": one spelling per port */
            return "its port is not a number from 1 to 65535";
        for (size_t i = 1; i <= pl; i++) {
            if (colon[i] < '0' || colon[i] > '9')
                return "its port is not a number from 1 to 65535";
            v = v * 10 + (unsigned)(colon[i] - '0');
        }
        if (!v || v > 65535)
            return "its port is not a number from 1 to 65535";
        u->port = v;
    }
    u->path = hend;
    u->path_len = strcspn(hend, "?");
    u->has_query = hend[u->path_len] == '?';
    /* the path, segment by segment: no empty, "." or ".." segment, no encoded
     * separator, dot or percent (each is read differently by some browser or server) */
    const char *s = u->path, *end = u->path + u->path_len;
    while (s < end) {
        s++; /* the '/' */
        const char *se = memchr(s, '/', (size_t)(end - s));
        if (!se)
            se = end;
        size_t sl = (size_t)(se - s);
        if ((!sl && se < end) || (sl == 1 && s[0] == '.') ||
            (sl == 2 && s[0] == '.' && s[1] == '.'))
            return "its path has an empty, '.' or '..' segment";
        for (const char *q = s; q < se; q++) {
            if (*q != '%')
                continue;
            int hi = q + 2 < se ? hexval(q[1]) : -1;
            int lo = hi >= 0 ? hexval(q[2]) : -1;
            if (hi < 0 || lo < 0)
                return "its path has a '%' that is not followed by two hex digits";
            int v = hi << 4 | lo;
            if (v == '.' || v == '/' || v == '\\' || v == '%' || v < 0x20 || v >= 0x7f)
                return "its path has an encoded '.', '/', '\\', '%' or control byte";
        }
        s = se;
    }
    return NULL;
}

static int loopback_host(const char *h)
{
    return strcmp(h, "localhost") == 0 || strcmp(h, "[::1]") == 0 || strncmp(h, "127.", 4) == 0;
}

int al_return_url_valid(const char *url, char *errbuf, size_t errlen)
{
    url_parts u;
    const char *why = url ? url_parse(url, &u) : "it is empty";
    if (!why && u.has_query)
        why = "it has a query (the allow-list names where a return URL may point; the "
              "application adds its own query)";
    if (!why && !u.https && !loopback_host(u.host))
        why = "it is http:// to a host that is not loopback (the session id would cross the "
              "network in clear text); use https://";
    if (why && errbuf && errlen)
        snprintf(errbuf, errlen, "not a usable return URL: %s", why);
    return why ? AL_ERR_INVAL : AL_OK;
}

int al_return_url_allowed(const char *url, char *const *allow, size_t n)
{
    url_parts c, a;
    if (!url || url_parse(url, &c))
        return 0;
    for (size_t i = 0; i < n; i++) {
        if (!allow[i] || al_return_url_valid(allow[i], NULL, 0) != AL_OK || url_parse(allow[i], &a))
            continue;
        if (c.https != a.https || c.port != a.port || strcmp(c.host, a.host) != 0)
            continue;
        const char *ap = a.path_len ? a.path : "/", *cp = c.path_len ? c.path : "/";
        size_t al = a.path_len ? a.path_len : 1, cl = c.path_len ? c.path_len : 1;
        if (cl < al || memcmp(cp, ap, al) != 0)
            continue;
        if (cl == al || ap[al - 1] == '/' || cp[al] == '/')
            return 1;
    }
    return 0;
}

char *al_return_url_with_session(const char *return_url, const char *session_id)
{
    size_t a = strlen(return_url), b = strlen(session_id);
    char *u = malloc(a + b + 13);
    if (!u)
        return NULL;
    snprintf(u, a + b + 13, "%s%csession_id=%s", return_url, strchr(return_url, '?') ? '&' : '?',
             session_id);
    return u;
}
