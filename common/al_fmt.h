/* al_fmt: decimal numbers without snprintf, for the per-request paths (a request's
 * upstream head, its HTTP/2 response head, its audit record and chain prefix), where
 * snprintf's format parsing cost ~500 instructions a call. */
#ifndef AL_FMT_H
#define AL_FMT_H

#include <stddef.h>
#include <stdint.h>

/* Longest output of al_fmt_u64: UINT64_MAX has 20 digits. */
#define AL_FMT_U64_MAX 20

/* Writes v in decimal (no sign, no NUL) to out, which has room for its digits
 * (AL_FMT_U64_MAX at most); returns the number of digits written. */
size_t al_fmt_u64(char *out, uint64_t v);

/* "a.b.c.d" (NUL-terminated) in plain decimal, each part at most 255 without a leading
 * zero: the spelling of nearly every IPv4 literal, read as inet_pton and inet_aton read
 * it (their calls cost ~200-600 instructions a request). Stores the address in network
 * byte order in *net and returns 1; 0 for any other spelling (the caller asks libc). */
int al_fmt_read_ipv4(const char *s, uint32_t *net);

#endif
