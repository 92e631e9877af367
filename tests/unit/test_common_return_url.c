/* Unit tests of common/al_return_url: the return-URL allow-list of OAuth's app binding
 * mode — about sixty spellings that parsers disagree on (userinfo, backslashes, encoded
 * dots and slashes, dot segments, "//" and scheme-relative forms, mixed-case hosts,
 * default ports, IPv6, control and non-ASCII bytes, fragments), the check of allow-list
 * entries at load time, and the redirect with the session id. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "common/al_err.h"
#include "common/al_return_url.h"

#include <stdlib.h>
#include <string.h>

static void test_return_url_allow_list(void **st)
{
    (void)st;
    char *allow[] = {"https://app.example.com/oauth/done", "http://127.0.0.1:8080/cb/",
                     "https://[::1]:9443/x", "https://Other.Example.ORG"};
    size_t n = sizeof allow / sizeof allow[0];
    const char *ok[] = {
        "https://app.example.com/oauth/done",
        "https://app.example.com/oauth/done?x=1&y=2",
        "https://app.example.com/oauth/done/step2",
        "HTTPS://APP.EXAMPLE.COM/oauth/done",     /* scheme and host are case-insensitive */
        "https://App.Example.Com:443/oauth/done", /* the default port spelled out */
        "http://127.0.0.1:8080/cb/",
        "http://127.0.0.1:8080/cb/more",
        "https://[::1]:9443/x",
        "https://other.example.org",
        "https://other.example.org/",
        "https://other.example.org/anything/below?q",
        "https://app.example.com/oauth/done/%41", /* a harmless escape */
    };
    const char *bad[] = {
        "https://app.example.com/oauth/donex",             /* not under the path */
        "https://app.example.com/oauth",                   /* above it */
        "https://app.example.com/OAUTH/done",              /* paths are case-sensitive */
        "https://app.example.com:8443/oauth/done",         /* another port */
        "http://app.example.com/oauth/done",               /* another scheme */
        "https://app.example.com.evil.example/oauth/done", /* a suffix host */
        "https://evil.example/app.example.com/oauth/done",
        "https://app.example.com@evil.example/oauth/done", /* userinfo */
        "https://evil.example@app.example.com/oauth/done",
        "https://app.example.com:443@evil.example/oauth/done",
        "https://evil.example\\@app.example.com/oauth/done", /* backslashes */
        "https://app.example.com\\oauth\\done",
        "https:\\\\app.example.com/oauth/done",
        "https://app.example.com/oauth/done\\..\\..\\evil",
        "//app.example.com/oauth/done", /* scheme-relative */
        "/oauth/done",
        "https:/app.example.com/oauth/done",
        "https:app.example.com/oauth/done",
        "javascript://app.example.com/oauth/done%0aalert(1)",
        "https://app.example.com/oauth/done/../../evil", /* dot segments */
        "https://app.example.com/oauth/done/./x",
        "https://app.example.com/oauth/done/..",
        "https://app.example.com/oauth/done/%2e%2e/%2e%2e/evil", /* encoded dots */
        "https://app.example.com/oauth/done/%2E%2E/evil",
        "https://app.example.com/oauth/done/.%2e/evil",
        "https://app.example.com/oauth/done%2f..%2f..%2fevil",
        "https://app.example.com/oauth/done/%5c..%5cevil",
        "https://app.example.com/oauth/done/%252e%252e/evil", /* double encoding */
        "https://app.example.com/oauth/done/%",
        "https://app.example.com/oauth/done/%4",
        "https://app.example.com/oauth/done/%0d%0aSet-Cookie:x",
        "https://app.example.com/oauth/done//evil.example", /* empty segment */
        "https://app.example.com//oauth/done",
        "https://app.example.com./oauth/done", /* trailing dot */
        "https://app..example.com/oauth/done",
        "https://app%2eexample.com/oauth/done", /* encoded host */
        "https://app.example.com%2f@evil.example/oauth/done",
        "https://xn--app-example.com/oauth/done",
        "https://app.example.com/oauth/done#frag", /* fragments */
        "https://app.example.com/oauth/done#@evil.example",
        "https://app.example.com /oauth/done", /* spaces, controls, non-ASCII */
        "https://app.example.com/oauth/done\t",
        "https://app.example.com/oauth/done\r\nLocation: https://evil.example",
        "https://app.\xc3\xa9xample.com/oauth/done",
        "https://app.example.com:/oauth/done", /* odd ports */
        "https://app.example.com:0443x/oauth/done",
        "https://app.example.com:65979/oauth/done",
        "https://app.example.com:+443/oauth/done",
        "https://app.example.com:4430000/oauth/done",
        "http://127.0.0.1:8080/cb", /* the entry ends in '/': "/cb" is above it */
        "http://127.0.0.2:8080/cb/",
        "http://127.0.0.1:08080/cb/", /* a leading zero: one spelling per port */
        "http://127.0.0.1:8080/cb/../admin",
        "https://[::1]:9443/xy",
        "https://[::1]/x",
        "https://[::1:9443/x",
        "https://[::1]x:9443/x",
        "https://[::g]:9443/x",
        "https://other.example.org.evil/",
        "",
        "https://",
        "https:///oauth/done",
        NULL,
    };
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++)
        if (!al_return_url_allowed(ok[i], allow, n))
            fail_msg("refused: %s", ok[i]);
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        if (al_return_url_allowed(bad[i], allow, n))
            fail_msg("allowed: %s", bad[i]);
    /* an empty list allows nothing */
    assert_false(al_return_url_allowed("https://app.example.com/oauth/done", allow, 0));
    /* a bad entry in the list is skipped, never matched loosely */
    char *bad_list[] = {"https://app.example.com/oauth/done?x=1", "http://app.example.com/"};
    assert_false(al_return_url_allowed("https://app.example.com/oauth/done?x=1", bad_list, 2));
    assert_false(al_return_url_allowed("http://app.example.com/", bad_list, 2));
    /* a long URL */
    char longu[4096];
    memset(longu, 'a', sizeof longu);
    memcpy(longu, "https://app.example.com/oauth/done/", 35);
    longu[sizeof longu - 1] = 0;
    assert_false(al_return_url_allowed(longu, allow, n));
}

static void test_return_url_entries_checked(void **st)
{
    (void)st;
    char err[256];
    const char *good[] = {"https://app.example.com/cb", "https://app.example.com",
                          "http://127.0.0.1:9000/cb", "http://localhost/cb", "http://[::1]:1/"};
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        if (al_return_url_valid(good[i], err, sizeof err) != AL_OK)
            fail_msg("%s: %s", good[i], err);
    }
    const char *badv[] = {"https://app.example.com/cb?x=1",
                          "http://app.example.com/cb",
                          "https://u@app.example.com/cb",
                          "ftp://app.example.com/",
                          "https://app.example.com/cb#f",
                          "app.example.com/cb",
                          NULL};
    for (size_t i = 0; i < sizeof badv / sizeof badv[0]; i++) {
        err[0] = 0;
        assert_int_equal(al_return_url_valid(badv[i], err, sizeof err), AL_ERR_INVAL);
        assert_int_equal(strncmp(err, "not a usable return URL: ", 25), 0);
    }
}

static void test_return_redirect(void **st)
{
    (void)st;
    char *u = al_return_url_with_session("https://app.example/done", "SID");
    assert_string_equal(u, "https://app.example/done?session_id=SID");
    free(u);
    u = al_return_url_with_session("https://app.example/done?a=b", "SID");
    assert_string_equal(u, "https://app.example/done?a=b&session_id=SID");
    free(u);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_return_url_allow_list),
        cmocka_unit_test(test_return_url_entries_checked),
        cmocka_unit_test(test_return_redirect),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
