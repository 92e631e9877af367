/* al_fmt: see al_fmt.h. */
#include "al_fmt.h"

#include <string.h>

size_t al_fmt_u64(char *out, uint64_t v)
{
    char tmp[AL_FMT_U64_MAX];
    size_t i = sizeof tmp;
    do {
        tmp[--i] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    memcpy(out, tmp + i, sizeof tmp - i);
    return sizeof tmp - i;
}

int al_fmt_read_ipv4(const char *h, uint32_t *net)
{
    uint32_t v = 0;
    for (int part = 0; part < 4; part++) {
        if (*h < '0' || *h > '9' || (*h == '0' && h[1] >= '0' && h[1] <= '9'))
            return 0; /* (a leading zero is octal to inet_aton, refused by inet_pton) */
        unsigned x = 0;
        for (int digits = 0; *h >= '0' && *h <= '9'; h++)
            if (++digits > 3)
                return 0;
            else
                x = x * 10 + (unsigned)(*h - '0');
        if (x > 255 || (part < 3 && *h++ != '.'))
            return 0;
        v = v << 8 | x;
    }
    if (*h)
        return 0;
    /* network order: the first part in the first byte */
    unsigned char b[4] = {(unsigned char)(v >> 24), (unsigned char)(v >> 16),
                          (unsigned char)(v >> 8), (unsigned char)v};
    memcpy(net, b, 4);
    return 1;
}
