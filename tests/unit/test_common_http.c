/* common/al_http: al_http_field_value_ok reads eight bytes at a time (the tail as an
 * overlapping last word); its answer must be the byte rule's for every byte value at
 * every position of values of every length up to three words, around the word
 * boundaries, and for tabs (allowed, but they send a word to the byte loop). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <strings.h>

#include <cmocka.h>

#include "common/al_http.h"

static int byte_rule(const char *v, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)v[i];
        if ((c < 0x20 && c != '\t') || c == 0x7f)
            return 0;
    }
    return 1;
}

static void test_field_value_every_byte_everywhere(void **state)
{
    (void)state;
    char v[32];
    for (size_t n = 0; n <= 25; n++)
        for (size_t at = 0; at < (n ? n : 1); at++)
            for (int b = 0; b < 256; b++) {
                memset(v, 'a', sizeof v);
                if (n)
                    v[at] = (char)b;
                if (n > 3 && b == 'a')
                    v[n - 1 - at % 3] = '\t'; /* a tab elsewhere too */
                int want = byte_rule(v, n), got = al_http_field_value_ok(v, n);
                if (want != got)
                    fail_msg("length %zu, byte 0x%02x at %zu: %d, want %d", n, b, at, got, want);
            }
    /* obs-text and DEL next to each other, across a word boundary */
    assert_int_equal(al_http_field_value_ok("abcdefg\x80\xff"
                                            "bcdefgh",
                                            16),
                     1);
    assert_int_equal(al_http_field_value_ok("abcdefg\x7f"
                                            "abcdefgh",
                                            16),
                     0);
    assert_int_equal(al_http_field_value_ok("abcdefgh"
                                            "abcdefg\n",
                                            16),
                     0);
    assert_int_equal(al_http_field_value_ok(NULL, 0), 1);
}

/* al_http_caseeq is strncasecmp (C locale) for every pair of bytes, in every
 * position of a name; al_http_hop_by_hop finds its six names in any case and no
 * near miss (one byte changed anywhere, any length around theirs). */
static void test_caseeq_every_byte_pair(void **state)
{
    (void)state;
    for (int x = 1; x < 256; x++)
        for (int y = 1; y < 256; y++) {
            char a[3] = {'k', (char)x, 'z'}, b[3] = {'K', (char)y, 'Z'};
            int want = strncasecmp(a, b, 3) == 0;
            assert_int_equal(al_http_caseeq(a, b, 3), want);
            assert_int_equal(al_http_name_eq(a, 3, b, 3), want);
        }
    assert_true(al_http_caseeq("", "x", 0));
    assert_false(al_http_name_eq("te", 2, "t", 1));
}

static void test_hop_by_hop_names(void **state)
{
    (void)state;
    static const char *const hop[] = {"connection", "keep-alive", "proxy-connection", "te",
                                      "transfer-encoding", "upgrade"};
    static const char *const not[] = {"content-type", "trailer", "tE-x", "x-upgrade",
                                      "keep-alivE2", "connectioN", "proxy-authorization", ""};
    for (size_t i = 0; i < sizeof hop / sizeof hop[0]; i++) {
        char n[32];
        size_t l = strlen(hop[i]);
        memcpy(n, hop[i], l);
        assert_true(al_http_hop_by_hop(n, l));
        for (size_t k = 0; k < l; k++)
            n[k] = (char)(n[k] >= 'a' && n[k] <= 'z' ? n[k] - 32 : n[k]);
        assert_true(al_http_hop_by_hop(n, l));
        for (size_t k = 0; k < l; k++) {
            char c = n[k];
            for (int v = 0; v < 256; v++) {
                n[k] = (char)v;
                int same = (v | 0x20) == (c | 0x20) && ((v | 0x20) >= 'a' && (v | 0x20) <= 'z');
                assert_int_equal(al_http_hop_by_hop(n, l), same || v == c);
            }
            n[k] = c;
        }
        assert_false(al_http_hop_by_hop(n, l - 1));
        n[l] = 'x';
        assert_false(al_http_hop_by_hop(n, l + 1));
    }
    assert_true(al_http_hop_by_hop("Connection", 10)); /* the one spelled above */
    for (size_t i = 0; i < sizeof not / sizeof not[0] - 1; i++)
        assert_int_equal(al_http_hop_by_hop(not[i], strlen(not[i])),
                         !strcmp(not[i], "connectioN"));
    assert_false(al_http_hop_by_hop(NULL, 2));
    assert_false(al_http_hop_by_hop("", 0));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_field_value_every_byte_everywhere),
        cmocka_unit_test(test_caseeq_every_byte_pair),
        cmocka_unit_test(test_hop_by_hop_names),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
