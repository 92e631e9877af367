/* al_scrub: echoed-secret scrubbing — a streaming matcher that replaces every
 * occurrence of one secret (the credential airlock injected into a request) in the
 * upstream's response bytes with "[REDACTED]" before they reach the agent.
 *
 * An engine without I/O: the caller feeds the bytes as they arrive (h1 chunks, h2
 * DATA frames, SSE events: any split) and gets the scrubbed bytes back. A match that
 * straddles two feeds is found, because the matcher holds back at most len(secret)-1
 * bytes: exactly the longest tail of what it has seen that is still a prefix of the
 * secret. The bytes held back are therefore always secret[0..held) (no copy of the
 * stream is kept), and they are released as soon as the next byte shows they cannot
 * start a match, or by al_scrub_finish() at the end of the stream.
 *
 * Matching is leftmost and non-overlapping (the same result as scanning the whole
 * response at once: tests/fuzz/fuzz_proxy_scrub.c checks this against a naive
 * oracle), in O(1) amortised per byte (Knuth–Morris–Pratt) with one table of
 * len(secret) entries.
 *
 * The scrubber borrows the secret (it must stay valid while the scrubber is used: the
 * request holds its credential snapshot until it ends) and never copies it. It
 * matches the raw bytes only: an upstream that echoes the key transformed (base64,
 * percent- or JSON-escaped) is not caught. */
#ifndef AL_SCRUB_H
#define AL_SCRUB_H

#include <stddef.h>
#include <stdint.h>

#include "common/al_buf.h"

/* What a match becomes. */
#define AL_SCRUB_REPLACEMENT     "[REDACTED]"
#define AL_SCRUB_REPLACEMENT_LEN 10
/* Secrets shorter than this are not scrubbed (al_scrub_init returns AL_ERR_INVAL):
 * a short value would redact ordinary words of the response. */
#define AL_SCRUB_MIN_SECRET 8
/* And at most this long (the table is one size_t per secret byte). */
#define AL_SCRUB_MAX_SECRET 16384

enum al_scrub_flags {
    /* Each match becomes exactly len(secret) bytes: "[REDACTED]" padded with '*' or
     * cut, so a response keeps its Content-Length and framing. */
    AL_SCRUB_KEEP_LENGTH = 1,
};

typedef struct al_scrub {
    const unsigned char *secret; /* borrowed */
    size_t len;
    size_t *next;   /* owned; KMP failure function: next[i] for a mismatch after i bytes */
    size_t state;   /* bytes of the secret matched so far = bytes held back */
    uint64_t count; /* matches replaced so far */
    int flags;
    int table_borrowed; /* next is the caller's (al_scrub_init_in): not freed here */
} al_scrub;

/* Prepares a scrubber for `secret` (borrowed, len bytes). AL_ERR_INVAL when len is
 * outside [AL_SCRUB_MIN_SECRET, AL_SCRUB_MAX_SECRET]; AL_ERR_NOMEM. */
int al_scrub_init(al_scrub *s, const void *secret, size_t len, int flags);
/* The same with the table in the caller's memory: table has room for len entries and
 * outlives the scrubber (one allocation a response instead of two). */
int al_scrub_init_in(al_scrub *s, const void *secret, size_t len, int flags, size_t *table);
/* Frees the table (never touches the secret). Safe on a zeroed or failed scrubber. */
void al_scrub_free(al_scrub *s);

/* Feeds `n` bytes of the stream and appends the scrubbed bytes that can be released
 * to `out` (those held back come later). Returns 0, or AL_ERR_TOOBIG when `out` hit
 * its limit (the stream is then unusable: end it). */
int al_scrub_feed(al_scrub *s, const void *in, size_t n, al_buf *out);
/* Zero-copy form of al_scrub_feed: the scrubbed bytes are given to emit() as spans, in
 * order: pieces of `in` itself, of the secret (held bytes released: the scrubber's
 * borrowed copy) or of constant memory (the replacement). A span is valid during the
 * emit call only as far as `in` is; the secret's and the constants' for longer. Without
 * a match that is one span of `in` (minus the held tail). emit returns 0, or an error
 * that stops the feed and is returned (the stream is then unusable). */
typedef int (*al_scrub_emit_fn)(void *arg, const void *p, size_t n);
int al_scrub_feed_spans(al_scrub *s, const void *in, size_t n, al_scrub_emit_fn emit, void *arg);
/* End of stream: releases the bytes held back (a prefix of the secret that was never
 * completed) and resets the state so the scrubber can be used again. */
int al_scrub_finish(al_scrub *s, al_buf *out);
/* Bytes held back right now (<= len(secret) - 1). */
size_t al_scrub_pending(const al_scrub *s);

/* One-shot convenience for a whole value (a response header): `in` scrubbed into
 * out (reset first). Returns the number of matches (>= 0) or a negative al_err. */
int al_scrub_value(al_scrub *s, const void *in, size_t n, al_buf *out);

#endif
