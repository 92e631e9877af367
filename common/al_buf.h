/* al_buf: a growable byte buffer with a hard maximum (like curl's dynbuf).
 *
 * Growth past `max` fails with AL_ERR_TOOBIG instead of allocating, so a peer can
 * never make airlock allocate without bound: the limit *is* the 413/431 path.
 * The buffer is always NUL-terminated (one byte beyond len, not counted). */
#ifndef AL_BUF_H
#define AL_BUF_H

#include <stddef.h>

typedef struct al_buf {
    char *data; /* owned; NULL until the first append */
    size_t len;
    size_t cap;
    size_t max; /* largest len allowed */
} al_buf;

void al_buf_init(al_buf *b, size_t max);
int al_buf_append(al_buf *b, const void *p, size_t n);
/* Room for n more bytes (and the NUL) without a later allocation: for a writer that
 * sums its pieces first, copies them to data + len itself and then adds to len (and
 * writes the NUL). AL_ERR_TOOBIG past max. */
int al_buf_reserve(al_buf *b, size_t n);
int al_buf_appendf(al_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void al_buf_reset(al_buf *b); /* len = 0, memory kept */
/* Frees the memory; when `wipe` is set the bytes are cleansed first (secrets). */
void al_buf_free(al_buf *b, int wipe);

#endif
