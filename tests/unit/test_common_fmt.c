/* Unit tests for common/al_fmt: decimal numbers as snprintf("%llu") writes them, at
 * the edges (0, each power of ten and the one before it, UINT64_MAX). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "common/al_fmt.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <string.h>

static void check(uint64_t v)
{
    char want[32], got[AL_FMT_U64_MAX + 1];
    int n = snprintf(want, sizeof want, "%llu", (unsigned long long)v);
    memset(got, 'x', sizeof got);
    size_t len = al_fmt_u64(got, v);
    assert_int_equal(len, (size_t)n);
    assert_memory_equal(got, want, len);
    assert_int_equal(got[len], 'x'); /* nothing written past the digits */
}

static void test_fmt_u64_matches_printf(void **state)
{
    (void)state;
    check(0);
    check(UINT64_MAX);
    check((uint64_t)INT64_MAX);
    uint64_t p = 1;
    for (int i = 0; i < 20; i++) {
        check(p);
        check(p - 1);
        check(p + 1);
        if (i < 19)
            p *= 10;
    }
    check(443);
    check(65535);
    uint64_t x = 88172645463325252ull; /* xorshift: values of every length */
    for (int i = 0; i < 200000; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        check(x >> (x % 64));
    }
}

/* al_fmt_read_ipv4 takes only what inet_pton(AF_INET) takes, with the same address;
 * what it leaves to libc is never a plain dotted quad. Every 1-4 part spelling of
 * parts from a list of edge numbers and non-digits, plus random strings of the bytes
 * that matter. */
static void read_ipv4_vs_inet_pton(const char *s)
{
    uint32_t mine = 0;
    struct in_addr libc;
    int m = al_fmt_read_ipv4(s, &mine);
    int l = inet_pton(AF_INET, s, &libc) == 1;
    if (m) {
        assert_true(l);
        assert_memory_equal(&mine, &libc.s_addr, 4);
    } else if (l) {
        fail_msg("inet_pton takes '%s', al_fmt_read_ipv4 does not", s);
    }
}

static void test_read_ipv4_matches_inet_pton(void **state)
{
    (void)state;
    static const char *const parts[] = {"0",   "1",   "9",  "10",   "00", "01", "099", "255",
                                        "256", "999", "0x1", "1000", "",   " 1", "1 ", "+1",
                                        "-1",  "127", "192", "0255", "25a"};
    size_t np = sizeof parts / sizeof parts[0];
    char s[64];
    for (size_t a = 0; a < np; a++)
        for (size_t b = 0; b < np; b++)
            for (size_t c = 0; c < np; c++)
                for (size_t d = 0; d < np; d += 3) {
                    snprintf(s, sizeof s, "%s.%s.%s.%s", parts[a], parts[b], parts[c], parts[d]);
                    read_ipv4_vs_inet_pton(s);
                    snprintf(s, sizeof s, "%s.%s.%s", parts[a], parts[b], parts[c]);
                    read_ipv4_vs_inet_pton(s);
                    snprintf(s, sizeof s, "%s.%s.%s.%s.", parts[a], parts[b], parts[c], parts[d]);
                    read_ipv4_vs_inet_pton(s);
                }
    static const char alphabet[] = "0123456789..x ";
    uint32_t x = 12345;
    for (int i = 0; i < 200000; i++) {
        size_t n = 0;
        x = x * 1103515245u + 12345u;
        size_t len = 1 + (x >> 16) % 17;
        for (; n < len; n++) {
            x = x * 1103515245u + 12345u;
            s[n] = alphabet[(x >> 16) % (sizeof alphabet - 1)];
        }
        s[n] = '\0';
        read_ipv4_vs_inet_pton(s);
    }
    uint32_t v = 0;
    assert_true(al_fmt_read_ipv4("127.0.0.1", &v));
    assert_memory_equal(&v, "\x7f\x00\x00\x01", 4);
    assert_true(al_fmt_read_ipv4("255.255.255.255", &v));
    assert_false(al_fmt_read_ipv4("1.2.3.4x", &v));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fmt_u64_matches_printf),
        cmocka_unit_test(test_read_ipv4_matches_inet_pton),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
