/* al_scrub: streaming echoed-secret scrubber (see al_scrub.h for the design).
 *
 * Invariant: after every byte, `state` is the length of the longest suffix of the
 * bytes seen (since the last match or finish) that is a proper prefix of the secret,
 * and every byte seen before that suffix has been written to the output. So the held
 * bytes are secret[0..state) and need no buffer of their own, and the output is made
 * of spans of the input, of the secret (a held prefix released) and of the constant
 * replacement: nothing is copied unless the caller's emit function copies. */
#include "al_scrub.h"

#include "common/al_err.h"

#include <stdlib.h>
#include <string.h>

static int scrub_init(al_scrub *s, const void *secret, size_t len, int flags, size_t *table)
{
    memset(s, 0, sizeof *s);
    if (!secret || len < AL_SCRUB_MIN_SECRET || len > AL_SCRUB_MAX_SECRET)
        return AL_ERR_INVAL;
    s->table_borrowed = table != NULL;
    s->next = table ? table : malloc(len * sizeof *s->next);
    if (!s->next)
        return AL_ERR_NOMEM;
    s->secret = secret;
    s->len = len;
    s->flags = flags;
    /* next[i] = length of the longest proper border of secret[0..i] (i+1 bytes) */
    const unsigned char *p = secret;
    s->next[0] = 0;
    for (size_t i = 1, k = 0; i < len; i++) {
        while (k && p[i] != p[k])
            k = s->next[k - 1];
        if (p[i] == p[k])
            k++;
        s->next[i] = k;
    }
    return AL_OK;
}

int al_scrub_init(al_scrub *s, const void *secret, size_t len, int flags)
{
    return scrub_init(s, secret, len, flags, NULL);
}

int al_scrub_init_in(al_scrub *s, const void *secret, size_t len, int flags, size_t *table)
{
    if (!table) {
        memset(s, 0, sizeof *s);
        return AL_ERR_INVAL;
    }
    return scrub_init(s, secret, len, flags, table);
}

void al_scrub_free(al_scrub *s)
{
    if (!s->table_borrowed)
        free(s->next);
    s->table_borrowed = 0;
    s->next = NULL;
    s->secret = NULL;
    s->len = s->state = 0;
}

size_t al_scrub_pending(const al_scrub *s)
{
    return s->state;
}

/* "[REDACTED]" and its '*' padding as spans of constant memory. */
static int emit_replacement(const al_scrub *s, al_scrub_emit_fn emit, void *arg)
{
    static const char stars[64] = "****************************************************************";
    if (!(s->flags & AL_SCRUB_KEEP_LENGTH))
        return emit(arg, AL_SCRUB_REPLACEMENT, AL_SCRUB_REPLACEMENT_LEN);
    size_t head = s->len < AL_SCRUB_REPLACEMENT_LEN ? s->len : AL_SCRUB_REPLACEMENT_LEN;
    int rc = emit(arg, AL_SCRUB_REPLACEMENT, head);
    for (size_t i = head; rc == AL_OK && i < s->len; i += sizeof stars)
        rc = emit(arg, stars, s->len - i < sizeof stars ? s->len - i : sizeof stars);
    return rc;
}

/* Emits bytes [from, to) of the logical stream secret[0..k0) ++ in[0..n): the part
 * below k0 is the held prefix of the secret (from an earlier feed), the rest is `in`. */
static int emit_range(const al_scrub *s, size_t k0, const unsigned char *in, size_t from,
                      size_t to, al_scrub_emit_fn emit, void *arg)
{
    int rc = AL_OK;
    if (from >= to)
        return AL_OK;
    if (from < k0) {
        size_t e = to < k0 ? to : k0;
        rc = emit(arg, s->secret + from, e - from);
        from = e;
    }
    if (rc == AL_OK && from < to)
        rc = emit(arg, in + (from - k0), to - from);
    return rc;
}

int al_scrub_feed_spans(al_scrub *s, const void *in, size_t n, al_scrub_emit_fn emit, void *arg)
{
    const unsigned char *b = in, *p = s->secret;
    if (!s->next)
        return AL_ERR_INVAL;
    /* Positions are in the logical stream L = secret[0..k0) ++ in: the bytes held from
     * earlier feeds, then this feed's. Everything before `done` has been emitted (or
     * replaced); the last k bytes before the current position are held. */
    size_t k0 = s->state, k = k0, done = 0;
    int rc = AL_OK;
    for (size_t i = 0; i < n; i++) {
        if (k == 0) {
            /* the common case, bytes that start nothing: memchr skips to the next byte
             * that could (a byte loop here was a third of a 1 MiB response's CPU), and on
             * past one whose next byte already breaks the match (p[0] but not p[1]: KMP
             * falls back to 0 there and takes that next byte afresh, as memchr does);
             * with random bytes that leaves 1 candidate in 65,536 instead of 1 in 256 */
            const unsigned char *q = b + i, *end = b + n;
            while ((q = memchr(q, p[0], (size_t)(end - q))) != NULL && q + 1 < end && q[1] != p[1])
                q++;
            if (!q)
                break;
            i = (size_t)(q - b);
        }
        /* held = secret[0..k) + b[i]; fall back along the borders until b[i] extends one */
        unsigned char c = b[i];
        while (k && p[k] != c)
            k = s->next[k - 1];
        if (p[k] == c)
            k++;
        if (k == s->len) { /* a match ends at b[i]: what came before it, then the replacement */
            size_t end = k0 + i + 1;
            if ((rc = emit_range(s, k0, b, done, end - s->len, emit, arg)) != AL_OK ||
                (rc = emit_replacement(s, emit, arg)) != AL_OK)
                return rc;
            s->count++;
            done = end;
            k = 0;
        }
    }
    /* the bytes up to the held tail go out now (one span of `in` when nothing matched) */
    rc = emit_range(s, k0, b, done, k0 + n - k, emit, arg);
    s->state = k;
    return rc;
}

static int append_span(void *arg, const void *p, size_t n)
{
    return n ? al_buf_append(arg, p, n) : AL_OK;
}

int al_scrub_feed(al_scrub *s, const void *in, size_t n, al_buf *out)
{
    return al_scrub_feed_spans(s, in, n, append_span, out);
}

int al_scrub_finish(al_scrub *s, al_buf *out)
{
    int rc = AL_OK;
    if (s->state && s->secret)
        rc = al_buf_append(out, s->secret, s->state);
    s->state = 0;
    return rc;
}

int al_scrub_value(al_scrub *s, const void *in, size_t n, al_buf *out)
{
    uint64_t before = s->count;
    al_buf_reset(out);
    s->state = 0;
    int rc = al_scrub_feed(s, in, n, out);
    if (rc == AL_OK)
        rc = al_scrub_finish(s, out);
    if (rc != AL_OK)
        return rc;
    return (int)(s->count - before);
}
