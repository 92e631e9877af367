/* common/al_http: al_http_field_value_ok reads eight bytes at a time (the tail as an
 * overlapping last word); its answer must be the byte rule's for every byte value at
 * every position of values of every length up to three words, around the word
 * boundaries, and for tabs (allowed, but they send a word to the byte loop). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_field_value_every_byte_everywhere),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
