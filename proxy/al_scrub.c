/* al_scrub: streaming echoed-secret scrubber (see al_scrub.h for the design).
 *
 * Invariant: after every byte, `state` is the length of the longest suffix of the
 * bytes seen (since the last match or finish) that is a proper prefix of the secret,
 * and every byte seen before that suffix has been written to the output. So the held
 * bytes are secret[0..state) and need no buffer of their own. */
#include "al_scrub.h"

#include "common/al_err.h"

#include <stdlib.h>
#include <string.h>

int al_scrub_init(al_scrub *s, const void *secret, size_t len, int flags)
{
    memset(s, 0, sizeof *s);
    if (!secret || len < AL_SCRUB_MIN_SECRET || len > AL_SCRUB_MAX_SECRET)
        return AL_ERR_INVAL;
    s->next = malloc(len * sizeof *s->next);
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

void al_scrub_free(al_scrub *s)
{
    free(s->next);
    s->next = NULL;
    s->secret = NULL;
    s->len = s->state = 0;
}

size_t al_scrub_pending(const al_scrub *s)
{
    return s->state;
}

static int emit_replacement(const al_scrub *s, al_buf *out)
{
    if (!(s->flags & AL_SCRUB_KEEP_LENGTH))
        return al_buf_append(out, AL_SCRUB_REPLACEMENT, AL_SCRUB_REPLACEMENT_LEN);
    size_t head = s->len < AL_SCRUB_REPLACEMENT_LEN ? s->len : AL_SCRUB_REPLACEMENT_LEN;
    int rc = al_buf_append(out, AL_SCRUB_REPLACEMENT, head);
    for (size_t i = head; rc == AL_OK && i < s->len; i++)
        rc = al_buf_append(out, "*", 1);
    return rc;
}

int al_scrub_feed(al_scrub *s, const void *in, size_t n, al_buf *out)
{
    const unsigned char *b = in, *p = s->secret;
    size_t run = 0; /* bytes of `in` ending at i that are plain output, written lazily */
    int rc = AL_OK;
    if (!s->next)
        return AL_ERR_INVAL;
    for (size_t i = 0; i < n; i++) {
        if (s->state == 0 && b[i] != p[0]) {
            /* the common case, bytes that start nothing: memchr skips to the next byte
             * that could (a byte loop here was a third of a 1 MiB response's CPU) */
            const unsigned char *hit = memchr(b + i, p[0], n - i);
            size_t skip = hit ? (size_t)(hit - (b + i)) : n - i;
            run += skip;
            i += skip;
            if (i == n)
                break;
        }
        unsigned char c = b[i];
        size_t k = s->state;
        if (run) {
            if ((rc = al_buf_append(out, b + i - run, run)) != AL_OK)
                return rc;
            run = 0;
        }
        /* held = secret[0..k) + c; fall back along the borders until c extends one */
        size_t nk = k;
        while (nk && p[nk] != c)
            nk = s->next[nk - 1];
        if (p[nk] == c)
            nk++;
        /* the k + 1 - nk oldest held bytes can no longer be part of a match */
        size_t drop = k + 1 - nk;
        if (drop) {
            size_t from_secret = drop <= k ? drop : k;
            if (from_secret && (rc = al_buf_append(out, p, from_secret)) != AL_OK)
                return rc;
            if (drop > k && (rc = al_buf_append(out, &c, 1)) != AL_OK)
                return rc;
        }
        if (nk == s->len) {
            if ((rc = emit_replacement(s, out)) != AL_OK)
                return rc;
            s->count++;
            nk = 0;
        }
        s->state = nk;
    }
    if (run)
        rc = al_buf_append(out, b + n - run, run);
    return rc;
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
