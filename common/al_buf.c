/* al_buf: see al_buf.h. */
#include "al_buf.h"
#include "al_err.h"

#include <openssl/crypto.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void al_buf_init(al_buf *b, size_t max)
{
    b->data = NULL;
    b->len = b->cap = 0;
    b->max = max;
}

static int grow(al_buf *b, size_t need)
{
    if (need > b->max)
        return AL_ERR_TOOBIG;
    if (need + 1 <= b->cap)
        return AL_OK;
    size_t cap = b->cap ? b->cap : 64;
    while (cap < need + 1)
        cap *= 2;
    if (cap > b->max + 1)
        cap = b->max + 1;
    /* Not realloc: the old block may hold a secret (an injected key), and realloc
     * would free it without wiping. Growth is rare (buffers are reused). */
    char *p = malloc(cap);
    if (!p)
        return AL_ERR_NOMEM;
    if (b->data) {
        memcpy(p, b->data, b->len + 1);
        OPENSSL_cleanse(b->data, b->cap);
        free(b->data);
    }
    b->data = p;
    b->cap = cap;
    return AL_OK;
}

int al_buf_append(al_buf *b, const void *p, size_t n)
{
    int rc = grow(b, b->len + n);
    if (rc)
        return rc;
    if (n)
        memcpy(b->data + b->len, p, n);
    b->len += n;
    b->data[b->len] = '\0';
    return AL_OK;
}

int al_buf_reserve(al_buf *b, size_t n)
{
    if (n > b->max - b->len)
        return AL_ERR_TOOBIG;
    return grow(b, b->len + n);
}

int al_buf_appendf(al_buf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0)
        return AL_ERR_INVAL;
    int rc = grow(b, b->len + (size_t)n);
    if (rc)
        return rc;
    va_start(ap, fmt);
    vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
    return AL_OK;
}

void al_buf_reset(al_buf *b)
{
    b->len = 0;
    if (b->data)
        b->data[0] = '\0';
}

void al_buf_free(al_buf *b, int wipe)
{
    if (b->data && wipe)
        OPENSSL_cleanse(b->data, b->cap);
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}
