/* al_http: shared HTTP helpers (see al_http.h). One hop-by-hop list and one
 * Connection-token parser for the request path, the upstream client and both
 * downstream protocols, so the directions cannot drift apart. */
#include "al_http.h"

#include <string.h>
#include <strings.h>

int al_http_name_is(const char *name, size_t len, const char *lit)
{
    size_t n = strlen(lit);
    return len == n && strncasecmp(name, lit, n) == 0;
}

int al_http_hop_by_hop(const char *name, size_t len)
{
    static const char *const hop[] = {"connection", "keep-alive", "proxy-connection",
                                      "te",         "transfer-encoding", "upgrade"};
    if (!name)
        return 0;
    for (size_t i = 0; i < sizeof hop / sizeof hop[0]; i++)
        if (al_http_name_is(name, len, hop[i]))
            return 1;
    return 0;
}

int al_http_connection_lists(const char *v, size_t vlen, const char *name, size_t nlen)
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
        if ((size_t)(p - s) == nlen && strncasecmp(s, name, nlen) == 0)
            return 1;
    }
    return 0;
}

const al_header *al_http_find(const al_header *h, size_t n, const char *lit)
{
    for (size_t i = 0; i < n; i++)
        if (al_http_name_is(h[i].name, h[i].name_len, lit))
            return &h[i];
    return NULL;
}
