/* Unit tests for common/al_fmt: decimal numbers as snprintf("%llu") writes them, at
 * the edges (0, each power of ten and the one before it, UINT64_MAX). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "common/al_fmt.h"

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
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fmt_u64_matches_printf),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
