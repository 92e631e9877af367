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

static void test_proxy_status(void **state)
{
    (void)state;
    al_buf b;
    al_buf_init(&b, 2048);
    assert_int_equal(al_proxy_status(&b, "unknown_target", 403, "no target matches api.x:443"), 0);
    assert_string_equal(b.data, "airlock; error=destination_not_found; error_code=\"unknown_target\"; "
                                "details=\"no target matches api.x:443\"");
    assert_string_equal(al_proxy_status_error("egress_denied", 403), "destination_ip_prohibited");
    assert_string_equal(al_proxy_status_error("upstream_dns_failed", 502), "dns_error");
    assert_string_equal(al_proxy_status_error("something_new", 502), "proxy_internal_error");
    assert_string_equal(al_proxy_status_error("something_new", 400), "http_request_denied");
    /* Hostile bytes stay inside the sf-string: quotes and backslashes escaped, CR, LF,
     * NUL-free controls and bytes past ASCII replaced; long details cut. */
    assert_int_equal(al_proxy_status(&b, "bad_request", 400, "a\"b\\c\r\nd\xc3\xa9"), 0);
    assert_string_equal(b.data, "airlock; error=http_request_error; error_code=\"bad_request\"; "
                                "details=\"a\\\"b\\\\c??d??\"");
    char big[3000];
    memset(big, 'x', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    assert_int_equal(al_proxy_status(&b, "bad_request", 400, big), 0);
    assert_true(b.len < 700);
    al_buf_free(&b, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_shape),
        cmocka_unit_test(test_escaping),
        cmocka_unit_test(test_bounded),
        cmocka_unit_test(test_reasons),
        cmocka_unit_test(test_proxy_status),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
