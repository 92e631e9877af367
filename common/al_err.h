/* al_err: the one error type of airlock.
 *
 * Every function that can fail returns 0 (AL_OK) or a negative al_err code and
 * callers pass codes up unchanged; the edge (CLI, HTTP response) turns them into
 * text with al_strerror(). Codes are stable: tests and logs name them. */
#ifndef AL_ERR_H
#define AL_ERR_H

enum al_err {
    AL_OK = 0,
    AL_ERR_NOMEM = -1,    /* allocation failed */
    AL_ERR_INVAL = -2,    /* invalid argument or input */
    AL_ERR_IO = -3,       /* read/write/open failed (errno is kept by the caller) */
    AL_ERR_NOTFOUND = -4, /* no such thing */
    AL_ERR_EXISTS = -5,   /* already exists */
    AL_ERR_CRYPTO = -6,   /* OpenSSL failure, or authentication tag mismatch */
    AL_ERR_PERM = -7,     /* refused by a permission or policy check */
    AL_ERR_TOOBIG = -8,   /* a bounded buffer would overflow its limit */
    AL_ERR_CONFIG = -9,   /* configuration invalid (details are in diagnostics) */
    AL_ERR_DB = -10,      /* the store's database failed */
    AL_ERR_AGAIN = -11,   /* not ready yet; try again (async pending) */
    AL_ERR_PROTO = -12,   /* protocol violation by a peer */
    AL_ERR_TIMEOUT = -13, /* deadline passed */
    AL_ERR_DNS = -14,     /* name resolution failed */
    AL_ERR_EGRESS = -15,  /* destination refused by the egress guard */
    AL_ERR_KEY = -16,     /* wrong master key or tampered ciphertext */
    AL_ERR_PENDING = -17, /* accepted; the answer comes later through a callback */
};

/* Static English text for an al_err code; never NULL. */
const char *al_strerror(int err);

#endif
