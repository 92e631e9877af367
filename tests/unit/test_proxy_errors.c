/* Unit tests of the JSON refusal bodies (proxy/al_errors.c): the shape agents parse,
 * escaping of whatever a message quotes back (hosts, paths), and the size bound. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "common/al_err.h"
#include "proxy/al_errors.h"

static void test_shape(void **state)
{
    (void)state;
    al_buf b;
    al_buf_init(&b, 4096);
    assert_int_equal(
        al_error_json(&b, "unknown_target", "no target matches %s:%d", "h.example", 443), 0);
    assert_string_equal(
        b.data, "{\"error\":\"unknown_target\",\"message\":\"no target matches h.example:443\"}\n");
    al_buf_free(&b, 0);
}

static void test_escaping(void **state)
{
    (void)state;
    al_buf b;
    al_buf_init(&b, 4096);
    /* A path an agent sent, quoted back in a message, cannot break the JSON. */
    assert_int_equal(al_error_json(&b, "bad_request", "path %s", "/a\"b\\c\n\x01"), 0);
    assert_string_equal(
        b.data, "{\"error\":\"bad_request\",\"message\":\"path /a\\\"b\\\\c\\u000a\\u0001\"}\n");
    al_buf_free(&b, 0);
}

static void test_bounded(void **state)
{
    (void)state;
    al_buf b;
    al_buf_init(&b, 64);
    char big[3000];
    memset(big, 'x', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    assert_int_equal(al_error_json(&b, "bad_request", "%s", big), AL_ERR_TOOBIG);
    al_buf_free(&b, 0);
    al_buf_init(&b, 4096);
    /* Long messages are cut at 1 KiB, never allocated without bound. */
    assert_int_equal(al_error_json(&b, "bad_request", "%s", big), 0);
    assert_true(b.len < 1100);
    al_buf_free(&b, 0);
}

static void test_reasons(void **state)
{
    (void)state;
    assert_string_equal(al_http_reason(431), "Request Header Fields Too Large");
    assert_string_equal(al_http_reason(504), "Gateway Timeout");
    assert_string_equal(al_http_reason(299), "Unknown");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_shape),
        cmocka_unit_test(test_escaping),
        cmocka_unit_test(test_bounded),
        cmocka_unit_test(test_reasons),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
