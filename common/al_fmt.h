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

#endif
