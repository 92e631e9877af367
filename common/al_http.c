/* al_http: shared HTTP helpers (see al_http.h). One hop-by-hop list and one
 * Connection-token parser for the request path, the upstream client and both
 * downstream protocols, so the directions cannot drift apart. */
#include "al_http.h"

#include <stdint.h>
#include <string.h>
#include <strings.h>

int al_http_hop_by_hop(const char *name, size_t len)
{
    /* one candidate per length (10: by the first byte), so one compare at most */
    const char *lit;
    if (!name)
        return 0;
    switch (len) {
    case 2:
        lit = "te";
        break;
    case 7:
        lit = "upgrade";
        break;
    case 10:
        lit = (name[0] | 0x20) == 'c' ? "connection" : "keep-alive";
        break;
    case 16:
        lit = "proxy-connection";
        break;
    case 17:
        lit = "transfer-encoding";
        break;
    default:
        return 0;
    }
    return al_http_caseeq(name, lit, len);
}

const al_header *al_http_find(const al_header *h, size_t n, const char *lit)
{
    size_t ln = strlen(lit);
    for (size_t i = 0; i < n; i++)
        if (al_http_name_eq(h[i].name, h[i].name_len, lit, ln))
            return &h[i];
    return NULL;
}

#define ONES  0x0101010101010101ull
#define HIGHS 0x8080808080808080ull

/* 1 when one of the 8 bytes of w is below 0x20 or is 0x7f (a yes/no that is exact;
 * which byte is not told). */
static inline int word_has_ctl(uint64_t w)
{
    uint64_t del = w ^ (ONES * 0x7f);
    return (((w - ONES * 0x20) & ~w) | ((del - ONES) & ~del)) & HIGHS ? 1 : 0;
}

int al_http_field_value_ok(const char *v, size_t n)
{
    size_t i = 0;
    if (n >= 8) {
        uint64_t w;
        for (; i + 8 <= n; i += 8) {
            memcpy(&w, v + i, 8);
            if (word_has_ctl(w))
                goto bytes; /* (a tab, or a byte refused: looked at one by one) */
        }
        memcpy(&w, v + n - 8, 8); /* the tail, overlapping what was checked */
        if (i == n || !word_has_ctl(w))
            return 1;
    }
bytes:
    for (; i < n; i++) {
        unsigned char c = (unsigned char)v[i];
        if ((c < 0x20 && c != '\t') || c == 0x7f)
            return 0;
    }
    return 1;
}
