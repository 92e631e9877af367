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
