/* al_hex: hexadecimal digits, shared by the vault (key files, fingerprints) and the
 * injectors (percent-decoding). */
#ifndef AL_HEX_H
#define AL_HEX_H

#include <stddef.h>

/* 0..15 for a hex digit of either case, -1 otherwise. */
int al_hex_value(int c);
/* Writes 2*n lower-case digits and a NUL into out (2*n+1 bytes). */
void al_hex_encode(const unsigned char *p, size_t n, char *out);

#endif
