/* Unit tests of proxy/al_oauth2_3lo's consent page: the provider's error text (and any
 * markup in it) is escaped, control bytes dropped, and a page cut to its buffer is
 * still terminated. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "proxy/al_oauth2_3lo.h"

#include <string.h>

static void test_page_escapes_everything(void **state)
{
    (void)state;
    char buf[2048];
    size_t n = al_oauth2_3lo_page_html(
        "A <b>title</b>", "said \"<script>alert('x')</script>\" & left\r\n\x01", buf, sizeof buf);
    assert_int_equal(n, strlen(buf));
    assert_non_null(strstr(buf, "<title>airlock: A &lt;b&gt;title&lt;/b&gt;</title>"));
    assert_non_null(strstr(buf, "<p>said &quot;&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;"
                                "&quot; &amp; left</p>"));
    assert_null(strstr(buf, "<script>"));
    assert_null(strchr(buf, '\r'));
    assert_null(strchr(buf, '\x01'));
}

static void test_page_cut_to_its_buffer(void **state)
{
    (void)state;
    char big[4000], buf[128];
    memset(big, '<', sizeof big - 1);
    big[sizeof big - 1] = 0;
    size_t n = al_oauth2_3lo_page_html("t", big, buf, sizeof buf);
    assert_true(n < sizeof buf);
    assert_int_equal(strlen(buf), n);
    assert_null(strstr(buf + 40, "<<")); /* escaped, never raw, even when cut */
    assert_int_equal(al_oauth2_3lo_page_html("t", "m", buf, 0), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_page_escapes_everything),
        cmocka_unit_test(test_page_cut_to_its_buffer),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
