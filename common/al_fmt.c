/* al_fmt: see al_fmt.h. */
#include "al_fmt.h"

#include <string.h>

size_t al_fmt_u64(char *out, uint64_t v)
{
    /* the length first (compares, no division), then two digits a step from the end,
     * straight into out: half the divisions of a digit at a time, and no copy */
    static const char pairs[201] = "00010203040506070809101112131415161718192021222324"
                                   "25262728293031323334353637383940414243444546474849"
                                   "50515253545556575859606162636465666768697071727374"
                                   "75767778798081828384858687888990919293949596979899";
    size_t n = 1;
    for (uint64_t p = 10; n < AL_FMT_U64_MAX && v >= p; p *= 10)
        n++;
    size_t i = n;
    while (v >= 100) {
        const char *d = pairs + (v % 100) * 2;
        v /= 100;
        out[--i] = d[1];
        out[--i] = d[0];
    }
    if (v >= 10) {
        out[1] = pairs[v * 2 + 1];
        out[0] = pairs[v * 2];
    } else {
        out[0] = (char)('0' + v);
    }
    return n;
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
