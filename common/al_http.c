/* al_http: shared HTTP helpers (see al_http.h). One hop-by-hop list and one
 * Connection-token parser for the request path, the upstream client and both
 * downstream protocols, so the directions cannot drift apart. */
#include "al_http.h"

#include <string.h>
#include <strings.h>

int al_http_hop_by_hop(const char *name, size_t len)
{
    static const struct {
        const char *s;
        size_t n;
    } hop[] = {
#define H(x) {x, sizeof x - 1}
        H("connection"), H("keep-alive"), H("proxy-connection"),
        H("te"),         H("transfer-encoding"), H("upgrade"),
#undef H
    };
    /* lengths 2, 7, 10, 16, 17 only: most names leave here */
    if (!name || len < 2 || len > 17 || !((1u << len) & 0x30484u))
        return 0;
    for (size_t i = 0; i < sizeof hop / sizeof hop[0]; i++)
        if (al_http_name_eq(name, len, hop[i].s, hop[i].n))
            return 1;
    return 0;
}

const al_header *al_http_find(const al_header *h, size_t n, const char *lit)
{
    size_t ln = strlen(lit);
    for (size_t i = 0; i < n; i++)
        if (al_http_name_eq(h[i].name, h[i].name_len, lit, ln))
            return &h[i];
    return NULL;
}
