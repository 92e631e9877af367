/* Unit tests of the echoed-secret scrubber (proxy/al_scrub.c): the secret in a header
 * value, in a JSON body, split across every possible pair of chunks and one byte at a
 * time, in an SSE event, overlapping and self-similar secrets, near misses released
 * intact, the hold-back bound, keep-length mode, and a randomised comparison with a
 * naive whole-buffer scan. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "common/al_err.h"
#include "proxy/al_scrub.h"

static const char KEY[] = "sk-live-0123456789abcdef";

/* The reference: scan the whole input at once, leftmost non-overlapping. */
static void naive(const char *sec, size_t sl, const char *in, size_t n, al_buf *out)
{
    al_buf_reset(out);
    for (size_t i = 0; i < n;) {
        if (i + sl <= n && memcmp(in + i, sec, sl) == 0) {
            al_buf_append(out, AL_SCRUB_REPLACEMENT, AL_SCRUB_REPLACEMENT_LEN);
            i += sl;
        } else {
            al_buf_append(out, in + i, 1);
            i++;
        }
    }
}

/* Feeds `in` in pieces of the given sizes (cycled), then finishes. */
static void chunked(al_scrub *s, const char *in, size_t n, const size_t *sizes, size_t ns,
                    al_buf *out)
{
    al_buf_reset(out);
    size_t off = 0, j = 0;
    while (off < n) {
        size_t c = sizes[j++ % ns];
        if (c > n - off)
            c = n - off;
        assert_int_equal(al_scrub_feed(s, in + off, c, out), AL_OK);
        assert_true(al_scrub_pending(s) < s->len);
        off += c;
    }
    assert_int_equal(al_scrub_finish(s, out), AL_OK);
}

static void test_header_value(void **state)
{
    (void)state;
    al_scrub s;
    al_buf out;
    al_buf_init(&out, 4096);
    assert_int_equal(al_scrub_init(&s, KEY, strlen(KEY), 0), AL_OK);
    assert_int_equal(al_scrub_value(&s, "Bearer sk-live-0123456789abcdef", 31, &out), 1);
    assert_string_equal(out.data, "Bearer [REDACTED]");
    assert_int_equal(al_scrub_value(&s, "no key here", 11, &out), 0);
    assert_string_equal(out.data, "no key here");
    /* a near miss (last byte differs) is released intact */
    assert_int_equal(al_scrub_value(&s, "sk-live-0123456789abcdeX", 24, &out), 0);
    assert_string_equal(out.data, "sk-live-0123456789abcdeX");
    /* the secret's prefix at the very end is not a match and comes out at finish */
    assert_int_equal(al_scrub_value(&s, "x sk-live-01", 12, &out), 0);
    assert_string_equal(out.data, "x sk-live-01");
    assert_int_equal(s.count, 1);
    al_scrub_free(&s);
    al_buf_free(&out, 0);
}

static void test_json_body_every_split(void **state)
{
    (void)state;
    const char *body = "{\"error\":{\"message\":\"Incorrect API key provided: "
                       "sk-live-0123456789abcdef. You can find your API key at "
                       "...\",\"key\":\"sk-live-0123456789abcdef\"}}";
    size_t n = strlen(body);
    al_scrub s;
    al_buf out, want;
    al_buf_init(&out, 4096);
    al_buf_init(&want, 4096);
    assert_int_equal(al_scrub_init(&s, KEY, strlen(KEY), 0), AL_OK);
    naive(KEY, strlen(KEY), body, n, &want);
    assert_null(strstr(want.data, KEY));
    assert_non_null(strstr(want.data, "provided: [REDACTED]. You"));
    /* two chunks split at every position, then one byte at a time */
    for (size_t cut = 0; cut <= n; cut++) {
        size_t sizes[2] = {cut ? cut : n, n};
        chunked(&s, body, n, sizes, 2, &out);
        assert_int_equal(out.len, want.len);
        assert_memory_equal(out.data, want.data, want.len);
    }
    size_t one = 1;
    chunked(&s, body, n, &one, 1, &out);
    assert_string_equal(out.data, want.data);
    al_scrub_free(&s);
    al_buf_free(&out, 0);
    al_buf_free(&want, 0);
}

/* The skip passes a first byte whose next one breaks the match: a run of first bytes
 * before the key, a first byte ending a piece, the second byte starting a piece. */
static void test_first_byte_runs_every_split(void **state)
{
    (void)state;
    static const char *const secs[] = {"aab-secret-0123", "ab-secret-01234"};
    const char *body = "a aa aaab-secret-0123 aab-secret-012a aab-secret-01234"
                       "aaab-secret-0123aab-secret-0123 aa";
    size_t n = strlen(body);
    al_buf out, want;
    al_buf_init(&out, 4096);
    al_buf_init(&want, 4096);
    for (size_t k = 0; k < 2; k++) {
        al_scrub s;
        size_t sl = strlen(secs[k]);
        assert_int_equal(al_scrub_init(&s, secs[k], sl, 0), AL_OK);
        naive(secs[k], sl, body, n, &want);
        assert_null(strstr(want.data, secs[k]));
        assert_non_null(strstr(want.data, "[REDACTED]"));
        for (size_t cut = 0; cut <= n; cut++) {
            for (size_t second = 1; second <= 3; second++) {
                size_t sizes[3] = {cut ? cut : n, second, n};
                chunked(&s, body, n, sizes, 3, &out);
                assert_int_equal(out.len, want.len);
                assert_memory_equal(out.data, want.data, want.len);
            }
        }
        al_scrub_free(&s);
    }
    al_buf_free(&out, 0);
    al_buf_free(&want, 0);
}

static void test_sse_events(void **state)
{
    (void)state;
    /* an SSE stream whose key is split across three events' frames */
    const char *frames[] = {"data: {\"delta\":\"your key is sk-li", "ve-0123",
                            "456789abcdef\"}\n\n", "data: [DONE]\n\n"};
    al_scrub s;
    al_buf out;
    al_buf_init(&out, 4096);
    assert_int_equal(al_scrub_init(&s, KEY, strlen(KEY), 0), AL_OK);
    for (size_t i = 0; i < 4; i++)
        assert_int_equal(al_scrub_feed(&s, frames[i], strlen(frames[i]), &out), AL_OK);
    assert_int_equal(al_scrub_finish(&s, &out), AL_OK);
    assert_string_equal(out.data,
                        "data: {\"delta\":\"your key is [REDACTED]\"}\n\ndata: [DONE]\n\n");
    al_scrub_free(&s);
    al_buf_free(&out, 0);
}

static void test_self_similar_secret(void **state)
{
    (void)state;
    /* borders inside the secret: "aaaaaaaab" in "aaaaaaaaaab", "abababab" chains */
    static const struct {
        const char *secret, *in, *want;
    } cases[] = {
        {"aaaaaaaab", "aaaaaaaaaab", "aa[REDACTED]"},
        {"abababab", "abababababab", "[REDACTED]abab"},
        {"abababab", "ababababababab", "[REDACTED]ababab"},
        {"abababab", "abababaXabababab", "abababaX[REDACTED]"},
        {"abcabcabd", "abcabcabcabd", "abc[REDACTED]"},
        {"12121213", "1212121212121213", "12121212[REDACTED]"},
        {"secret!!", "secret!!secret!!", "[REDACTED][REDACTED]"},
    };
    al_buf out, want;
    al_buf_init(&out, 4096);
    al_buf_init(&want, 4096);
    /* twice: the table allocated by the scrubber, then in the caller's memory
     * (al_scrub_init_in: exactly secret-length entries, ASan-checked, freed by us after
     * al_scrub_free, which must leave it alone) */
    for (int in_caller = 0; in_caller < 2; in_caller++) {
        for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
            al_scrub s;
            size_t sl = strlen(cases[i].secret), n = strlen(cases[i].in);
            size_t *table = in_caller ? malloc(sl * sizeof *table) : NULL;
            if (in_caller)
                assert_int_equal(al_scrub_init_in(&s, cases[i].secret, sl, 0, table), AL_OK);
            else
                assert_int_equal(al_scrub_init(&s, cases[i].secret, sl, 0), AL_OK);
            naive(cases[i].secret, sl, cases[i].in, n, &want);
            assert_string_equal(want.data, cases[i].want);
            for (size_t piece = 1; piece <= n; piece++) {
                chunked(&s, cases[i].in, n, &piece, 1, &out);
                assert_string_equal(out.data, cases[i].want);
            }
            al_scrub_free(&s);
            free(table);
        }
    }
    al_scrub s;
    assert_int_equal(al_scrub_init_in(&s, "12345678", 8, 0, NULL), AL_ERR_INVAL);
    al_scrub_free(&s);
    al_buf_free(&out, 0);
    al_buf_free(&want, 0);
}

static void test_holds_back_at_most_len_minus_one(void **state)
{
    (void)state;
    al_scrub s;
    al_buf out;
    al_buf_init(&out, 4096);
    assert_int_equal(al_scrub_init(&s, KEY, strlen(KEY), 0), AL_OK);
    /* everything but the last byte of the key: all held, nothing written yet */
    assert_int_equal(al_scrub_feed(&s, "ok ", 3, &out), AL_OK);
    assert_int_equal(al_scrub_feed(&s, KEY, strlen(KEY) - 1, &out), AL_OK);
    assert_int_equal(out.len, 3);
    assert_int_equal(al_scrub_pending(&s), strlen(KEY) - 1);
    /* a byte that breaks it releases everything at once */
    assert_int_equal(al_scrub_feed(&s, "!", 1, &out), AL_OK);
    assert_int_equal(al_scrub_pending(&s), 0);
    assert_int_equal(out.len, 3 + strlen(KEY));
    assert_int_equal(s.count, 0);
    al_scrub_free(&s);
    al_buf_free(&out, 0);
}

static void test_keep_length_and_limits(void **state)
{
    (void)state;
    al_scrub s;
    al_buf out;
    al_buf_init(&out, 4096);
    assert_int_equal(al_scrub_init(&s, KEY, strlen(KEY), AL_SCRUB_KEEP_LENGTH), AL_OK);
    assert_int_equal(al_scrub_value(&s, "k=sk-live-0123456789abcdef;", 27, &out), 1);
    assert_string_equal(out.data, "k=[REDACTED]**************;");
    al_scrub_free(&s);
    assert_int_equal(al_scrub_init(&s, "12345678", 8, AL_SCRUB_KEEP_LENGTH), AL_OK);
    assert_int_equal(al_scrub_value(&s, "a12345678b", 10, &out), 1);
    assert_string_equal(out.data, "a[REDACTEb");
    al_scrub_free(&s);
    /* too short, too long, NULL: refused; free of a failed init is safe */
    assert_int_equal(al_scrub_init(&s, "1234567", 7, 0), AL_ERR_INVAL);
    al_scrub_free(&s);
    assert_int_equal(al_scrub_init(&s, NULL, 10, 0), AL_ERR_INVAL);
    assert_int_equal(al_scrub_init(&s, KEY, AL_SCRUB_MAX_SECRET + 1, 0), AL_ERR_INVAL);
    assert_int_equal(al_scrub_feed(&s, "x", 1, &out), AL_ERR_INVAL);
    al_scrub_free(&s);
    /* an output limit is reported, never exceeded */
    al_buf small;
    al_buf_init(&small, 16);
    assert_int_equal(al_scrub_init(&s, KEY, strlen(KEY), 0), AL_OK);
    assert_int_equal(al_scrub_feed(&s, "0123456789abcdefghijklmnop", 26, &small), AL_ERR_TOOBIG);
    assert_true(small.len <= 16);
    al_scrub_free(&s);
    al_buf_free(&small, 0);
    al_buf_free(&out, 0);
}

/* The zero-copy form: spans are recorded (where they lie) and joined. */
typedef struct spans {
    al_buf out;
    const void *where[16];
    size_t len[16], n;
} spans;

static int record(void *arg, const void *p, size_t n)
{
    spans *k = arg;
    if (k->n < 16) {
        k->where[k->n] = p;
        k->len[k->n] = n;
    }
    k->n++;
    return al_buf_append(&k->out, p, n);
}

static void test_spans_zero_copy(void **state)
{
    (void)state;
    al_scrub s;
    spans k = {0};
    al_buf_init(&k.out, 1 << 16);
    assert_int_equal(al_scrub_init(&s, KEY, strlen(KEY), AL_SCRUB_KEEP_LENGTH), AL_OK);
    /* no match, near misses ("sk-l", "s") inside: one span, the input itself */
    const char a[] = "plain sk-l text, s and more";
    assert_int_equal(al_scrub_feed_spans(&s, a, strlen(a), record, &k), AL_OK);
    assert_int_equal(k.n, 1);
    assert_ptr_equal(k.where[0], a);
    assert_int_equal(k.len[0], strlen(a));
    /* a key split over three feeds: "...sk-li" | "ve-0123456789" | "abcdef tail" */
    const char b[] = "head sk-li", c[] = "ve-0123456789", d[] = "abcdef tail";
    k.n = 0;
    assert_int_equal(al_scrub_feed_spans(&s, b, strlen(b), record, &k), AL_OK);
    assert_int_equal(k.n, 1); /* "head " out, "sk-li" held */
    assert_ptr_equal(k.where[0], b);
    assert_int_equal(k.len[0], 5);
    assert_int_equal(al_scrub_pending(&s), 5);
    assert_int_equal(al_scrub_feed_spans(&s, c, strlen(c), record, &k), AL_OK);
    assert_int_equal(k.n, 1); /* all held */
    assert_int_equal(al_scrub_feed_spans(&s, d, strlen(d), record, &k), AL_OK);
    assert_int_equal(al_scrub_finish(&s, &k.out), AL_OK);
    const char want[] = "plain sk-l text, s and morehead [REDACTED]************** tail";
    assert_int_equal(k.out.len, strlen(want));
    assert_memory_equal(k.out.data, want, strlen(want));
    /* a held prefix the next feed breaks is released from the secret, then the input */
    const char e[] = "x sk-live", f[] = "-9 y";
    k.n = 0;
    al_buf_reset(&k.out);
    assert_int_equal(al_scrub_feed_spans(&s, e, strlen(e), record, &k), AL_OK);
    assert_int_equal(al_scrub_feed_spans(&s, f, strlen(f), record, &k), AL_OK);
    assert_int_equal(k.n, 3);
    assert_ptr_equal(k.where[1], KEY); /* "sk-live" (held from e) released */
    assert_int_equal(k.len[1], 7);
    assert_ptr_equal(k.where[2], f);
    assert_int_equal(k.len[2], 4);
    assert_memory_equal(k.out.data, "x sk-live-9 y", 13);
    assert_int_equal(al_scrub_pending(&s), 0);
    al_scrub_free(&s);
    al_buf_free(&k.out, 0);
}

static void test_random_against_naive(void **state)
{
    (void)state;
    /* small alphabets make partial matches and borders frequent */
    al_buf out, want;
    al_buf_init(&out, 1 << 16);
    al_buf_init(&want, 1 << 16);
    srand(1234);
    for (int round = 0; round < 400; round++) {
        char sec[16], in[600];
        size_t sl = 8 + (size_t)(rand() % 8), n = (size_t)(rand() % (int)sizeof in);
        int alpha = 2 + rand() % 3;
        for (size_t i = 0; i < sl; i++)
            sec[i] = (char)('a' + rand() % alpha);
        for (size_t i = 0; i < n; i++)
            in[i] = (char)('a' + rand() % alpha);
        /* plant a few whole copies */
        for (int k = 0; k < 3 && n > sl; k++)
            memcpy(in + rand() % (int)(n - sl), sec, sl);
        al_scrub s;
        assert_int_equal(al_scrub_init(&s, sec, sl, 0), AL_OK);
        naive(sec, sl, in, n, &want);
        size_t sizes[3] = {1 + (size_t)(rand() % 7), 1 + (size_t)(rand() % 40), sl - 1};
        chunked(&s, in, n, sizes, 3, &out);
        assert_int_equal(out.len, want.len);
        assert_memory_equal(out.data ? out.data : "", want.data ? want.data : "", want.len);
        al_scrub_free(&s);
    }
    al_buf_free(&out, 0);
    al_buf_free(&want, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_header_value),
        cmocka_unit_test(test_json_body_every_split),
        cmocka_unit_test(test_sse_events),
        cmocka_unit_test(test_self_similar_secret),
        cmocka_unit_test(test_holds_back_at_most_len_minus_one),
        cmocka_unit_test(test_keep_length_and_limits),
        cmocka_unit_test(test_random_against_naive),
        cmocka_unit_test(test_spans_zero_copy),
        cmocka_unit_test(test_first_byte_runs_every_split),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
