/* Unit tests for common/al_reqtarget: request-target forms (RFC 9112 §3.2, RFC 9113
 * §8.3.1), authorities and the path rule, as tables of spellings. Each row is an
 * input and the verdict; the attack rows are the spellings that reached another
 * port, another host or a path above a base path before this module existed. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "common/al_err.h"
#include "common/al_reqtarget.h"

#include <stdio.h>
#include <string.h>

#define OK     AL_REQTARGET_OK
#define SCHEME AL_REQTARGET_BAD_SCHEME
#define FORM   AL_REQTARGET_BAD_FORM
#define AUTH   AL_REQTARGET_BAD_AUTHORITY
#define CHAR   AL_REQTARGET_BAD_CHAR
#define NORM   AL_REQTARGET_NOT_NORMALIZED

typedef struct {
    const char *in;
    enum al_reqtarget_why want;
} row;

static const row paths[] = {
    /* fine */
    {"/", OK},
    {"/v1/chat/completions", OK},
    {"/v1/x?a=1&b=%2F&c=../..", OK}, /* the query is not a path */
    {"/v1/x?filter[name]={a}|b^`", OK},
    {"/a/.b/c./...x/x..", OK},
    {"/a//b", OK},
    {"/projects/group%2Fproject", OK}, /* an encoded slash that climbs nowhere */
    {"/a;b=c/d", OK},
    {"/~user/%41%42", OK},
    {"/a@b:c!$&'()*+,;=", OK},
    {"/caf%C3%A9", OK},
    {"/x%25y", OK},
    {"/%2561", OK},
    /* dot segments, every spelling */
    {"/.", NORM},
    {"/..", NORM},
    {"/v1/../admin", NORM},
    {"/v1/./admin", NORM},
    {"/v1/..", NORM},
    {"/v1/..?x", NORM},
    {"/v1/%2e%2e/admin", NORM},
    {"/v1/%2E%2E/admin", NORM},
    {"/v1/.%2e/admin", NORM},
    {"/v1/%2e./admin", NORM},
    {"/v1/%2e/admin", NORM},
    {"/v1/..%2fadmin", NORM},
    {"/v1/..%2Fadmin", NORM},
    {"/v1/%2E%2E%2Fadmin", NORM},
    {"/v1%2f..%2fadmin", NORM},
    {"/v1/..%5cadmin", NORM},
    {"/v1/..%5Cadmin", NORM},
    {"/v1/..;/admin", NORM},
    {"/v1/..;jsessionid=1/admin", NORM},
    {"/v1/.;/admin", NORM},
    {"/v1/%2e%2e%3b/admin", NORM},
    {"/v1/%252e%252e/admin", NORM},
    {"/v1/%252E%252E%252Fadmin", NORM},
    {"/v1/..%252fadmin", NORM},
    {"/v1/..%255cadmin", NORM},
    {"/v1/%25252e%25252e/admin", NORM},
    {"/v1/%25%32%65%25%32%65/admin", NORM},
    {"/v1/%c0%ae%c0%ae/admin", NORM},
    {"/v1/%C0%AF", NORM},
    {"/v1/%e0%80%ae", NORM},
    {"/v1/%f0%80%80%ae", NORM},
    {"/v1/%ef%bc%8e%ef%bc%8e/admin", NORM}, /* full-width dots */
    {"/v1/..%ef%bc%8fadmin", NORM},         /* full-width solidus */
    {"/v1/..%EF%BC%BCadmin", NORM},         /* full-width reverse solidus */
    {"/v1/...", NORM},                      /* Windows trims dots */
    {"/v1/..%20/admin", NORM},              /* ... and spaces */
    {"/v1/.. /admin", CHAR},
    {"//evil.example/x", NORM},
    {"//", NORM},
    /* bytes */
    {"/v1/..\\admin", CHAR},
    {"/v1\\x", CHAR},
    {"/v1/x#frag", CHAR},
    {"/v1/x?a#b", CHAR},
    {"/v1/a b", CHAR},
    {"/v1/a\tb", CHAR},
    {"/v1/\x7f", CHAR},
    {"/v1/\xc3\xa9", CHAR},
    {"/v1/%", CHAR},
    {"/v1/%2", CHAR},
    {"/v1/%zz", CHAR},
    {"/v1/%%32%65", CHAR},
    {"/v1/%u002e", CHAR},
    {"/v1/%00", CHAR},
    {"/v1/%2500", CHAR},
    {"/v1/x\"", CHAR},
    {"/v1/[x]", CHAR}, /* '[' only in a query */
    {"/v1/x?a=\\", CHAR},
    {"/v1/<script>", CHAR},
    /* forms */
    {"", FORM},
    {"v1/x", FORM},
    {"*", FORM},
    {"@127.0.0.1:9104/stolen", FORM},
    {"http://h/x", FORM},
};

static void test_paths(void **state)
{
    (void)state;
    int bad = 0;
    for (size_t i = 0; i < sizeof paths / sizeof paths[0]; i++) {
        enum al_reqtarget_why why = 99;
        int rc = al_reqtarget_path(paths[i].in, strlen(paths[i].in), &why);
        if (why != paths[i].want || (rc == AL_OK) != (paths[i].want == OK)) {
            fprintf(stderr, "path %-36s got %s want %s\n", paths[i].in, al_reqtarget_why_str(why),
                    al_reqtarget_why_str(paths[i].want));
            bad++;
        }
    }
    assert_int_equal(bad, 0);
}

typedef struct {
    const char *method, *in;
    enum al_reqtarget_why want;
    const char *host; /* expected host when OK (NULL: none) */
    unsigned port;
    const char *path;
} h1row;

static const h1row h1[] = {
    {"GET", "/t/demo/x?q=1", OK, NULL, 0, "/t/demo/x?q=1"},
    {"GET", "http://api.example/v1/x?q", OK, "api.example", 80, "/v1/x?q"},
    {"GET", "HTTPS://api.example:8443/v1", OK, "api.example", 8443, "/v1"},
    {"GET", "http://api.example", OK, "api.example", 80, ""},
    {"GET", "http://api.example?q=1", OK, "api.example", 80, "?q=1"},
    {"GET", "http://[::1]:9000/x", OK, "::1", 9000, "/x"},
    {"OPTIONS", "*", OK, NULL, 0, NULL},
    {"CONNECT", "api.example:443", OK, "api.example", 443, NULL},
    {"CONNECT", "[2001:db8::1]:443", OK, "2001:db8::1", 443, NULL},
    /* schemes */
    {"GET", "ftp://api.example/x", SCHEME, NULL, 0, NULL},
    {"GET", "foo://api.example/x", SCHEME, NULL, 0, NULL},
    {"GET", "httpx://api.example/x", SCHEME, NULL, 0, NULL},
    {"GET", "http:/api.example/x", FORM, NULL, 0, NULL},
    {"GET", "http:api.example/x", FORM, NULL, 0, NULL},
    /* authorities */
    {"GET", "http://user@127.0.0.1:9104/x", AUTH, NULL, 0, NULL},
    {"GET", "http://127.0.0.1:9101@127.0.0.1:9104/x", AUTH, NULL, 0, NULL},
    {"GET", "http://a:b@h/x", AUTH, NULL, 0, NULL},
    {"GET", "http://h:0/x", AUTH, NULL, 0, NULL},
    {"GET", "http://h:65536/x", AUTH, NULL, 0, NULL},
    {"GET", "http://h:123456/x", AUTH, NULL, 0, NULL},
    {"GET", "http://h:/x", AUTH, NULL, 0, NULL},
    {"GET", "http://h:8o/x", AUTH, NULL, 0, NULL},
    {"GET", "http://h%2eexample/x", AUTH, NULL, 0, NULL},
    {"GET", "http://h\\@evil/x", AUTH, NULL, 0, NULL},
    {"GET", "http://[::1%25eth0]/x", AUTH, NULL, 0, NULL},
    {"GET", "http://[]/x", AUTH, NULL, 0, NULL},
    {"GET", "http://[::1]x/x", AUTH, NULL, 0, NULL},
    {"GET", "http:///x", AUTH, NULL, 0, NULL},
    {"GET", "http://h#@evil/x", AUTH, NULL, 0, NULL},
    {"GET", "http://h/x#@evil", CHAR, NULL, 0, NULL},
    {"GET", "http://h/v1/..%2fadmin", NORM, NULL, 0, NULL},
    {"GET", "http://h//evil/x", NORM, NULL, 0, NULL},
    /* forms for the method */
    {"GET", "*", FORM, NULL, 0, NULL},
    {"CONNECT", "/x", AUTH, NULL, 0, NULL},
    {"CONNECT", "h", AUTH, NULL, 0, NULL},
    {"CONNECT", "u@h:443", AUTH, NULL, 0, NULL},
    {"GET", "h:443", SCHEME, NULL, 0, NULL},
    {"GET", "@127.0.0.1:9104/stolen", FORM, NULL, 0, NULL},
    {"GET", "", FORM, NULL, 0, NULL},
};

static void test_h1_forms(void **state)
{
    (void)state;
    int bad = 0;
    for (size_t i = 0; i < sizeof h1 / sizeof h1[0]; i++) {
        const h1row *c = &h1[i];
        al_reqtarget rt;
        int rc = al_reqtarget_parse_h1(c->method, c->in, strlen(c->in), &rt);
        int ok = rc == AL_OK && rt.why == OK;
        if (ok != (c->want == OK) || (!ok && rt.why != c->want)) {
            fprintf(stderr, "h1 %s %-40s got %s want %s\n", c->method, c->in,
                    al_reqtarget_why_str(rt.why), al_reqtarget_why_str(c->want));
            bad++;
            continue;
        }
        if (ok && c->host &&
            (rt.host_len != strlen(c->host) || memcmp(rt.host, c->host, rt.host_len) ||
             rt.port != c->port)) {
            fprintf(stderr, "h1 %s: host/port %.*s:%u\n", c->in, (int)rt.host_len, rt.host,
                    rt.port);
            bad++;
        }
        if (ok && c->path &&
            (rt.path_len != strlen(c->path) || memcmp(rt.path, c->path, rt.path_len))) {
            fprintf(stderr, "h1 %s: path %.*s\n", c->in, (int)rt.path_len, rt.path);
            bad++;
        }
    }
    assert_int_equal(bad, 0);
}

typedef struct {
    const char *method, *scheme, *authority, *path;
    enum al_reqtarget_why want;
} h2row;

static const h2row h2[] = {
    {"GET", "http", "127.0.0.1:9101", "/v1/x", OK},
    {"GET", "https", "api.example", "/v1/x?q=1", OK},
    {"GET", "http", NULL, "/t/demo/x", OK},
    {"OPTIONS", "http", "h", "*", OK},
    /* finding 1 and its cousins */
    {"GET", "foo", "127.0.0.1:9101", "@127.0.0.1:9104/stolen", SCHEME},
    {"GET", "http", "127.0.0.1:9101", "@127.0.0.1:9104/stolen", FORM},
    {"GET", "https", "127.0.0.1:9101", "@attacker.test:9444/exfil", FORM},
    {"GET", "ftp", "h", "/x", SCHEME},
    {"GET", "HTTP2", "h", "/x", SCHEME},
    {"GET", "", "h", "/x", SCHEME},
    {"GET", NULL, "h", "/x", SCHEME},
    {"GET", "http", "h", "http://evil:9104/x", FORM},
    {"GET", "http", "h", "//evil:9104/x", NORM},
    {"GET", "http", "h", "\\\\evil/x", FORM},
    {"GET", "http", "h", "/x\\y", CHAR},
    {"GET", "http", "h", "?x", FORM},
    {"GET", "http", "h", "", FORM},
    {"GET", "http", "h", "*", FORM},
    {"GET", "http", "h", "/x#y", CHAR},
    {"GET", "http", "u@h", "/x", AUTH},
    {"GET", "http", "h:99999", "/x", AUTH},
    {"GET", "http", "h/x", "/x", AUTH},
    {"CONNECT", NULL, "h:443", NULL, FORM},
};

static void test_h2_pseudo_headers(void **state)
{
    (void)state;
    int bad = 0;
    for (size_t i = 0; i < sizeof h2 / sizeof h2[0]; i++) {
        const h2row *c = &h2[i];
        al_reqtarget rt;
        int rc = al_reqtarget_check_h2(c->method, c->scheme, c->scheme ? strlen(c->scheme) : 0,
                                       c->authority, c->authority ? strlen(c->authority) : 0,
                                       c->path, c->path ? strlen(c->path) : 0, &rt);
        int ok = rc == AL_OK;
        if (ok != (c->want == OK) || (!ok && rt.why != c->want)) {
            fprintf(stderr, "h2 %s %s %s %s got %s want %s\n", c->method,
                    c->scheme ? c->scheme : "-", c->authority ? c->authority : "-",
                    c->path ? c->path : "-", al_reqtarget_why_str(rt.why),
                    al_reqtarget_why_str(c->want));
            bad++;
        }
    }
    assert_int_equal(bad, 0);
}

static void test_base_paths(void **state)
{
    (void)state;
    static const row base[] = {
        {"", OK},         {"/v1", OK},           {"/api/v4/", OK},      {"/v1/%2e%2e", NORM},
        {"/v1/..", NORM}, {"/v1%2fadmin", NORM}, {"/v1%5Cadmin", NORM}, {"/v1/%252e%252e", NORM},
        {"/v1;..", OK},   {"/v1/..;x", NORM},    {"/v1/a b", CHAR},     {"v1", FORM},
        {"/v1?x", FORM},
    };
    for (size_t i = 0; i < sizeof base / sizeof base[0]; i++) {
        enum al_reqtarget_why why = 99;
        al_reqtarget_base_path(base[i].in, strlen(base[i].in), &why);
        if (why != base[i].want)
            fail_msg("base %s: got %s want %s", base[i].in, al_reqtarget_why_str(why),
                     al_reqtarget_why_str(base[i].want));
    }
}

static void test_deep_encoding_is_bounded(void **state)
{
    (void)state;
    /* a long run of %25 must neither recurse without bound nor be slow */
    static char p[64 * 1024];
    p[0] = '/';
    size_t n = 1;
    while (n + 3 < sizeof p - 8) {
        memcpy(p + n, "%25", 3);
        n += 3;
    }
    memcpy(p + n, "2e", 2);
    n += 2;
    enum al_reqtarget_why why;
    al_reqtarget_path(p, n, &why);
    assert_int_not_equal(why, CHAR);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_paths),
        cmocka_unit_test(test_h1_forms),
        cmocka_unit_test(test_h2_pseudo_headers),
        cmocka_unit_test(test_base_paths),
        cmocka_unit_test(test_deep_encoding_is_bounded),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
